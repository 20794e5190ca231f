// A backup's checkpoint: how far a backup that has not finished got, so that the next attempt of
// the same task (after SQS's 12-hour visibility cap, a SIGTERM or a crash) reads only what is
// left. Pure: encoding and decoding. A checkpoint is written only when every chunk it marks done
// is durable (its pack uploaded and indexed), so trusting it never loses data.
//
// Layout (before the blob codec): u32 header length, the JSON header, a bitmap of done chunks
// (bit i of byte i>>3), then the chunk ids of the whole volume (zero ids where not done).
import { z } from 'zod'
import { ID_BYTES } from './chunk-index.ts'
import { EbsWorkerError, ErrorCode } from './errors.ts'
import { chunkCount, type BackupStats } from './manifest.ts'

export const CHECKPOINT_VERSION = 1

const headerSchema = z.strictObject({
  version: z.literal(CHECKPOINT_VERSION),
  backupId: z.string(),
  size: z.number().int().nonnegative(),
  chunkSize: z.number().int().positive(),
  parent: z.string().nullable(),
  savedAt: z.string(),
  stats: z.record(z.string(), z.number()),
})

export interface Checkpoint {
  backupId: string
  size: number
  chunkSize: number
  parent: string | null
  savedAt: string
  /** Figures of the attempts so far (added up by the next one). */
  stats: BackupStats
  /** One bit per chunk: done. */
  done: Uint8Array
  /** Chunk ids, ID_BYTES each, for the whole volume. */
  chunks: Buffer
}

export function isDone(done: Uint8Array, i: number): boolean {
  return (done[i >> 3]! & (1 << (i & 7))) !== 0
}

export function markDone(done: Uint8Array, i: number): void {
  done[i >> 3]! |= 1 << (i & 7)
}

export function doneCount(done: Uint8Array, count: number): number {
  let n = 0
  for (let i = 0; i < count; i++) if (isDone(done, i)) n++
  return n
}

export function encodeCheckpoint(c: Checkpoint): Buffer {
  const header = Buffer.from(JSON.stringify({
    version: CHECKPOINT_VERSION, backupId: c.backupId, size: c.size, chunkSize: c.chunkSize, parent: c.parent, savedAt: c.savedAt, stats: c.stats,
  }))
  const length = Buffer.alloc(4)
  length.writeUInt32BE(header.length)
  return Buffer.concat([length, header, c.done, c.chunks])
}

export function decodeCheckpoint(buf: Buffer, what: string): Checkpoint {
  const bad = (why: string): EbsWorkerError => new EbsWorkerError(ErrorCode.RepoFormat, `checkpoint ${what} is damaged: ${why}`)
  if (buf.length < 4) throw bad('too short')
  const headerLength = buf.readUInt32BE(0)
  if (4 + headerLength > buf.length) throw bad('truncated header')
  let json: unknown
  try {
    json = JSON.parse(buf.subarray(4, 4 + headerLength).toString('utf8'))
  } catch {
    throw bad('header is not JSON')
  }
  const parsed = headerSchema.safeParse(json)
  if (!parsed.success) throw bad(z.prettifyError(parsed.error))
  const h = parsed.data
  const count = chunkCount(h.size, h.chunkSize)
  const bitmapBytes = Math.ceil(count / 8)
  if (buf.length !== 4 + headerLength + bitmapBytes + count * ID_BYTES) throw bad('wrong length for its volume size')
  const body = 4 + headerLength
  return {
    backupId: h.backupId, size: h.size, chunkSize: h.chunkSize, parent: h.parent, savedAt: h.savedAt,
    stats: h.stats as unknown as BackupStats,
    done: new Uint8Array(buf.subarray(body, body + bitmapBytes)),
    chunks: Buffer.from(buf.subarray(body + bitmapBytes)),
  }
}
