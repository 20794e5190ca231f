// Backup: device → chunks → (zero? known?) → zstd + AES-GCM → packs → repository, then the
// manifest. Many positional reads are in flight at once (volumes restored from snapshots are
// hydrated lazily and only deliver throughput at high queue depth); packs upload in parallel.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { ID_BYTES, type ChunkIndex } from '../repo/chunk-index.ts'
import { CheckpointGate, DEFAULT_CHECKPOINT_INTERVAL_MS, type Checkpoint } from './checkpoint.ts'
import { chunkCount, chunkLength, doneBytes, isDone, markDone, newDoneSet } from '../core/geometry.ts'
import { openForRead, readAt } from '../device/block-device.ts'
import {
  backupChecksum,
  chunkIdAt,
  newBackupId,
  ZERO_ID,
  type BackupStats,
  type Manifest,
} from '../repo/manifest.ts'
import { PackWriter } from '../repo/pack-writer.ts'
import { chunksToRead, chunksWritten } from '../core/plan.ts'
import type { ByteRange } from '../core/geometry.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import type { Repository } from '../repo/repository.ts'
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
   * and when interrupted; once done, record the backup under the key (the daemon uses the task
   * id: Repository.findTaskBackup finds it again).
   */
  checkpoint?: { key: string; intervalMs?: number }
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

