// The release artifact as a worker gets it: scripts/release.sh builds the tarball, it is unpacked
// into an empty directory, and the bundled runtime runs the compiled agent with no other Node on
// PATH: --version, then a backup and restore round trip (file://, and S3 on the test bed).
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { access, mkdir, readdir, readFile, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { makeImage, MiB, ROOT, s3Available, s3RepoUrl, sha256File, tempDir } from './helpers.ts'

const run = promisify(execFile)
const version = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')).version as string

const work = await tempDir(t, 'release')
const build = await run('bash', [join(ROOT, 'scripts/release.sh'), join(work, 'out')], { maxBuffer: 16 * MiB })
const tarball = /^tarball (.+)$/m.exec(build.stdout)?.[1] ?? ''
const sum = /^sha256 ([0-9a-f]{64})$/m.exec(build.stdout)?.[1] ?? ''

// An empty directory to unpack into, and /opt/ebs-worker-style link to it.
const unpacked = join(work, 'opt')
await mkdir(unpacked)
await run('tar', ['-xzf', tarball, '-C', unpacked])
const home = join(unpacked, `ebs-worker-${version}`)
await symlink(home, join(unpacked, 'ebs-worker'))
const launcher = join(unpacked, 'ebs-worker/bin/ebs-worker')

// A PATH with the launcher's few tools and no node: the bundled runtime must be the one used.
const bin = join(work, 'bin')
await mkdir(bin)
for (const tool of ['sh', 'dirname', 'readlink']) {
  const { stdout } = await run('sh', ['-c', `command -v ${tool}`])
  await symlink(stdout.trim(), join(bin, tool))
}
const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin }
delete env.NODE_OPTIONS

function ebsWorker(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(launcher, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

async function json(args: string[]): Promise<Record<string, any>> {
  const r = await ebsWorker([...args, '--json'])
  if (r.code !== 0) throw new Error(`ebs-worker ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop()!)
}

t.test('the script names the tarball and its checksum', async (t) => {
  t.match(tarball, new RegExp(`/ebs-worker-${version.replace(/\./g, '\\.')}-linux-x64\\.tar\\.gz$`))
  t.match(build.stdout, new RegExp(`^version ${version.replace(/\./g, '\\.')} \\(node v24\\.`, 'm'), 'version and bundled runtime printed')
  t.equal(await sha256File(tarball), sum, 'the printed sha256 is the tarball\'s')
  t.equal((await readFile(`${tarball}.sha256`, 'utf8')).trim(), `${sum}  ebs-worker-${version}-linux-x64.tar.gz`, 'sha256sum -c file beside it')
})

t.test('the tarball holds the runtime, the compiled agent and production dependencies only', async (t) => {
  t.equal((await readFile(join(home, 'VERSION'), 'utf8')).trim(), version)
  await access(join(home, 'node/bin/node'))
  await access(join(home, 'lib/agent/bin/ebs-worker.js'))
  t.same((await readdir(join(home, 'lib/agent'))).filter((f) => f.endsWith('.ts')), [], 'compiled JavaScript, no TypeScript to strip at run time')
  const modules = await readdir(join(home, 'lib/node_modules'))
  for (const prod of ['@aws-sdk', 'commander', 'zod', 'p-limit']) t.ok(modules.includes(prod), `${prod} is there`)
  for (const dev of ['tap', 'typescript', 'fauxqs', 'node', '@types']) t.notOk(modules.includes(dev), `${dev} is not`)
  const unit = await readFile(join(home, 'share/ebs-worker.service'), 'utf8')
  t.match(unit, /^ExecStart=\/opt\/ebs-worker\/bin\/ebs-worker daemon /m, 'the unit starts the launcher where the tarball puts it under /opt/ebs-worker')
  for (const f of ['ebs-worker.sysusers', 'cloudwatch-agent.json', 'logrotate.conf', 'user-data.sh', 'OPERATIONS.md']) await access(join(home, 'share', f))
})

t.test('--version runs on the bundled runtime with no Node on PATH', async (t) => {
  await t.rejects(run('sh', ['-c', 'command -v node'], { env }), 'no node on this PATH')
  const r = await ebsWorker(['--version'])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout.trim(), version)
})

t.test('backup and restore round trip with the unpacked release (file://, encrypted)', async (t) => {
  const dir = await tempDir(t, 'release-rt')
  const image = join(dir, 'vol.img')
  await makeImage(image, 12 * MiB, [{ kind: 'random', offset: MiB, length: 3 * MiB }, { kind: 'text', offset: 7 * MiB, length: 2 * MiB }])
  const repo = `file://${join(dir, 'repo')}`
  const key = join(dir, 'repo.key')
  await json(['init', '--repo', repo, '--encrypt', '--key-file', key])
  const b = await json(['backup', '--repo', repo, '--key-file', key, '--device', image])
  t.ok(b.bytesStored > 0 && b.bytesStored < 12 * MiB, `stored ${b.bytesStored} bytes: zeros skipped, text compressed`)
  const restored = join(dir, 'restored.img')
  await json(['restore', '--repo', repo, '--key-file', key, '--backup', b.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'restored byte for byte')
})

t.test('backup and restore round trip with the unpacked release against S3', { skip: s3Available ? false : 'no S3 test bed (npm test starts one)' }, async (t) => {
  const dir = await tempDir(t, 'release-s3')
  const image = join(dir, 'vol.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: 0, length: 2 * MiB }, { kind: 'text', offset: 4 * MiB, length: MiB }])
  const repo = await s3RepoUrl('release')
  await json(['init', '--repo', repo])
  const b = await json(['backup', '--repo', repo, '--device', image])
  const restored = join(dir, 'restored.img')
  await json(['restore', '--repo', repo, '--backup', b.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'restored byte for byte from S3')
})
