// S3 specifics against the test bed's real S3 (Ceph RGW): multipart packs with the configured
// part size, retries through connections that drop mid-upload, and a clear failure, with the
// repository left consistent, when the network stays down. Over HTTPS too (haproxy terminating
// TLS in front of RGW with a throwaway CA, as scripts/test.sh starts the test bed): restores'
// ranged GETs over raw-http's TLS (counted in the CLI's process), the SDK with
// EBS_WORKER_S3_LEAN_GET=0, cut downloads retried, a certificate nobody vouches for refused.
import t from 'tap'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { writeFile } from 'node:fs/promises'
import { HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { PACKS } from '../agent/repo/layout.ts'
import { createHash } from 'node:crypto'
import { cli, makeImage, MiB, ROOT, runCli, s3RepoUrl, sha256File, storageAt, tempDir } from './helpers.ts'

/** A TCP proxy to the test bed that can cut connections: a network that fails for real. */
interface ProxyMode {
  /**
   * Cut connections once they have carried `afterBytes` in the chosen direction: the first
   * `dropFirst` such connections (whichever they are: the client picks its sockets), or all.
   */
  dropFirst?: number
  dropAll?: boolean
  afterBytes: number
  /** "up": client to S3 (uploads); "down": S3 to client (downloads). */
  direction?: 'up' | 'down'
  /** Where it forwards to (default: the test bed's plain-http endpoint); bytes pass as they are, TLS included. */
  upstream?: string
}

async function flakyProxy(t: { teardown(fn: () => unknown): void }, mode: ProxyMode) {
  const upstream = new URL(mode.upstream ?? process.env.AWS_ENDPOINT_URL_S3!)
  const sockets = new Set<Socket>()
  const state = { connections: 0, dropped: 0 }
  const server: Server = createServer((client) => {
    state.connections++
    const server = connect(Number(upstream.port), upstream.hostname)
    sockets.add(client).add(server)
    let seen = 0
    const forward = (from: Socket, to: Socket, counted: boolean) =>
      from.on('data', (d: Buffer) => {
        if (counted) seen += d.length
        const drop = mode.dropAll || state.dropped < (mode.dropFirst ?? 0)
        if (drop && counted && seen >= mode.afterBytes && !client.destroyed) {
          state.dropped++
          client.destroy()
          server.destroy()
          return
        }
        to.write(d)
      })
    const down = mode.direction === 'down'
    forward(client, server, !down)
    forward(server, client, down)
    for (const s of [client, server]) s.on('error', () => {}).on('close', () => { client.destroy(); server.destroy() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  const port = (server.address() as { port: number }).port
  return { endpoint: `${upstream.protocol}//127.0.0.1:${port}`, state }
}

function s3(): S3Client {
  return new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })
}

t.test('packs larger than a part go up as multipart uploads', async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl('multi/part')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 24 * MiB, [{ kind: 'random', offset: 0, length: 24 * MiB }])
  const b = await cli(['backup', '--repo', repo, '--device', image, '--pack-size', '20MiB'])
  const { hostname: bucket } = new URL(repo)
  const client = s3()
  const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `multi/part/${PACKS}` }))
  // Data packs; the chunk list's nodes go into a pack of their own, of a few KiB.
  const keys = (listed.Contents ?? []).filter((o) => (o.Size ?? 0) > 64 * 1024).map((o) => o.Key!)
  t.equal(keys.length, 2, 'two data packs (20 MiB sealed, then the rest)')
  const etags = await Promise.all(keys.map(async (Key) => (await client.send(new HeadObjectCommand({ Bucket: bucket, Key }))).ETag))
  t.ok(etags.some((e) => /-2"?$/.test(e ?? '')), `the 20 MiB pack was uploaded in 2 parts of 16 MiB (${etags.join(', ')})`)
  client.destroy()
  const r = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', b.backupId, '--device', r])
  t.equal(await sha256File(r), await sha256File(image), 'restores exactly')
})

