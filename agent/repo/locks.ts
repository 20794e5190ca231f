// Who is writing to the repository now. A backup holds a lease (locks/backup-<id>) while it runs,
// rewritten every LOCK_REFRESH_MS so that its age (the storage's own clock: S3 LastModified) says
// it is alive; a prune holds the one exclusive lock (locks/prune), taken with a create-only put.
// Backups never wait for a lock: prune waits for the backups it could race (docs/FORMAT.md,
// "Prune and running backups"). A lease not rewritten for LOCK_STALE_MS belongs to a process that
// died: it no longer counts.
import { hostname } from 'node:os'
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { timestampedId } from '../core/ids.ts'
import { AlreadyExistsError } from '../storage/types.ts'
import { LOCKS } from './layout.ts'
import type { Repository } from './repository.ts'

export const LOCK_REFRESH_MS = 5 * 60_000
export const LOCK_STALE_MS = 30 * 60_000

const lockSchema = z.object({ version: z.literal(1), kind: z.enum(['backup', 'prune']), id: z.string(), host: z.string(), pid: z.number(), createdAt: z.string() })
export type LockRecord = z.infer<typeof lockSchema>

export interface LockInfo extends LockRecord {
  name: string
  /** When it was last rewritten, by the storage's clock. */
  modified: Date
  stale: boolean
}

/** A held lock: rewritten as it runs, removed by release(). */
export class Lease {
  readonly name: string
  readonly record: LockRecord
  readonly #repo: Repository
  #timer: NodeJS.Timeout | null = null

  constructor(repo: Repository, name: string, record: LockRecord, refreshMs: number) {
    this.#repo = repo
    this.name = name
    this.record = record
    this.#timer = setInterval(() => {
      this.#repo.putLock(this.name, this.record).catch(() => {})
    }, refreshMs)
    this.#timer.unref()
  }

  async release(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
    await this.#repo.deleteLock(this.name).catch(() => {})
  }
}

function record(kind: LockRecord['kind'], id: string): LockRecord {
  return { version: 1, kind, id, host: hostname(), pid: process.pid, createdAt: new Date().toISOString() }
}

/** A running backup's lease: prune waits for it before deleting what it could be using. */
export async function takeBackupLease(repo: Repository, backupId: string, refreshMs = LOCK_REFRESH_MS): Promise<Lease> {
  const name = `${LOCKS}backup-${backupId}-${timestampedId().slice(-8)}`
  const r = record('backup', backupId)
  await repo.putLock(name, r)
  return new Lease(repo, name, r, refreshMs)
}

/** The repository's one prune lock; REPO_LOCKED while another live prune holds it. */
export async function takePruneLock(repo: Repository, refreshMs = LOCK_REFRESH_MS, staleMs = LOCK_STALE_MS): Promise<Lease> {
  const name = `${LOCKS}prune`
  const r = record('prune', timestampedId('prune'))
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await repo.putLock(name, r, { ifAbsent: true })
      return new Lease(repo, name, r, refreshMs)
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err
      const held = (await listLocks(repo, staleMs)).find((l) => l.name === name)
      if (held && !held.stale) {
        throw new EbsWorkerError(ErrorCode.RepoLocked,
          `another prune (${held.id}, ${held.host} pid ${held.pid}, since ${held.createdAt}) is running on ${repo.url}`, { context: { repository: repo.url } })
      }
      // Its holder stopped refreshing it long ago: a prune that died. Taken over.
      await repo.deleteLock(name)
    }
  }
  throw new EbsWorkerError(ErrorCode.RepoLocked, `cannot take the prune lock of ${repo.url}`, { context: { repository: repo.url } })
}

/** Every lock, with whether it is stale (not rewritten for `staleMs`, by the storage's clock). */
export async function listLocks(repo: Repository, staleMs = LOCK_STALE_MS): Promise<LockInfo[]> {
  const out: LockInfo[] = []
  // Ages by the local clock against the storage's: the stale limit dwarfs any sane clock skew.
  const now = new Date()
  for (const obj of await repo.listObjects(LOCKS)) {
    const plain = await repo.getLock(obj.name)
    if (!plain) continue
    const parsed = lockSchema.safeParse(plain)
    if (!parsed.success) continue
    out.push({ ...parsed.data, name: obj.name, modified: obj.modified, stale: now.getTime() - obj.modified.getTime() > staleMs })
  }
  return out
}
