// raw-http.ts over TLS (agent/storage/raw-http.ts), against local TLS servers with certificates
// made here by the openssl CLI, and the S3 backend's lean GET on it (agent/storage/s3-range.ts):
// ranges into the caller's buffer over one kept-alive TLS connection, SNI, session resumption;
// a certificate for another host or from an unknown CA refused at once, and for good (the SDK,
// which refuses it too, reports it); a connection cut mid-body retried as an interrupted
// transfer; a silent server timed out. The test CA goes into this process's default CA store
// (tls.setDefaultCACertificates), where the pool and the SDK find it as they would find
// NODE_EXTRA_CA_CERTS: neither is given a CA of its own.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { getCACertificates, setDefaultCACertificates, type TLSSocket } from 'node:tls'
import { RawHttpError, RawHttpPool, TlsRefused } from '../agent/storage/raw-http.ts'
import { openBackend } from '../agent/storage/open.ts'
import { AwsClients } from '../agent/aws/clients.ts'
import { awsSettings } from '../agent/aws/config.ts'
import type { Backend } from '../agent/storage/types.ts'
import { logLines, tempDir, type Teardown } from './helpers.ts'
import { logTo } from '../agent/core/log.ts'

const body = randomBytes(3 * 1024 * 1024 + 17)

interface Pem {
  key: string
  cert: string
}

/** A throwaway CA and certificates it signs (one for 127.0.0.1 and localhost, one for another host), and a self-signed one. */
async function certificates(t: Teardown): Promise<{ ca: string; local: Pem; otherHost: Pem; selfSigned: Pem }> {
  const dir = await tempDir(t, 'raw-tls-certs')
  const ssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  }
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=raw-tls test CA', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  const signed = (name: string, san: string): Pem => {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`)
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`)
    return { key: readFileSync(join(dir, `${name}.key`), 'utf8'), cert: readFileSync(join(dir, `${name}.crt`), 'utf8') }
  }
  const local = signed('local', 'IP:127.0.0.1,DNS:localhost')
  const otherHost = signed('other', 'DNS:other.example')
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', 'self.key', '-out', 'self.crt')
  const selfSigned = { key: readFileSync(join(dir, 'self.key'), 'utf8'), cert: readFileSync(join(dir, 'self.crt'), 'utf8') }
  return { ca: readFileSync(join(dir, 'ca.pem'), 'utf8'), local, otherHost, selfSigned }
}

const certs = await certificates(t)
// Trusted as NODE_EXTRA_CA_CERTS would make it: in Node's default store, for every TLS client of this process.
setDefaultCACertificates([...getCACertificates('default'), certs.ca])

interface TlsServer {
  port: number
  /** TCP connections accepted (handshakes attempted). */
  connections: () => number
  /** Per completed handshake: the SNI it carried, and whether it resumed an earlier session. */
  handshakes: Array<{ servername: string | false; resumed: boolean }>
  /** Requests sent by the SDK (it names itself in amz-sdk-invocation-id), and the others (raw-http's). */
  sdkRequests: () => number
  rawRequests: () => number
}

async function tlsServer(t: Teardown, pem: Pem, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TlsServer> {
  let connections = 0
  let sdk = 0
  let raw = 0
  const handshakes: TlsServer['handshakes'] = []
  const s: HttpsServer = createHttpsServer({ ...pem, keepAliveTimeout: 30_000 }, (req, res) => {
    if (req.headers['amz-sdk-invocation-id']) sdk++
    else raw++
    handler(req, res)
  })
  s.on('connection', () => connections++)
  s.on('secureConnection', (socket: TLSSocket) => {
    handshakes.push({ servername: (socket as TLSSocket & { servername: string | false }).servername, resumed: socket.isSessionReused() })
  })
  s.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    s.closeAllConnections()
    s.close(() => resolve())
  }))
  return { port: (s.address() as AddressInfo).port, connections: () => connections, handshakes, sdkRequests: () => sdk, rawRequests: () => raw }
}

/** 206 with the asked range of `body`, as S3 answers a ranged GetObject (whatever the path and signature). */
function ranged(req: IncomingMessage, res: ServerResponse): void {
  const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!
  const part = body.subarray(Number(m[1]), Math.min(Number(m[2]) + 1, body.length))
  res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${m[1]}-${Number(m[1]) + part.length - 1}/${body.length}` })
  res.end(part)
}

