// Pooled zstd contexts on node:zlib's internals. zlib's one-shot zstdCompress()/zstdDecompress()
// make a context, a chunk-sized output buffer and a joined copy of the result for every call:
// three allocations of about a chunk each, which at hundreds of chunks per second made V8 run a
// full garbage collection every ~20 chunks (external memory pressure). Here a stream's own
// processing writes each frame into a buffer chosen per call. This is the one module that relies
// on node:zlib's private members (_processChunk, _outBuffer, _outOffset, _chunkSize, push), those
// of Node 24, which package.json pins; test/zstd.test.ts fails if Node changes them. A mismatch
// that slipped through would fail loudly rather than corrupt data: frames carry their content
// checksum and every chunk is checked against its id on restore.
import zlib from 'node:zlib'

/** A compressor's sample buffer: SAMPLES slices of SAMPLE_BYTES (codec.ts, worthCompressing). */
export const SAMPLE_BYTES = 4096
export const SAMPLES = 8

/** One zstd context and its output buffer, reused chunk after chunk. */
export class ZstdRunner {
  readonly #stream: ZlibInternals
  #own = Buffer.allocUnsafeSlow(0)
  #pieces: Buffer[] = []
  #pending: ((err: Error | null) => void) | null = null
  /** Set once the stream failed: it is then dropped from the pool. */
  failure: Error | null = null

  constructor(stream: zlib.ZstdCompress | zlib.ZstdDecompress) {
    this.#stream = stream as unknown as ZlibInternals
    // Output is collected here, not through the stream's readable side.
    this.#stream.push = (piece: Buffer | null) => {
      if (piece) this.#pieces.push(piece)
      return true
    }
    // node:zlib reports a failure (a damaged frame) by destroying the stream, without calling back.
    stream.on('error', (err: Error) => {
      this.failure = err
      this.#pending?.(err)
    })
  }

  /**
   * Runs one whole frame through the context: the output as views of `out` (or of the runner's
   * own buffer of `size` bytes), valid until the runner's next use. More than one piece when the
   * output did not fit (node:zlib then goes on in buffers of its own).
   */
  run(input: Buffer, out: Buffer | null, size: number): Promise<Buffer[]> {
    if (!out) {
      if (this.#own.length < size) this.#own = Buffer.allocUnsafeSlow(size)
      out = this.#own
    }
    const s = this.#stream
    s._outBuffer = out
    s._outOffset = 0
    s._chunkSize = out.length
    this.#pieces = []
    return new Promise<Buffer[]>((resolve, reject) => {
      if (this.failure) return reject(this.failure)
      this.#pending = (err) => {
        this.#pending = null
        if (err) reject(err)
        else resolve(this.#pieces)
      }
      s._processChunk(input, zlib.constants.ZSTD_e_end, () => this.#pending?.(this.failure))
    })
  }
}

export class Compressor extends ZstdRunner {
  /** Where worthCompressing gathers its sample (one per pooled compressor). */
  readonly sample = Buffer.allocUnsafeSlow(SAMPLE_BYTES * SAMPLES)

  constructor(level: number) {
    super(zlib.createZstdCompress({
      params: {
        [zlib.constants.ZSTD_c_compressionLevel]: level,
        [zlib.constants.ZSTD_c_checksumFlag]: 1,
      },
    }))
  }

  /** One zstd frame of `plain`, as views of the compressor's buffer (valid until its next use). */
  compress(plain: Buffer): Promise<Buffer[]> {
    // zstd's bound for one frame, plus room for its header and checksum.
    return this.run(plain, null, plain.length + (plain.length >> 7) + 1024)
  }
}

export class Decompressor extends ZstdRunner {
  constructor() {
    super(zlib.createZstdDecompress())
  }
}

/** The parts of node:zlib's stream classes the pooled codecs use (Node 24). */
export interface ZlibInternals {
  _outBuffer: Buffer
  _outOffset: number
  _chunkSize: number
  _processChunk(chunk: Buffer, flushFlag: number, cb: () => void): void
  push(chunk: Buffer | null): boolean
}

