// What prune does on a storage that keeps versions (an S3 bucket), after its deletions
// (docs/FORMAT.md, "Object Lock"). There a deletion is a delete marker: the object is gone for
// readers at once, its data stays as an older version, which a lock keeps until its date. One
// listing of every version then serves three things, name by name:
//   - locks kept alive: an object kept backups use (a live pack, a kept manifest, a needed moved
//     record, a current index run, the config and keys) whose lock runs out within half a period is locked again until now +
//     the period. Its own time says when that can be: written at t, it is locked until at least
//     t + the period, so only objects older than half a period are asked for their lock (one
//     GetObjectRetention each) and extended when due (one PutObjectRetention);
//   - older versions and delete markers cleaned up: a version whose lock has run out (or that
//     had none) is deleted by version id, then the delete marker over it; a version still locked
//     is left, with its date and size in the report. Nothing is deleted while its lock holds:
//     a version's own time and the period say when it cannot have run out yet, its retention
//     says the rest;
//   - packs, moved records and the config kept backups use, hidden by a delete marker (prune
//     never deletes those; something else did): brought back, their markers deleted, and named
//     in the report. Manifests are not: a marker there is a `forget`, which may run while prune
//     does. (A hidden pack that prune's walk must read, a tree pack, stops prune before this:
//     CHUNK_MISSING, which names it.)
import pLimit from 'p-limit'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { BACKUPS, CONDEMNED, CONFIG, INDEXES, KEYS, LOCKS, MOVED, PACKS, RECORD_AREAS } from '../repo/layout.ts'
import type { ObjectLock, Repository } from '../repo/repository.ts'
import type { ObjectVersion } from '../storage/types.ts'

/** The areas whose objects a locked repository writes locked (and the config). */
const LOCKED_AREAS = [KEYS, PACKS, INDEXES, BACKUPS, MOVED]
/** Every area of the agent's (restore-points/ is the controller's). */
const OUR_AREAS = [...LOCKED_AREAS, LOCKS, CONDEMNED, ...RECORD_AREAS.map((a) => `${a}/`)]
const inLockedArea = (name: string): boolean => name === CONFIG || LOCKED_AREAS.some((a) => name.startsWith(a))
const ours = (name: string): boolean => name === CONFIG || OUR_AREAS.some((a) => name.startsWith(a))
/**
 * What prune brings back from behind a delete marker when kept backups use it: packs, moved
 * records, the config. Not manifests (a marker there is a `forget`, which may run while prune
 * does) nor index runs (prune deletes the runs it has rewritten, and a run can be rebuilt),
 * nor keys (a marker there is a `key remove`).
 */
const restorable = (name: string): boolean => name === CONFIG || name.startsWith(PACKS) || name.startsWith(MOVED)

/** At most this many of the versions left are named one by one (the totals count them all). */
const LISTED_LEFT = 1000

export interface LeftVersion {
  object: string
  versionId: string
  bytes: number
  /** Its lock's date; when `estimated`, the earliest it can be (its time + the period), not asked. */
  until: string | null
  estimated?: true
  why: string
}

export interface LockUpkeep {
  /** The repository's Object Lock; null: a versioned bucket without it (older versions are cleaned up all the same). */
  objectLock: ObjectLock | null
  /** Objects kept backups use whose lock was moved to now + the period. */
  extended: number
  /** Locks read (GetObjectRetention): what the upkeep cost besides the listing. */
  checked: number
  /** Objects kept backups use that a delete marker hid, brought back. */
  restored: string[]
  /**
   * Objects written over (a locked repository writes each of its objects once): their older
   * versions of other content are kept, locked, and left for an operator to look at.
   */
  overwritten: string[]
  deleted: { versions: number; markers: number; bytes: number }
  /** Older versions still locked (or refused), kept until a later prune finds their lock run out. */
  left: { versions: number; bytes: number; firstUntil: string | null; lastUntil: string | null }
  leftVersions: LeftVersion[]
}

export interface LockUpkeepOptions {
  /** Read and count only: nothing is extended, restored or deleted. */
  dryRun?: boolean
  onProgress?: (namesDone: number) => void
}

/**
 * Keeps the locks of what `uses` names alive and cleans up older versions, in a repository made
 * with Object Lock (`init --object-lock-period`); null in any other (file://, or an S3 repository
 * without it: its prune needs no version listing, and its role none of the version permissions).
 * `uses(name)`: kept backups use the object.
 */
