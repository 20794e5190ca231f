// Reading a backup's chunks back: where each lives (the index), grouped into as few ranged reads
// of packs as the limits allow, fetched with bounded concurrency into reused buffers, and every
// chunk decrypted (GCM authenticates it), decompressed (zstd checks its frame) and re-hashed
// against its id before it is handed on. Restore and verify are its two consumers.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkCount, chunkLength, isDone, type DoneSet } from '../core/geometry.ts'
import type { ChunkIndex, ChunkLocation } from './chunk-index.ts'
import { decodeBufferSize } from './codec.ts'
import { chunkIdAt, ZERO_ID, type Manifest } from './manifest.ts'
import type { Repository } from './repository.ts'

/** One stored chunk as a restore needs it: where it is and where it goes. */
export interface ChunkFetch extends ChunkLocation {
  id: Buffer
  /** Chunk numbers in the backup that hold this content (identical chunks are fetched once). */
  targets: number[]
}

export interface RangeRequest {
  pack: string
  offset: number
  length: number
  chunks: ChunkFetch[]
}

export interface ReadPlan {
  requests: RangeRequest[]
  /** Chunk numbers of zero chunks (recorded, never stored). */
  zero: number[]
}

/** Pauses and resumes around each request (the pipeline's checkpoint gate). */
export interface RequestGate {
  enter(): Promise<void>
  leave(): void
}

/** Figures of a read, counted as it goes (a checkpoint saved midway sees them). */
export interface ReadCounters {
  bytesFetched: number
  chunksVerified: number
}

export interface ReadOptions {
  /** Ranged GETs in flight. */
  concurrency: number
  /** Counted into as chunks arrive; a new one otherwise. */
  counters?: ReadCounters
  signal?: AbortSignal | undefined
  gate?: RequestGate | null | undefined
}

/** Receives each verified chunk: its content and the chunk numbers it goes to. `plain` is reused after this resolves. */
export type ChunkSink = (targets: readonly number[], plain: Buffer) => Promise<void>

// Bytes of unrelated blobs worth reading to save a request: ~1 ms of transfer at S3 speeds.
const MAX_GAP = 256 * 1024

/** Pure: groups the backup's stored chunks into as few ranged reads as the limits allow. */
export function planRequests(manifest: Manifest, index: ChunkIndex, maxRequestBytes: number, skip?: DoneSet): ReadPlan {
  const count = chunkCount(manifest.size, manifest.chunkSize)
  const byLocation = new Map<string, ChunkFetch>()
  const zero: number[] = []
  for (let i = 0; i < count; i++) {
    if (skip && isDone(skip, i)) continue
    const id = chunkIdAt(manifest.chunks, i)
    if (id.equals(ZERO_ID)) {
      zero.push(i)
      continue
    }
    const loc = index.get(id)
    if (!loc) {
      throw new EbsWorkerError(ErrorCode.ChunkMissing,
        `backup ${manifest.id}: the chunk at offset ${i * manifest.chunkSize} is not in any index of the repository`,
        { context: { backupId: manifest.id, offset: i * manifest.chunkSize } })
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

/** Fetches and verifies every chunk of `requests`, handing each to `sink`. */
export async function readChunks(
  repo: Repository,
  manifest: Manifest,
  requests: readonly RangeRequest[],
  options: ReadOptions,
  sink: ChunkSink,
): Promise<ReadCounters> {
  const counters = options.counters ?? { bytesFetched: 0, chunksVerified: 0 }
  // Request buffers are reused (one per GET in flight): fresh 16 MiB buffers would cost a page
  // fault per 4 KiB and garbage collection, which is most of a restore's CPU besides the hashing.
  // Decompressed chunks land in reused buffers too.
  const buffers: Buffer[] = []
  const plainBuffers: Buffer[] = []
  const bufferBytes = requests.reduce((max, r) => Math.max(max, r.length), 0)
  await forEachConcurrent(requests, options.concurrency, async (req) => {
    await options.gate?.enter()
    const buffer = buffers.pop() ?? Buffer.allocUnsafeSlow(bufferBytes)
    const plainBuffer = plainBuffers.pop() ?? Buffer.allocUnsafeSlow(decodeBufferSize(manifest.chunkSize))
    try {
      await fetchRequest(req, buffer, plainBuffer)
    } finally {
      buffers.push(buffer)
      plainBuffers.push(plainBuffer)
      options.gate?.leave()
    }
  }, options.signal)
  return counters

  async function fetchRequest(req: RangeRequest, buffer: Buffer, plainBuffer: Buffer): Promise<void> {
    let data: Buffer
    try {
      data = await repo.readPackRange(req.pack, req.offset, req.length, buffer)
    } catch (err) {
      throw atChunk(manifest, req.chunks[0]!, err)
    }
    counters.bytesFetched += data.length
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
      counters.chunksVerified++
      // A chunk is a view of the request buffer or of plainBuffer: the sink is done with it before reuse.
      await sink(chunk.targets, plain)
    }
  }
}

/** A failure reading a chunk, naming the backup, the offset and the pack. */
function atChunk(manifest: Manifest, chunk: ChunkFetch, err: unknown): EbsWorkerError {
  const offset = chunk.targets[0]! * manifest.chunkSize
  const code = err instanceof EbsWorkerError ? err.code : ErrorCode.Storage
  return new EbsWorkerError(code, `backup ${manifest.id}: chunk at offset ${offset} (pack ${chunk.pack}): ${describe(err)}`,
    { cause: err, context: { backupId: manifest.id, offset, pack: chunk.pack } })
}
