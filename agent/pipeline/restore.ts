// Restore and verify: manifest → chunk locations → coalesced ranged GETs → verified chunks →
// device. Every chunk is decrypted (GCM authenticates it), decompressed (zstd checks its frame)
// and re-hashed against its id before a byte of it is written.
import { decodeBufferSize } from '../repo/codec.ts'
import { CheckpointGate, DEFAULT_CHECKPOINT_INTERVAL_MS } from './checkpoint.ts'
import { chunkCount, chunkLength, doneBytes, isDone, markDone, newDoneSet } from '../core/geometry.ts'
import type { ChunkIndex, ChunkLocation } from '../repo/chunk-index.ts'
import { openForWrite, writeAt } from '../device/block-device.ts'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { chunkIdAt, ZERO_ID, type Manifest } from '../repo/manifest.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import type { Repository } from '../repo/repository.ts'
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

/** One stored chunk as the restore needs it: where it is and where it goes. */
interface ChunkFetch extends ChunkLocation {
  id: Buffer
  /** Chunk numbers in the backup that hold this content (identical chunks are fetched once). */
  targets: number[]
}

interface RangeRequest {
  pack: string
  offset: number
  length: number
  chunks: ChunkFetch[]
}

// Bytes of unrelated blobs worth reading to save a request: ~1 ms of transfer at S3 speeds.
const MAX_GAP = 256 * 1024

/** Pure: groups the backup's stored chunks into as few ranged reads as the limits allow. */
export function planRequests(
  manifest: Manifest,
  index: ChunkIndex,
  maxRequestBytes: number,
  /** Chunks already restored (a checkpoint's): left out. */
  done?: Uint8Array,
): { requests: RangeRequest[]; zero: number[] } {
  const count = chunkCount(manifest.size, manifest.chunkSize)
  const byLocation = new Map<string, ChunkFetch>()
  const zero: number[] = []
  for (let i = 0; i < count; i++) {
    if (done && isDone(done, i)) continue
    const id = chunkIdAt(manifest.chunks, i)
    if (id.equals(ZERO_ID)) {
      zero.push(i)
      continue
    }
    const loc = index.get(id)
    if (!loc) {
      throw new EbsWorkerError(
        ErrorCode.ChunkMissing,
        `backup ${manifest.id}: the chunk at offset ${i * manifest.chunkSize} is not in any index of the repository`,
      )
    }
    const key = `${loc.pack}:${loc.offset}`
    const existing = byLocation.get(key)
    if (existing) existing.targets.push(i)
    else byLocation.set(key, { ...loc, id, targets: [i] })
  }
  const byPack = new Map<string, ChunkFetch[]>()
  for (const chunk of byLocation.values()) {
    const list = byPack.get(chunk.pack)
    if (list) list.push(chunk)
    else byPack.set(chunk.pack, [chunk])
  }
  const requests: RangeRequest[] = []
  for (const [pack, list] of byPack) {
    list.sort((a, b) => a.offset - b.offset)
    let current: RangeRequest | null = null
    for (const chunk of list) {
      const end = chunk.offset + chunk.length
      if (current && chunk.offset - (current.offset + current.length) <= MAX_GAP && end - current.offset <= maxRequestBytes) {
        current.length = end - current.offset
        current.chunks.push(chunk)
      } else {
        current = { pack, offset: chunk.offset, length: chunk.length, chunks: [chunk] }
        requests.push(current)
      }
    }
  }
  return { requests, zero }
}

