// Bad input gets a clear error and a nonzero exit, and damage or a crash loses nothing.
import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, open, readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { INDEXES, manifestObject, PACKS } from '../agent/repo/layout.ts'
import { backedUpImage, cli, CLI, faultyFile, type Teardown, makeImage, MiB, repoWithImage, runCli, sha256File, tempDir } from './helpers.ts'

async function walk(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...(await walk(p)))
    else out.push(p)
  }
  return out
}

async function setup(t: Teardown, options: { encrypt?: boolean } = {}) {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  const key = join(dir, 'key')
  await cli(['init', '--repo', repo, ...(options.encrypt ? ['--encrypt', '--key-file', key] : [])])
  const image = join(dir, 'vol.img')
  // One stored chunk, at a known offset, so damage can be traced to it.
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: 5 * MiB, length: MiB }])
  const keyArgs = options.encrypt ? ['--key-file', key] : []
  const b = await cli(['backup', '--repo', repo, '--device', image, ...keyArgs])
  return { dir, repo, key, image, keyArgs, backupId: b.backupId as string }
}

t.test('input that cannot be used', async (t) => {
  const { dir, repo, backupId } = await setup(t)
  const cases: Array<[string, string[], number, string, RegExp]> = [
    ['missing device', ['backup', '--repo', repo, '--device', join(dir, 'nope.img')], 1, 'DEVICE_NOT_FOUND', /does not exist/],
    ['device is a directory', ['backup', '--repo', repo, '--device', dir], 1, 'DEVICE_UNUSABLE', /neither a block device nor a regular file/],
    ['unknown backup', ['restore', '--repo', repo, '--backup', '20200101T000000Z-00000000', '--device', join(dir, 'x.img')], 1, 'BACKUP_NOT_FOUND', /does not exist/],
    ['malformed backup id', ['verify', '--repo', repo, '--backup', '../../etc/passwd'], 2, 'BAD_INPUT', /not a backup id/],
    ['no repository there', ['list', '--repo', join(dir, 'empty')], 10, 'REPO_NOT_FOUND', /ebs-worker init/],
    ['repository exists', ['init', '--repo', repo], 1, 'REPO_EXISTS', /already exists/],
    ['missing option', ['backup', '--repo', repo], 2, 'BAD_INPUT', /--device/],
    ['bad chunk size', ['init', '--repo', join(dir, 'r2'), '--chunk-size', '1000'], 2, 'BAD_INPUT', /multiple of 512 KiB/],
    ['unsupported URL', ['list', '--repo', 'ftp://x/y'], 2, 'BAD_INPUT', /unsupported repository URL/],
    ['--encrypt without key', ['init', '--repo', join(dir, 'r3'), '--encrypt'], 2, 'BAD_INPUT', /--key-file/],
  ]
  for (const [what, args, exit, code, message] of cases) {
    const r = await runCli([...args, '--json'])
    t.equal(r.code, exit, `${what}: exit ${exit}`)
    t.equal(r.json?.ok, false, `${what}: JSON says not ok`)
    t.equal(r.json?.error.code, code, `${what}: code ${code}`)
    t.match(r.json?.error.message, message, `${what}: message ${message}`)
  }
  const human = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', '/dev/ebs-worker-no-such-device'])
  t.equal(human.code, 1, 'a missing /dev path is an error, not a new file')
  t.match(human.stderr, /DEVICE_NOT_FOUND/, 'stderr carries the code')
})

t.test('restore target smaller than the backup is refused and left untouched', async (t) => {
  const { dir, repo, backupId } = await setup(t)
  const small = join(dir, 'small.img')
  await makeImage(small, 4 * MiB, [{ kind: 'random', offset: 0, length: 4 * MiB }])
  const before = await sha256File(small)
  const r = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', small, '--force', '--json'])
  t.equal(r.code, 1)
  t.equal(r.json?.error.code, 'TARGET_TOO_SMALL')
  t.equal(await sha256File(small), before, 'target unchanged')
})

