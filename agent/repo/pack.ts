// A pack is many chunk blobs in one object, so a terabyte is thousands of S3 objects rather
// than a million. Layout:
//   blob | blob | … | trailer blob | u32 trailer length | "EBWPACK1"
// The trailer is the pack's own index (same encoding as index files), so the repository's
// indexes can always be rebuilt from the packs alone.
import { randomBytes } from 'node:crypto'
import { encodeIndex, type IndexEntry, PACK_ID_BYTES } from './chunk-index.ts'

export const PACK_MAGIC = Buffer.from('EBWPACK1')
/** Offsets in indexes are u32. */
export const MAX_PACK_BYTES = 2 ** 32 - 1
/** Upper bound of the trailer's size per chunk (a 60-byte index entry, stored raw at worst). */
export const TRAILER_BYTES_PER_CHUNK = 60

export function newPackId(): string {
  return randomBytes(PACK_ID_BYTES).toString('hex')
}

/**
 * Assembles one pack in a buffer it is lent (packs are pooled, so memory stays flat and the
 * allocator is not asked for 32 MiB a few times a second). Pure bookkeeping, no I/O.
 */
export class PackBuilder {
  readonly id = newPackId()
  readonly entries: IndexEntry[] = []
  readonly buffer: Buffer
  #bytes = 0

  constructor(buffer: Buffer) {
    this.buffer = buffer
  }

  get bytes(): number {
    return this.#bytes
  }

  get count(): number {
    return this.entries.length
  }

  /** Bytes the pack would take if sealed now, at most (blobs + trailer + tail). */
  get sealedBound(): number {
    return this.#bytes + TRAILER_BYTES_PER_CHUNK * this.entries.length + 64
  }

  /** Copies a blob, given as consecutive parts, into the pack. */
  add(id: Buffer, parts: readonly Buffer[], rawLength: number): void {
    const start = this.#bytes
    for (const part of parts) {
      if (this.#bytes + part.length > this.buffer.length) throw new Error('pack buffer overflow')
      this.#bytes += part.copy(this.buffer, this.#bytes)
    }
    this.entries.push({ id, pack: this.id, offset: start, length: this.#bytes - start, rawLength })
  }

  trailerPlaintext(): Buffer {
    return encodeIndex(this.entries)
  }

  /** The pack's bytes, given the already encoded trailer blob: a view of the lent buffer. */
  finish(trailerBlob: Buffer): Buffer {
    const tail = Buffer.allocUnsafe(4)
    tail.writeUInt32LE(trailerBlob.length)
    const end = this.#bytes + trailerBlob.length + 4 + PACK_MAGIC.length
    if (end > this.buffer.length) {
      return Buffer.concat([this.buffer.subarray(0, this.#bytes), trailerBlob, tail, PACK_MAGIC])
    }
    let at = this.#bytes
    at += trailerBlob.copy(this.buffer, at)
    at += tail.copy(this.buffer, at)
    PACK_MAGIC.copy(this.buffer, at)
    return this.buffer.subarray(0, end)
  }
}
