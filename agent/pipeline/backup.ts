// Backup: device → chunks → the repository's BackupWriter (zero? the parent's? known? else zstd +
// AES-GCM into packs) → the chunk list → the manifest. This module decides what to read and
// reads it; the writer does the rest. The plan is a stream of stretches (core/plan.ts): what may
// differ is read, with many positional reads in flight (volumes restored from snapshots are
// hydrated lazily and only deliver throughput at high queue depth); what is unchanged or was
// never written is declared, not read. Nothing here grows with the volume's size.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkLength, type ByteRange } from '../core/geometry.ts'
import { planStretches, type PlanInput } from '../core/plan.ts'
import { openForRead, readAt } from '../device/block-device.ts'
import { dataExtents } from '../device/extents.ts'
import type { BackupStats, ManifestV2 } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'
import { sharedBuffer } from '../repo/codec.ts'
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
  /** The backup's time, when not now (imports, tests): its createdAt and its id's timestamp. */
  time?: Date
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
  onCommitted?: (manifest: ManifestV2) => Promise<void>
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
  /** The backup's time, as its manifest says. */
  createdAt: string
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
  if (parent && parent.version !== 2) {
    throw new EbsWorkerError(ErrorCode.BackupIncompatible, `parent backup ${parent.id} is of manifest version ${parent.version}: migrate the repository first`)
  }
  const device = await openForRead(options.device)
  try {
    const size = device.size
    const plan = await planOf(options, parent, size, chunkSize, device.kind === 'file' ? device.realPath : null)
    const key = options.checkpoint?.key ?? null
    const saved = key ? await loadCheckpoint(repo, key) : null
    const writer = await repo.startBackup({
      size, parent, packSize: options.packSize ?? DEFAULT_TUNING.packSize, uploadConcurrency: options.uploadConcurrency ?? DEFAULT_TUNING.uploadConcurrency,
      resume: saved?.kind === 'backup' ? saved.writer : null, time: options.time ?? null,
    })
    const resumedFrom = writer.resumed && saved ? saved.savedAt : null
    const earlierMs = writer.resumed?.stats.durationMs ?? 0
    const elapsed = (): number => earlierMs + Math.round(performance.now() - started)
    const lengthOf = (from: number, to: number): number => Math.max(0, Math.min(size, to * chunkSize) - from * chunkSize)
    let bytesDone = writer.bytesDone
    const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size, bytesStored: writer.bytesStored })

    // The chunks to read, in order; what is not read is declared to the writer on the way.
    const resumeAt = writer.resumeAt
    const offsets = function* (): Generator<number> {
      for (const s of planStretches(plan)) {
        if (s.to <= resumeAt) continue
        const stretch = { ...s, from: Math.max(s.from, resumeAt) }
        writer.declare(stretch)
        if (stretch.kind !== 'read') {
          bytesDone += lengthOf(stretch.from, stretch.to)
          continue
        }
        for (let i = stretch.from; i < stretch.to; i++) yield i * chunkSize
      }
    }
    await underCheckpoints({
      repo, key, intervalMs: options.checkpoint?.intervalMs, signal: options.signal, what: 'backup', lost: 'nothing was recorded',
      // A checkpoint marks done only chunks whose packs are uploaded and indexed.
      settle: () => writer.flush(),
      make: () => ({ kind: 'backup', savedAt: new Date().toISOString(), writer: writer.state(elapsed()) }),
      drain: () => writer.abandon(),
    }, async (gate) => {
      // Read buffers are reused: one per reader, so memory does not depend on the volume size.
      // They are shared with the codec threads, which hash and encode each chunk where it was read.
      const buffers: Buffer[] = []
      await forEachConcurrent(offsets(), options.readConcurrency ?? DEFAULT_TUNING.readConcurrency, async (offset) => {
        await gate?.enter()
        const length = chunkLength(size, chunkSize, offset / chunkSize)
        const whole = buffers.pop() ?? sharedBuffer(chunkSize)
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
    bytesDone = size
    report()
    return { id: manifest.id, createdAt: manifest.createdAt, size, chunkSize, parent: manifest.parent, checksum: manifest.checksum, stats: manifest.stats, resumedFrom }
  } finally {
    await device.handle.close()
  }
}

/** What the backup reads: changed ranges (against the parent), written ranges, an image file's data, or all. */
async function planOf(options: BackupOptions, parent: ManifestV2 | null, size: number, chunkSize: number, file: string | null): Promise<PlanInput> {
  if (options.changedRanges) return { size, chunkSize, marked: options.changedRanges, otherwise: 'parent', parent, what: 'changed' }
  if (options.writtenRanges) return { size, chunkSize, marked: options.writtenRanges, otherwise: 'zero', what: 'written' }
  // An image file's holes read as zeros: only its data is read (SEEK_DATA/SEEK_HOLE).
  const extents = file ? await dataExtents(file) : null
  if (extents) return { size, chunkSize, marked: extents, otherwise: 'zero', what: 'data' }
  return { size, chunkSize }
}