/** Fetches and verifies every stored chunk of a backup, handing each to `sink`. */
async function fetchChunks(
  repo: Repository,
  manifest: Manifest,
  requests: RangeRequest[],
  options: FetchOptions,
  sink: (chunk: ChunkFetch, plain: Buffer) => Promise<void>,
  gate?: CheckpointGate | null,
): Promise<{ bytesFetched: number; chunksVerified: number }> {
  let bytesFetched = 0
  let chunksVerified = 0
  // Decompressed chunks land in reused buffers too (one per GET in flight).
  const plainBuffers: Buffer[] = []
  // Request buffers are reused (one per GET in flight): fresh 16 MiB buffers would cost a page
  // fault per 4 KiB and garbage collection, which is most of a restore's CPU besides the hashing.
  const buffers: Buffer[] = []
  const bufferBytes = requests.reduce((max, r) => Math.max(max, r.length), 0)
  await forEachConcurrent(requests, options.concurrency ?? DEFAULT_TUNING.restoreConcurrency, async (req) => {
    await gate?.enter()
    const buffer = buffers.pop() ?? Buffer.allocUnsafeSlow(bufferBytes)
    try {
      await fetchRequest(req, buffer)
    } finally {
      buffers.push(buffer)
      gate?.leave()
    }
  }, options.signal)
  return { bytesFetched, chunksVerified }

  async function fetchRequest(req: RangeRequest, buffer: Buffer): Promise<void> {
    let data: Buffer
    try {
      data = await repo.readPackRange(req.pack, req.offset, req.length, buffer)
    } catch (err) {
      throw atChunk(manifest, req.chunks[0]!, err)
    }
    bytesFetched += data.length
    const plainBuffer = plainBuffers.pop() ?? Buffer.allocUnsafeSlow(decodeBufferSize(manifest.chunkSize))
    for (const chunk of req.chunks) {
      const blob = data.subarray(chunk.offset - req.offset, chunk.offset - req.offset + chunk.length)
      let plain: Buffer
      try {
        plain = await repo.decodeChunk(blob, chunk.id, chunk.rawLength, plainBuffer)
      } catch (err) {
        throw atChunk(manifest, chunk, err)
      }
      const expected = chunkLength(manifest.size, manifest.chunkSize, chunk.targets[0]!)
      if (plain.length !== expected) throw atChunk(manifest, chunk, new Error(`holds ${plain.length} bytes, expected ${expected}`))
      chunksVerified++
      // A chunk is a view of the request buffer or of plainBuffer: the sink is done with it before reuse.
      await sink(chunk, plain)
    }
    plainBuffers.push(plainBuffer)
  }
}

function atChunk(manifest: Manifest, chunk: ChunkFetch, err: unknown): EbsWorkerError {
  const offset = chunk.targets[0]! * manifest.chunkSize
  const code = err instanceof EbsWorkerError ? err.code : ErrorCode.Storage
  return new EbsWorkerError(code, `backup ${manifest.id}: chunk at offset ${offset} (pack ${chunk.pack}): ${describe(err)}`, { cause: err })
}

