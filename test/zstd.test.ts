// agent/repo/zstd.ts runs zstd through node:zlib's private members (a stream's native handle and
// its write state). If a Node release renames or changes them, these fail (before a backup
// could): the members exist, output lands where the caller chose, frames round-trip through
// reused contexts, and a damaged or truncated frame fails its context, which is then replaced.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import zlib from 'node:zlib'
import { compressBound, frameContentSize, ZstdCompressor, ZstdDecompressor, type ZlibInternals } from '../agent/repo/zstd.ts'

t.test('the node:zlib members the contexts use exist, with the types they rely on', async (t) => {
  for (const stream of [zlib.createZstdCompress(), zlib.createZstdDecompress()]) {
    const s = stream as unknown as ZlibInternals
    t.type(s._handle.writeSync, 'function', '_handle.writeSync')
    t.ok('onerror' in s._handle, '_handle.onerror')
    t.ok(s._writeState instanceof Uint32Array && s._writeState.length === 2, '_writeState is a Uint32Array(2)')
    stream.close()
  }
  t.type(zlib.constants.ZSTD_e_end, 'number', 'ZSTD_e_end')
})

t.test('frames are written where the caller says, by contexts reused frame after frame', async (t) => {
  const compressor = new ZstdCompressor(1)
  const decompressor = new ZstdDecompressor()
  for (const [name, input] of [['text', Buffer.from('ebs-worker '.repeat(100_000))], ['random', randomBytes(200_000)], ['text again', Buffer.from('x'.repeat(300_000))]] as const) {
    const out = Buffer.alloc(compressBound(input.length) + 7, 0xee)
    const n = compressor.compress(input, out, 7)
    t.equal(out[6], 0xee, `${name}: nothing written before the offset`)
    const frame = out.subarray(7, 7 + n)
    t.same(zlib.zstdDecompressSync(frame), input, `${name}: an ordinary zstd frame`)
    t.equal(frameContentSize(frame), input.length, `${name}: the frame says its size`)
    const into = Buffer.from(new SharedArrayBuffer(input.length + 1024))
    t.equal(decompressor.decompress(frame, into, 0, input.length), input.length, `${name}: decompressed into a shared buffer`)
    t.same(into.subarray(0, input.length), input, `${name}: round trip`)
  }
  t.notOk(compressor.broken || decompressor.broken, 'both contexts still usable')
})

t.test('a damaged or truncated frame fails its context, which refuses work from then on', async (t) => {
  const text = Buffer.from('x'.repeat(100_000))
  const out = Buffer.alloc(compressBound(text.length))
  const frame = Buffer.from(out.subarray(0, new ZstdCompressor(1).compress(text, out)))
  const damaged = Buffer.from(frame)
  damaged[damaged.length - 2]! ^= 0xff
  const d = new ZstdDecompressor()
  t.throws(() => d.decompress(damaged, Buffer.alloc(200_000)), 'the damaged frame is refused')
  t.ok(d.broken, 'the context knows it failed (its owner replaces it)')
  t.throws(() => d.decompress(frame, Buffer.alloc(200_000)), 'and fails at once after that')
  const d2 = new ZstdDecompressor()
  t.throws(() => d2.decompress(frame.subarray(0, frame.length - 3), Buffer.alloc(200_000), 0, text.length), /expected/, 'a truncated frame ends short: refused')
  t.ok(d2.broken, 'and its context, left mid-frame, is not reused')
  const d3 = new ZstdDecompressor()
  t.throws(() => d3.decompress(frame, Buffer.alloc(1000)), /larger than/, 'output that does not fit is refused')
  t.ok(d3.broken)
})
