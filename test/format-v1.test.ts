// Repositories of format version 1 (test/fixtures/repo-v1, made by scripts/make-v1-fixture.sh with
// the last release that wrote them): still listed, restored and verified; refused as a backup
// target with a message that names `ebs-worker migrate`; upgraded in place by migrate, which can
// be cut short at any write and run again.
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { connect, createServer, type Socket } from 'node:net'
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { cp, readdir, readFile, writeFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fixtureImage } from '../scripts/fixture-image.ts'
import { migrate } from '../agent/repo/migrate.ts'
import { Repository } from '../agent/repo/repository.ts'
import { LocalKeyFileProvider } from '../agent/repo/keys.ts'
import { FileBackend } from '../agent/storage/file.ts'
import type { Backend, ListOptions, PutOptions } from '../agent/storage/types.ts'
import { INDEXES } from '../agent/repo/layout.ts'
import { cli, CLI, ROOT, runCli, s3RepoUrl, sha256File, tempDir, type Teardown, until } from './helpers.ts'

const FIXTURE = join(ROOT, 'test/fixtures/repo-v1')

interface FixtureBackup { id: string; image: 1 | 2; parent?: string; sha256: string }

async function fixture(t: Teardown) {
  const dir = await tempDir(t)
  await cp(FIXTURE, join(dir, 'v1'), { recursive: true })
  const backups = (JSON.parse(await readFile(join(FIXTURE, 'backups.json'), 'utf8')) as { backups: FixtureBackup[] }).backups
  const repo = join(dir, 'v1/repo')
  const key = ['--key-file', join(dir, 'v1/repo.key')]
  return { dir, repo, key, backups }
}

/** Restores and verifies every backup of the fixture through the CLI; true when all match. */
async function allRestore(t: Test, f: Awaited<ReturnType<typeof fixture>>): Promise<void> {
  for (const b of f.backups) {
    const out = join(f.dir, `restored-${b.id}-${Date.now()}.img`)
    await cli(['restore', '--repo', f.repo, ...f.key, '--backup', b.id, '--device', out])
    t.equal(await sha256File(out), b.sha256, `backup ${b.id} restores byte for byte`)
    const v = await cli(['verify', '--repo', f.repo, ...f.key, '--backup', b.id])
    t.equal(v.backupId, b.id, `and verifies`)
  }
}

t.test('the fixture is what its images say (the seed still makes them)', async (t) => {
  const { backups } = await fixture(t)
  for (const b of backups) {
    const { createHash } = await import('node:crypto')
    t.equal(createHash('sha256').update(fixtureImage(b.image)).digest('hex'), b.sha256, `image ${b.image}`)
  }
})

t.test('a version 1 repository lists, restores and verifies', async (t) => {
  const f = await fixture(t)
  const list = await cli(['list', '--repo', f.repo, ...f.key])
  t.same(list.backups.map((b: { id: string }) => b.id), f.backups.map((b) => b.id), 'list shows its backups')
  await allRestore(t, f)
})

t.test('a backup into a version 1 repository is refused, naming migrate', async (t) => {
  const f = await fixture(t)
  const image = join(f.dir, 'img')
  await writeFile(image, fixtureImage(1))
  const r = await runCli(['backup', '--repo', f.repo, ...f.key, '--device', image, '--json'])
  t.equal(r.json?.error.code, 'REPO_VERSION')
  t.match(r.json?.error.message, new RegExp(`ebs-worker migrate --repo \\S*${f.repo}`), 'the message names the command')
})

async function open(repo: string, keyFile: string, wrap?: (b: Backend) => Backend): Promise<Repository> {
  const backend = new FileBackend(repo)
  return Repository.open(wrap ? wrap(backend) : backend, { keyProvider: await LocalKeyFileProvider.open(keyFile) })
}

t.test('migrate upgrades in place: everything restores, and backups go on incrementally', async (t) => {
  const f = await fixture(t)
  const keyFile = f.key[1]!
  const result = await migrate(await open(f.repo, keyFile))
  t.match(result, { from: 1, to: 2, manifestsConverted: 2 })
  const repo = await open(f.repo, keyFile)
  t.equal(repo.version, 2, 'the config says version 2')
  t.same(await migrate(repo), { from: 2, to: 2, indexesConverted: 0, manifestsConverted: 0 }, 'a second run has nothing to do')
  await allRestore(t, f)
  // An incremental on top of a migrated backup.
  const image = join(f.dir, 'img')
  await writeFile(image, fixtureImage(2))
  const b = await cli(['backup', '--repo', f.repo, ...f.key, '--device', image, '--parent', f.backups[0]!.id])
  t.equal(b.chunksNew, 0, 'every chunk of the image was already stored')
  const out = join(f.dir, 'out.img')
  await cli(['restore', '--repo', f.repo, ...f.key, '--backup', b.backupId, '--device', out])
  t.equal(await sha256File(out), f.backups[1]!.sha256, 'and it restores exactly')
})

