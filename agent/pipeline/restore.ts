// Restore and verify: manifest → the repository's verified chunks (repo/chunk-reader.ts:
// coalesced ranged GETs, every chunk decrypted, decompressed and re-hashed against its id) →
// the device. This module decides what to write and where, and when it is durable.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkLength } from '../core/geometry.ts'
import { openForWrite, writeAt } from '../device/block-device.ts'
import type { ReadCounters } from '../repo/chunk-reader.ts'
import type { Repository } from '../repo/repository.ts'
import { dropCheckpoint, loadCheckpoint, underCheckpoints } from './checkpoint.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'

export interface FetchOptions {
  /** Ranged GETs in flight. */
  concurrency?: number
  /** Upper bound of one coalesced GET. */
  maxRequestBytes?: number
  onProgress?: (progress: RestoreProgress) => void
  signal?: AbortSignal
}

export interface RestoreOptions extends FetchOptions {
  backupId: string
  device: string
  /**
   * The target is known to read as zeros (a new, empty EBS volume): zero chunks are skipped.
   * Otherwise they are written, since the device may hold old data.
   */
  freshTarget?: boolean
  /**
   * Go on from the checkpoint saved under `key` if it is of this backup onto this `target` (the
   * volume id), and save one every `intervalMs` and when interrupted (the daemon uses the task id).
   */
  checkpoint?: { key: string; target: string; intervalMs?: number }
}

export interface RestoreProgress {
  bytesDone: number
  bytesTotal: number
}

export interface RestoreResult {
  backupId: string
  size: number
  bytesWritten: number
  bytesFetched: number
  /** When it went on from an earlier attempt's checkpoint: when that was saved. */
  resumedFrom: string | null
  chunksVerified: number
  zeroChunksSkipped: number
  requests: number
  durationMs: number
}

export type VerifyResult = Omit<RestoreResult, 'bytesWritten' | 'zeroChunksSkipped' | 'resumedFrom'>

/** Written bytes between two background flushes of the target. */
const FLUSH_EVERY = 64 * 1024 * 1024

