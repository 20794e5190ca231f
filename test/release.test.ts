// The release artifact as a worker gets it: scripts/release.sh builds the tarball, it is unpacked
// into an empty directory, and the bundled runtime runs the compiled agent with no other Node on
// PATH: --version, then a backup and restore round trip (file://, and S3 on the test bed).
// The packages made of it and the AMI template: test/packages.test.ts.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { access, mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { makeImage, MiB, ROOT, s3Available, s3RepoUrl, sha256File, tempDir } from './helpers.ts'
import { localNodeDist, NODE_VERSION } from './node-dist.ts'

const run = promisify(execFile)
const version = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')).version as string

const work = await tempDir(t, 'release')
// The runtime from a local stand-in of the Node.js distribution (test/node-dist.ts): no network.
const releaseEnv = { ...process.env, NODE_DIST: await localNodeDist(work), NODE_CACHE: join(work, 'node-cache') }
const build = await run('bash', [join(ROOT, 'scripts/release.sh'), join(work, 'out')], { env: releaseEnv, maxBuffer: 16 * MiB })
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
  t.match(build.stdout, new RegExp(`^version ${version.replace(/\./g, '\\.')} \\(node v${NODE_VERSION.replace(/\./g, '\\.')}, linux-x64\\)$`, 'm'), 'version, bundled runtime and architecture printed')
  t.equal(await sha256File(tarball), sum, 'the printed sha256 is the tarball\'s')
  t.equal((await readFile(`${tarball}.sha256`, 'utf8')).trim(), `${sum}  ebs-worker-${version}-linux-x64.tar.gz`, 'sha256sum -c file beside it')
})

t.test('the tarball holds the runtime, the compiled agent and production dependencies only', async (t) => {
  t.equal((await readFile(join(home, 'VERSION'), 'utf8')).trim(), version)
  await access(join(home, 'node/bin/node'))
  const provenance = await readFile(join(home, 'node/PROVENANCE'), 'utf8')
  const shasums = await readFile(join(releaseEnv.NODE_DIST, 'SHASUMS256.txt'), 'utf8')
  const sha = /^sha256 ([0-9a-f]{64}) /m.exec(provenance)?.[1]
  t.ok(sha && shasums.includes(`${sha}  node-v${NODE_VERSION}-linux-x64.tar.gz`), `the runtime's tarball is the one SHASUMS256.txt names (${provenance.trim()})`)
  await access(join(home, 'lib/agent/bin/ebs-worker.js'))
  t.same((await readdir(join(home, 'lib/agent'))).filter((f) => f.endsWith('.ts')), [], 'compiled JavaScript, no TypeScript to strip at run time')
  const modules = await readdir(join(home, 'lib/node_modules'))
  for (const prod of ['@aws-sdk', 'commander', 'zod', 'p-limit']) t.ok(modules.includes(prod), `${prod} is there`)
  for (const dev of ['tap', 'typescript', 'fauxqs', 'node', '@types']) t.notOk(modules.includes(dev), `${dev} is not`)
  const unit = await readFile(join(home, 'share/ebs-worker.service'), 'utf8')
  t.match(unit, /^ExecStart=\/opt\/ebs-worker\/bin\/ebs-worker daemon /m, 'the unit starts the launcher where the tarball puts it under /opt/ebs-worker')
  // The launcher gives Node the V8 flags the checkout's entry gives on its #! line (the young
  // generation's cap that keeps peak RSS under budget, agent/bin/ebs-worker.ts).
  const shebangFlags = /^#!\/usr\/bin\/env -S node (.*)$/m.exec(await readFile('agent/bin/ebs-worker.ts', 'utf8'))?.[1]
  t.ok(shebangFlags, 'the entry\'s #! line gives node flags')
  t.match(await readFile(launcher, 'utf8'), `/node/bin/node" ${shebangFlags} "$here/lib/agent/bin/ebs-worker.js"`, 'the launcher gives node the same flags')
  for (const f of ['ebs-worker.sysusers', 'cloudwatch-agent.json', 'logrotate.conf', 'user-data.sh', 'install-worker.sh', 'OPERATIONS.md', 'CONTROLLER.md']) await access(join(home, 'share', f))
  await access(join(home, 'lib/controller/bin/ebs-controller.js'))
})

t.test('--version runs on the bundled runtime with no Node on PATH', async (t) => {
  await t.rejects(run('sh', ['-c', 'command -v node'], { env }), 'no node on this PATH')
  const r = await ebsWorker(['--version'])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout.trim(), version)
  const c = await run(join(home, 'bin/ebs-controller'), ['--version'], { env })
  t.equal(c.stdout.trim(), version, 'and so does the controller')
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

t.test('packaging/install-worker.sh installs the release as the AMI build does (into a temporary root)', async (t) => {
  const root = await tempDir(t, 'install-root')
  await mkdir(join(root, 'etc'), { recursive: true })
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n')
  await writeFile(join(root, 'etc/group'), 'root:x:0:\ndisk:x:6:\n')
  const calls = join(root, 'systemctl.log')
  const systemctl = join(work, 'systemctl')
  await writeFile(systemctl, `#!/bin/sh\necho "$@" >> "${calls}"\n`, { mode: 0o755 })
  await run('bash', [join(ROOT, 'packaging/install-worker.sh'), tarball], { env: { ...process.env, INSTALL_ROOT: root, SYSTEMCTL: systemctl } })
  t.equal(await readlink(join(root, 'opt/ebs-worker')), `ebs-worker-${version}`, '/opt/ebs-worker points at the version (relative: the same inside the image)')
  const { stdout } = await run(join(root, 'opt/ebs-worker/bin/ebs-worker'), ['--version'], { env })
  t.equal(stdout.trim(), version, 'runs from /opt/ebs-worker')
  const unit = await readFile(join(root, 'etc/systemd/system/ebs-worker.service'), 'utf8')
  t.equal(unit, await readFile(join(ROOT, 'systemd/ebs-worker.service'), 'utf8'), 'the unit')
  t.same(JSON.parse(await readFile(join(root, 'opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json'), 'utf8')),
    JSON.parse(await readFile(join(ROOT, 'packaging/cloudwatch-agent.json'), 'utf8')), 'the CloudWatch agent fragment')
  await t.rejects(access(join(root, 'opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json')), 'the agent\'s main config is not written')
  await access(join(root, 'etc/logrotate.d/ebs-worker'))
  const user = /^ebs-worker:x:(\d+):(\d+):/m.exec(await readFile(join(root, 'etc/passwd'), 'utf8'))
  t.ok(user, 'the ebs-worker user')
  t.match(await readFile(join(root, 'etc/group'), 'utf8'), /^disk:x:6:ebs-worker$/m, 'in the disk group')
  const log = await stat(join(root, 'var/log/ebs-worker'))
  t.equal(log.uid, Number(user![1]), 'the log directory belongs to it')
  t.equal(await readFile(calls, 'utf8'), 'daemon-reload\nenable amazon-cloudwatch-agent.service\n', 'the CloudWatch agent enabled; the worker waits for the user-data')
})