t.test('repository of another format version', async (t) => {
  const { repo } = await setup(t)
  const config = JSON.parse(await readFile(join(repo, 'config'), 'utf8'))
  await writeFile(join(repo, 'config'), JSON.stringify({ ...config, version: 3 }))
  const r = await runCli(['list', '--repo', repo, '--json'])
  t.equal(r.json?.error.code, 'REPO_VERSION')
  t.match(r.json?.error.message, /format version 3; this ebs-worker reads versions 1 and 2/)
})

t.test('encrypted repository: no key, wrong key', async (t) => {
  const { dir, repo, backupId } = await setup(t, { encrypt: true })
  const none = await runCli(['verify', '--repo', repo, '--backup', backupId, '--json'])
  t.equal(none.json?.error.code, 'KEY_REQUIRED', 'no key: KEY_REQUIRED')
  const other = join(dir, 'other.key')
  await writeFile(other, randomBytes(32).toString('base64'))
  const wrong = await runCli(['verify', '--repo', repo, '--backup', backupId, '--key-file', other, '--json'])
  t.equal(wrong.json?.error.code, 'WRONG_KEY', 'wrong key: WRONG_KEY')
  t.equal(wrong.code, 12, 'wrong key: exit 12 (restic\'s)')
  t.equal(none.code, 1, 'no key: exit 1')
  t.match(wrong.json?.error.message, /fingerprint/, 'names the key fingerprints')
  await writeFile(other, 'too short')
  const bad = await runCli(['verify', '--repo', repo, '--backup', backupId, '--key-file', other, '--json'])
  t.equal(bad.json?.error.code, 'BAD_INPUT', 'malformed key file: BAD_INPUT')
})

/** The backup's data pack: the large one (the chunk list's nodes are in a pack of a few hundred bytes). */
async function dataPack(repo: string): Promise<string> {
  const packs = await walk(join(repo, PACKS))
  const sizes = await Promise.all(packs.map(async (p) => (await stat(p)).size))
  return packs[sizes.indexOf(Math.max(...sizes))]!
}

for (const encrypt of [false, true]) {
  t.test(`a damaged chunk is found and named (${encrypt ? 'encrypted' : 'plain'})`, async (t) => {
    const { dir, repo, keyArgs, backupId } = await setup(t, { encrypt })
    const packs = (await walk(join(repo, PACKS)))
    t.equal(packs.length, 2, 'one data pack and one pack of the chunk list')
    const h = await open(await dataPack(repo), 'r+')
    const byte = Buffer.alloc(1)
    await h.read(byte, 0, 1, 200)
    byte[0] = byte[0]! ^ 0x55
    await h.write(byte, 0, 1, 200)
    await h.close()
    for (const cmd of [['verify'], ['restore', '--device', join(dir, 'out.img')]]) {
      const r = await runCli([...cmd, '--repo', repo, '--backup', backupId, ...keyArgs, '--json'])
      t.equal(r.code, 3, `${cmd[0]}: exit 3 for damaged data`)
      t.equal(r.json?.error.code, 'CHUNK_CORRUPT', `${cmd[0]}: CHUNK_CORRUPT`)
      t.match(r.json?.error.message, new RegExp(`backup ${backupId}: chunk at offset ${5 * MiB} `), `${cmd[0]}: names backup and offset`)
    }
  })
}

t.test('a truncated pack is reported', async (t) => {
  const { repo, backupId } = await setup(t)
  await truncate(await dataPack(repo), 1000)
  const r = await runCli(['verify', '--repo', repo, '--backup', backupId, '--json'])
  t.equal(r.code, 3)
  t.match(r.json?.error.message, /truncated/)
})

