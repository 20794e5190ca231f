// zstd contexts reused frame after frame, run synchronously into buffers the caller chooses.
// node:zlib's one-shot zstdCompressSync()/zstdDecompressSync() make a context, an output buffer
// and a joined copy of the result per call, and close the context: at hundreds of chunks per
// second that is three chunk-sized allocations each and a full garbage collection every few
// dozen chunks. Here one context per thread (blob-format.ts runs on the codec threads,
// codec-threads.ts) writes each whole frame straight where it goes.
//
// This is the one module that relies on node:zlib's private members: a stream's native `_handle`
// (its writeSync and onerror) and `_writeState`, those of Node 24, which package.json pins;
// test/zstd.test.ts fails if Node changes them. A mismatch that slipped through would fail loudly
// rather than corrupt data: frames carry their content checksum and every chunk is checked
// against its id on restore.
import zlib from 'node:zlib'

/** The parts of a node:zlib stream this module uses (Node 24). */
export interface ZlibInternals {
  _handle: {
    writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void
    onerror: (message: string, errno: number) => void
  }
  /** After writeSync: [output bytes still free, input bytes not consumed]. */
  _writeState: Uint32Array
}

/** The largest zstd frame of `n` input bytes, with room for its header and checksum. */
export function compressBound(n: number): number {
  return n + (n >> 7) + 1024
}

/** One zstd context: a whole frame in, a whole frame out, each call. */
class ZstdContext {
  readonly #stream: zlib.ZstdCompress | zlib.ZstdDecompress
  readonly #internals: ZlibInternals
  #error: string | null = null
  /** Set once the context failed or was left mid-frame: it must then be replaced. */
  broken = false

  constructor(stream: zlib.ZstdCompress | zlib.ZstdDecompress) {
    this.#stream = stream
    this.#internals = stream as unknown as ZlibInternals
    // node:zlib reports a failure (a damaged frame) through the handle's onerror, synchronously.
    this.#internals._handle.onerror = (message: string) => {
      this.#error = message
    }
  }

  /**
   * Runs `input` through as one frame into `out` at `at`; returns the bytes written. Throws (and
   * is broken from then on) on a damaged frame, or when the output did not fit in `out` — which
   * must therefore have at least one byte to spare.
   */
  protected run(input: Uint8Array, out: Uint8Array, at: number): number {
    if (this.broken) throw new Error('zstd context used after a failure')
    const room = out.length - at
    this.#internals._handle.writeSync(zlib.constants.ZSTD_e_end, input, 0, input.length, out, at, room)
    const [freeOut, leftIn] = this.#internals._writeState as unknown as [number, number]
    if (this.#error !== null) {
      this.broken = true
      throw new Error(this.#error)
    }
    // Output that filled the buffer may not be the whole frame: the context is mid-frame now.
    if (freeOut === 0 || leftIn !== 0) {
      this.broken = true
      throw new Error(`zstd output larger than the ${room} bytes expected`)
    }
    return room - freeOut
  }

  close(): void {
    this.#stream.close()
  }
}

export class ZstdCompressor extends ZstdContext {
  constructor(level: number) {
    super(zlib.createZstdCompress({
      params: {
        [zlib.constants.ZSTD_c_compressionLevel]: level,
        [zlib.constants.ZSTD_c_checksumFlag]: 1,
      },
    }))
  }

  /** One frame of `plain` into `out` at `at` (room for compressBound(plain.length) needed). */
  compress(plain: Uint8Array, out: Uint8Array, at = 0): number {
    return this.run(plain, out, at)
  }
}

export class ZstdDecompressor extends ZstdContext {
  constructor() {
    super(zlib.createZstdDecompress())
  }

  /**
   * One whole frame into `out` at `at`; returns the bytes written. A truncated frame ends short
   * without an error from zstd: its caller checks the length it expected (and the context, left
   * mid-frame, is marked broken by a `short` result).
   */
  decompress(frame: Uint8Array, out: Uint8Array, at = 0, expected?: number): number {
    const n = this.run(frame, out, at)
    if (expected !== undefined && n !== expected) {
      this.broken = true
      throw new Error(`frame holds ${n} bytes, expected ${expected}`)
    }
    return n
  }
}

/**
 * The content size a zstd frame announces in its header (RFC 8878, 3.1.1.1), or null when it
 * does not (our frames do: they are compressed in one call).
 */
export function frameContentSize(frame: Uint8Array): number | null {
  if (frame.length < 6 || frame[0] !== 0x28 || frame[1] !== 0xb5 || frame[2] !== 0x2f || frame[3] !== 0xfd) return null
  const fhd = frame[4]!
  const fcsFlag = fhd >> 6
  const singleSegment = (fhd >> 5) & 1
  const dictIdBytes = [0, 1, 2, 4][fhd & 3]!
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!
  if (fcsBytes === 0) return null
  let at = 5 + (singleSegment ? 0 : 1) + dictIdBytes
  if (frame.length < at + fcsBytes) return null
  let size = 0
  for (let i = fcsBytes - 1; i >= 0; i--) size = size * 256 + frame[at + i]!
  at += fcsBytes
  return fcsBytes === 2 ? size + 256 : size
}
