// The blob format: the one encoding every stored byte goes through (chunks, chunk-list nodes,
// indexes, manifests, records).
//
//   byte 0        flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM encrypted
//   [12 bytes]    GCM nonce                (encrypted only)
//   payload       zstd frame with its content checksum, or the raw bytes
//   [16 bytes]    GCM tag                  (encrypted only)
//
// The kind of blob ("chunk", "index", "manifest") is GCM additional data, so a blob cannot be
// passed off as another kind. A BlobEngine does the work synchronously, into buffers its caller
// chooses: one runs on each codec thread (codec-thread.ts) for chunks, and one on the main thread
// for the small blobs (codec.ts). Nothing here does I/O.
import { createCipheriv, createDecipheriv, createHash, createHmac, randomFillSync } from 'node:crypto'
import { compressBound, frameContentSize, ZstdCompressor, ZstdDecompressor } from './zstd.ts'
import { copyInto } from '../core/copy.ts'

export const FLAG_ZSTD = 1
export const FLAG_AES_GCM = 2
const NONCE_BYTES = 12
const TAG_BYTES = 16

export type BlobKind = 'chunk' | 'tree' | 'index' | 'manifest' | 'pack-trailer' | 'checkpoint' | 'task' | 'lock' | 'moved' | 'condemned'

/** Keys and settings of one repository: what an engine needs to encode and decode its blobs. */
export interface BlobProfile {
  /** 32-byte AES-256-GCM key, or null for a repository without encryption. */
  encryption: Buffer | null
  /** HMAC-SHA-256 key of chunk ids, or null (plain SHA-256). */
  chunkId: Buffer | null
  /** zstd level of new blobs. */
  level: number
}

/** A blob that cannot be decoded: damaged, of another kind, or under another key. */
export class BlobDamage extends Error {}

/**
 * The buffer a blob of `plainLength` bytes may need: the largest encoding, and room to start it
 * at BlobEngine.alignedStart.
 */
export function sealBound(plainLength: number): number {
  return 1 + NONCE_BYTES + compressBound(plainLength) + TAG_BYTES + ALIGN - 1
}

/** The output buffer a decode of `length` plain bytes needs. */
export function decodeBufferSize(length: number): number {
  return Math.max(64 * 1024, length + 1024)
}

/** Incompressibility sampling: SAMPLES slices of SAMPLE_BYTES spread over a large buffer. */
const SAMPLE_BYTES = 4096
const SAMPLES = 8
const ZEROS = new Uint8Array(1024 * 1024)
/** AES-GCM runs over a chunk in pieces of this size (see seal). */
const PIECE = 16 * 1024
/** The alignment of a chunk's payload in its seal buffer (see alignedStart). */
const ALIGN = 16

export class BlobEngine {
  readonly #profile: BlobProfile
  #compressor: ZstdCompressor | null = null
  #decompressor: ZstdDecompressor | null = null
  readonly #sample = Buffer.allocUnsafeSlow(SAMPLE_BYTES * SAMPLES)
  readonly #sampleOut = Buffer.allocUnsafeSlow(compressBound(SAMPLE_BYTES * SAMPLES))
  readonly #aad = new Map<BlobKind, Buffer>()
  /** Where a blob is decrypted to (then decompressed or copied out): the size of the largest so far. */
  #plain = Buffer.allocUnsafeSlow(0)

  constructor(profile: BlobProfile) {
    if (profile.encryption && profile.encryption.length !== 32) throw new Error('AES-256-GCM needs a 32-byte key')
    this.#profile = profile
  }