/** The checkpoint under `key` if it belongs to this backup (same volume size, chunking, parent) and its chunks are all indexed. */
async function usableCheckpoint(
  repo: Repository,
  key: string,
  expect: { size: number; chunkSize: number; parent: string | null },
  index: ChunkIndex,
): Promise<Checkpoint | null> {
  const c = await repo.loadCheckpoint(key).catch(() => null)
  if (!c || c.kind !== 'backup' || c.size !== expect.size || c.chunkSize !== expect.chunkSize || c.parent !== expect.parent) return null
  for (let i = 0; i < chunkCount(c.size, c.chunkSize); i++) {
    if (!isDone(c.done, i)) continue
    const id = chunkIdAt(c.chunks, i)
    if (!id.equals(ZERO_ID) && !index.has(id)) return null
  }
  return c
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
    const count = chunkCount(size, chunkSize)
    const toRead = options.writtenRanges
      ? chunksWritten(size, chunkSize, options.writtenRanges)
      : chunksToRead(size, chunkSize, parent, options.changedRanges ?? null)
    const index = await repo.loadIndex()
    const checkpointKey = options.checkpoint?.key ?? null
    const resumed = checkpointKey ? await usableCheckpoint(repo, checkpointKey, { size, chunkSize, parent: parent?.id ?? null }, index) : null
    const backupId = resumed?.backupId ?? newBackupId()
    // Chunks done by an earlier attempt (durable when its checkpoint was saved) are not redone.
    const done = resumed?.done ?? newDoneSet(count)
    const chunks = resumed?.chunks ?? Buffer.alloc(count * ID_BYTES)
    const earlier = resumed?.stats as BackupStats | undefined
    const stats: BackupStats = {
      bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksTotal: count, chunksZero: 0,
      chunksNew: 0, chunksReused: 0, chunksFromParent: 0, durationMs: 0,
      ...earlier,
    }
    const writer = new PackWriter(repo, {
      packSize: options.packSize ?? DEFAULT_TUNING.packSize,
      concurrency: options.uploadConcurrency ?? DEFAULT_TUNING.uploadConcurrency,
      maxBlobBytes: chunkSize + 64,
    })
    const storedBefore = earlier?.bytesStored ?? 0
    let bytesDone = doneBytes(done, size, chunkSize)
    const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size, bytesStored: storedBefore + writer.bytesStored })

    // Chunks taken from the parent cost no I/O; their presence in the index is still checked,
    // so an incremental backup never refers to a chunk the repository has lost track of.
    // With written ranges, a chunk not read is one never written: zeros.
    for (let i = 0; i < count; i++) {
      if (toRead[i] || isDone(done, i)) continue
      markDone(done, i)
      bytesDone += chunkLength(size, chunkSize, i)
      if (!parent || options.writtenRanges) {
        stats.chunksZero++
        continue
      }
      const id = chunkIdAt(parent.chunks, i)
      if (!id.equals(ZERO_ID) && !index.has(id)) {
        throw new EbsWorkerError(ErrorCode.ChunkMissing, `parent backup ${parent.id} refers to chunk ${i} which no index lists`)
      }
      id.copy(chunks, i * ID_BYTES)
      stats.chunksFromParent++
    }

    // Checkpoints: every interval, readers pause at a chunk boundary, the pack being filled is
    // uploaded, and what is done is saved; so is it when the backup is interrupted.
    const saveCheckpoint = async (): Promise<void> => {
      await writer.flush()
      await repo.saveCheckpoint(checkpointKey!, {
        kind: 'backup', target: null, backupId, size, chunkSize, parent: parent?.id ?? null, savedAt: new Date().toISOString(),
        stats: { ...stats, bytesStored: storedBefore + writer.bytesStored, durationMs: (earlier?.durationMs ?? 0) + Math.round(performance.now() - started) },
        done, chunks,
      })
    }
    const gate = checkpointKey ? new CheckpointGate(options.checkpoint?.intervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS, saveCheckpoint) : null

    // Ids stored by this backup so far: two identical chunks in flight are stored once.
    const session = new Set<string>()
    const zeroChunk = Buffer.alloc(chunkSize)
    /** Zero, known, or new (then encoded into a pack); returns the chunk's id. */
    const storeChunk = async (buf: Buffer): Promise<Buffer> => {
      if (buf.equals(buf.length === chunkSize ? zeroChunk : zeroChunk.subarray(0, buf.length))) {
        stats.chunksZero++
        return ZERO_ID
      }
      const id = repo.chunkId(buf)
      const key = id.toString('hex')
      if (index.hasKey(key) || session.has(key)) {
        stats.chunksReused++
        return id
      }
      session.add(key)
      stats.chunksNew++
      stats.bytesNew += buf.length
      await writer.add(id, await repo.codec.encodeParts('chunk', buf), buf.length)
      return id
    }
    const indices = function* (): Generator<number> {
      for (let i = 0; i < count; i++) if (toRead[i] && !isDone(done, i)) yield i
    }
    // Read buffers are reused: one per reader, so memory does not depend on the volume size.
    const buffers: Buffer[] = []
    try {
      await forEachConcurrent(indices(), options.readConcurrency ?? DEFAULT_TUNING.readConcurrency, async (i) => {
        await gate?.enter()
        const offset = i * chunkSize
        const length = chunkLength(size, chunkSize, i)
        const whole = buffers.pop() ?? Buffer.allocUnsafeSlow(chunkSize)
        try {
          const buf = whole.subarray(0, length)
          const got = await readAt(device.handle, buf, offset).catch((err: unknown) => {
            throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot read ${options.device} at offset ${offset}: ${describe(err)}`, { cause: err })
          })
          if (got !== length) {
            throw new EbsWorkerError(ErrorCode.DeviceUnusable, `short read from ${options.device} at offset ${offset + got}: the device shrank?`)
          }
          stats.bytesRead += length
          const id = await storeChunk(buf)
          id.copy(chunks, i * ID_BYTES)
          markDone(done, i)
          bytesDone += length
          report()
        } finally {
          buffers.push(whole)
          gate?.leave()
        }
      }, options.signal)
      await writer.finish(`backup-${backupId}`)
    } catch (err) {
      if (!options.signal?.aborted) {
        await writer.settle()
        throw err
      }
      // Every reader has stopped: what is marked done is what the next attempt can skip.
      let saved = false
      if (gate) saved = await gate.saveNow().then(() => true, () => false)
      await writer.settle()
      throw new EbsWorkerError(ErrorCode.Interrupted,
        saved ? 'backup interrupted; its progress is checkpointed and the next attempt goes on from there' : 'backup interrupted; nothing was recorded',
        { cause: err })
    }
    stats.bytesStored = storedBefore + writer.bytesStored
    stats.durationMs = (earlier?.durationMs ?? 0) + Math.round(performance.now() - started)
    const manifest: Manifest = {
      id: backupId,
      createdAt: new Date().toISOString(),
      source: { device: options.device, ...options.source },
      size,
      chunkSize,
      parent: parent?.id ?? null,
      chunks,
      checksum: backupChecksum(size, chunkSize, chunks),
      stats,
      tags: options.tags ?? {},
    }
    await repo.saveManifest(manifest)
    if (checkpointKey) {
      // The task record before the checkpoint goes: a retry after a crash here finds one or the other.
      await repo.saveTaskRecord(checkpointKey, backupId)
      await repo.deleteCheckpoint(checkpointKey).catch(() => {})
    }
    report()
    return { id: manifest.id, size, chunkSize, parent: manifest.parent, checksum: manifest.checksum, stats, resumedFrom: resumed?.savedAt ?? null }
  } finally {
    await device.handle.close()
  }
}
