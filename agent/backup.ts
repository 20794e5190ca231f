// Backup: device → chunks → (zero? known?) → zstd + AES-GCM → packs → repository, then the
// manifest. Many positional reads are in flight at once (volumes restored from snapshots are
// hydrated lazily and only deliver throughput at high queue depth); packs upload in parallel.
import { EbsWorkerError, ErrorCode, describe } from './errors.ts'
import { ID_BYTES } from './chunk-index.ts'
import { openForRead, readAt } from './device.ts'
import {
  backupChecksum,
  chunkCount,
  chunkIdAt,
  newBackupId,
  ZERO_ID,
  type BackupStats,
  type Manifest,
} from './manifest.ts'
import { PackWriter } from './pack-writer.ts'
import { chunksToRead, chunksWritten, type ByteRange } from './plan.ts'
import { forEachConcurrent } from './pool.ts'
import type { Repository } from './repository.ts'

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
}

export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024

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
  const backupId = newBackupId()
  const device = await openForRead(options.device)
  try {
    const size = device.size
    const count = chunkCount(size, chunkSize)
    const toRead = options.writtenRanges
      ? chunksWritten(size, chunkSize, options.writtenRanges)
      : chunksToRead(size, chunkSize, parent, options.changedRanges ?? null)
    const index = await repo.loadIndex()
    const chunks = Buffer.alloc(count * ID_BYTES)
    const stats: BackupStats = {
      bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksTotal: count, chunksZero: 0,
      chunksNew: 0, chunksReused: 0, chunksFromParent: 0, durationMs: 0,
    }
    const writer = new PackWriter(repo, {
      packSize: options.packSize ?? DEFAULT_PACK_SIZE,
      concurrency: options.uploadConcurrency ?? 4,
      maxBlobBytes: chunkSize + 64,
    })
    let bytesDone = 0
    const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: size, bytesStored: writer.bytesStored })

    // Chunks taken from the parent cost no I/O; their presence in the index is still checked,
    // so an incremental backup never refers to a chunk the repository has lost track of.
    // With written ranges, a chunk not read is one never written: zeros.
    for (let i = 0; i < count; i++) {
      if (toRead[i]) continue
      if (!parent || options.writtenRanges) {
        stats.chunksZero++
        bytesDone += Math.min(chunkSize, size - i * chunkSize)
        continue
      }
      const id = chunkIdAt(parent.chunks, i)
      if (!id.equals(ZERO_ID) && !index.has(id)) {
        throw new EbsWorkerError(ErrorCode.ChunkMissing, `parent backup ${parent.id} refers to chunk ${i} which no index lists`)
      }
      id.copy(chunks, i * ID_BYTES)
      stats.chunksFromParent++
      bytesDone += Math.min(chunkSize, size - i * chunkSize)
    }

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
      for (let i = 0; i < count; i++) if (toRead[i]) yield i
    }
    // Read buffers are reused: one per reader, so memory does not depend on the volume size.
    const buffers: Buffer[] = []
    try {
      await forEachConcurrent(indices(), options.readConcurrency ?? 16, async (i) => {
        const offset = i * chunkSize
        const length = Math.min(chunkSize, size - offset)
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
          bytesDone += length
          report()
        } finally {
          buffers.push(whole)
        }
      }, options.signal)
      await writer.finish(`backup-${backupId}`)
    } catch (err) {
      await writer.settle()
      if (options.signal?.aborted) throw new EbsWorkerError(ErrorCode.Interrupted, 'backup interrupted; nothing was recorded', { cause: err })
      throw err
    }
    stats.bytesStored = writer.bytesStored
    stats.durationMs = Math.round(performance.now() - started)
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
    report()
    return { id: manifest.id, size, chunkSize, parent: manifest.parent, checksum: manifest.checksum, stats }
  } finally {
    await device.handle.close()
  }
}