  /**
   * Where in a page-aligned buffer a chunk's blob should start so that its payload (after the
   * flags byte and the nonce) starts on a 16-byte boundary: 3 encrypted, 15 plain. seal() copies
   * into the payload (a raw chunk; each piece of ciphertext from node:crypto's 16-byte-aligned
   * buffers), and copies between equally aligned addresses are the fast ones: a raw chunk's seal
   * takes 0.77 ms aligned, 0.99 at 0 (scripts/bench-alignment.ts).
   */
  get alignedStart(): number {
    return (ALIGN - ((this.#profile.encryption ? 1 + NONCE_BYTES : 1) % ALIGN)) % ALIGN
  }

  /** Content address of a chunk: SHA-256, or HMAC-SHA-256 with the repository's id key. */
  chunkId(data: Uint8Array): Buffer {
    const key = this.#profile.chunkId
    return key ? createHmac('sha256', key).update(data).digest() : createHash('sha256').update(data).digest()
  }

  /** Encodes `plain` into `out` (at least sealBound(plain.length) bytes); returns the blob's length. */
  seal(kind: BlobKind, plain: Uint8Array, out: Buffer): number {
    const key = this.#profile.encryption
    const at = key ? 1 + NONCE_BYTES : 1
    if (out.length < at + compressBound(plain.length) + TAG_BYTES) throw new Error(`output buffer of ${out.length} bytes is too small for a ${plain.length}-byte blob`)
    let flags = 0
    let length = plain.length
    // Incompressible data is stored raw: it saves the decompression on restore and never costs
    // more than one byte.
    if (this.#worthCompressing(plain)) {
      const n = this.#compressorFor().compress(plain, out, at)
      if (n < plain.length) {
        flags |= FLAG_ZSTD
        length = n
      }
    }
    if (!(flags & FLAG_ZSTD)) copyInto(out, plain, at)
    if (!key) {
      out[0] = flags
      return at + length
    }
    flags |= FLAG_AES_GCM
    out[0] = flags
    randomFillSync(out, 1, NONCE_BYTES)
    const cipher = createCipheriv('aes-256-gcm', key, out.subarray(1, at))
    cipher.setAAD(this.#aadOf(kind))
    // node:crypto has no update-into: the ciphertext comes in new buffers, copied over the payload
    // they replace. Small pieces are cheap ones (from malloc's free lists, warm in the cache); a
    // whole chunk's would be a fresh, zero-filled MiB each time: twice the cost of the cipher.
    for (let p = at; p < at + length; p += PIECE) copyInto(out, cipher.update(out.subarray(p, Math.min(p + PIECE, at + length))), p)
    cipher.final() // nothing more for GCM
    cipher.getAuthTag().copy(out, at + length)
    return at + length + TAG_BYTES
  }

  /**
   * Decodes `blob` into `out` at its start; returns the plain length. `expected`: the plain length
   * the caller knows (chunks). Throws BlobDamage on anything wrong with the blob.
   */
  open(kind: BlobKind, blob: Uint8Array, out: Uint8Array, expected?: number): number {
    const payload = this.#decrypt(kind, blob)
    if (!(blob[0]! & FLAG_ZSTD)) {
      if (expected !== undefined && payload.length !== expected) throw new BlobDamage(`holds ${payload.length} bytes, expected ${expected}`)
      if (payload.length > out.length) throw new BlobDamage(`holds ${payload.length} bytes, more than the ${out.length} expected`)
      copyInto(out, payload, 0)
      return payload.length
    }
    return this.#decompress(payload, out, expected ?? frameContentSize(payload) ?? undefined)
  }

  /** Decodes a blob of unknown plain size into a new buffer (the small blobs: indexes, manifests, records). */
  openToBuffer(kind: BlobKind, blob: Uint8Array): Buffer {
    const payload = this.#decrypt(kind, blob)
    if (!(blob[0]! & FLAG_ZSTD)) return Buffer.from(payload)
    const size = frameContentSize(payload)
    if (size === null) throw new BlobDamage('zstd: the frame does not say its size')
    // One spare byte: output that fills its buffer cannot be told from output that did not fit.
    const out = Buffer.allocUnsafe(size + 1)
    return out.subarray(0, this.#decompress(payload, out, size))
  }

  #decompress(frame: Uint8Array, out: Uint8Array, expected: number | undefined): number {
    try {
      return this.#decompressorFor().decompress(frame, out, 0, expected)
    } catch (err) {
      throw new BlobDamage(`zstd: ${(err as Error).message}`)
    }
  }

  /** Whether a buffer holds only zero bytes (compared a MiB at a time, natively). */
  static isZero(data: Uint8Array): boolean {
    for (let at = 0; at < data.length; at += ZEROS.length) {
      const n = Math.min(ZEROS.length, data.length - at)
      if (Buffer.compare(data.subarray(at, at + n), ZEROS.subarray(0, n)) !== 0) return false
    }
    return true
  }

  /** The flags are known and the blob is as long as they need; decrypted (and authenticated) when encrypted. */
  #decrypt(kind: BlobKind, blob: Uint8Array): Uint8Array {
    if (blob.length < 1) throw new BlobDamage('empty blob')
    const flags = blob[0]!
    if (flags & ~(FLAG_ZSTD | FLAG_AES_GCM)) throw new BlobDamage(`unknown flags 0x${flags.toString(16)}`)
    const key = this.#profile.encryption
    const payload = blob.subarray(1)
    if (!(flags & FLAG_AES_GCM)) {
      if (key) throw new BlobDamage('unencrypted blob in an encrypted repository')
      return payload
    }
    if (!key) throw new BlobDamage('encrypted blob in a repository opened without a key')
    if (payload.length < NONCE_BYTES + TAG_BYTES) throw new BlobDamage('truncated encrypted blob')
    const decipher = createDecipheriv('aes-256-gcm', key, payload.subarray(0, NONCE_BYTES))
    decipher.setAAD(this.#aadOf(kind))
    decipher.setAuthTag(payload.subarray(payload.length - TAG_BYTES))
    const body = payload.subarray(NONCE_BYTES, payload.length - TAG_BYTES)
    // In pieces into a reused buffer, for the reason seal() says.
    if (this.#plain.length < body.length) this.#plain = Buffer.allocUnsafeSlow(body.length)
    const plain = this.#plain
    try {
      for (let p = 0; p < body.length; p += PIECE) decipher.update(body.subarray(p, Math.min(p + PIECE, body.length))).copy(plain, p)
      decipher.final() // checks the tag
    } catch {
      throw new BlobDamage('authentication failed (damaged data or a different key)')
    }
    return plain.subarray(0, body.length)
  }

  /**
   * Whether zstd has a chance on this data: a large buffer is sampled first (SAMPLES slices of
   * SAMPLE_BYTES spread over it, compressed together). Incompressible data (already compressed or
   * encrypted files on the volume) costs zstd about as much CPU as text does, for nothing; a
   * sample that saves less than 3 % sends the whole buffer raw, which the format allows. A chunk
   * whose compressible part the samples miss (less than an eighth of it, between them) is stored
   * raw: a little space for a lot of CPU.
   */
  #worthCompressing(plain: Uint8Array): boolean {
    if (plain.length < SAMPLE_BYTES * SAMPLES * 4) return true
    const sample = this.#sample
    const step = Math.floor((plain.length - SAMPLE_BYTES) / (SAMPLES - 1))
    for (let i = 0; i < SAMPLES; i++) sample.set(plain.subarray(i * step, i * step + SAMPLE_BYTES), i * SAMPLE_BYTES)
    return this.#compressorFor().compress(sample, this.#sampleOut) < sample.length * 0.97
  }

  #compressorFor(): ZstdCompressor {
    if (this.#compressor?.broken) this.#compressor.close()
    if (!this.#compressor || this.#compressor.broken) this.#compressor = new ZstdCompressor(this.#profile.level)
    return this.#compressor
  }

  #decompressorFor(): ZstdDecompressor {
    if (this.#decompressor?.broken) this.#decompressor.close()
    if (!this.#decompressor || this.#decompressor.broken) this.#decompressor = new ZstdDecompressor()
    return this.#decompressor
  }

  #aadOf(kind: BlobKind): Buffer {
    let aad = this.#aad.get(kind)
    if (!aad) this.#aad.set(kind, (aad = Buffer.from(kind)))
    return aad
  }
}