t.test('a damaged manifest is reported', async (t) => {
  const { repo, backupId } = await setup(t)
  const path = join(repo, manifestObject(backupId))
  const data = await readFile(path)
  data[data.length - 3] = data[data.length - 3]! ^ 0xff
  await writeFile(path, data)
  const r = await runCli(['verify', '--repo', repo, '--backup', backupId, '--json'])
  t.not(r.code, 0)
  t.equal(r.json?.error.code, 'REPO_FORMAT')
})

/** A backup slow enough to be caught midway: one read at a time, zstd at its slowest level. */
/**
 * A backup slow enough to be caught midway whatever the CPU: the image is read through a FUSE
 * file whose every read takes 5 ms (one reader, 4 MiB packs), not through a slow compressor.
 */
async function slowBackup(t: Teardown, repo: string, image: string) {
  const slow = await faultyFile(t, image, { delayMs: 5 })
  return spawn(process.execPath, [CLI, 'backup', '--repo', repo, '--device', slow, '--pack-size', '4MiB',
    '--read-concurrency', '1', '--upload-concurrency', '1', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] })
}

t.test('a backup killed with SIGKILL leaves no backup, and the next one reuses its packs', async (t) => {
  const dir = await tempDir(t)
  const { repo, image } = await repoWithImage(dir, 64 * MiB)
  const child = await slowBackup(t, repo, image)
  const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)))
  const deadline = Date.now() + 60_000
  let indexes: string[] = []
  while (Date.now() < deadline) {
    indexes = await readdir(join(repo, INDEXES)).catch(() => [])
    if (indexes.length >= 3) break
    await new Promise((r) => setTimeout(r, 20))
  }
  child.kill('SIGKILL')
  t.equal(await exited, 'SIGKILL', 'the backup was killed midway')
  t.ok(indexes.length >= 3, `some packs were durable before the kill (${indexes.length})`)
  const list = await cli(['list', '--repo', repo])
  t.same(list.backups, [], 'the killed backup is invisible')

  const again = await cli(['backup', '--repo', repo, '--device', image])
  t.ok(again.chunksReused >= indexes.length * 3, `the next backup reuses what was stored (${again.chunksReused} chunks)`)
  t.ok(again.bytesStored < 64 * MiB - indexes.length * 3 * MiB, 'and stores less than the whole volume')
  const restored = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', again.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'the backup after the crash restores exactly')
  await cli(['verify', '--repo', repo, '--backup', again.backupId])
})

t.test('SIGTERM stops a backup cleanly: exit 130, nothing recorded', async (t) => {
  const { repo, image } = await repoWithImage(await tempDir(t), 32 * MiB)
  const child = await slowBackup(t, repo, image)
  let stdout = ''
  child.stdout.on('data', (d) => (stdout += d))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  while (!(await readdir(join(repo, INDEXES)).catch(() => [])).length) await new Promise((r) => setTimeout(r, 20))
  child.kill('SIGTERM')
  t.equal(await exited, 130, 'exit status 130')
  const result = JSON.parse(stdout.trim().split('\n').pop()!)
  t.equal(result.error.code, 'INTERRUPTED', 'JSON says INTERRUPTED')
  t.same((await cli(['list', '--repo', repo])).backups, [], 'no backup recorded')
})

t.test('a target that fails mid-restore (a full filesystem) is reported with the offset', async (t) => {
  const dir = await tempDir(t)
  const { repo, backupId } = await backedUpImage(dir, 16 * MiB)
  const small = join(dir, 'small-fs')
  await mkdir(small)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small])
  t.teardown(() => {
    execFileSync('umount', [small])
  })
  const r = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', join(small, 'out.img'), '--json'])
  t.equal(r.code, 1, 'nonzero exit')
  t.equal(r.json?.error.code, 'DEVICE_UNUSABLE', 'DEVICE_UNUSABLE')
  t.match(r.json?.error.message, /cannot write .*out\.img at offset \d+: .*(ENOSPC|no space)/i, r.json?.error.message)
})