/** A TCP server that accepts connections and never says a word (no TLS handshake either). */
async function mute(t: Teardown): Promise<number> {
  const sockets = new Set<Socket>()
  const s: TcpServer = createTcpServer((c) => sockets.add(c.on('error', () => {})))
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const c of sockets) c.destroy()
    s.close()
  })
  return (s.address() as AddressInfo).port
}

/** The S3 backend (with its retries) on an https endpoint, as programs open it; static credentials. */
function s3At(port: number, env: Record<string, string> = {}): { backend: Backend; aws: AwsClients } {
  const settings = awsSettings({ AWS_ENDPOINT_URL_S3: `https://127.0.0.1:${port}`, AWS_REGION: 'us-east-1', EBS_WORKER_S3_CHECKSUMS: 'when-required', ...env })
  const aws = new AwsClients(settings, { credentials: async () => ({ accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' }) })
  return { backend: openBackend('s3://bucket/prefix', { aws }), aws }
}

const pool = (socketTimeout = 5000, connectionTimeout = 5000): RawHttpPool => new RawHttpPool({ connectionTimeout, socketTimeout })
const range = (from: number, to: number): Record<string, string> => ({ host: 'x', range: `bytes=${from}-${to}` })

t.test('over TLS, ranges land in the caller buffer over one kept-alive connection, without SNI for an IP address', async (t) => {
  const srv = await tlsServer(t, certs.local, ranged)
  const p = pool()
  const out = Buffer.alloc(body.length + 100)
  for (const [from, to] of [[0, body.length - 1], [5, 70000], [body.length - 3, body.length - 1]] as const) {
    const res = await p.get({ host: '127.0.0.1', port: srv.port, tls: true, path: '/k', headers: range(from, to), out, limit: to - from + 1 })
    t.equal(res.status, 206)
    t.equal(res.received, to - from + 1)
    t.ok(out.subarray(0, res.received).equals(body.subarray(from, to + 1)), `bytes ${from}-${to} exact`)
  }
  t.equal(srv.connections(), 1, 'one connection for the three requests')
  t.same(srv.handshakes.map((h) => h.servername), [false], 'no SNI for 127.0.0.1')
})

t.test('over TLS, a host name is sent as SNI and checked against the certificate', async (t) => {
  const srv = await tlsServer(t, certs.local, ranged)
  const out = Buffer.alloc(100)
  const res = await pool().get({ host: 'localhost', port: srv.port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 })
  t.equal(res.received, 100)
  t.ok(out.equals(body.subarray(0, 100)))
  t.same(srv.handshakes.map((h) => h.servername), ['localhost'])
})

t.test('a second TLS connection to the same server resumes the session of the first', async (t) => {
  const srv = await tlsServer(t, certs.local, ranged)
  const p = pool()
  const outs = [Buffer.alloc(1000), Buffer.alloc(1000), Buffer.alloc(1000)]
  await p.get({ host: '127.0.0.1', port: srv.port, tls: true, path: '/k', headers: range(0, 999), out: outs[0]!, limit: 1000 })
  // Two at once: one takes the idle connection, the other opens a second one.
  const both = await Promise.all(outs.slice(1).map((out) => p.get({ host: '127.0.0.1', port: srv.port, tls: true, path: '/k', headers: range(0, 999), out, limit: 1000 })))
  t.same(both.map((r) => r.received), [1000, 1000])
  t.same(srv.handshakes.map((h) => h.resumed), [false, true], 'the second handshake was a resumed one')
})

t.test('a certificate for another host is refused at once, saying why, and again on the next request', async (t) => {
  const srv = await tlsServer(t, certs.otherHost, ranged)
  const p = pool()
  const out = Buffer.alloc(100)
  const get = (): Promise<unknown> => p.get({ host: '127.0.0.1', port: srv.port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 })
  const refused = await get().catch((err: unknown) => err)
  t.type(refused, TlsRefused)
  t.equal((refused as TlsRefused).code, 'ERR_TLS_CERT_ALTNAME_INVALID')
  t.match((refused as Error).message, new RegExp(`https://127\\.0\\.0\\.1:${srv.port}.*altnames`), (refused as Error).message)
  t.equal(srv.connections(), 1, 'one attempt, no retry')
  await t.rejects(get(), TlsRefused, 'no session of the refused handshake lets the next one through')
  t.equal(srv.rawRequests(), 0, 'no request was ever sent')
})

t.test('a certificate no CA of the store vouches for, and a server that does not speak TLS, are refused', async (t) => {
  const self = await tlsServer(t, certs.selfSigned, ranged)
  const out = Buffer.alloc(100)
  await t.rejects(pool().get({ host: '127.0.0.1', port: self.port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 }),
    { name: 'TlsRefused', code: 'DEPTH_ZERO_SELF_SIGNED_CERT', message: /self-signed certificate/ })
  const plain = createTcpServer((c) => c.on('error', () => {}).on('data', () => c.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n')))
  await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve))
  t.teardown(() => plain.close())
  await t.rejects(pool().get({ host: '127.0.0.1', port: (plain.address() as AddressInfo).port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 }),
    { name: 'TlsRefused', code: 'ERR_SSL_WRONG_VERSION_NUMBER' })
})

t.test('a TLS connection cut mid-body fails as a network failure, not a refusal', async (t) => {
  const srv = await tlsServer(t, certs.local, (req, res) => {
    res.writeHead(206, { 'content-length': 1000 })
    res.write(body.subarray(0, 300))
    setTimeout(() => res.socket?.destroy(), 20)
  })
  const err = await pool().get({ host: '127.0.0.1', port: srv.port, tls: true, path: '/k', headers: range(0, 999), out: Buffer.alloc(1000), limit: 1000 }).catch((e: unknown) => e)
  t.type(err, RawHttpError)
  t.match((err as Error).message, /ended after 300 of 1000 bytes/)
})

t.test('a server that never completes the handshake, and one that never answers, time out', async (t) => {
  const out = Buffer.alloc(100)
  const port = await mute(t)
  await t.rejects(pool(5000, 300).get({ host: '127.0.0.1', port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 }),
    new RegExp(`no connection to https://127\\.0\\.0\\.1:${port} within 300 ms`))
  const silent = await tlsServer(t, certs.local, () => {})
  await t.rejects(pool(300).get({ host: '127.0.0.1', port: silent.port, tls: true, path: '/k', headers: range(0, 99), out, limit: 100 }), /idle for 300 ms/)
})

t.test('S3 over https: the lean GET takes raw-http over TLS, straight into the buffer given', async (t) => {
  const srv = await tlsServer(t, certs.local, ranged)
  const { backend, aws } = s3At(srv.port)
  t.teardown(() => aws.destroy())
  const into = Buffer.alloc(2 * 1024 * 1024)
  for (const [offset, length] of [[0, 2 * 1024 * 1024], [1000, 77777]] as const) {
    const got = await backend.getRange('packs/p1', offset, length, into)
    t.equal(got.buffer, into.buffer, 'a view of the buffer given')
    t.ok(got.equals(body.subarray(offset, offset + length)), `bytes ${offset}+${length} exact`)
  }
  t.equal(srv.rawRequests(), 2, 'both through raw-http')
  t.equal(srv.sdkRequests(), 0, 'none through the SDK')
  t.equal(srv.connections(), 1, 'on one kept-alive connection')
})

t.test('S3 over https: a refused certificate drops the lean GET for good; the SDK reports the refusal, once per read', async (t) => {
  const srv = await tlsServer(t, certs.otherHost, ranged)
  const { backend, aws } = s3At(srv.port)
  t.teardown(() => aws.destroy())
  const started = Date.now()
  await t.rejects(backend.getRange('packs/p1', 0, 1000), { code: 'STORAGE_ERROR', message: /GetObject s3:\/\/bucket\/prefix\/packs\/p1 failed.*altnames/ })
  t.equal(srv.connections(), 2, 'one handshake by the lean path, one by the SDK, neither retried')
  await t.rejects(backend.getRange('packs/p2', 0, 1000), { code: 'STORAGE_ERROR', message: /altnames/ })
  t.equal(srv.connections(), 3, 'the next read goes straight to the SDK')
  t.ok(Date.now() - started < 5000, 'at once, not after rounds of retries')
})

t.test('S3 over https: a connection cut mid-body is retried as an interrupted transfer, on the lean path', async (t) => {
  let n = 0
  const srv = await tlsServer(t, certs.local, (req, res) => {
    if (n++ < 2) {
      res.writeHead(206, { 'content-length': 1000 })
      res.write(body.subarray(0, 300))
      setTimeout(() => res.socket?.destroy(), 20)
    } else ranged(req, res)
  })
  const { backend, aws } = s3At(srv.port)
  t.teardown(() => aws.destroy())
  const got = await backend.getRange('packs/p1', 0, 1000)
  t.ok(got.equals(body.subarray(0, 1000)), 'the third attempt delivers')
  t.equal(srv.rawRequests(), 3, 'two cut, one whole, all through raw-http')
  t.equal(srv.sdkRequests(), 0)
})

t.test('S3 over https: a server whose answers raw-http cannot read (chunked) is left to the SDK, for good', async (t) => {
  const srv = await tlsServer(t, certs.local, (req, res) => {
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!
    res.writeHead(206, { 'transfer-encoding': 'chunked' })
    res.end(body.subarray(Number(m[1]), Number(m[2]) + 1))
  })
  const { backend, aws } = s3At(srv.port)
  t.teardown(() => aws.destroy())
  const logged = { text: '' }
  t.teardown(logTo({ write: (line: string) => void (logged.text += line) }))
  t.ok((await backend.getRange('packs/p1', 0, 5000)).equals(body.subarray(0, 5000)), 'read through the SDK')
  t.same([srv.rawRequests(), srv.sdkRequests()], [1, 1], 'one lean try, then the SDK')
  t.ok((await backend.getRange('packs/p1', 5000, 5000)).equals(body.subarray(5000, 10000)))
  t.same([srv.rawRequests(), srv.sdkRequests()], [1, 2], 'the next read goes straight to the SDK')
  const lines = logLines(logged.text)
  t.match(lines, [{ level: 'warn', msg: /lean ranged GET cannot be used .*every GET goes through the SDK/, repository: 's3://bucket/prefix', error: { type: 'UseSdk', stack: String, cause: { type: 'RawHttpUnsupported' } } }],
    'a fallback that worked: one warning, not an error')
})

t.test('S3 over https with EBS_WORKER_S3_LEAN_GET=0: every GET goes through the SDK', async (t) => {
  const srv = await tlsServer(t, certs.local, ranged)
  const { backend, aws } = s3At(srv.port, { EBS_WORKER_S3_LEAN_GET: '0' })
  t.teardown(() => aws.destroy())
  const got = await backend.getRange('packs/p1', 10, 5000)
  t.ok(got.equals(body.subarray(10, 5010)))
  t.equal(srv.sdkRequests(), 1)
  t.equal(srv.rawRequests(), 0)
})

t.test('EBS_WORKER_S3_LEAN_GET: on unless 0 (or false, off); anything else is refused', async (t) => {
  t.equal(awsSettings({}).s3.leanGet, true, 'on by default')
  t.equal(awsSettings({ EBS_WORKER_S3_LEAN_GET: '1' }).s3.leanGet, true)
  t.equal(awsSettings({ EBS_WORKER_S3_LEAN_GET: '0' }).s3.leanGet, false)
  t.equal(awsSettings({ EBS_WORKER_S3_LEAN_GET: 'off' }).s3.leanGet, false)
  t.throws(() => awsSettings({ EBS_WORKER_S3_LEAN_GET: 'no thanks' }), { code: 'BAD_INPUT', message: /EBS_WORKER_S3_LEAN_GET must be 1 or 0/ })
})
