// Blob codec: the one encoding every stored byte goes through (chunks, indexes, manifests).
//
//   byte 0        flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM encrypted
//   [12 bytes]    GCM nonce                (encrypted only)
//   payload       zstd frame with its content checksum, or the raw bytes
//   [16 bytes]    GCM tag                  (encrypted only)
//
// The kind of blob ("chunk", "index", "manifest") is GCM additional data, so a blob cannot be
// passed off as another kind. Compression runs on libuv's thread pool (pooled zstd contexts,
// zstd.ts), which is what spreads the CPU work of a backup over all cores.
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto'
import { availableParallelism } from 'node:os'
import pLimit from 'p-limit'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { Compressor, Decompressor, SAMPLE_BYTES, SAMPLES } from './zstd.ts'


// zstd runs on libuv's thread pool, which is also sized for many reads in flight. More
// compressions at once than cores gains nothing and costs a compression context (and output
// buffer) each, so they are capped per process.
const compressions = pLimit(availableParallelism())

const FLAG_ZSTD = 1
const FLAG_AES_GCM = 2
const NONCE_BYTES = 12
const TAG_BYTES = 16

export type BlobKind = 'chunk' | 'tree' | 'index' | 'manifest' | 'pack-trailer' | 'checkpoint' | 'task' | 'lock' | 'moved' | 'condemned'

export interface BlobCodecOptions {
  /** 32-byte AES-256-GCM key, or null for a repository without encryption. */
  key: Buffer | null
  /** zstd level; 1–3 keeps up with EBS throughput on small instances. */
  compressionLevel: number
  /** The chunk size: decompression output buffers are sized for it. */
  maxChunkBytes?: number
}

/** The output buffer a decode of a chunk of `length` bytes needs: a caller's smaller one is not used. */
export function decodeBufferSize(length: number): number {
  return Math.max(64 * 1024, length + 1024)
}

export class BlobCodec {
  readonly #key: Buffer | null
  readonly #level: number
  readonly #maxChunkBytes: number
  readonly #compressors: Compressor[] = []
  readonly #decompressors: Decompressor[] = []

  constructor(options: BlobCodecOptions) {
    if (options.key && options.key.length !== 32) throw new Error('AES-256-GCM needs a 32-byte key')
    this.#key = options.key
    this.#level = options.compressionLevel
    this.#maxChunkBytes = options.maxChunkBytes ?? 0
  }

  /** Encodes into one buffer (indexes, manifests). */
  async encode(kind: BlobKind, plain: Buffer): Promise<Buffer> {
    return Buffer.concat(await this.encodeParts(kind, plain))
  }

  /**
   * Encodes into the blob's consecutive parts (header, body, tag), so the caller can copy
   * them straight into a pack instead of joining them first. A part may be `plain` itself.
   */
  async encodeParts(kind: BlobKind, plain: Buffer): Promise<Buffer[]> {
    // The whole encoding holds a compressor (its zstd context and output buffer) from the pool:
    // the compressed bytes are a view of that buffer until they are encrypted or copied.
    return await compressions(async () => {
      const compressor = this.#compressors.pop() ?? new Compressor(this.#level)
      try {
        if (!(await worthCompressing(plain, compressor))) return this.#seal(kind, plain, [])
        return this.#seal(kind, plain, await compressor.compress(plain))
      } finally {
        if (!compressor.failure) this.#compressors.push(compressor)
      }
    })
  }

  #seal(kind: BlobKind, plain: Buffer, compressed: Buffer[]): Buffer[] {
    let flags = 0
    let payload: Buffer[] = [plain]
    // Incompressible data is stored raw: it saves the decompression on restore and never costs
    // more than one byte.
    if (compressed.length && byteLength(compressed) < plain.length) {
      flags |= FLAG_ZSTD
      payload = compressed
    }
    if (!this.#key) {
      // The compressor's buffer is reused once this returns: compressed bytes are copied out.
      return [Buffer.of(flags), payload === compressed ? Buffer.concat(compressed) : plain]
    }
    flags |= FLAG_AES_GCM
    const header = Buffer.allocUnsafe(1 + NONCE_BYTES)
    header[0] = flags
    randomFillSync(header, 1, NONCE_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#key, header.subarray(1))
    cipher.setAAD(Buffer.from(kind))
    const parts = [header]
    for (const piece of payload) parts.push(cipher.update(piece))
    const tail = cipher.final()
    if (tail.length) parts.push(tail)
    parts.push(cipher.getAuthTag())
    return parts
  }