t.test('connections dropped mid-upload are retried and the backup completes', async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 40 * MiB, [{ kind: 'random', offset: 0, length: 40 * MiB }])
  const proxy = await flakyProxy(t, { dropFirst: 3, afterBytes: 2 * MiB })
  const b = await cli(['backup', '--repo', `${repo}?endpoint=${proxy.endpoint}`, '--device', image, '--pack-size', '16MiB'])
  t.equal(proxy.state.dropped, 3, 'three connections were cut mid-request')
  const r = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', b.backupId, '--device', r])
  t.equal(await sha256File(r), await sha256File(image), 'the backup made through the drops restores exactly')
})

t.test('connections dropped mid-download are retried and the restore completes', async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 24 * MiB, [{ kind: 'random', offset: 0, length: 24 * MiB }])
  const b = await cli(['backup', '--repo', repo, '--device', image])
  const proxy = await flakyProxy(t, { dropFirst: 3, afterBytes: MiB, direction: 'down' })
  const r = join(dir, 'r.img')
  await cli(['restore', '--repo', `${repo}?endpoint=${proxy.endpoint}`, '--backup', b.backupId, '--device', r])
  t.equal(proxy.state.dropped, 3, 'three downloads were cut midway')
  t.equal(await sha256File(r), await sha256File(image), 'the restore made through the drops is exact')
})

t.test('a network that stays down fails clearly after bounded attempts; nothing half-made is visible', async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: 0, length: 8 * MiB }])
  const proxy = await flakyProxy(t, { dropAll: true, afterBytes: 64 * 1024 })
  const r = await runCli(['backup', '--repo', `${repo}?endpoint=${proxy.endpoint}`, '--device', image, '--json'], { AWS_MAX_ATTEMPTS: '3' })
  t.equal(r.code, 1, 'nonzero exit')
  t.equal(r.json?.error.code, 'STORAGE_ERROR', 'STORAGE_ERROR')
  t.match(r.json?.error.message, /after 3 attempts/, `the message counts the attempts: ${r.json?.error.message}`)
  const list = await cli(['list', '--repo', repo])
  t.same(list.backups, [], 'no backup is visible')
  const again = await cli(['backup', '--repo', repo, '--device', image])
  t.equal(again.chunksNew + again.chunksReused, 8, 'the next backup over a working network succeeds')
})

t.test('a missing bucket is named', async (t) => {
  const r = await runCli(['list', '--repo', 's3://ebs-worker-no-such-bucket/x', '--json'])
  t.equal(r.json?.error.code, 'REPO_NOT_FOUND')
  t.match(r.json?.error.message, /NoSuchBucket/)
})

t.test('credentials that S3 refuses fail at once, with the reason', async (t) => {
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const r = await runCli(['list', '--repo', repo, '--json'], { AWS_SECRET_ACCESS_KEY: 'not-the-secret' })
  t.equal(r.code, 1)
  t.equal(r.json?.error.code, 'STORAGE_ERROR')
  t.match(r.json?.error.message, /SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId/, r.json?.error.message)
})

/** The environment that points the CLI at the test bed's https endpoint and trusts its CA, as an operator would. */
function overHttps(env: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const endpoint = process.env.TESTBED_HTTPS_ENDPOINT
  const ca = process.env.TESTBED_CA_FILE
  if (!endpoint || !ca) throw new Error('no https in front of the S3 test bed: run the tests with "npm test" (scripts/test.sh starts it with TESTBED_TLS=1)')
  return { AWS_ENDPOINT_URL_S3: endpoint, NODE_EXTRA_CA_CERTS: ca, ...env }
}

interface GetPaths {
  /** RangeGetter#get calls (the lean ranged GET), of them through raw-http over TLS and over plain http. */
  lean: number
  rawTls: number
  rawPlain: number
  /** Ranged GetObjects through the SDK (the SDK path, or a lean GET that fell back to it). */
  sdkRanged: number
}

