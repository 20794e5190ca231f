// The codec threads (agent/repo/codec-threads.ts) do the CPU work on chunks in shared buffers:
// what they encode is the blob format the main thread's engine reads and the other way round,
// ids are the same, damage is reported as such, the work is spread over the pool's threads, and
// a thread that dies fails only its own requests.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { BlobCodec, decodeBufferSize, sealBound, sharedBuffer } from '../agent/repo/codec.ts'
import { CodecThreads } from '../agent/repo/codec-threads.ts'
import { join } from 'node:path'
import { cli, makeImage, MiB, runCli, tempDir } from './helpers.ts'


function shared(data: Buffer): Buffer {
  const b = sharedBuffer(data.length)
  data.copy(b)
  return b
}

const text = Buffer.from('ebs-worker moves blocks. '.repeat(50_000)).subarray(0, MiB)
const random = randomBytes(MiB)
const short = Buffer.from('a short last chunk '.repeat(100))
const mixed = Buffer.concat([randomBytes(MiB / 2), Buffer.alloc(MiB / 2, 'z')])

for (const encrypted of [true, false]) {
  t.test(`${encrypted ? 'encrypted' : 'plain'} repository: threads and the main thread speak one format`, async (t) => {
    const threads = new CodecThreads(2)
    t.teardown(() => threads.close())
    const options = { key: encrypted ? randomBytes(32) : null, idKey: encrypted ? randomBytes(32) : null, compressionLevel: 1, maxChunkBytes: MiB, threads }
    const codec = new BlobCodec(options)
    for (const [name, data] of [['text', text], ['random', random], ['short', short], ['mixed', mixed]] as const) {
      const input = shared(data)
      const id = await codec.identifyChunk(input)
      t.same(id, codec.chunkId(data), `${name}: the thread's id is the main thread's`)
      const blob = await codec.sealChunk(input, sharedBuffer(sealBound(data.length)))
      t.ok(blob.buffer instanceof SharedArrayBuffer, `${name}: encoded in place, in the shared buffer`)
      if (name === 'text') t.ok(blob.length < data.length / 5, 'text is compressed')
      if (name === 'random') t.ok(blob.length <= data.length + 29, 'random data is stored raw')
      // Thread-encoded, main-decoded; main-encoded, thread-decoded.
      t.same(await codec.openChunk(Buffer.from(blob), id!, data.length, Buffer.alloc(decodeBufferSize(data.length))), data, `${name}: the main thread reads what a thread wrote`)
      const mainBlob = await codec.sealChunk(Buffer.from(data), Buffer.alloc(sealBound(data.length)))
      const back = await codec.openChunk(shared(mainBlob), id!, data.length, sharedBuffer(decodeBufferSize(data.length)))
      t.same(back, data, `${name}: a thread reads what the main thread wrote`)
    }
    t.equal(await codec.identifyChunk(sharedBuffer(MiB)), null, 'a zero chunk has no id: it is not stored')
  })
}

t.test('damage and a wrong id are CHUNK_CORRUPT, from a thread too', async (t) => {
  const threads = new CodecThreads(1)
  t.teardown(() => threads.close())
  const codec = new BlobCodec({ key: randomBytes(32), idKey: randomBytes(32), compressionLevel: 1, maxChunkBytes: MiB, threads })
  const input = shared(text)
  const id = (await codec.identifyChunk(input))!
  const blob = shared(await codec.sealChunk(input, sharedBuffer(sealBound(MiB))))
  const out = sharedBuffer(decodeBufferSize(MiB))
  for (const at of [0, 5, 40, blob.length - 3]) {
    const damaged = shared(blob)
    damaged[at]! ^= 0x04
    await t.rejects(codec.openChunk(damaged, id, MiB, out), { code: 'CHUNK_CORRUPT' }, `a flipped bit at ${at}`)
  }
  await t.rejects(codec.openChunk(blob, randomBytes(32), MiB, out), { code: 'CHUNK_CORRUPT', message: /does not match its id/ }, 'another id')
  await t.rejects(codec.openChunk(blob, id, MiB - 1, out), { code: 'CHUNK_CORRUPT' }, 'another length')
  const other = new BlobCodec({ key: randomBytes(32), idKey: randomBytes(32), compressionLevel: 1, maxChunkBytes: MiB, threads })
  await t.rejects(other.openChunk(blob, id, MiB, out), { code: 'CHUNK_CORRUPT', message: /authentication failed/ }, 'another key')
  t.same(await codec.openChunk(blob, id, MiB, out), text, 'and the thread still works after those')
})

