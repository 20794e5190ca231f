// S3 specifics against the test bed's real S3 (Ceph RGW): multipart packs with the configured
// part size, retries through connections that drop mid-upload, and a clear failure, with the
// repository left consistent, when the network stays down.
import t from 'tap'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3'
import { join } from 'node:path'
import { PACKS } from '../agent/repo/layout.ts'
import { cli, makeImage, MiB, runCli, s3RepoUrl, sha256File, tempDir } from './helpers.ts'

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
}

async function flakyProxy(t: { teardown(fn: () => unknown): void }, mode: ProxyMode) {
  const upstream = new URL(process.env.AWS_ENDPOINT_URL_S3!)
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
  return { endpoint: `http://127.0.0.1:${port}`, state }
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
  const keys = (listed.Contents ?? []).map((o) => o.Key!)
  t.equal(keys.length, 2, 'two packs (20 MiB sealed, then the rest)')
  const etags = await Promise.all(keys.map(async (Key) => (await client.send(new HeadObjectCommand({ Bucket: bucket, Key }))).ETag))
  t.ok(etags.some((e) => /-3"?$/.test(e ?? '')), `the 20 MiB pack was uploaded in 3 parts of 8 MiB (${etags.join(', ')})`)
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
