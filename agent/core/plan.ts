// Which chunks a backup must read. Pure: from the volume size, the chunk size, the parent
// backup (if any) and the changed byte ranges (what EBS ListChangedBlocks reports), decide per
// chunk whether to read it from the device or take its id from the parent.
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from './errors.ts'
import { chunkCount, type ByteRange } from '../core/geometry.ts'
export type { ByteRange } from '../core/geometry.ts'

const rangesSchema = z.array(z.strictObject({ offset: z.number().int().nonnegative(), length: z.number().int().positive() }))

/** Parses a changed-ranges document: a JSON array of {"offset": n, "length": n}, in bytes. */
export function parseChangedRanges(text: string, what: string): ByteRange[] {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new EbsWorkerError(ErrorCode.BadInput, `${what} is not JSON`)
  }
  const parsed = rangesSchema.safeParse(json)
  if (!parsed.success) {
    throw new EbsWorkerError(
      ErrorCode.BadInput,
      `${what} must be a JSON array of {"offset": bytes, "length": bytes}: ${z.prettifyError(parsed.error)}`,
    )
  }
  return parsed.data
}

export interface ParentInfo {
  size: number
  chunkSize: number
}

/**
 * One byte per chunk: 1 = read it from the device, 0 = reuse the parent's chunk. Without a
 * parent or without changed ranges every chunk is read. A chunk is reused only when the parent
 * has it whole at the same length (a grown volume reads its old last chunk and the new ones).
 */
export function chunksToRead(
  size: number,
  chunkSize: number,
  parent: ParentInfo | null,
  changed: Iterable<ByteRange> | null,
): Uint8Array {
  const count = chunkCount(size, chunkSize)
  const read = new Uint8Array(count).fill(1)
  if (!parent || !changed) return read
  if (parent.chunkSize !== chunkSize) {
    throw new EbsWorkerError(ErrorCode.BackupIncompatible, `parent backup uses ${parent.chunkSize}-byte chunks, not ${chunkSize}`)
  }
  const reusable = Math.min(Math.floor(parent.size / chunkSize), Math.floor(size / chunkSize), count)
  read.fill(0, 0, reusable)
  mark(read, size, chunkSize, changed, 'changed')
  return read
}

/**
 * Without a parent, given the byte ranges that were ever written (EBS ListSnapshotBlocks): one
 * byte per chunk, 1 = read it, 0 = it reads as zeros, so it is recorded as a zero chunk unread.
 */
export function chunksWritten(size: number, chunkSize: number, written: Iterable<ByteRange>): Uint8Array {
  const read = new Uint8Array(chunkCount(size, chunkSize))
  mark(read, size, chunkSize, written, 'written')
  return read
}

function mark(read: Uint8Array, size: number, chunkSize: number, ranges: Iterable<ByteRange>, what: string): void {
  for (const range of ranges) {
    if (range.offset + range.length > size) {
      throw new EbsWorkerError(
        ErrorCode.BadInput,
        `${what} range ${range.offset}+${range.length} ends beyond the ${size}-byte device`,
      )
    }
    const first = Math.floor(range.offset / chunkSize)
    const last = Math.floor((range.offset + range.length - 1) / chunkSize)
    read.fill(1, first, last + 1)
  }
}
