// Checkpoints: how far a backup or a restore that has not finished got, so that the next attempt
// of the same task (after SQS's 12-hour visibility cap, a SIGTERM or a crash) does only what is
// left. Encoding and decoding are pure; CheckpointGate picks the quiet moments to save one. A
// checkpoint is written only when everything it counts as done is durable (a backup's: its packs
// uploaded and indexed; a restore's: written and fdatasync'ed), so trusting it never loses data.
//
// Version 2, one JSON document, a few KiB whatever the volume's size: a backup's holds the
// writer's state (the chunk list's open leaf and the open node of each level, repo/backup-writer.ts);
// a restore's, the window it is in and which of that window's chunks are written. (Version 1
// checkpoints held a bit and an id per chunk of the volume; they are no longer used: a task
// resumed across the upgrade starts afresh.)
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { log } from '../core/log.ts'
import type { WriterState } from '../repo/backup-writer.ts'
import type { Repository } from '../repo/repository.ts'
import { recordObject } from '../repo/layout.ts'
import { decodeRef, encodeRef, type BlobRef } from '../repo/tree.ts'

export const CHECKPOINT_VERSION = 2
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 5 * 60 * 1000

export interface BackupCheckpoint {
  kind: 'backup'
  savedAt: string
  writer: WriterState
}

export interface RestoreCheckpoint {
  kind: 'restore'
  savedAt: string
  /** The target (the volume id, or device) it writes: the same one to go on. */
  target: string
  backupId: string
  size: number
  chunkSize: number
  /** The first chunk of the window it was in: every chunk before is written and synced. */
  from: number
  /** Chunks of that window (from `from`) written and synced. */
  done: number[]
  /** Figures of the attempts so far (added up by the next one). */
  stats: Record<string, number>
}

export type Checkpoint = BackupCheckpoint | RestoreCheckpoint

const ref = z.string()
const statsSchema = z.record(z.string(), z.number())
const checkpointSchema = z.discriminatedUnion('kind', [
  z.strictObject({
    version: z.literal(CHECKPOINT_VERSION),
    kind: z.literal('backup'),
    savedAt: z.string(),
    writer: z.strictObject({
      backupId: z.string(),
      size: z.number().int().nonnegative(),
      chunkSize: z.number().int().positive(),
      parent: z.string().nullable(),
      leafChunks: z.number().int().positive(),
      fanout: z.number().int().min(2),
      cursor: z.number().int().nonnegative(),
      leaf: z.array(ref),
      builder: z.strictObject({ leaves: z.number().int().nonnegative(), pending: z.array(z.array(ref)) }),
      stats: statsSchema,
    }),
  }),
  z.strictObject({
    version: z.literal(CHECKPOINT_VERSION),
    kind: z.literal('restore'),
    savedAt: z.string(),
    target: z.string(),
    backupId: z.string(),
    size: z.number().int().nonnegative(),
    chunkSize: z.number().int().positive(),
    from: z.number().int().nonnegative(),
    done: z.array(z.number().int().nonnegative()),
    stats: statsSchema,
  }),
])

const refs = (list: readonly BlobRef[]): string[] => list.map(encodeRef)

export function encodeCheckpoint(c: Checkpoint): Buffer {
  const doc = c.kind === 'backup'
    ? { version: CHECKPOINT_VERSION, ...c, writer: { ...c.writer, leaf: refs(c.writer.leaf), builder: { leaves: c.writer.builder.leaves, pending: c.writer.builder.pending.map(refs) } } }
    : { version: CHECKPOINT_VERSION, ...c }
  return Buffer.from(JSON.stringify(doc))
}

export function decodeCheckpoint(buf: Buffer, what: string): Checkpoint {
  const bad = (why: string): EbsWorkerError => new EbsWorkerError(ErrorCode.RepoFormat, `checkpoint ${what} is damaged: ${why}`)
  let json: unknown
  try {
    json = JSON.parse(buf.toString('utf8'))
  } catch {
    throw bad('not JSON')
  }
  const parsed = checkpointSchema.safeParse(json)
  if (!parsed.success) throw bad(z.prettifyError(parsed.error))
  const c = parsed.data
  try {
    if (c.kind === 'restore') {
      const { version: _v, ...rest } = c
      return rest
    }
    const w = c.writer
    return {
      kind: 'backup', savedAt: c.savedAt,
      writer: {
        ...w, stats: w.stats as WriterState['stats'], leaf: w.leaf.map(decodeRef),
        builder: { leaves: w.builder.leaves, pending: w.builder.pending.map((level) => level.map(decodeRef)) },
      },
    }
  } catch (err) {
    throw bad((err as Error).message)
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
  } catch (err) {
    log.warn({ checkpoint: checkpointObjectName(key), error: err }, 'cannot read the checkpoint; the work starts afresh')
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
    const saved = gate
      ? await gate.saveNow().then(() => true, (saveErr: unknown) => {
        log.warn({ checkpoint: checkpointObjectName(run.key!), error: saveErr }, `cannot save the checkpoint of the interrupted ${run.what}; ${run.lost}`)
        return false
      })
      : false
    await run.drain?.()
    throw new EbsWorkerError(ErrorCode.Interrupted,
      `${run.what} interrupted; ${saved ? 'its progress is checkpointed and the next attempt goes on from there' : run.lost}`,
      { cause: err })
  }
}

/** Drops the checkpoint of work that is recorded as done; failing to is harmless (it no longer fits). */
export async function dropCheckpoint(repo: Repository, key: string | null): Promise<void> {
  if (key) {
    await repo.deleteRecord('checkpoints', key).catch((err: unknown) =>
      log.warn({ checkpoint: checkpointObjectName(key), error: err }, 'cannot drop the checkpoint of finished work; it is left over, and harmless'))
  }
}