export async function restore(repo: Repository, options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  const { size, chunkSize } = manifest
  const key = options.checkpoint?.key ?? null
  const saved = key ? await loadCheckpoint(repo, key) : null
  const resumed = saved && saved.kind === 'restore' && saved.backupId === manifest.id && saved.size === size &&
    saved.chunkSize === chunkSize && saved.target === options.checkpoint!.target ? saved : null
  // An image file may be created; a missing path under /dev is a typo or a device not there yet.
  const device = await openForWrite(options.device, { minSize: size, create: !options.device.startsWith('/dev/') })
  const fresh = options.freshTarget === true || device.created
  const earlier: Record<string, number> = resumed?.stats ?? {}
  // Where the chunks before it and, in its window, these ones, are on the target for good.
  let from = resumed?.from ?? 0
  let windowDone = new Set<number>(resumed?.done ?? [])
  let bytesDone = Math.min(size, from * chunkSize) + [...windowDone].reduce((n, i) => n + chunkLength(size, chunkSize, i), 0)
  let bytesWritten = earlier.bytesWritten ?? 0
  let zeroChunksSkipped = 0
  const counters: ReadCounters = { bytesFetched: 0, chunksVerified: 0, requests: 0 }
  const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size })
  const where = { device: options.device, backupId: manifest.id }
  const sync = (): Promise<void> => device.handle.datasync().catch((err: unknown) => {
    throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot flush ${options.device}: ${describe(err)}`, { cause: err, context: where })
  })
  // What is written is flushed as the restore goes, one fdatasync at a time in the background:
  // the device's writeback then overlaps the download instead of following it (the kernel would
  // start on its own only past its dirty threshold, gigabytes on a large instance), and the last
  // flush, before success is reported, finds little left.
  let unflushed = 0
  let flushing: Promise<void> | null = null
  let flushFailure: unknown = null
  const flushSoon = (bytes: number): void => {
    unflushed += bytes
    if (unflushed < FLUSH_EVERY || flushing) return
    unflushed = 0
    flushing = sync().catch((err: unknown) => {
      flushFailure ??= err
    }).finally(() => {
      flushing = null
    })
  }
  const write = async (data: Buffer, offset: number): Promise<void> => {
    if (flushFailure) throw flushFailure
    await writeAt(device.handle, data, offset).catch((err: unknown) => {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot write ${options.device} at offset ${offset}: ${describe(err)}`, { cause: err, context: { ...where, offset } })
    })
    flushSoon(data.length)
  }
  const figures = (): { bytesWritten: number; bytesFetched: number; chunksVerified: number; requests: number; durationMs: number } => ({
    bytesWritten,
    bytesFetched: (earlier.bytesFetched ?? 0) + counters.bytesFetched,
    chunksVerified: (earlier.chunksVerified ?? 0) + counters.chunksVerified,
    requests: (earlier.requests ?? 0) + counters.requests,
    durationMs: (earlier.durationMs ?? 0) + Math.round(performance.now() - started),
  })
  const done = (i: number, length: number): void => {
    windowDone.add(i)
    bytesDone += length
  }
  const skipped = new Set(windowDone)
  const resumeFrom = from
  try {
    await underCheckpoints({
      repo, key, intervalMs: options.checkpoint?.intervalMs, signal: options.signal, what: 'restore', lost: 'the next attempt starts afresh',
      // A checkpoint marks done only what is on the device for good: written, then fdatasync'ed.
      settle: sync,
      make: () => ({
        kind: 'restore', target: options.checkpoint!.target, backupId: manifest.id, size, chunkSize,
        savedAt: new Date().toISOString(), stats: figures(), from, done: [...windowDone],
      }),
    }, async (gate) => {
      const zeros = Buffer.alloc(chunkSize)
      await repo.readChunks(manifest, {
        concurrency: options.concurrency ?? DEFAULT_TUNING.restoreConcurrency, maxRequestBytes: options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes,
        from: resumeFrom, skip: (i) => i < resumeFrom || skipped.has(i), signal: options.signal, gate, counters,
      }, {
        async begin(first, end, zero) {
          from = first
          if (first > resumeFrom) windowDone = new Set()
          // A fresh target reads as zeros where the backup has zero chunks: nothing to write there.
          if (fresh) {
            for (const [a, b] of zero) {
              zeroChunksSkipped += b - a
              // A window of zeros only is done as a whole when it ends; a run in a window, chunk by chunk.
              if (a === first && b === end) bytesDone += Math.min(size, b * chunkSize) - a * chunkSize
              else for (let i = a; i < b; i++) done(i, chunkLength(size, chunkSize, i))
            }
            return
          }
          const chunks = function* (): Generator<number> {
            for (const [a, b] of zero) for (let i = a; i < b; i++) yield i
          }
          await forEachConcurrent(chunks(), 8, async (i) => {
            const length = chunkLength(size, chunkSize, i)
            await write(zeros.subarray(0, length), i * chunkSize)
            bytesWritten += length
            done(i, length)
          }, options.signal)
          report()
        },
        async end(_first, end) {
          // Every chunk before `end` is written (or a zero on a fresh target): a checkpoint starts there.
          from = end
          windowDone = new Set()
          report()
        },
        async chunk(targets, plain) {
          for (const i of targets) {
            await write(plain, i * chunkSize)
            bytesWritten += plain.length
            done(i, plain.length)
          }
          report()
        },
      })
    })
    // Durable before success is reported: the caller may detach and snapshot the volume next.
    await flushing
    if (flushFailure) throw flushFailure
    await sync()
    await dropCheckpoint(repo, key)
    bytesDone = size
    report()
    const total = figures()
    return {
      backupId: manifest.id, size, bytesWritten, bytesFetched: total.bytesFetched, chunksVerified: total.chunksVerified,
      zeroChunksSkipped, requests: total.requests, durationMs: total.durationMs, resumedFrom: resumed?.savedAt ?? null,
    }
  } finally {
    await flushing // (never rejects: its failure is kept in flushFailure)
    await device.handle.close()
  }
}

/** Proves a backup intact: every chunk it refers to is fetched, decrypted, decompressed and re-hashed. */
export async function verify(repo: Repository, options: FetchOptions & { backupId: string }): Promise<VerifyResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  let bytesDone = 0
  const fetched = await repo.readChunks(manifest, {
    concurrency: options.concurrency ?? DEFAULT_TUNING.restoreConcurrency, maxRequestBytes: options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes, signal: options.signal,
  }, {
    async begin(_first, _end, zero) {
      for (const [a, b] of zero) bytesDone += Math.min(manifest.size, b * manifest.chunkSize) - a * manifest.chunkSize
    },
    async chunk(targets, plain) {
      bytesDone += plain.length * targets.length
      options.onProgress?.({ bytesDone, bytesTotal: manifest.size })
    },
  })
  return {
    backupId: manifest.id,
    size: manifest.size,
    bytesFetched: fetched.bytesFetched,
    chunksVerified: fetched.chunksVerified,
    requests: fetched.requests,
    durationMs: Math.round(performance.now() - started),
  }
}
