// Checkpoints: how far a backup or a restore that has not finished got, so that the next attempt
// of the same task (after SQS's 12-hour visibility cap, a SIGTERM or a crash) does only what is
// left. Encoding and decoding are pure; CheckpointGate picks the quiet moments to save one. A
// checkpoint is written only when every chunk it marks done is durable (a backup's: its pack
// uploaded and indexed; a restore's: written and fdatasync'ed), so trusting it never loses data.
//
// Layout (before the blob codec): u32 header length, the JSON header, a bitmap of done chunks
// (bit i of byte i>>3), then for a backup the chunk ids of the whole volume (zero ids where not
// done); a restore's has no ids.
import { z } from 'zod'
import { ID_BYTES } from '../repo/chunk-index.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { chunkCount, newDoneSet } from '../core/geometry.ts'
import type { Repository } from '../repo/repository.ts'
import { recordObject } from '../repo/layout.ts'

export const CHECKPOINT_VERSION = 1
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 5 * 60 * 1000

const headerSchema = z.strictObject({
  version: z.literal(CHECKPOINT_VERSION),
  kind: z.enum(['backup', 'restore']),
  /** A restore's target: the volume id (or device) it writes, which must be the same to go on. */
  target: z.string().nullable(),
  backupId: z.string(),
  size: z.number().int().nonnegative(),
  chunkSize: z.number().int().positive(),
  parent: z.string().nullable(),
  savedAt: z.string(),
  stats: z.record(z.string(), z.number()),
})

export interface Checkpoint {
  kind: 'backup' | 'restore'
  target: string | null
  /** The backup being made, or being restored. */
  backupId: string
  size: number
  chunkSize: number
  parent: string | null
  savedAt: string
  /** Figures of the attempts so far (added up by the next one). */
  stats: Record<string, number>
  /** One bit per chunk: done. */
  done: Uint8Array
  /** A backup's chunk ids, ID_BYTES each, for the whole volume; empty for a restore. */
  chunks: Buffer
}

export function encodeCheckpoint(c: Checkpoint): Buffer {
  const header = Buffer.from(JSON.stringify({
    version: CHECKPOINT_VERSION, kind: c.kind, target: c.target, backupId: c.backupId, size: c.size, chunkSize: c.chunkSize, parent: c.parent, savedAt: c.savedAt, stats: c.stats,
  }))
  const length = Buffer.alloc(4)
  length.writeUInt32BE(header.length)
  return Buffer.concat([length, header, c.done, c.chunks])
}

export function decodeCheckpoint(buf: Buffer, what: string): Checkpoint {
  const bad = (why: string): EbsWorkerError => new EbsWorkerError(ErrorCode.RepoFormat, `checkpoint ${what} is damaged: ${why}`)
  if (buf.length < 4) throw bad('too short')
  const headerLength = buf.readUInt32BE(0)
  if (4 + headerLength > buf.length) throw bad('truncated header')
  let json: unknown
  try {
    json = JSON.parse(buf.subarray(4, 4 + headerLength).toString('utf8'))
  } catch {
    throw bad('header is not JSON')
  }
  const parsed = headerSchema.safeParse(json)
  if (!parsed.success) throw bad(z.prettifyError(parsed.error))
  const h = parsed.data
  const count = chunkCount(h.size, h.chunkSize)
  const bitmapBytes = newDoneSet(count).length
  const idBytes = h.kind === 'backup' ? count * ID_BYTES : 0
  if (buf.length !== 4 + headerLength + bitmapBytes + idBytes) throw bad('wrong length for its volume size')
  const body = 4 + headerLength
  return {
    kind: h.kind, target: h.target, backupId: h.backupId, size: h.size, chunkSize: h.chunkSize, parent: h.parent, savedAt: h.savedAt,
    stats: h.stats,
    done: new Uint8Array(buf.subarray(body, body + bitmapBytes)),
    chunks: Buffer.from(buf.subarray(body + bitmapBytes)),
  }
}

