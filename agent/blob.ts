// Blob codec: the one encoding every stored byte goes through (chunks, indexes, manifests).
//
//   byte 0        flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM encrypted
//   [12 bytes]    GCM nonce                (encrypted only)
//   payload       zstd frame with its content checksum, or the raw bytes
//   [16 bytes]    GCM tag                  (encrypted only)
//
// The kind of blob ("chunk", "index", "manifest") is GCM additional data, so a blob cannot be
// passed off as another kind. Compression runs on libuv's thread pool (zlib's async API), which
// is what spreads the CPU work of a backup over all cores.
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { promisify } from 'node:util'
import pLimit from 'p-limit'
import zlib from 'node:zlib'
import { EbsWorkerError, ErrorCode, describe } from './errors.ts'

const zstdCompress = promisify(zlib.zstdCompress)
const zstdDecompress = promisify(zlib.zstdDecompress)

// zstd runs on libuv's thread pool, which is also sized for many reads in flight. More
// compressions at once than cores gains nothing and costs a compression context (and output
// buffer) each, so they are capped per process.
const compressions = pLimit(availableParallelism())

const FLAG_ZSTD = 1
const FLAG_AES_GCM = 2
const NONCE_BYTES = 12
const TAG_BYTES = 16

export type BlobKind = 'chunk' | 'index' | 'manifest' | 'pack-trailer' | 'checkpoint' | 'task'

export interface BlobCodecOptions {
  /** 32-byte AES-256-GCM key, or null for a repository without encryption. */
  key: Buffer | null
  /** zstd level; 1–3 keeps up with EBS throughput on small instances. */
  compressionLevel: number
  /** The chunk size: decompression output buffers are sized for it. */
  maxChunkBytes?: number
}

export class BlobCodec {
  readonly #key: Buffer | null
  readonly #level: number
  readonly #maxChunkBytes: number

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
    let flags = 0
    let payload = plain
    const compressed = await compressions(() =>
      zstdCompress(plain, {
        // One output buffer: the default 16 KiB would mean a callback and a copy per 16 KiB.
        chunkSize: plain.length + 1024,
        params: {
          [zlib.constants.ZSTD_c_compressionLevel]: this.#level,
          [zlib.constants.ZSTD_c_checksumFlag]: 1,
        },
      }),
    )
    // Incompressible data (already compressed or encrypted files on the volume) is stored raw:
    // it saves the decompression on restore and never costs more than one byte.
    if (compressed.length < plain.length) {
      flags |= FLAG_ZSTD
      payload = compressed
    }
    if (!this.#key) return [Buffer.of(flags), payload]
    flags |= FLAG_AES_GCM
    const header = Buffer.allocUnsafe(1 + NONCE_BYTES)
    header[0] = flags
    randomFillSync(header, 1, NONCE_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#key, header.subarray(1))
    cipher.setAAD(Buffer.from(kind))
    const body = cipher.update(payload)
    const tail = cipher.final()
    return tail.length ? [header, body, tail, cipher.getAuthTag()] : [header, body, cipher.getAuthTag()]
  }

  /** Decodes a blob; throws CHUNK_CORRUPT (or WRONG_KEY-like auth failures as CHUNK_CORRUPT) on damage. */
  async decode(kind: BlobKind, blob: Buffer, expectedLength?: number): Promise<Buffer> {
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
    try {
      return await zstdDecompress(payload, { chunkSize: Math.max(64 * 1024, (expectedLength ?? this.#maxChunkBytes) + 1024) })
    } catch (err) {
      throw corrupt(kind, `zstd: ${describe(err)}`)
    }
  }
}

function corrupt(kind: BlobKind, why: string): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.ChunkCorrupt, `${kind} blob is damaged: ${why}`)
}
