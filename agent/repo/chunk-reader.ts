// Reading a backup's chunks back, window after window of its chunk list: within a window the
// stored chunks are grouped into as few ranged reads of packs as the limits allow, fetched with
// bounded concurrency into reused buffers, and every chunk decrypted (GCM authenticates it),
// decompressed (zstd checks its frame) and re-hashed against its id before it is handed on.
// Memory: one window of references (windowChunks × ~100 bytes) and the request buffers, whatever
// the volume's size. Restore and verify are its two consumers.
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { forEachConcurrent } from '../core/concurrency.ts'
import { chunkLength } from '../core/geometry.ts'
import type { ChunkList } from './chunk-list.ts'
import { decodeBufferSize, sharedBuffer } from './codec.ts'
import pLimit from 'p-limit'
import { codecThreadCount } from './codec-threads.ts'
import type { Manifest } from './manifest.ts'
import type { Repository } from './repository.ts'
import { isZeroRef, type BlobRef } from './tree.ts'

/** One stored chunk as a restore needs it: where it is and where it goes. */
export interface ChunkFetch extends BlobRef {
  /** Chunk numbers in the backup that hold this content (identical chunks are fetched once). */
  targets: number[]
}

export interface RangeRequest {
  pack: string
  offset: number
  length: number
  chunks: ChunkFetch[]
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
  requests: number
}

export interface ReadOptions {
  /** Ranged GETs in flight. */
  concurrency: number
  /** Upper bound of one coalesced GET. */
  maxRequestBytes: number
  /** Chunks planned at once. */
  windowChunks?: number
  /** The first chunk to read (a resumed restore starts at its checkpoint's window). */
  from?: number
  /** Chunks to leave out (done by an earlier attempt). */
  skip?: (i: number) => boolean
  /** Counted into as chunks arrive; a new one otherwise. */
  counters?: ReadCounters
  signal?: AbortSignal | undefined
  gate?: RequestGate | null | undefined
}

/** What a reader hands on, window by window. */
export interface WindowSink {
  /** A window begins: chunks [first, end); `zero` lists its runs of zero chunks [from, to) (recorded, never stored). */
  begin?(first: number, end: number, zero: ReadonlyArray<readonly [number, number]>): Promise<void>
  /** A verified chunk and the chunk numbers it goes to; `plain` is reused once this resolves. */
  chunk(targets: readonly number[], plain: Buffer): Promise<void>
  /** Every chunk of the window has been handed on. */
  end?(first: number, end: number): Promise<void>
}

/** 4096 chunks (4 GiB of volume at 1 MiB chunks): ~400 KiB of references, few request boundaries. */
export const DEFAULT_WINDOW_CHUNKS = 4096
// Bytes of unrelated blobs worth reading to save a request: ~1 ms of transfer at S3 speeds.
const MAX_GAP = 256 * 1024