/**
 * Picks quiet moments for checkpoints: workers call enter() before a unit of work and leave()
 * after it. Once `intervalMs` has passed, the next worker to enter holds the others back, waits
 * until none is working, runs `save`, and lets everyone go on.
 */
export class CheckpointGate {
  readonly #intervalMs: number
  readonly #save: () => Promise<void>
  #inflight = 0
  #gate: Promise<void> | null = null
  readonly #idle: Array<() => void> = []
  #last = performance.now()

  constructor(intervalMs: number, save: () => Promise<void>) {
    this.#intervalMs = intervalMs
    this.#save = save
  }

  async enter(): Promise<void> {
    if (!this.#gate && performance.now() - this.#last >= this.#intervalMs) {
      this.#gate = (async () => {
        while (this.#inflight > 0) await new Promise<void>((resolve) => this.#idle.push(resolve))
        await this.saveNow()
      })().finally(() => {
        this.#gate = null
      })
    }
    while (this.#gate) await this.#gate
    this.#inflight++
  }

  leave(): void {
    if (--this.#inflight === 0) for (const wake of this.#idle.splice(0)) wake()
  }

  /** Saves at once; the caller makes sure no work is in flight (e.g. after an interruption). */
  async saveNow(): Promise<void> {
    await this.#save()
    this.#last = performance.now()
  }
}

// ---- what backup and restore share: where checkpoints live, and running under them ----------

/** The repository object a checkpoint saved under `key` is (tests look at it). */
export function checkpointObjectName(key: string): string {
  return recordObject('checkpoints', key)
}

/** The checkpoint saved under `key`, or null: none, or one that cannot be read (a damaged one is no reason to fail). */
export async function loadCheckpoint(repo: Repository, key: string): Promise<Checkpoint | null> {
  try {
    const data = await repo.loadRecord('checkpoints', key)
    return data ? decodeCheckpoint(data, checkpointObjectName(key)) : null
  } catch {
    return null
  }
}

export interface CheckpointRun {
  repo: Repository
  /** Where the checkpoint is saved; null: no checkpoints. */
  key: string | null
  intervalMs?: number | undefined
  /** Makes the checkpoint to save; called only when no work is in flight, after `settle`. */
  make: () => Checkpoint
  /** Makes everything marked done durable (packs uploaded, the device synced). */
  settle: () => Promise<void>
  /** Waits for work still in flight after a failure (uploads), before the error goes up. */
  drain?: () => Promise<void>
  signal?: AbortSignal | undefined
  /** "backup" or "restore", for the interruption message. */
  what: string
  /** What an interruption without a checkpoint means, said after "interrupted; ". */
  lost: string
}

/**
 * Runs a pipeline's work under checkpoints: every interval the work pauses at a chunk boundary
 * (the gate it is given), what is done is made durable and saved; when interrupted (the signal),
 * a last one is saved once every worker has stopped. Resolves with the work's result; after it
 * the caller records its outcome and then drops the checkpoint (dropCheckpoint).
 */
export async function underCheckpoints<T>(run: CheckpointRun, work: (gate: CheckpointGate | null) => Promise<T>): Promise<T> {
  const save = async (): Promise<void> => {
    await run.settle()
    await run.repo.saveRecord('checkpoints', run.key!, encodeCheckpoint(run.make()))
  }
  const gate = run.key ? new CheckpointGate(run.intervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS, save) : null
  try {
    return await work(gate)
  } catch (err) {
    if (!run.signal?.aborted) {
      await run.drain?.()
      throw err
    }
    // Every worker has stopped: what is marked done is what the next attempt can skip.
    const saved = gate ? await gate.saveNow().then(() => true, () => false) : false
    await run.drain?.()
    throw new EbsWorkerError(ErrorCode.Interrupted,
      `${run.what} interrupted; ${saved ? 'its progress is checkpointed and the next attempt goes on from there' : run.lost}`,
      { cause: err })
  }
}

/** Drops the checkpoint of work that is recorded as done; failing to is harmless (it no longer fits). */
export async function dropCheckpoint(repo: Repository, key: string | null): Promise<void> {
  if (key) await repo.deleteRecord('checkpoints', key).catch(() => {})
}
