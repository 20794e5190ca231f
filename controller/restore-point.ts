// The instance-level restore point: what the controller stores in the repository next to the
// volume backups, so that an instance can be rebuilt from them (docs/CONTROLLER.md, "Restore
// points"). One JSON object per restore point at restore-points/<instance id>/<id>.json under the
// repository's root, on the repository's own storage (agent/storage/), written once, after every
// volume's backup exists. It holds metadata only (no volume data), in clear, so any controller
// can read it without the repository key. Keyed by instance, so that finding an instance's latest
// restore point reads that instance's only. Restore points written before that, at
// restore-points/<id>.json, still load and list.
import { TIMESTAMPED, timestampedId } from '../agent/core/ids.ts'
import { z } from 'zod'
import { CONFIG, manifestObject } from '../agent/core/backup-names.ts'
import { EbsWorkerError, ErrorCode, withContext } from '../agent/core/errors.ts'
import { openBackend } from '../agent/storage/open.ts'
import { AlreadyExistsError, type Backend } from '../agent/storage/types.ts'
import { ownClients } from './aws.ts'

export const RESTORE_POINT_VERSION = 1
const ID = new RegExp(`^rp-${TIMESTAMPED}$`)

export const restorePointSchema = z.strictObject({
  format: z.literal('ebs-worker-restore-point'),
  version: z.literal(RESTORE_POINT_VERSION),
  id: z.string().regex(ID),
  createdAt: z.iso.datetime(),
  instance: z.strictObject({
    instanceId: z.string(),
    accountId: z.string(),
    region: z.string(),
    availabilityZone: z.string(),
    instanceType: z.string(),
    imageId: z.string(),
    architecture: z.string().optional(),
    rootDeviceName: z.string(),
    tags: z.record(z.string(), z.string()),
  }),
  /** In the instance's block device order (root first when it was). */
  volumes: z.array(z.strictObject({
    deviceName: z.string(),
    volumeId: z.string(),
    sizeGiB: z.number().int().positive(),
    volumeType: z.string(),
    iops: z.number().int().optional(),
    throughput: z.number().int().optional(),
    encrypted: z.boolean(),
    kmsKeyId: z.string().optional(),
    deleteOnTermination: z.boolean(),
    snapshotId: z.string(),
    backupId: z.string(),
  })).min(1),
  /** How the data left the account: the worker account, and a re-encryption key if one was used. */
  worker: z.strictObject({ accountId: z.string(), reencryptedWith: z.string().optional() }),
})
export type RestorePoint = z.infer<typeof restorePointSchema>

export function newRestorePointId(now = new Date()): string {
  return timestampedId('rp', now)
}

/** The folder of restore points under the repository's root. */
const DIR = 'restore-points/'
/** An EC2 instance id, as it names the folder of its restore points. */
const INSTANCE_ID = /^i-[0-9a-f]{8,17}$/

/** Whether `id` is an EC2 instance id (i-0123456789abcdef0). */
export function isInstanceId(id: string): boolean {
  return INSTANCE_ID.test(id)
}

/** A restore point as listed: its id, its instance (unknown for the old layout) and its object. */
export interface RestorePointEntry {
  id: string
  /** Null for a restore point of the old layout (restore-points/<id>.json), whose name does not say. */
  instanceId: string | null
  object: string
}

/** Reads and writes restore points under a repository URL (file:// or s3://, as the agent names them), or on a Backend. */
export class RestorePointStore {
  readonly #backend: Backend

  constructor(repo: string | Backend) {
    if (typeof repo === 'string' && !/^(s3|file):\/\//.test(repo)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `a repository URL is s3://bucket/prefix or file:///path, not ${repo}`)
    }
    this.#backend = typeof repo === 'string' ? openBackend(repo, { aws: ownClients() }) : repo
  }