export async function lockUpkeep(repo: Repository, uses: (name: string) => boolean, o: LockUpkeepOptions = {}): Promise<LockUpkeep | null> {
  const versions = repo.backend.versions
  const lock = repo.objectLock
  if (!versions || !lock) return null
  const bucket = await versions.lockConfiguration()
  const out: LockUpkeep = {
    objectLock: lock, extended: 0, checked: 0, restored: [], overwritten: [],
    deleted: { versions: 0, markers: 0, bytes: 0 },
    left: { versions: 0, bytes: 0, firstUntil: null, lastUntil: null }, leftVersions: [],
  }
  const now = Date.now()
  const period = (lock?.periodSeconds ?? 0) * 1000
  const defaultPeriod = bucket.enabled ? (bucket.defaultRetention?.seconds ?? 0) * 1000 : 0
  // Clocks (ours, the storage's) and a multipart upload's duration blur a version's time: this
  // much is taken off what its time says, and added to what its lock says.
  const slack = (ms: number): number => Math.min(5 * 60_000, ms / 10)

  const leave = (v: ObjectVersion, until: number | null, why: string, estimated = false): void => {
    out.left.versions++
    out.left.bytes += v.size
    if (until !== null) {
      const iso = new Date(until).toISOString()
      if (!out.left.firstUntil || iso < out.left.firstUntil) out.left.firstUntil = iso
      if (!out.left.lastUntil || iso > out.left.lastUntil) out.left.lastUntil = iso
    }
    if (out.leftVersions.length < LISTED_LEFT) {
      out.leftVersions.push({ object: v.name, versionId: v.versionId, bytes: v.size, until: until === null ? null : new Date(until).toISOString(), ...(estimated ? { estimated: true as const } : {}), why })
    }
  }

  /** Deletes a version or marker for good; false when the storage refused (a lock or hold it did not tell). */
  const remove = async (v: ObjectVersion): Promise<boolean> => {
    if (!o.dryRun) {
      try {
        await versions.delete(v.name, v.versionId)
      } catch (err) {
        if (!(err instanceof EbsWorkerError && err.context.httpStatus === 403)) throw err
        leave(v, null, `the storage refused to delete it: ${describe(err)}`)
        return false
      }
    }
    if (v.deleteMarker) out.deleted.markers++
    else {
      out.deleted.versions++
      out.deleted.bytes += v.size
    }
    return true
  }

  /** An older version: deleted unless a lock may hold it; true when it is gone. */
  const vacuum = async (v: ObjectVersion): Promise<boolean> => {
    // How long it was locked when written, at least: the repository's period (its locked areas)
    // or the bucket's default retention (every version that named none).
    const floor = Math.max(lock && inLockedArea(v.name) ? period : 0, defaultPeriod)
    if (floor > 0) {
      const atLeast = v.modified.getTime() + floor - slack(floor)
      if (atLeast > now) {
        leave(v, atLeast, 'locked', true)
        return false
      }
      const r = await versions.retention(v.name, v.versionId)
      out.checked++
      if (r && r.until.getTime() + slack(floor) > now) {
        leave(v, r.until.getTime(), `locked (${r.mode})`)
        return false
      }
    }
    return remove(v)
  }

  /**
   * A version to keep (the current one of an object kept backups use, or one written over):
   * locked until now + the period when its lock runs out within half of it. Returns its lock's
   * date as it is afterwards, or (`estimated`) the earliest it can be when not asked; null when
   * the repository has no lock or the version is gone.
   */
  const keepLocked = async (v: ObjectVersion, versionId?: string): Promise<{ until: number; estimated: boolean } | null> => {
    if (!lock) return null
    const due = now + period / 2
    const atLeast = v.modified.getTime() + period - slack(period)
    if (atLeast > due) return { until: atLeast, estimated: true } // young: its own lock reaches past that
    const r = await versions.retention(v.name, versionId)
    out.checked++
    if (r && r.until.getTime() >= due) return { until: r.until.getTime(), estimated: false }
    const until = new Date(Date.now() + period)
    if (!o.dryRun && !(await versions.extend(v.name, { mode: r?.mode ?? lock.mode, until }, versionId))) return null // gone meanwhile
    out.extended++
    return { until: until.getTime(), estimated: false }
  }

  /** One name's versions, the newest first. */
  const upkeep = async (all: ObjectVersion[]): Promise<void> => {
    const name = all[0]!.name
    if (!ours(name)) return
    const latest = all.find((v) => v.latest) ?? all[0]!
    const data = all.filter((v) => !v.deleteMarker)
    let current = latest.deleteMarker ? null : latest
    let markers = all.filter((v) => v.deleteMarker && v !== latest)
    // A locked repository writes each of these once (a retried put may write the same content
    // twice): versions of other content mean something wrote over the object. Nothing of it is
    // deleted or brought back; its older versions stay locked, for an operator to compare.
    if (lock && inLockedArea(name) && new Set(data.map((v) => v.etag)).size > 1) {
      out.overwritten.push(name)
      for (const v of data) {
        if (v === current) continue
        const kept = await keepLocked(v, v.versionId)
        leave(v, kept?.until ?? null, 'written over: an older version of other content, kept locked (docs/OPERATIONS.md, "Object Lock")', kept?.estimated ?? false)
      }
      if (current && uses(name)) await keepLocked(current)
      return
    }
    if (!current && data.length && uses(name) && restorable(name)) {
      // Used by kept backups, yet hidden: every marker goes and the newest version is back.
      let back = true
      for (const m of all.filter((v) => v.deleteMarker)) back = (await remove(m)) && back
      if (!back) return
      out.restored.push(name)
      current = data[0]!
      markers = []
    }
    if (current && inLockedArea(name) && uses(name)) await keepLocked(current)
    let under = 0
    for (const v of data) if (v !== current && !(await vacuum(v))) under++
    // A marker that is not the latest hides nothing; the latest goes once nothing is under it.
    for (const m of markers) await remove(m)
    if (latest.deleteMarker && !current && under === 0) await remove(latest)
  }

  // Names one after the other from the listing; a few at a time, the listing kept ahead by a bounded amount.
  const limit = pLimit(16)
  const running = new Set<Promise<void>>()
  let failure: unknown = null
  let done = 0
  let group: ObjectVersion[] = []
  const start = async (): Promise<void> => {
    const g = group
    group = []
    const p: Promise<void> = limit(() => (failure ? undefined : upkeep(g)))
      .then(() => o.onProgress?.(++done), (err: unknown) => void (failure ??= err))
      .finally(() => running.delete(p))
    running.add(p)
    if (running.size >= 256) await Promise.race(running)
  }
  for await (const v of versions.list('')) {
    if (failure) break
    if (group.length && group[0]!.name !== v.name) await start()
    group.push(v)
  }
  if (group.length && !failure) await start()
  await Promise.all(running)
  if (failure) throw failure instanceof EbsWorkerError ? failure : new EbsWorkerError(ErrorCode.Internal, describe(failure), { cause: failure })
  return out
}

