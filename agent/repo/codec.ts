// The repository's codec: how blobs are encoded (blob-format.ts) and where the work runs. Chunks
// — nearly all of the CPU of a backup or a restore — go to the codec threads (codec-threads.ts),
// in the shared buffers they were read into; the small blobs (chunk-list nodes, indexes,
// manifests, records) are encoded on the calling thread, where handing them over would cost more
// than it saves. A chunk in an ordinary buffer (a test, a caller that did not ask for a shared
// one) is done on the calling thread too: same format, same checks.
import { createHash } from 'node:crypto'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { BlobDamage, BlobEngine, decodeBufferSize, sealBound, type BlobKind } from './blob-format.ts'
import { CodecError, CodecThreads, isShared } from './codec-threads.ts'

export { decodeBufferSize, sealBound, type BlobKind } from './blob-format.ts'
export { sharedBuffer } from './codec-threads.ts'

export interface BlobCodecOptions {
  /** 32-byte AES-256-GCM key, or null for a repository without encryption. */
  key: Buffer | null
  /** HMAC-SHA-256 key of chunk ids, or null (plain SHA-256). */
  idKey?: Buffer | null
  /** zstd level; 1–3 keeps up with EBS throughput on small instances. */
  compressionLevel: number
  /** The chunk size: decode buffers of chunks are sized for it. */
  maxChunkBytes?: number
  /** The pool chunks go to (tests give their own); the process's by default. */
  threads?: CodecThreads
}

export class BlobCodec {
  readonly #engine: BlobEngine
  readonly #maxChunkBytes: number
  readonly #threads: CodecThreads
  readonly #profile: number

  constructor(options: BlobCodecOptions) {
    const profile = { encryption: options.key, chunkId: options.idKey ?? null, level: options.compressionLevel }
    this.#engine = new BlobEngine(profile)
    this.#maxChunkBytes = options.maxChunkBytes ?? 0
    this.#threads = options.threads ?? CodecThreads.shared()
    this.#profile = this.#threads.profile(profile)
  }

  /** Content address of a chunk or node, on the calling thread (small blobs; chunks: identifyChunk). */
  chunkId(data: Uint8Array): Buffer {
    return this.#engine.chunkId(data)
  }

  /** Encodes into one new buffer (the small blobs). */
  async encode(kind: BlobKind, plain: Buffer): Promise<Buffer> {
    const out = Buffer.allocUnsafe(sealBound(plain.length))
    return out.subarray(0, this.#engine.seal(kind, plain, out))
  }

  /**
   * Decodes a blob; throws CHUNK_CORRUPT on damage (or a different key). With `into` (a buffer
   * the caller reuses, large enough for `expectedLength`), the result is a view of it.
   */
  async decode(kind: BlobKind, blob: Buffer, expectedLength?: number, into?: Buffer): Promise<Buffer> {
    try {
      if (expectedLength === undefined && !into) return this.#engine.openToBuffer(kind, blob)
      const out = into && into.length >= decodeBufferSize(expectedLength ?? this.#maxChunkBytes) ? into : Buffer.allocUnsafe(decodeBufferSize(expectedLength ?? this.#maxChunkBytes))
      return out.subarray(0, this.#engine.open(kind, blob, out, expectedLength))
    } catch (err) {
      if (err instanceof BlobDamage) throw corrupt(kind, err.message)
      throw err
    }
  }

  /** Plain SHA-256 of an object's body (a pack's, for its upload's signature): on a codec thread when shared. */
  async bodySha256(data: Buffer): Promise<Buffer> {
    if (!isShared(data)) return createHash('sha256').update(data).digest()
    return await this.#threads.digest(this.#profile, data)
  }

  /** A chunk's id, or null when it is all zeros: on a codec thread when `data` is shared. */
  async identifyChunk(data: Buffer): Promise<Buffer | null> {
    if (!isShared(data)) return BlobEngine.isZero(data) ? null : this.#engine.chunkId(data)
    return await this.#threads.identify(this.#profile, data)
  }

  /**
   * Encodes a chunk into `out` (sealBound(data.length) bytes, page-aligned as sharedBuffer()s are);
   * returns the blob, a view of `out` from the engine's alignedStart.
   */
  async sealChunk(data: Buffer, out: Buffer): Promise<Buffer> {
    const start = this.#engine.alignedStart
    const into = out.subarray(start)
    if (!isShared(data) || !isShared(out)) return out.subarray(start, start + this.#engine.seal('chunk', data, into))
    return out.subarray(start, start + await this.#threads.seal(this.#profile, data, into))
  }

  /**
   * Decodes a chunk blob into `out` (decodeBufferSize(expected) bytes) and proves it is chunk
   * `id`, `expected` bytes long; returns a view of `out`. CHUNK_CORRUPT otherwise.
   */
  async openChunk(blob: Buffer, id: Buffer, expected: number, out: Buffer): Promise<Buffer> {
    let length: number
    try {
      if (isShared(blob) && isShared(out)) length = await this.#threads.open(this.#profile, blob, id, expected, out)
      else {
        length = this.#engine.open('chunk', blob, out, expected)
        if (!this.#engine.chunkId(out.subarray(0, length)).equals(id)) throw new BlobDamage('does not match its id')
      }
    } catch (err) {
      if (err instanceof BlobDamage || (err instanceof CodecError && err.damaged)) throw corrupt('chunk', err.message)
      throw err
    }
    return out.subarray(0, length)
  }
}

function corrupt(kind: BlobKind, why: string): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.ChunkCorrupt, `${kind} blob is damaged: ${why}`)
}