  /** Refuses a place that holds no repository (no config object): REPO_NOT_FOUND, rather than no restore points. */
  async assertRepository(): Promise<void> {
    let config: Buffer | null
    try {
      config = await this.#backend.get(CONFIG)
    } catch (err) {
      throw this.#failed(err, {})
    }
    if (!config) throw new EbsWorkerError(ErrorCode.RepoNotFound, `no ebs-worker repository at ${this.#backend.url} (create one with "ebs-worker init")`, { context: { repository: this.#backend.url } })
  }

  /** Writes a restore point once (never overwritten): restore-points/<instance id>/<id>.json. */
  async save(rp: RestorePoint): Promise<void> {
    const body = JSON.stringify(restorePointSchema.parse(rp), null, 2) + '\n'
    const object = `${folderOf(rp.instance.instanceId)}${rp.id}.json`
    try {
      await this.#backend.put(object, Buffer.from(body), { ifAbsent: true })
    } catch (err) {
      if (err instanceof AlreadyExistsError) {
        throw new EbsWorkerError(ErrorCode.Storage, `restore point ${rp.id} already exists in ${this.#backend.url}: restore points are written once`,
          { context: { restorePointId: rp.id, object, repository: this.#backend.url } })
      }
      throw this.#failed(err, { restorePointId: rp.id, object })
    }
  }

  /** A restore point by id, wherever it is (either layout): found by listing, then read alone. */
  async load(id: string): Promise<RestorePoint> {
    if (!ID.test(id)) throw new EbsWorkerError(ErrorCode.BadInput, `${id} is not a restore point id (rp-20261123T071200Z-1a2b3c4d)`)
    const found = (await this.entries()).filter((e) => e.id === id)
    // Should both layouts hold it, the instance's folder wins.
    const entry = found.find((e) => e.instanceId !== null) ?? found[0]
    if (!entry) throw this.#notFound(id)
    return this.#read(entry)
  }

  /** The ids of every restore point, oldest first. */
  async list(): Promise<string[]> {
    return (await this.entries()).map((e) => e.id)
  }

  /** Every restore point (or those of one instance's folder), oldest first; nothing is read but the listing. */
  async entries(instanceId?: string): Promise<RestorePointEntry[]> {
    const prefix = instanceId === undefined ? DIR : folderOf(instanceId)
    const out: RestorePointEntry[] = []
    try {
      for await (const o of this.#backend.list(prefix)) {
        const parts = o.name.slice(DIR.length).split('/')
        const file = parts.at(-1)!
        const id = file.endsWith('.json') ? file.slice(0, -5) : ''
        if (!ID.test(id) || parts.length > 2) continue
        out.push({ id, instanceId: parts.length === 2 ? parts[0]! : null, object: o.name })
      }
    } catch (err) {
      throw this.#failed(err, {})
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }

  /**
   * The latest restore point of an instance, or null: its folder is listed and only the newest
   * one read. An instance without a restore point of this layout falls back to the old one's,
   * read newest first until one of the instance's (once: its next restore point is in its folder).
   */
  async latestOf(instanceId: string): Promise<RestorePoint | null> {
    const own = await this.entries(instanceId)
    if (own.length) return this.#read(own.at(-1)!)
    for (const e of (await this.entries()).filter((x) => x.instanceId === null).reverse()) {
      const rp = await this.#read(e)
      if (rp.instance.instanceId === instanceId) return rp
    }
    return null
  }

  /** The restore point an entry of entries() names. */
  read(e: RestorePointEntry): Promise<RestorePoint> {
    return this.#read(e)
  }

  /**
   * Forgets a restore point: first each of `backups` (their manifests; the data goes at the
   * workers' next prune), then the restore point's objects (`objects`: it may be in both
   * layouts), last. Cut short, it leaves the restore point, which a forget run again finishes.
   */
  async forget(id: string, objects: readonly string[], backups: readonly string[]): Promise<void> {
    for (const object of [...backups.map(manifestObject), ...objects]) {
      try {
        await this.#backend.delete(object)
      } catch (err) {
        throw this.#failed(err, { restorePointId: id, object })
      }
    }
  }

  async #read(e: RestorePointEntry): Promise<RestorePoint> {
    let data: Buffer | null
    try {
      data = await this.#backend.get(e.object)
    } catch (err) {
      throw this.#failed(err, { restorePointId: e.id, object: e.object })
    }
    if (!data) throw this.#notFound(e.id)
    let parsed
    try {
      parsed = restorePointSchema.safeParse(JSON.parse(data.toString('utf8')))
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.Storage, `restore point ${e.id} in ${this.#backend.url} is not JSON: ${(err as Error).message}`, { context: { restorePointId: e.id, object: e.object } })
    }
    if (!parsed.success) {
      throw new EbsWorkerError(ErrorCode.Storage, `restore point ${e.id} in ${this.#backend.url} is not valid: ${z.prettifyError(parsed.error)}`, { context: { restorePointId: e.id, object: e.object } })
    }
    return parsed.data
  }

  #notFound(id: string): EbsWorkerError {
    return new EbsWorkerError(ErrorCode.RestorePointNotFound, `restore point ${id} does not exist in ${this.#backend.url}`, { context: { restorePointId: id, repository: this.#backend.url } })
  }

  /** A storage failure (already ours, from agent/storage) with where it happened. */
  #failed(err: unknown, context: { restorePointId?: string; object?: string }): EbsWorkerError {
    return withContext(err, { ...context, repository: this.#backend.url }, ErrorCode.Storage)
  }
}

/** restore-points/<instance id>/: an instance's folder (an id that could name another path is refused). */
function folderOf(instanceId: string): string {
  if (!isInstanceId(instanceId)) throw new EbsWorkerError(ErrorCode.BadInput, `${instanceId} is not an EC2 instance id (i-0123456789abcdef0)`)
  return `${DIR}${instanceId}/`
}
