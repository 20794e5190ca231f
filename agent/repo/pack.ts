// A pack is many blobs in one object, so a terabyte is thousands of S3 objects rather than a
// million. Data packs hold chunks, tree packs the nodes of chunk lists. Layout:
//   blob | blob | … | trailer blob | u32 trailer length | "EBWPACK1"
// The trailer is the pack's own index (an index run, index-run.ts, in pack order; version 1
// repositories: chunk-index.ts's encoding), so the indexes can always be rebuilt from the packs.
import { randomBytes } from 'node:crypto'
import { copyInto } from '../core/copy.ts'
import { encodeRun } from './index-run.ts'
import { PACK_ID_BYTES, type BlobRef } from './tree.ts'

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
  readonly entries: BlobRef[] = []
  readonly buffer: Buffer
  /** A tree pack (chunk-list nodes) rather than a data pack. */
  readonly tree: boolean
  #bytes = 0

  constructor(buffer: Buffer, options: { tree?: boolean } = {}) {
    this.buffer = buffer
    this.tree = options.tree ?? false
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

  /** Copies a blob into the pack; returns where it is. */
  add(id: Buffer, blob: Buffer, rawLength: number): BlobRef {
    const start = this.#bytes
    if (this.#bytes + blob.length > this.buffer.length) throw new Error('pack buffer overflow')
    this.#bytes += copyInto(this.buffer, blob, this.#bytes)
    const ref = { id, pack: this.id, offset: start, length: this.#bytes - start, rawLength }
    this.entries.push(ref)
    return ref
  }

  trailerPlaintext(): Buffer {
    return encodeRun(this.entries, { tree: this.tree })
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