  /**
   * Decodes a blob; throws CHUNK_CORRUPT (or WRONG_KEY-like auth failures as CHUNK_CORRUPT) on
   * damage. With `into` (a buffer the caller reuses), a compressed blob is decompressed there and
   * the result is a view of it.
   */
  async decode(kind: BlobKind, blob: Buffer, expectedLength?: number, into?: Buffer): Promise<Buffer> {
    if (blob.length < 1) throw corrupt(kind, 'empty blob')
    const flags = blob[0]!
    if (flags & ~(FLAG_ZSTD | FLAG_AES_GCM)) throw corrupt(kind, `unknown flags 0x${flags.toString(16)}`)
    let payload = blob.subarray(1)
    if (flags & FLAG_AES_GCM) {
      if (!this.#key) throw corrupt(kind, 'encrypted blob in a repository opened without a key')
      if (payload.length < NONCE_BYTES + TAG_BYTES) throw corrupt(kind, 'truncated encrypted blob')
      const nonce = payload.subarray(0, NONCE_BYTES)
      const tag = payload.subarray(payload.length - TAG_BYTES)
      const decipher = createDecipheriv('aes-256-gcm', this.#key, nonce)
      decipher.setAAD(Buffer.from(kind))
      decipher.setAuthTag(tag)
      try {
        const body = decipher.update(payload.subarray(NONCE_BYTES, payload.length - TAG_BYTES))
        const tail = decipher.final() // empty for GCM; checks the tag
        payload = tail.length ? Buffer.concat([body, tail]) : body
      } catch {
        throw corrupt(kind, 'authentication failed (damaged data or a different key)')
      }
    } else if (this.#key) {
      throw corrupt(kind, 'unencrypted blob in an encrypted repository')
    }
    if (!(flags & FLAG_ZSTD)) return payload
    const size = decodeBufferSize(expectedLength ?? this.#maxChunkBytes)
    const decompressor = this.#decompressors.pop() ?? new Decompressor()
    let pieces: Buffer[]
    try {
      pieces = await decompressor.run(payload, into && into.length >= size ? into : null, size)
    } catch (err) {
      throw corrupt(kind, `zstd: ${describe(err)}`)
    } finally {
      if (!decompressor.failure) this.#decompressors.push(decompressor)
    }
    // One piece in the caller's buffer: the usual case. Otherwise (no buffer given, or a frame
    // larger than announced) the pieces are views of the decompressor's buffer: copied out.
    if (into && pieces.length === 1 && pieces[0]!.buffer === into.buffer) return pieces[0]!
    return Buffer.concat(pieces)
  }
}

function byteLength(parts: readonly Buffer[]): number {
  let n = 0
  for (const part of parts) n += part.length
  return n
}

/**
 * Whether zstd has a chance on this data: a large buffer is sampled first (SAMPLES slices of
 * SAMPLE_BYTES spread over it, compressed together by the pooled compressor that would compress
 * the whole, off the main thread). Incompressible data (already compressed or encrypted files on
 * the volume) costs zstd about as much CPU as text does, for nothing; a sample that saves less
 * than 3 % sends the whole buffer raw, which the format allows (the blob's zstd flag is clear). A
 * chunk whose compressible part the samples miss (less than an eighth of it, between them) is
 * stored raw: a little space for a lot of CPU.
 */
async function worthCompressing(plain: Buffer, compressor: Compressor): Promise<boolean> {
  if (plain.length < SAMPLE_BYTES * SAMPLES * 4) return true
  const sample = compressor.sample
  const step = Math.floor((plain.length - SAMPLE_BYTES) / (SAMPLES - 1))
  for (let i = 0; i < SAMPLES; i++) plain.copy(sample, i * SAMPLE_BYTES, i * step, i * step + SAMPLE_BYTES)
  const parts = await compressor.compress(sample)
  return parts.reduce((n, p) => n + p.length, 0) < sample.length * 0.97
}

function corrupt(kind: BlobKind, why: string): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.ChunkCorrupt, `${kind} blob is damaged: ${why}`)
}
