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

const zstdDecompress = promisify(zlib.zstdDecompress)

// zstd runs on libuv's thread pool, which is also sized for many reads in flight. More
// compressions at once than cores gains nothing and costs a compression context (and output
// buffer) each, so they are capped per process.
const compressions = pLimit(availableParallelism())

const FLAG_ZSTD = 1
const FLAG_AES_GCM = 2
const NONCE_BYTES = 12
const TAG_BYTES = 16

export type BlobKind = 'chunk' | 'index' | 'manifest' | 'pack-trailer' | 'checkpoint'

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
  readonly #compressors: Compressor[] = []

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
        return this.#seal(kind, plain, await compressor.compress(plain))
      } finally {
        if (!compressor.failure) this.#compressors.push(compressor)
      }
    })
  }

  #seal(kind: BlobKind, plain: Buffer, compressed: Buffer[]): Buffer[] {
    let flags = 0
    let payload: Buffer[] = [plain]
    // Incompressible data (already compressed or encrypted files on the volume) is stored raw:
    // it saves the decompression on restore and never costs more than one byte.
    if (byteLength(compressed) < plain.length) {
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

function byteLength(parts: readonly Buffer[]): number {
  let n = 0
  for (const part of parts) n += part.length
  return n
}

/**
 * One zstd compression context and its output buffer, reused chunk after chunk. zlib's
 * one-shot zstdCompress() makes a context, a chunk-sized output buffer and a joined copy of the
 * result for every call: three allocations of about a chunk each, which at hundreds of chunks
 * per second made V8 run a full garbage collection every ~20 chunks (external memory pressure).
 * Here the stream's own processing writes each frame into the same buffer; the node:zlib
 * internals this relies on (_processChunk, _outBuffer, push) are those of Node 24, which
 * package.json pins, and a mismatch fails loudly in the tests rather than corrupting data: the
 * frame carries its content checksum and every chunk is verified against its id on restore.
 */
class Compressor {
  readonly #stream: zlib.ZstdCompress & ZlibInternals
  #out = Buffer.allocUnsafeSlow(0)
  #pieces: Buffer[] = []
  #pending: ((err: Error | null) => void) | null = null
  /** Set once the stream failed: it is then dropped from the pool. */
  failure: Error | null = null

  constructor(level: number) {
    this.#stream = zlib.createZstdCompress({
      params: {
        [zlib.constants.ZSTD_c_compressionLevel]: level,
        [zlib.constants.ZSTD_c_checksumFlag]: 1,
      },
    }) as zlib.ZstdCompress & ZlibInternals
    // Output is collected here, not through the stream's readable side.
    this.#stream.push = (piece: Buffer | null) => {
      if (piece) this.#pieces.push(piece)
      return true
    }
    // node:zlib reports a failure by destroying the stream, without calling back.
    this.#stream.on('error', (err: Error) => {
      this.failure = err
      this.#pending?.(err)
    })
  }

  /** One zstd frame of `plain`, as views of the compressor's buffer (valid until its next use). */
  compress(plain: Buffer): Promise<Buffer[]> {
    // zstd's bound for one frame, plus room for its header and checksum.
    const bound = plain.length + (plain.length >> 7) + 1024
    if (this.#out.length < bound) this.#out = Buffer.allocUnsafeSlow(bound)
    const s = this.#stream
    s._outBuffer = this.#out
    s._outOffset = 0
    s._chunkSize = this.#out.length
    this.#pieces = []
    return new Promise<Buffer[]>((resolve, reject) => {
      if (this.failure) return reject(this.failure)
      this.#pending = (err) => {
        this.#pending = null
        if (err) reject(err)
        else resolve(this.#pieces)
      }
      s._processChunk(plain, zlib.constants.ZSTD_e_end, () => this.#pending?.(this.failure))
    })
  }
}

/** The parts of node:zlib's stream classes the pooled codecs use (Node 24). */
interface ZlibInternals {
  _outBuffer: Buffer
  _outOffset: number
  _chunkSize: number
  _processChunk(chunk: Buffer, flushFlag: number, cb: () => void): void
  push(chunk: Buffer | null): boolean
}

function corrupt(kind: BlobKind, why: string): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.ChunkCorrupt, `${kind} blob is damaged: ${why}`)
}
