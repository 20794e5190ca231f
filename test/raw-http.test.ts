// The minimal HTTP/1.1 client of restores' ranged GETs (agent/storage/raw-http.ts), against a
// local node:http server that misbehaves on purpose, and the blob codec's pooled zstd contexts.
import t from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomBytes } from 'node:crypto'
import { RawHttpPool, UnexpectedLengthError } from '../agent/storage/raw-http.ts'
import { partSizeFor } from '../agent/storage/s3.ts'
import { BlobCodec } from '../agent/repo/codec.ts'
import type { Teardown } from './helpers.ts'

const body = randomBytes(3 * 1024 * 1024 + 17)

async function server(t: Teardown, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ port: number; sockets: () => number }> {
  let sockets = 0
  const s = createServer(handler)
  s.on('connection', () => sockets++)
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    s.closeAllConnections()
    s.close(() => resolve())
  }))
  return { port: (s.address() as AddressInfo).port, sockets: () => sockets }
}

function ranged(req: IncomingMessage, res: ServerResponse): void {
  const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!
  const part = body.subarray(Number(m[1]), Number(m[2]) + 1)
  res.writeHead(206, { 'content-length': part.length })
  res.end(part)
}

t.test('ranges land in the caller buffer, over one kept-alive connection', async (t) => {
  const srv = await server(t, ranged)
  const pool = new RawHttpPool({ connectionTimeout: 5000, socketTimeout: 5000 })
  const out = Buffer.alloc(body.length + 100)
  for (const [from, to] of [[0, body.length - 1], [5, 70000], [body.length - 3, body.length - 1]] as const) {
    const res = await pool.get({ host: '127.0.0.1', port: srv.port, path: '/k', headers: { host: 'localhost', range: `bytes=${from}-${to}` }, out, limit: to - from + 1 })
    t.equal(res.status, 206)
    t.equal(res.received, to - from + 1)
    t.ok(out.subarray(0, res.received).equals(body.subarray(from, to + 1)), `bytes ${from}-${to} exact`)
  }
  t.equal(srv.sockets(), 1, 'the connection was reused')
})

t.test('error answers carry their status and body; the connection stays usable', async (t) => {
  let n = 0
  const srv = await server(t, (req, res) => {
    if (n++ === 0) {
      const xml = '<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>'
      res.writeHead(404, { 'content-length': Buffer.byteLength(xml) })
      res.end(xml)
    } else ranged(req, res)
  })
  const pool = new RawHttpPool({ connectionTimeout: 5000, socketTimeout: 5000 })
  const out = Buffer.alloc(100)
  const res = await pool.get({ host: '127.0.0.1', port: srv.port, path: '/k', headers: { host: 'localhost' }, out, limit: 10 })
  t.equal(res.status, 404)
  t.match(res.errorBody, /<Code>NoSuchKey<\/Code>/)
  const ok = await pool.get({ host: '127.0.0.1', port: srv.port, path: '/k', headers: { host: 'localhost', range: 'bytes=0-9' }, out, limit: 10 })
  t.equal(ok.received, 10)
  t.ok(out.subarray(0, 10).equals(body.subarray(0, 10)))
})

t.test('a body cut midway, a body longer than asked for, a server that never answers', async (t) => {
  const srv = await server(t, (req, res) => {
    if (req.url === '/cut') {
      res.writeHead(206, { 'content-length': 1000 })
      res.write(body.subarray(0, 300))
      setTimeout(() => res.socket?.destroy(), 20)
    } else if (req.url === '/long') {
      res.writeHead(200, { 'content-length': body.length })
      res.end(body)
    }
    // '/silent': no answer at all
  })
  const pool = new RawHttpPool({ connectionTimeout: 5000, socketTimeout: 300 })
  const out = Buffer.alloc(2000)
  await t.rejects(pool.get({ host: '127.0.0.1', port: srv.port, path: '/cut', headers: { host: 'localhost' }, out, limit: 1000 }), /ended after 300 of 1000 bytes/)
  await t.rejects(pool.get({ host: '127.0.0.1', port: srv.port, path: '/long', headers: { host: 'localhost' }, out, limit: 1000 }), UnexpectedLengthError)
  await t.rejects(pool.get({ host: '127.0.0.1', port: srv.port, path: '/silent', headers: { host: 'localhost' }, out, limit: 1000 }), /idle/)
})

t.test('pooled zstd contexts: many blobs through few contexts, damage detected, context recovers', async (t) => {
  const codec = new BlobCodec({ key: randomBytes(32), compressionLevel: 1, maxChunkBytes: 1024 * 1024 })
  const text = Buffer.from('the quick brown fox jumps over the lazy dog '.repeat(24000)).subarray(0, 1024 * 1024)
  const mixed = Buffer.concat([randomBytes(512 * 1024), Buffer.alloc(512 * 1024)])
  const inputs = Array.from({ length: 24 }, (_, i) => [text, mixed, randomBytes(1024 * 1024), text.subarray(i)][i % 4]!)
  const blobs = await Promise.all(inputs.map((p) => codec.encode('chunk', p)))
  t.ok(blobs[0]!.length < text.length / 4, 'text is compressed')
  t.ok(blobs[1]!.length < mixed.length * 0.6, 'a half-zero chunk is compressed')
  t.equal(blobs[2]!.length, 1024 * 1024 + 1 + 12 + 16, 'random data is stored raw')
  const into = Buffer.alloc(1024 * 1024 + 1024)
  for (let i = 0; i < inputs.length; i++) {
    const plain = await codec.decode('chunk', blobs[i]!, inputs[i]!.length, i % 2 ? into : undefined)
    t.ok(plain.equals(inputs[i]!), `blob ${i} round trip`)
  }
  const plain = new BlobCodec({ key: null, compressionLevel: 1 })
  const blob = await plain.encode('chunk', text)
  const damaged = Buffer.from(blob)
  damaged.writeUInt32LE(0xdeadbeef, blob.length - 8)
  await t.rejects(plain.decode('chunk', damaged, text.length, into), { code: 'CHUNK_CORRUPT' }, 'a damaged frame is reported')
  await t.rejects(plain.decode('chunk', blob.subarray(0, blob.length - 100), text.length, into), { code: 'CHUNK_CORRUPT' }, 'a truncated frame is reported')
  t.ok((await plain.decode('chunk', blob, text.length, into)).equals(text), 'and the next blob decodes fine')
})

t.test('part sizes: no tiny last part', async (t) => {
  const MiB = 1024 * 1024
  const parts = (length: number): number => Math.ceil(length / partSizeFor(length, 8 * MiB))
  t.equal(parts(16 * MiB + 300 * 1024), 2, 'a 16 MiB pack and a blob: two parts')
  t.equal(parts(20 * MiB), 3, 'a real third part stays')
  t.equal(parts(16 * MiB), 2)
  t.equal(parts(24 * MiB + 100), 3)
  t.ok(partSizeFor(16 * MiB + 300 * 1024, 8 * MiB) >= 5 * MiB, 'parts stay above S3 minimum')
})