/** Pure: groups chunks [first, first + entries.length) into as few ranged reads as the limits allow. */
export function planWindow(
  entries: readonly BlobRef[],
  first: number,
  maxRequestBytes: number,
  skip?: (i: number) => boolean,
): { requests: RangeRequest[]; zero: number[] } {
  const byLocation = new Map<string, ChunkFetch>()
  const zero: number[] = []
  entries.forEach((entry, k) => {
    const i = first + k
    if (skip?.(i)) return
    if (isZeroRef(entry)) {
      zero.push(i)
      return
    }
    const key = `${entry.pack}:${entry.offset}`
    const existing = byLocation.get(key)
    if (existing) existing.targets.push(i)
    else byLocation.set(key, { ...entry, targets: [i] })
  })
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

/** Fetches and verifies every chunk of the backup (from `options.from`), window after window. */
export async function readWindows(
  repo: Repository,
  manifest: Manifest,
  list: ChunkList,
  options: ReadOptions,
  sink: WindowSink,
): Promise<ReadCounters> {
  const counters = options.counters ?? { bytesFetched: 0, chunksVerified: 0, requests: 0 }
  const windowChunks = Math.max(list.leafChunks, Math.floor((options.windowChunks ?? DEFAULT_WINDOW_CHUNKS) / list.leafChunks) * list.leafChunks)
  // Request and decode buffers are reused across windows (fresh 16 MiB buffers would cost a
  // page fault per 4 KiB and garbage collection), and shared with the codec threads, which
  // decrypt, decompress and verify each chunk where it landed. Decode buffers: two chunks per
  // codec thread in flight (decoding, or being handed on), whatever the requests in flight.
  const buffers: Buffer[] = []
  const plainBuffers: Buffer[] = []
  const decodes = Math.max(2, 2 * codecThreadCount())
  const decoding = pLimit(decodes)
  const start = Math.floor((options.from ?? 0) / list.leafChunks)
  const windowLeaves = windowChunks / list.leafChunks
  // The next window's leaves load while this window's chunks are fetched: the pipeline does not
  // stop at a window's end for one node GET after another.
  let next: { leaf: number; entries: Promise<BlobRef[]> } | null = null
  for (let leaf = start; leaf < list.leaves; leaf += windowLeaves) {
    options.signal?.throwIfAborted()
    const first = leaf * list.leafChunks
    const leafEnd = Math.min(list.leaves, leaf + windowLeaves)
    // A window of zeros (most of a sparse volume): nothing to read, nothing to plan.
    if (!options.skip?.(first) && (await allZero(list, leaf, leafEnd))) {
      const end = Math.min(list.count, leafEnd * list.leafChunks)
      await sink.begin?.(first, end, end > first ? [[first, end]] : [])
      await sink.end?.(first, end)
      continue
    }
    const entries = next?.leaf === leaf ? await next.entries : await loadLeaves(list, leaf, leafEnd)
    next = null
    if (leafEnd < list.leaves) {
      const entries = loadLeaves(list, leafEnd, Math.min(list.leaves, leafEnd + windowLeaves))
      entries.catch(() => {}) // awaited with the next window; not an unhandled rejection before
      next = { leaf: leafEnd, entries }
    }
    const end = first + entries.length
    const { requests, zero } = planWindow(entries, first, options.maxRequestBytes, options.skip)
    await sink.begin?.(first, end, runs(zero))
    const bufferBytes = requests.reduce((max, r) => Math.max(max, r.length), 0)
    await forEachConcurrent(requests, options.concurrency, async (req) => {
      await options.gate?.enter()
      let buffer = buffers.pop()
      if (!buffer || buffer.length < bufferBytes) buffer = sharedBuffer(bufferBytes)
      try {
        await fetchRequest(req, buffer)
      } finally {
        buffers.push(buffer)
        options.gate?.leave()
      }
    }, options.signal)
    counters.requests += requests.length
    await sink.end?.(first, end)
  }
  return counters

  async function fetchRequest(req: RangeRequest, buffer: Buffer): Promise<void> {
    let data: Buffer | null
    try {
      data = await repo.readPackRange(req.pack, req.offset, req.length, buffer)
      counters.bytesFetched += data.length
    } catch (err) {
      // A pack prune repacked: each chunk is read where its moved record says it went.
      if (!(err instanceof EbsWorkerError && err.code === ErrorCode.ChunkMissing && (await repo.loadMoved(req.pack)))) throw atChunk(manifest, req.chunks[0]!, err)
      data = null
    }
    // The chunks of one ranged read are decoded side by side (each blob is a view of `buffer`).
    // Chunks read one by one from where a prune moved them share `buffer`: one at a time.
    await forEachConcurrent(req.chunks, data ? decodes : 1, (chunk) => decoding(async () => {
      let blob: Buffer
      if (data) blob = data.subarray(chunk.offset - req.offset, chunk.offset - req.offset + chunk.length)
      else {
        try {
          blob = await repo.readBlob(chunk, buffer)
        } catch (err) {
          throw atChunk(manifest, chunk, err)
        }
        counters.bytesFetched += blob.length
      }
      const expected = chunkLength(manifest.size, manifest.chunkSize, chunk.targets[0]!)
      const plainBuffer = plainBuffers.pop() ?? sharedBuffer(decodeBufferSize(manifest.chunkSize))
      try {
        let plain: Buffer
        try {
          plain = await repo.decodeChunk(blob, chunk.id, expected, plainBuffer)
        } catch (err) {
          throw atChunk(manifest, chunk, err)
        }
        counters.chunksVerified++
        // A chunk is a view of plainBuffer: the sink is done with it before reuse.
        await sink.chunk(chunk.targets, plain)
      } finally {
        plainBuffers.push(plainBuffer)
      }
    }), options.signal)
  }
}

/** Chunk-list leaves loaded at once (each one a GET of a node: tens of milliseconds on S3). */
const LEAF_LOADS = 8

/**
 * The entries of leaves [from, to), in order. The first leaf alone first: it loads the upper
 * nodes the others share, so that they are not fetched once per leaf.
 */
async function loadLeaves(list: ChunkList, from: number, to: number): Promise<BlobRef[]> {
  if (to <= from) return []
  const leaves: BlobRef[][] = new Array(to - from)
  leaves[0] = await list.leaf(from)
  const rest = Array.from({ length: to - from - 1 }, (_, i) => from + 1 + i)
  await forEachConcurrent(rest, LEAF_LOADS, async (k) => {
    leaves[k - from] = await list.leaf(k)
  })
  return leaves.flat()
}

async function allZero(list: ChunkList, from: number, to: number): Promise<boolean> {
  for (let k = from; k < to; k++) if (!(await list.zeroLeaf(k))) return false
  return true
}

/** Chunk numbers in order as runs [from, to). */
function runs(chunks: readonly number[]): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (const i of chunks) {
    const last = out[out.length - 1]
    if (last && last[1] === i) last[1] = i + 1
    else out.push([i, i + 1])
  }
  return out
}

/** A failure reading a chunk, naming the backup, the offset and the pack. */
function atChunk(manifest: Manifest, chunk: ChunkFetch, err: unknown): EbsWorkerError {
  const offset = chunk.targets[0]! * manifest.chunkSize
  const code = err instanceof EbsWorkerError ? err.code : ErrorCode.Storage
  return new EbsWorkerError(code, `backup ${manifest.id}: chunk at offset ${offset} (pack ${chunk.pack}): ${describe(err)}`,
    { cause: err, context: { backupId: manifest.id, offset, pack: chunk.pack } })
}