/** A storage that fails every write after the first `writes` (a process killed there). */
function dyingAfter(writes: number): (b: Backend) => Backend & { left: () => number } {
  return (inner) => {
    let left = writes
    const write = <T>(fn: () => Promise<T>): Promise<T> => (left-- > 0 ? fn() : Promise.reject(new Error('killed')))
    return {
      url: inner.url,
      left: () => left,
      get: (name: string) => inner.get(name),
      getRange: (name: string, offset: number, length: number, into?: Buffer) => inner.getRange(name, offset, length, into),
      list: (prefix: string, options?: ListOptions) => inner.list(prefix, options),
      put: (name: string, data: Buffer, options?: PutOptions) => write(() => inner.put(name, data, options)),
      delete: (name: string) => write(() => inner.delete(name)),
    }
  }
}

t.test('migrate cut short after any write goes on when run again', async (t) => {
  // How many writes a whole migration makes.
  const probe = await fixture(t)
  let total = 0
  const counting = (inner: Backend): Backend => ({
    ...inner, url: inner.url, get: inner.get.bind(inner), getRange: inner.getRange.bind(inner), list: inner.list.bind(inner),
    put: (n: string, d: Buffer, o?: PutOptions) => (total++, inner.put(n, d, o)), delete: (n: string) => (total++, inner.delete(n)),
  })
  await migrate(await open(probe.repo, probe.key[1]!, counting))
  t.ok(total >= 5, `a migration makes ${total} writes`)
  for (let writes = 0; writes < total; writes++) {
    const f = await fixture(t)
    await t.rejects(migrate(await open(f.repo, f.key[1]!, dyingAfter(writes))), /killed/, `killed after ${writes} writes`)
    const again = await migrate(await open(f.repo, f.key[1]!))
    t.equal(again.to, 2, `then run again: done (${again.manifestsConverted} manifests left to convert)`)
    for (const b of f.backups) {
      const out = join(f.dir, `${b.id}.img`)
      await cli(['restore', '--repo', f.repo, ...f.key, '--backup', b.id, '--device', out])
      t.equal(await sha256File(out), b.sha256, `backup ${b.id} restores`)
    }
  }
})

/** A TCP proxy to the test bed's S3 that holds every request back `delayMs`: a slow network. */
async function slowS3(t: Teardown, delayMs: number): Promise<string> {
  const upstream = new URL(process.env.AWS_ENDPOINT_URL_S3!)
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const s3 = connect(Number(upstream.port), upstream.hostname)
    sockets.add(client).add(s3)
    client.on('data', (d: Buffer) => setTimeout(() => s3.write(d), delayMs))
    s3.on('data', (d: Buffer) => client.write(d))
    for (const sock of [client, s3]) sock.on('error', () => {}).on('close', () => { client.destroy(); s3.destroy() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const sock of sockets) sock.destroy()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`
}

t.test('ebs-worker migrate killed with SIGKILL midway is run again, and the repository is whole', async (t) => {
  const f = await fixture(t)
  // The fixture on the test bed's S3, reached through a slow network: a migration long enough to be cut.
  const url = await s3RepoUrl('v1')
  const { hostname: bucket, pathname } = new URL(url)
  const prefix = pathname.slice(1)
  const client = new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED' })
  t.teardown(() => client.destroy())
  for (const file of await readdir(f.repo, { recursive: true, withFileTypes: true })) {
    if (!file.isFile()) continue
    const path = join(file.parentPath, file.name)
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/${relative(f.repo, path)}`, Body: await readFile(path) }))
  }
  const slow = await slowS3(t, 150)
  const child = spawn(process.execPath, [CLI, 'migrate', '--repo', url, ...f.key, '--json'], { stdio: 'ignore', env: { ...process.env, AWS_ENDPOINT_URL_S3: slow } })
  const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)))
  // Killed as soon as its first write lands: a version 2 index run (the config changes last).
  const runs = async (): Promise<number> => ((await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/${INDEXES}` }))).Contents ?? [])
    .filter((o) => /\/\d{8}T/.test(o.Key!)).length
  await until(async () => (await runs()) > 0, 60_000, 'the first index run')
  child.kill('SIGKILL')
  t.equal(await exited, 'SIGKILL', 'the migration was killed')
  const config = await client.send(new GetObjectCommand({ Bucket: bucket, Key: `${prefix}/config` }))
  t.equal(JSON.parse(await config.Body!.transformToString()).version, 1, 'midway: the config still says version 1')
  const again = await cli(['migrate', '--repo', url, ...f.key])
  t.match(again, { from: 1, to: 2 }, 'run again, it finishes')
  for (const b of f.backups) {
    const out = join(f.dir, `${b.id}.img`)
    await cli(['restore', '--repo', url, ...f.key, '--backup', b.id, '--device', out])
    t.equal(await sha256File(out), b.sha256, `backup ${b.id} restores byte for byte`)
  }
  t.same((await cli(['list', '--repo', url, ...f.key])).backups.map((b: { id: string }) => b.id), f.backups.map((b) => b.id), 'and every backup is listed')
})
