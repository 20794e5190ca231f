// Index runs (format v2): where stored chunks live, as lists of blob references. A run under
// index/ is sorted by id and named after the time it was written, so a backup can load just the
// newest ones (dedup-window.ts); a pack's trailer is a run too (in pack order), so the indexes
// can always be rebuilt from the packs alone. Pure encoding.
//
//   "EBWRUN02" | u8 flags | 3 reserved | u32 count | count × entry (tree.ts, 60 bytes)
//   flags: bit 0 sorted by id, bit 1 the blobs are chunk-list nodes (a tree pack)
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { timestampedId } from '../core/ids.ts'
import { ENTRY_BYTES, readEntry, writeEntry, type BlobRef } from './tree.ts'

const MAGIC = Buffer.from('EBWRUN02')
const HEADER = MAGIC.length + 8
const SORTED = 1
const TREE = 2

export interface Run {
  entries: BlobRef[]
  sorted: boolean
  /** The blobs are chunk-list nodes. */
  tree: boolean
}

export function compareIds(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b)
}

export function encodeRun(entries: readonly BlobRef[], options: { sort?: boolean; tree?: boolean } = {}): Buffer {
  const list = options.sort ? [...entries].sort((a, b) => compareIds(a.id, b.id)) : entries
  const out = Buffer.alloc(HEADER + list.length * ENTRY_BYTES)
  MAGIC.copy(out, 0)
  out.writeUInt8((options.sort ? SORTED : 0) | (options.tree ? TREE : 0), MAGIC.length)
  out.writeUInt32LE(list.length, MAGIC.length + 4)
  list.forEach((e, i) => writeEntry(e, out, HEADER + i * ENTRY_BYTES))
  return out
}

/** Whether `buf` is a v2 run (a v1 index has another magic). */
export function isRun(buf: Buffer): boolean {
  return buf.length >= HEADER && buf.subarray(0, MAGIC.length).equals(MAGIC)
}

export function decodeRun(buf: Buffer, what: string): Run {
  if (!isRun(buf)) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not an ebs-worker index run`)
  const flags = buf.readUInt8(MAGIC.length)
  const count = buf.readUInt32LE(MAGIC.length + 4)
  if (buf.length !== HEADER + count * ENTRY_BYTES) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is truncated (${count} entries announced)`)
  const entries: BlobRef[] = []
  for (let i = 0; i < count; i++) entries.push(readEntry(buf, HEADER + i * ENTRY_BYTES))
  return { entries, sorted: (flags & SORTED) !== 0, tree: (flags & TREE) !== 0 }
}

/** Calls `fn` on each entry of an encoded run without decoding it whole (large runs). */
export function forEachEntry(buf: Buffer, what: string, fn: (e: BlobRef) => boolean | void): void {
  if (!isRun(buf)) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not an ebs-worker index run`)
  const count = buf.readUInt32LE(MAGIC.length + 4)
  if (buf.length !== HEADER + count * ENTRY_BYTES) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is truncated (${count} entries announced)`)
  for (let i = 0; i < count; i++) if (fn(readEntry(buf, HEADER + i * ENTRY_BYTES)) === false) return
}

/** A new run's name (under index/): the time it is written first, so names sort by age. */
export function newRunName(now = new Date()): string {
  return timestampedId('', now)
}