/**
 * Counters loaded into the CLI's process (--import): which path its GETs took, printed on exit.
 * Returns the environment that loads them and the reader of a run's stderr.
 */
async function getPathCounter(t: { teardown(fn: () => unknown): void }): Promise<{ env: NodeJS.ProcessEnv; read: (stderr: string) => GetPaths }> {
  const dir = await tempDir(t, 'get-paths')
  const file = join(dir, 'count.mjs')
  const agent = (path: string): string => pathToFileURL(join(ROOT, 'agent/storage', path)).href
  await writeFile(file, `
import { createRequire } from 'node:module'
import { RangeGetter } from '${agent('s3-range.ts')}'
import { RawHttpPool } from '${agent('raw-http.ts')}'
const { S3Client } = createRequire(${JSON.stringify(join(ROOT, 'package.json'))})('@aws-sdk/client-s3')
const n = { lean: 0, rawTls: 0, rawPlain: 0, sdkRanged: 0 }
const wrap = (proto, name, count) => { const f = proto[name]; proto[name] = function (...a) { count(...a); return f.apply(this, a) } }
wrap(RangeGetter.prototype, 'get', () => n.lean++)
wrap(RawHttpPool.prototype, 'get', (req) => req.tls ? n.rawTls++ : n.rawPlain++)
wrap(S3Client.prototype, 'send', (cmd) => { if (cmd?.input?.Range) n.sdkRanged++ })
process.on('exit', () => process.stderr.write('GET-PATHS ' + JSON.stringify(n) + '\\n'))
`)
  return {
    env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(file).href}` },
    read: (stderr) => {
      const line = /GET-PATHS (\{.*\})/.exec(stderr)
      if (!line) throw new Error(`no GET-PATHS line from the counters: ${stderr}`)
      return JSON.parse(line[1]!) as GetPaths
    },
  }
}

/** A repository on the test bed over https with a backup of a 32 MiB image (random and text, with zero holes), made over https. */
async function httpsBackup(t: { teardown(fn: () => unknown): void }): Promise<{ dir: string; repo: string; image: string; backupId: string }> {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  const image = join(dir, 'vol.img')
  await makeImage(image, 32 * MiB, [{ kind: 'random', offset: 0, length: 20 * MiB }, { kind: 'text', offset: 24 * MiB, length: 4 * MiB }])
  await cli(['init', '--repo', repo], overHttps())
  const b = await cli(['backup', '--repo', repo, '--device', image], overHttps())
  return { dir, repo, image, backupId: b.backupId as string }
}

t.test('over https, a restore fetches every range through raw-http over TLS, not the SDK', async (t) => {
  const { dir, repo, image, backupId } = await httpsBackup(t)
  const counter = await getPathCounter(t)
  const r = join(dir, 'r.img')
  const run = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', r, '--json'], overHttps(counter.env))
  t.equal(run.code, 0, run.code === 0 ? 'exit 0' : run.stderr)
  t.equal(await sha256File(r), await sha256File(image), 'restores exactly')
  const n = counter.read(run.stderr)
  t.ok(n.rawTls > 0, `ranged GETs over raw TLS: ${JSON.stringify(n)}`)
  t.equal(n.rawTls, n.lean, 'every lean GET went over TLS')
  t.equal(n.sdkRanged, 0, 'none fell back to the SDK')
})

t.test('over https with EBS_WORKER_S3_LEAN_GET=0, a verify fetches every range through the SDK', async (t) => {
  const { repo, backupId } = await httpsBackup(t)
  const counter = await getPathCounter(t)
  const run = await runCli(['verify', '--repo', repo, '--backup', backupId, '--json'], overHttps({ ...counter.env, EBS_WORKER_S3_LEAN_GET: '0' }))
  t.equal(run.code, 0, run.code === 0 ? 'exit 0' : run.stderr)
  t.equal(run.json?.ok, true)
  const n = counter.read(run.stderr)
  t.same({ lean: n.lean, rawTls: n.rawTls }, { lean: 0, rawTls: 0 }, 'no lean GET')
  t.ok(n.sdkRanged > 0, `ranged GETs through the SDK: ${JSON.stringify(n)}`)
})

t.test('over https, TLS connections cut mid-download are retried on raw-http and the restore completes', async (t) => {
  const { dir, repo, image, backupId } = await httpsBackup(t)
  const counter = await getPathCounter(t)
  const proxy = await flakyProxy(t, { dropFirst: 3, afterBytes: MiB, direction: 'down', upstream: overHttps().AWS_ENDPOINT_URL_S3! })
  const r = join(dir, 'r.img')
  const run = await runCli(['restore', '--repo', `${repo}?endpoint=${proxy.endpoint}`, '--backup', backupId, '--device', r, '--json'], overHttps(counter.env))
  t.equal(run.code, 0, run.code === 0 ? 'exit 0' : run.stderr)
  t.equal(proxy.state.dropped, 3, 'three downloads were cut midway')
  t.equal(await sha256File(r), await sha256File(image), 'the restore made through the drops is exact')
  const n = counter.read(run.stderr)
  t.ok(n.rawTls > 0 && n.rawTls === n.lean, `every attempt on raw TLS: ${JSON.stringify(n)}`)
  t.equal(n.sdkRanged, 0, 'retried as interrupted transfers on the lean path, not handed to the SDK')
})

t.test('over https, a certificate the CA store does not vouch for fails at once, saying so', async (t) => {
  const repo = await s3RepoUrl()
  const started = Date.now()
  const r = await runCli(['list', '--repo', repo, '--json'], overHttps({ NODE_EXTRA_CA_CERTS: undefined }))
  t.equal(r.code, 1)
  t.equal(r.json?.error.code, 'STORAGE_ERROR')
  t.match(r.json?.error.message, /certificate/, r.json?.error.message)
  t.notMatch(r.json?.error.message, /attempts/, 'not retried')
  t.ok(Date.now() - started < 10_000, 'at once')
})

t.test('a PUT signed with the body hash the caller gives: the server checks it against the body', async (t) => {
  const backend = storageAt(await s3RepoUrl('body/hash'))
  t.equal(backend.usesBodySha256, true, 'an S3 repository takes the body hash from the repository (computed on a codec thread)')
  const body = Buffer.from('a pack, or something like one')
  const right = createHash('sha256').update(body).digest('hex')
  await backend.put('packs/aa/right', body, { sha256: right })
  t.same(await backend.get('packs/aa/right'), body, 'stored with the hash given')
  const wrong = createHash('sha256').update('something else').digest('hex')
  await t.rejects(backend.put('packs/aa/wrong', body, { sha256: wrong }), 'a hash that is not the body\'s is refused by the server: the SDK signed with it, not its own')
  t.equal(await backend.get('packs/aa/wrong'), null, 'and nothing was stored')
})

t.test('over https, packs go up as streams of slices; uploads cut midway are retried whole and the backup restores exactly', async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 40 * MiB, [{ kind: 'random', offset: 0, length: 40 * MiB }])
  const upstream = overHttps().AWS_ENDPOINT_URL_S3!
  // TLS passes through the proxy: it cuts the encrypted stream of the first three uploads after 2 MiB.
  const proxy = await flakyProxy(t, { dropFirst: 3, afterBytes: 2 * MiB, upstream })
  const https = `https://127.0.0.1:${new URL(proxy.endpoint).port}`
  const b = await cli(['backup', '--repo', `${repo}?endpoint=${https}`, '--device', image], overHttps())
  t.equal(proxy.state.dropped, 3, 'three uploads were cut midway')
  const r = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', b.backupId, '--device', r])
  t.equal(await sha256File(r), await sha256File(image), 'every pack arrived whole: the restore over plain http is exact')
})
