// Which chunks a backup must read. Pure: from the volume size, the chunk size, the parent backup
// (if any) and the byte ranges that may differ — changed since the parent (EBS ListChangedBlocks),
// ever written (ListSnapshotBlocks), or holding data (an image file's extents) — decide for each
// stretch of chunks whether to read it, take it from the parent, or record it as zeros.
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from './errors.ts'
import { chunkCount, type ByteRange } from './geometry.ts'

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

/** A stretch of chunks and what the backup does with them. */
export interface Stretch {
  from: number
  to: number
  /** read from the device; taken from the parent unread; zeros, unread. */
  kind: 'read' | 'parent' | 'zero'
}

export interface PlanInput {
  size: number
  chunkSize: number
  /** Only these byte ranges may differ from the rest's `otherwise` (changed, written, or holding data). */
  marked?: Iterable<ByteRange> | null
  /** What the chunks no marked range touches are: the parent's (unchanged) or zeros (never written). */
  otherwise?: 'parent' | 'zero'
  /** With otherwise = parent: the parent, whose whole chunks of the same length only can be taken. */
  parent?: ParentInfo | null
  /** What `marked` means, for messages ("changed", "written"). */
  what?: string
}

/**
 * The backup's plan, stretch after stretch in the volume's order, covering every chunk: lazily,
 * so a 64 TiB volume costs no per-chunk memory. Without marked ranges every chunk is read. A
 * chunk is taken from the parent only when the parent has it whole at the same length (a grown
 * volume reads its old last chunk and the new ones).
 */
export function* planStretches(input: PlanInput): Generator<Stretch> {
  const { size, chunkSize } = input
  const count = chunkCount(size, chunkSize)
  if (!input.marked || !input.otherwise) {
    if (count > 0) yield { from: 0, to: count, kind: 'read' }
    return
  }
  let reusable = count
  if (input.otherwise === 'parent') {
    const parent = input.parent
    if (!parent) throw new EbsWorkerError(ErrorCode.BadInput, 'changed ranges need a parent backup to take the unchanged chunks from')
    if (parent.chunkSize !== chunkSize) {
      throw new EbsWorkerError(ErrorCode.BackupIncompatible, `parent backup uses ${parent.chunkSize}-byte chunks, not ${chunkSize}`)
    }
    reusable = Math.min(Math.floor(parent.size / chunkSize), Math.floor(size / chunkSize), count)
  }
  let at = 0
  const gap = function* (to: number): Generator<Stretch> {
    // Chunks between marked ones: the parent's up to `reusable`, read beyond; or zeros.
    if (input.otherwise === 'zero') {
      if (to > at) yield { from: at, to, kind: 'zero' }
    } else {
      const split = Math.max(at, Math.min(to, reusable))
      if (split > at) yield { from: at, to: split, kind: 'parent' }
      if (to > split) yield { from: split, to, kind: 'read' }
    }
    at = Math.max(at, to)
  }
  for (const [first, end] of chunkIntervals(input.marked, size, chunkSize, input.what ?? 'marked')) {
    yield* gap(first)
    if (end > at) {
      yield { from: Math.max(at, first), to: end, kind: 'read' }
      at = end
    }
  }
  yield* gap(count)
}

/** Byte ranges as chunk intervals [first, end), in order and merged (ranges may come in any order). */
function chunkIntervals(ranges: Iterable<ByteRange>, size: number, chunkSize: number, what: string): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let sorted = true
  for (const range of ranges) {
    if (range.offset + range.length > size) {
      throw new EbsWorkerError(ErrorCode.BadInput, `${what} range ${range.offset}+${range.length} ends beyond the ${size}-byte device`)
    }
    if (range.length <= 0) continue
    const first = Math.floor(range.offset / chunkSize)
    const end = Math.floor((range.offset + range.length - 1) / chunkSize) + 1
    const last = out[out.length - 1]
    if (last && first < last[0]) sorted = false
    if (last && sorted && first <= last[1]) last[1] = Math.max(last[1], end)
    else out.push([first, end])
  }
  if (sorted) return out
  out.sort((a, b) => a[0] - b[0])
  const merged: Array<[number, number]> = []
  for (const iv of out) {
    const last = merged[merged.length - 1]
    if (last && iv[0] <= last[1]) last[1] = Math.max(last[1], iv[1])
    else merged.push([iv[0], iv[1]])
  }
  return merged
}
