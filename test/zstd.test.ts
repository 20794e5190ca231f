// agent/repo/zstd.ts runs zstd through node:zlib's private stream members. If a Node release
// renames or changes them, these fail (before a backup could): the members exist, output lands
// in the buffer the caller chose, frames round-trip, and a damaged frame fails the runner.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import zlib from 'node:zlib'
import { Compressor, Decompressor } from '../agent/repo/zstd.ts'

t.test('the node:zlib members the pooled contexts use exist, with the types they rely on', async (t) => {
  for (const stream of [zlib.createZstdCompress(), zlib.createZstdDecompress()]) {
    const s = stream as unknown as Record<string, unknown>
    t.type(s._processChunk, 'function', '_processChunk')
    t.type(s.push, 'function', 'push')
    t.ok(Buffer.isBuffer(s._outBuffer), '_outBuffer is a Buffer')
    t.type(s._outOffset, 'number', '_outOffset')
    t.type(s._chunkSize, 'number', '_chunkSize')
    stream.close()
  }
  t.type(zlib.constants.ZSTD_e_end, 'number', 'ZSTD_e_end')
})

t.test('a frame is written into the buffer chosen for it, and decompresses into the caller\'s buffer', async (t) => {
  const text = Buffer.from('ebs-worker '.repeat(100_000))
  const compressor = new Compressor(1)
  const parts = await compressor.compress(text)
  t.equal(parts.length, 1, 'one piece: the frame fitted the runner\'s buffer')
  const frame = Buffer.from(parts[0]!)
  t.ok(frame.length < text.length / 10, 'and it is compressed')
  t.same(zlib.zstdDecompressSync(frame), text, 'an ordinary zstd frame')

  const into = Buffer.alloc(text.length + 1024)
  const out = await new Decompressor().run(frame, into, into.length)
  t.equal(out.length, 1)
  t.equal(out[0]!.buffer, into.buffer, 'the output is a view of the caller\'s buffer: no copy')
  t.same(out[0], text, 'round trip')

  // The same runners serve the next frames (pooled contexts).
  const again = randomBytes(200_000)
  const frame2 = Buffer.concat(await compressor.compress(again))
  t.same(Buffer.concat(await new Decompressor().run(frame2, null, again.length + 1024)), again, 'a second frame through the same compressor')
})

t.test('a damaged frame fails its decompressor, which then refuses work', async (t) => {
  const frame = Buffer.from(Buffer.concat(await new Compressor(1).compress(Buffer.from('x'.repeat(100_000)))))
  frame[frame.length - 2]! ^= 0xff
  const d = new Decompressor()
  await t.rejects(d.run(frame, null, 200_000), 'the damaged frame is refused')
  t.ok(d.failure, 'the runner knows it failed (the codec drops it from the pool)')
  await t.rejects(d.run(frame, null, 200_000), 'and fails at once after that')
})