/** The report's lines: what was extended, brought back, deleted, and what must stay locked. */
export function describeLockUpkeep(u: LockUpkeep, dryRun: boolean): string[] {
  const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`
  const lines: string[] = []
  if (u.objectLock) lines.push(`locks: ${u.extended} ${dryRun ? 'to extend' : 'extended'} (${u.checked} read)`)
  for (const name of u.restored) lines.push(`${dryRun ? 'would bring back' : 'brought back'} ${name}: kept backups use it, a delete marker hid it`)
  for (const name of u.overwritten) {
    lines.push(`WRITTEN OVER ${name}: its older versions of other content are kept locked; compare them and put the original back (docs/OPERATIONS.md, "Object Lock")`)
  }
  if (u.deleted.versions || u.deleted.markers) {
    lines.push(`older versions: ${u.deleted.versions} ${dryRun ? 'to delete' : 'deleted'} (${mib(u.deleted.bytes)}), ${u.deleted.markers} delete markers`)
  }
  if (u.left.versions) {
    const when = u.left.firstUntil ? `, locked until ${u.left.firstUntil === u.left.lastUntil ? u.left.firstUntil : `${u.left.firstUntil} to ${u.left.lastUntil}`}` : ''
    lines.push(`left: ${u.left.versions} older versions (${mib(u.left.bytes)})${when}; a later prune deletes them once their locks run out`)
  }
  return lines
}