export async function restore(repo: Repository, options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  const count = chunkCount(manifest.size, manifest.chunkSize)
  const key = options.checkpoint?.key ?? null
  const saved = key ? await repo.loadCheckpoint(key).catch(() => null) : null
  const resumed = saved && saved.kind === 'restore' && saved.backupId === manifest.id && saved.size === manifest.size &&
    saved.chunkSize === manifest.chunkSize && saved.target === options.checkpoint!.target ? saved : null
  // Chunks an earlier attempt wrote and synced before its checkpoint are on the target already.
  const done = resumed?.done ?? newDoneSet(count)
  const { requests, zero } = planRequests(manifest, await repo.loadIndex(), options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes, done)
  // An image file may be created; a missing path under /dev is a typo or a device not there yet.
  const device = await openForWrite(options.device, { minSize: manifest.size, create: !options.device.startsWith('/dev/') })
  const fresh = options.freshTarget === true || device.created
  const earlier: Record<string, number> = resumed?.stats ?? {}
  const lengthOf = (i: number): number => chunkLength(manifest.size, manifest.chunkSize, i)
  let bytesDone = doneBytes(done, manifest.size, manifest.chunkSize)
  let bytesWritten = earlier.bytesWritten ?? 0
  let bytesFetched = 0
  let chunksVerified = 0
  const report = (): void => options.onProgress?.({ bytesDone, bytesTotal: manifest.size })
  const write = (data: Buffer, offset: number): Promise<void> =>
    writeAt(device.handle, data, offset).catch((err: unknown) => {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot write ${options.device} at offset ${offset}: ${describe(err)}`, { cause: err })
    })
  const sync = (): Promise<void> => device.handle.datasync().catch((err: unknown) => {
    throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot flush ${options.device}: ${describe(err)}`, { cause: err })
  })
  const figures = (): Record<string, number> => ({
    bytesWritten,
    bytesFetched: (earlier.bytesFetched ?? 0) + bytesFetched,
    chunksVerified: (earlier.chunksVerified ?? 0) + chunksVerified,
    durationMs: (earlier.durationMs ?? 0) + Math.round(performance.now() - started),
  })
  // A checkpoint marks done only what is on the device for good: written, then fdatasync'ed.
  const gate = key
    ? new CheckpointGate(options.checkpoint!.intervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS, async () => {
      await sync()
      await repo.saveCheckpoint(key, {
        kind: 'restore', target: options.checkpoint!.target, backupId: manifest.id, size: manifest.size, chunkSize: manifest.chunkSize,
        parent: null, savedAt: new Date().toISOString(), stats: figures(), done, chunks: Buffer.alloc(0),
      })
    })
    : null
  try {
    // A fresh target reads as zeros where the backup has zero chunks: nothing to write there.
    if (fresh) {
      for (const i of zero) {
        markDone(done, i)
        bytesDone += lengthOf(i)
      }
    }
    try {
      const fetched = await fetchChunks(repo, manifest, requests, options, async (chunk, plain) => {
        for (const i of chunk.targets) {
          await write(plain, i * manifest.chunkSize)
          markDone(done, i)
          bytesWritten += plain.length
          bytesDone += plain.length
        }
        report()
      }, gate)
      bytesFetched = fetched.bytesFetched
      chunksVerified = fetched.chunksVerified
      if (!fresh) {
        const zeros = Buffer.alloc(manifest.chunkSize)
        await forEachConcurrent(zero, 8, async (i) => {
          const length = lengthOf(i)
          await write(zeros.subarray(0, length), i * manifest.chunkSize)
          markDone(done, i)
          bytesWritten += length
          bytesDone += length
          report()
        }, options.signal)
      }
    } catch (err) {
      if (!options.signal?.aborted) throw err
      // Every request has stopped: what is marked done is what the next attempt can skip.
      const checkpointed = gate ? await gate.saveNow().then(() => true, () => false) : false
      throw new EbsWorkerError(ErrorCode.Interrupted,
        checkpointed ? 'restore interrupted; its progress is checkpointed and the next attempt goes on from there' : 'restore interrupted',
        { cause: err })
    }
    // Durable before success is reported: the caller may detach and snapshot the volume next.
    await sync()
    if (key) await repo.deleteCheckpoint(key).catch(() => {})
    report()
    const total = figures()
    return {
      backupId: manifest.id,
      size: manifest.size,
      bytesWritten,
      bytesFetched: total.bytesFetched!,
      chunksVerified: total.chunksVerified!,
      zeroChunksSkipped: fresh ? zero.length : 0,
      requests: requests.length,
      durationMs: total.durationMs!,
      resumedFrom: resumed?.savedAt ?? null,
    }
  } finally {
    await device.handle.close()
  }
}

/** Proves a backup intact: every chunk it refers to is fetched, decrypted, decompressed and re-hashed. */
export async function verify(repo: Repository, options: FetchOptions & { backupId: string }): Promise<VerifyResult> {
  const started = performance.now()
  const manifest = await repo.loadManifest(options.backupId)
  const { requests, zero } = planRequests(manifest, await repo.loadIndex(), options.maxRequestBytes ?? DEFAULT_TUNING.maxRequestBytes)
  let bytesDone = zero.reduce((sum, i) => sum + chunkLength(manifest.size, manifest.chunkSize, i), 0)
  const fetched = await fetchChunks(repo, manifest, requests, options, async (chunk, plain) => {
    bytesDone += plain.length * chunk.targets.length
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
