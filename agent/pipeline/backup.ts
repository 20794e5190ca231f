// Backup: device → chunks → the repository's BackupWriter (zero? known? else zstd + AES-GCM into
// packs) → the manifest. This module decides what to read and reads it; the writer does the rest.
// Many positional reads are in flight at once (volumes restored from snapshots are hydrated
// lazily and only deliver throughput at high queue depth); packs upload in parallel.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkLength, type ByteRange } from '../core/geometry.ts'
import { chunksToRead, chunksWritten } from '../core/plan.ts'
import { openForRead, readAt } from '../device/block-device.ts'
import type { BackupStats, Manifest } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'
import { dropCheckpoint, loadCheckpoint, underCheckpoints } from './checkpoint.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'

export interface BackupOptions {
  device: string
  /** Backup id of a previous backup of the same volume. */
  parent?: string
  /** With a parent: only these byte ranges changed since it; the rest is the parent's. */
  changedRanges?: Iterable<ByteRange>
  /** Only these byte ranges were ever written; the rest reads as zeros and is not read. */
  writtenRanges?: Iterable<ByteRange>
  source?: { volumeId?: string; snapshotId?: string }
  tags?: Record<string, string>
  /** Chunk reads in flight. */
  readConcurrency?: number
  /** Packs uploading at once. */
  uploadConcurrency?: number
  packSize?: number
  /**
   * Go on from the checkpoint saved under this key, if it fits, and save one every `intervalMs`
   * and when interrupted (the daemon uses the task id).
   */
  checkpoint?: { key: string; intervalMs?: number }
  /**
   * Called once the backup exists (its manifest written) and before its checkpoint is dropped:
   * a retry after a crash in between finds one or the other (the daemon records the task here).
   */
  onCommitted?: (manifest: Manifest) => Promise<void>
  onProgress?: (progress: BackupProgress) => void
  signal?: AbortSignal
}

export interface BackupProgress {
  /** Bytes of the volume accounted for (read, or taken from the parent). */
  bytesDone: number
  bytesTotal: number
  bytesStored: number
}

export interface BackupResult {
  id: string
  size: number
  chunkSize: number
  parent: string | null
  checksum: string
  stats: BackupStats
  /** When it went on from an earlier attempt's checkpoint: when that was saved. */
  resumedFrom: string | null
}

export async function backup(repo: Repository, options: BackupOptions): Promise<BackupResult> {
  const started = performance.now()
  const chunkSize = repo.chunkSize
  if (options.changedRanges && !options.parent) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'changed ranges need a parent backup to take the unchanged chunks from')
  }
  if (options.writtenRanges && options.changedRanges) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'give changed ranges (against the parent) or written ranges (against zeros), not both')
  }
  const parent = options.parent ? await repo.loadManifest(options.parent) : null
  const device = await openForRead(options.device)
  try {
    const size = device.size
    const toRead = options.writtenRanges
      ? chunksWritten(size, chunkSize, options.writtenRanges)
      : chunksToRead(size, chunkSize, parent, options.changedRanges ?? null)
    const key = options.checkpoint?.key ?? null
    const saved = key ? await loadCheckpoint(repo, key) : null
    const writer = await repo.startBackup({
      size, parent, packSize: options.packSize ?? DEFAULT_TUNING.packSize, uploadConcurrency: options.uploadConcurrency ?? DEFAULT_TUNING.uploadConcurrency,
      resume: saved?.kind === 'backup' ? { ...saved, stats: saved.stats as BackupStats } : null,
    })
    const resumedFrom = writer.resumed && saved ? saved.savedAt : null
    const earlierMs = writer.resumed?.stats.durationMs ?? 0
    const elapsed = (): number => earlierMs + Math.round(performance.now() - started)
    let bytesDone = writer.bytesDone
    const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size, bytesStored: writer.bytesStored })

    // Chunks not to read: the parent's (unchanged) or, with written ranges, zeros never written.
    for (let i = 0; i < toRead.length; i++) {
      const offset = i * chunkSize
      if (toRead[i] || writer.isDone(offset)) continue
      if (!parent || options.writtenRanges) writer.zero(offset)
      else writer.fromParent(offset)
      bytesDone += chunkLength(size, chunkSize, i)
    }

    const offsets = function* (): Generator<number> {
      for (let i = 0; i < toRead.length; i++) if (toRead[i] && !writer.isDone(i * chunkSize)) yield i * chunkSize
    }
    await underCheckpoints({
      repo, key, intervalMs: options.checkpoint?.intervalMs, signal: options.signal, what: 'backup', lost: 'nothing was recorded',
      // A checkpoint marks done only chunks whose packs are uploaded and indexed.
      settle: () => writer.flush(),
      make: () => ({ kind: 'backup', target: null, savedAt: new Date().toISOString(), ...writer.state(elapsed()) }),
      drain: () => writer.abandon(),
    }, async (gate) => {
      // Read buffers are reused: one per reader, so memory does not depend on the volume size.
      const buffers: Buffer[] = []
      await forEachConcurrent(offsets(), options.readConcurrency ?? DEFAULT_TUNING.readConcurrency, async (offset) => {
        await gate?.enter()
        const length = chunkLength(size, chunkSize, offset / chunkSize)
        const whole = buffers.pop() ?? Buffer.allocUnsafeSlow(chunkSize)
        try {
          const buf = whole.subarray(0, length)
          const got = await readAt(device.handle, buf, offset).catch((err: unknown) => {
            throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot read ${options.device} at offset ${offset}: ${describe(err)}`,
              { cause: err, context: { device: options.device, offset } })
          })
          if (got !== length) {
            throw new EbsWorkerError(ErrorCode.DeviceUnusable, `short read from ${options.device} at offset ${offset + got}: the device shrank?`,
              { context: { device: options.device, offset: offset + got } })
          }
          await writer.saveChunk(offset, buf)
          bytesDone += length
          report()
        } finally {
          buffers.push(whole)
          gate?.leave()
        }
      }, options.signal)
    })
    const manifest = await writer.commit({ source: { device: options.device, ...options.source }, tags: options.tags ?? {}, durationMs: elapsed() })
    await options.onCommitted?.(manifest)
    await dropCheckpoint(repo, key)
    report()
    return { id: manifest.id, size, chunkSize, parent: manifest.parent, checksum: manifest.checksum, stats: manifest.stats, resumedFrom }
  } finally {
    await device.handle.close()
  }
}

