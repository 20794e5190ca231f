// Restore and verify: manifest → the repository's verified chunks (repo/chunk-reader.ts:
// coalesced ranged GETs, every chunk decrypted, decompressed and re-hashed against its id) →
// the device. This module decides what to write and where, and when it is durable.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkCount, chunkLength, doneBytes, markDone, newDoneSet } from '../core/geometry.ts'
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

export async function restore(repo: Repository, options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  const { size, chunkSize } = manifest
  const key = options.checkpoint?.key ?? null
  const saved = key ? await loadCheckpoint(repo, key) : null
  const resumed = saved && saved.kind === 'restore' && saved.backupId === manifest.id && saved.size === size &&
    saved.chunkSize === chunkSize && saved.target === options.checkpoint!.target ? saved : null
  // Chunks an earlier attempt wrote and synced before its checkpoint are on the target already.
  const done = resumed?.done ?? newDoneSet(chunkCount(size, chunkSize))
  const { requests, zero } = await repo.planReads(manifest, { maxRequestBytes: options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes, skip: done })
  // An image file may be created; a missing path under /dev is a typo or a device not there yet.
  const device = await openForWrite(options.device, { minSize: size, create: !options.device.startsWith('/dev/') })
  const fresh = options.freshTarget === true || device.created
  const earlier: Record<string, number> = resumed?.stats ?? {}
  const lengthOf = (i: number): number => chunkLength(size, chunkSize, i)
  let bytesDone = doneBytes(done, size, chunkSize)
  let bytesWritten = earlier.bytesWritten ?? 0
  const counters: ReadCounters = { bytesFetched: 0, chunksVerified: 0 }
  const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size })
  const where = { device: options.device, backupId: manifest.id }
  const write = (data: Buffer, offset: number): Promise<void> =>
    writeAt(device.handle, data, offset).catch((err: unknown) => {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot write ${options.device} at offset ${offset}: ${describe(err)}`, { cause: err, context: { ...where, offset } })
    })
  const sync = (): Promise<void> => device.handle.datasync().catch((err: unknown) => {
    throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot flush ${options.device}: ${describe(err)}`, { cause: err, context: where })
  })
  const figures = (): { bytesWritten: number; bytesFetched: number; chunksVerified: number; durationMs: number } => ({
    bytesWritten,
    bytesFetched: (earlier.bytesFetched ?? 0) + counters.bytesFetched,
    chunksVerified: (earlier.chunksVerified ?? 0) + counters.chunksVerified,
    durationMs: (earlier.durationMs ?? 0) + Math.round(performance.now() - started),
  })
  try {
    // A fresh target reads as zeros where the backup has zero chunks: nothing to write there.
    if (fresh) {
      for (const i of zero) {
        markDone(done, i)
        bytesDone += lengthOf(i)
      }
    }
    await underCheckpoints({
      repo, key, intervalMs: options.checkpoint?.intervalMs, signal: options.signal, what: 'restore', lost: 'the next attempt starts afresh',
      // A checkpoint marks done only what is on the device for good: written, then fdatasync'ed.
      settle: sync,
      make: () => ({
        kind: 'restore', target: options.checkpoint!.target, backupId: manifest.id, size, chunkSize, parent: null,
        savedAt: new Date().toISOString(), stats: figures(), done, chunks: Buffer.alloc(0),
      }),
    }, async (gate) => {
      await repo.readChunks(manifest, requests, { concurrency: options.concurrency ?? DEFAULT_TUNING.restoreConcurrency, signal: options.signal, gate, counters }, async (targets, plain) => {
        for (const i of targets) {
          await write(plain, i * chunkSize)
          markDone(done, i)
          bytesWritten += plain.length
          bytesDone += plain.length
        }
        report()
      })
      if (!fresh) {
        const zeros = Buffer.alloc(chunkSize)
        await forEachConcurrent(zero, 8, async (i) => {
          const length = lengthOf(i)
          await write(zeros.subarray(0, length), i * chunkSize)
          markDone(done, i)
          bytesWritten += length
          bytesDone += length
          report()
        }, options.signal)
      }
    })
    // Durable before success is reported: the caller may detach and snapshot the volume next.
    await sync()
    await dropCheckpoint(repo, key)
    report()
    const total = figures()
    return {
      backupId: manifest.id, size, bytesWritten, bytesFetched: total.bytesFetched, chunksVerified: total.chunksVerified,
      zeroChunksSkipped: fresh ? zero.length : 0, requests: requests.length, durationMs: total.durationMs, resumedFrom: resumed?.savedAt ?? null,
    }
  } finally {
    await device.handle.close()
  }
}

/** Proves a backup intact: every chunk it refers to is fetched, decrypted, decompressed and re-hashed. */
export async function verify(repo: Repository, options: FetchOptions & { backupId: string }): Promise<VerifyResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  const { requests, zero } = await repo.planReads(manifest, { maxRequestBytes: options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes })
  let bytesDone = zero.reduce((sum, i) => sum + chunkLength(manifest.size, manifest.chunkSize, i), 0)
  const fetched = await repo.readChunks(manifest, requests, { concurrency: options.concurrency ?? DEFAULT_TUNING.restoreConcurrency, signal: options.signal }, async (targets, plain) => {
    bytesDone += plain.length * targets.length
    options.onProgress?.({ bytesDone, bytesTotal: manifest.size })
  })
  return {
    backupId: manifest.id,
    size: manifest.size,
    bytesFetched: fetched.bytesFetched,
    chunksVerified: fetched.chunksVerified,
    requests: requests.length,
    durationMs: Math.round(performance.now() - started),
  }
}