t.test('work is spread over every thread of the pool, and a dead thread is replaced', async (t) => {
  const threads = new CodecThreads(3)
  t.teardown(() => threads.close())
  const codec = new BlobCodec({ key: randomBytes(32), idKey: randomBytes(32), compressionLevel: 1, maxChunkBytes: MiB, threads })
  const inputs = Array.from({ length: 12 }, () => shared(randomBytes(MiB)))
  const blobs = await Promise.all(inputs.map((d) => codec.sealChunk(d, sharedBuffer(sealBound(MiB)))))
  t.equal(threads.running, 3, 'twelve chunks at once started all three threads')
  t.equal(blobs.length, 12)
  await threads.close()
  t.equal(threads.running, 0, 'closed')
  const id = await codec.identifyChunk(inputs[0]!)
  t.same(id, codec.chunkId(inputs[0]!), 'the next request starts a thread again')
  t.equal(threads.running, 1)
})

t.test('EBS_WORKER_CODEC_THREADS sets the count; a value that is not a count is refused, saying so', async (t) => {
  const dir = await tempDir(t)
  const image = join(dir, 'vol.img')
  await makeImage(image, 4 * MiB, [{ kind: 'random', offset: 0, length: 4 * MiB }])
  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const ok = await cli(['backup', '--repo', repo, '--device', image], { EBS_WORKER_CODEC_THREADS: '3' })
  t.equal(ok.chunksNew, 4, 'three threads back up as well')
  for (const bad of ['0', 'many', '2.5']) {
    const r = await runCli(['backup', '--repo', repo, '--device', image, '--json'], { EBS_WORKER_CODEC_THREADS: bad })
    t.equal(r.json?.error?.code, 'BAD_INPUT', `"${bad}": BAD_INPUT`)
    t.match(r.json?.error?.message, /EBS_WORKER_CODEC_THREADS/, 'naming the variable')
  }
})

// sharedBuffer's memory starts on a page boundary (the kernel copies into and out of it 4-5x
// faster than into malloc's page + 16). JavaScript cannot see an address, but O_DIRECT can: a
// direct read needs memory aligned to the device's DMA alignment and fails with EINVAL otherwise.
t.test('shared buffers start on a page boundary (O_DIRECT accepts them)', async (t) => {
  const { open, writeFile } = await import('node:fs/promises')
  const { constants } = await import('node:fs')
  const dir = await tempDir(t)
  const file = join(dir, 'direct')
  await writeFile(file, randomBytes(2 * MiB))
  let handle: Awaited<ReturnType<typeof open>>
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_DIRECT)
  } catch (err) {
    t.skip(`this file system refuses O_DIRECT (${(err as Error).message})`, () => {})
    return
  }
  t.teardown(() => handle.close())
  // The probe must be able to fail: one byte off a page-aligned buffer is refused.
  const probe = sharedBuffer(MiB + 4096)
  await t.rejects(handle.read(probe.subarray(1), 0, 4096, 0), { code: 'EINVAL' }, 'a misaligned buffer is refused')
  for (const bytes of [MiB, sealBound(MiB), decodeBufferSize(MiB), 8 * MiB]) {
    const buf = sharedBuffer(bytes)
    t.equal(buf.length, bytes, `${bytes} bytes asked, ${bytes} given`)
    t.ok(buf.buffer instanceof SharedArrayBuffer, 'shared with the codec threads')
    const { bytesRead } = await handle.read(buf, 0, 4096, 0)
    t.equal(bytesRead, 4096, `a direct read into a ${bytes}-byte shared buffer is accepted: it is aligned`)
  }
})

t.test('threads started ahead (start()), one asked once, the others never: the process still exits by itself', async (t) => {
  const { execFile } = await import('node:child_process')
  const module = new URL('../agent/repo/codec-threads.ts', import.meta.url).href
  // Three threads started, one of them asked once (as a backup whose chunks are all known asks few).
  const script = `const { CodecThreads, sharedBuffer } = await import(${JSON.stringify(module)})
    const p = new CodecThreads(3)
    p.start()
    const digest = await p.digest(p.profile({ encryption: null, chunkId: null, level: 1 }), sharedBuffer(4096))
    console.log(p.running, digest.length)`
  const file = join(await tempDir(t), 'start.mjs')
  await (await import('node:fs/promises')).writeFile(file, script)
  const r = await new Promise<{ code: number | null; signal: string | null; stdout: string }>((resolve) => {
    const child = execFile(process.execPath, [file], { timeout: 20_000 }, (_err, stdout) => resolve({ code: child.exitCode, signal: child.signalCode, stdout }))
  })
  t.equal(r.stdout.trim(), '3 32', 'three threads started, one answered')
  t.equal(r.signal, null, 'the process ended by itself (not killed after 20 s)')
  t.equal(r.code, 0)
})
