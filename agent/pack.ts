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

export function newPackId(): string {
  return randomBytes(PACK_ID_BYTES).toString('hex')
}

export function packObjectName(packId: string): string {
  return `packs/${packId.slice(0, 2)}/${packId}`
}

/** Collects blobs for one pack; pure bookkeeping, no I/O. */
export class PackBuilder {
  readonly id = newPackId()
  readonly entries: IndexEntry[] = []
  readonly #blobs: Buffer[] = []
  #bytes = 0

  get bytes(): number {
    return this.#bytes
  }

  get count(): number {
    return this.entries.length
  }

  add(id: Buffer, blob: Buffer, rawLength: number): void {
    this.entries.push({ id, pack: this.id, offset: this.#bytes, length: blob.length, rawLength })
    this.#blobs.push(blob)
    this.#bytes += blob.length
  }

  /** The pack's bytes, given the already encoded trailer blob. */
  finish(trailerBlob: Buffer): Buffer {
    const tail = Buffer.allocUnsafe(4)
    tail.writeUInt32LE(trailerBlob.length)
    return Buffer.concat([...this.#blobs, trailerBlob, tail, PACK_MAGIC])
  }

  trailerPlaintext(): Buffer {
    return encodeIndex(this.entries)
  }
}
