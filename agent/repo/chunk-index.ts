// Where each stored chunk lives: chunk id -> (pack, offset, length). Pure encoding plus the
// in-memory map a backup consults to skip chunks the repository already has.
//
// Binary layout (before blob encoding), little-endian:
//   "EBWIDX01" | u32 count | count × { id[32] | pack[16] | offset u32 | length u32 | rawLength u32 }
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'

export const ID_BYTES = 32
export const PACK_ID_BYTES = 16
const MAGIC = Buffer.from('EBWIDX01')
const ENTRY_BYTES = ID_BYTES + PACK_ID_BYTES + 12

export interface ChunkLocation {
  /** Pack id, 32 hex characters. */
  pack: string
  /** Offset of the chunk's blob in the pack. */
  offset: number
  /** Length of the stored blob. */
  length: number
  /** Length of the chunk's plaintext. */
  rawLength: number
}

export interface IndexEntry extends ChunkLocation {
  id: Buffer
}

export function encodeIndex(entries: readonly IndexEntry[]): Buffer {
  const out = Buffer.allocUnsafe(MAGIC.length + 4 + entries.length * ENTRY_BYTES)
  MAGIC.copy(out, 0)
  out.writeUInt32LE(entries.length, MAGIC.length)
  let at = MAGIC.length + 4
  for (const e of entries) {
    e.id.copy(out, at)
    out.write(e.pack, at + ID_BYTES, PACK_ID_BYTES, 'hex')
    out.writeUInt32LE(e.offset, at + ID_BYTES + PACK_ID_BYTES)
    out.writeUInt32LE(e.length, at + ID_BYTES + PACK_ID_BYTES + 4)
    out.writeUInt32LE(e.rawLength, at + ID_BYTES + PACK_ID_BYTES + 8)
    at += ENTRY_BYTES
  }
  return out
}

export function decodeIndex(buf: Buffer, what: string): IndexEntry[] {
  if (buf.length < MAGIC.length + 4 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not an ebs-worker index`)
  }
  const count = buf.readUInt32LE(MAGIC.length)
  if (buf.length !== MAGIC.length + 4 + count * ENTRY_BYTES) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is truncated (${count} entries announced)`)
  }
  const entries: IndexEntry[] = []
  let at = MAGIC.length + 4
  for (let i = 0; i < count; i++) {
    entries.push({
      id: Buffer.from(buf.subarray(at, at + ID_BYTES)),
      pack: buf.toString('hex', at + ID_BYTES, at + ID_BYTES + PACK_ID_BYTES),
      offset: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES),
      length: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES + 4),
      rawLength: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES + 8),
    })
    at += ENTRY_BYTES
  }
  return entries
}

/** The repository's chunks as one map; keys are ids in hex. */
export class ChunkIndex {
  readonly #map = new Map<string, ChunkLocation>()

  get size(): number {
    return this.#map.size
  }

  add(entry: IndexEntry): void {
    const key = entry.id.toString('hex')
    if (!this.#map.has(key)) {
      this.#map.set(key, { pack: entry.pack, offset: entry.offset, length: entry.length, rawLength: entry.rawLength })
    }
  }

  has(id: Buffer): boolean {
    return this.#map.has(id.toString('hex'))
  }

  /** `has` for an id already in hex (saves converting it twice on the backup's hot path). */
  hasKey(hexId: string): boolean {
    return this.#map.has(hexId)
  }

  get(id: Buffer): ChunkLocation | undefined {
    return this.#map.get(id.toString('hex'))
  }
}
