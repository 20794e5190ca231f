// scripts/package.sh: RPM (Amazon Linux 2023) and DEB packages of the release, for x86_64 and
// arm64 (Graviton), built from real release tarballs (scripts/release.sh, its Node runtime from a
// local stand-in of the Node.js distribution: test/node-dist.ts) and inspected with the real tools,
// rpm (-qip, -qlvp, --scripts, rpm2archive) and dpkg-deb (-I, -c, -x): the architecture, the
// /usr/bin links, the unit, the sysusers.d file, the CloudWatch agent fragment in
// amazon-cloudwatch-agent.d (the agent's main config untouched), logrotate as a config file, and
// the x86_64 package's own launcher running its bundled runtime.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdir, readFile, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { localNodeDist } from './node-dist.ts'
import { MiB, ROOT, tempDir } from './helpers.ts'

const run = promisify(execFile)
const version = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')).version as string
const work = await tempDir(t, 'packages')
const env = { ...process.env, NODE_DIST: await localNodeDist(work, ['x64', 'arm64']), NODE_CACHE: join(work, 'node-cache') }
const out = join(work, 'out')
const release = await run('bash', [join(ROOT, 'scripts/release.sh'), '--arch', 'x64', '--arch', 'arm64', out], { env, maxBuffer: 16 * MiB })
const tarballs = [...release.stdout.matchAll(/^tarball (.+)$/gm)].map((m) => m[1]!)

const ARCHES = [
  { node: 'x64', rpm: 'x86_64', deb: 'amd64' },
  { node: 'arm64', rpm: 'aarch64', deb: 'arm64' },
] as const
const built = new Map<string, { rpm: string; deb: string }>()
for (const a of ARCHES) {
  const tarball = join(out, `ebs-worker-${version}-linux-${a.node}.tar.gz`)
  const p = await run('bash', [join(ROOT, 'scripts/package.sh'), tarball, join(work, 'pkg')], { maxBuffer: 16 * MiB })
  built.set(a.node, { rpm: /^rpm (.+)$/m.exec(p.stdout)?.[1] ?? '', deb: /^deb (.+)$/m.exec(p.stdout)?.[1] ?? '' })
}

const rpmQ = async (...args: string[]): Promise<string> => (await run('rpm', args, { maxBuffer: 64 * MiB })).stdout
const debQ = async (...args: string[]): Promise<string> => (await run('dpkg-deb', args, { maxBuffer: 64 * MiB })).stdout
const FRAGMENT = '/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json'

t.test('the release has a tarball per architecture, its runtime checked', async (t) => {
  t.same(tarballs, ARCHES.map((a) => join(out, `ebs-worker-${version}-linux-${a.node}.tar.gz`)))
  t.match(release.stdout, /\(node v24\.\d+\.\d+, linux-arm64\)/)
})

for (const a of ARCHES) {
  t.test(`the ${a.rpm} RPM`, async (t) => {
    const rpm = built.get(a.node)!.rpm
    t.equal(rpm, join(work, 'pkg', `ebs-worker-${version}-1.${a.rpm}.rpm`))
    const info = await rpmQ('-qip', rpm)
    t.match(info, new RegExp(`^Architecture: ${a.rpm}$`, 'm'), 'its architecture')
    t.match(info, new RegExp(`^Version\\s*: ${version.replace(/\./g, '\\.')}$`, 'm'))
    const files = await rpmQ('-qlvp', rpm)
    t.match(files, /^l\S+\s.*\s\/usr\/bin\/ebs-worker -> \/opt\/ebs-worker\/bin\/ebs-worker$/m, '/usr/bin/ebs-worker links to the launcher')
    t.match(files, /\s\/usr\/bin\/ebs-controller -> \/opt\/ebs-worker\/bin\/ebs-controller$/m)
    const list = (await rpmQ('-qlp', rpm)).split('\n')
    for (const f of ['/usr/lib/systemd/system/ebs-worker.service', '/usr/lib/systemd/system/ebs-worker-health.service', '/usr/lib/systemd/system/ebs-worker-health.timer', '/usr/lib/sysusers.d/ebs-worker.conf', FRAGMENT, '/etc/logrotate.d/ebs-worker',
      '/opt/ebs-worker/node/bin/node', '/opt/ebs-worker/node/PROVENANCE', '/opt/ebs-worker/lib/agent/bin/ebs-worker.js']) t.ok(list.includes(f), `${f} is in it`)
    t.notOk(list.includes('/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json'), 'not the CloudWatch agent\'s main config')
    t.notOk(list.some((f) => f.startsWith('/usr/lib/.build-id')), 'no build-id links of a foreign build')
    t.same((await rpmQ('-qpc', rpm)).trim().split('\n'), ['/etc/logrotate.d/ebs-worker'], 'logrotate is a config file (local edits kept)')
    const scripts = await rpmQ('-qp', '--scripts', rpm)
    t.match(scripts, /postinstall scriptlet[^\n]*\n[^]*systemd-sysusers \/usr\/lib\/sysusers\.d\/ebs-worker\.conf/, 'the user is created on install')
    t.match(scripts, /preuninstall scriptlet[^]*if \[ "\$1" -eq 0 \]; then\s+systemctl --no-reload disable --now ebs-worker\.service/, 'stopped only on removal, not upgrade')
    t.notMatch(scripts, /enable (--now )?ebs-worker/, 'not enabled by the package: the user-data does it once configured')
    const deps = await rpmQ('-qp', '--requires', rpm)
    t.match(deps, /^systemd$/m)
    t.notMatch(deps, /^lib\w+\.so/m, 'no automatic ELF requirements')
    t.match(await rpmQ('-qp', '--recommends', rpm), /^amazon-cloudwatch-agent$/m)

    // The payload, unpacked: the unit, sysusers and fragment are the repository's files.
    const dir = await tempDir(t, `rpm-${a.rpm}`)
    await run('sh', ['-c', 'rpm2archive - < "$1" | tar -xzf - -C "$2"', 'sh', rpm, dir])
    t.equal(await readFile(join(dir, 'usr/lib/systemd/system/ebs-worker.service'), 'utf8'), await readFile(join(ROOT, 'systemd/ebs-worker.service'), 'utf8'))
    t.equal(await readFile(join(dir, 'usr/lib/sysusers.d/ebs-worker.conf'), 'utf8'), await readFile(join(ROOT, 'systemd/ebs-worker.sysusers'), 'utf8'))
    t.same(JSON.parse(await readFile(join(dir, FRAGMENT.slice(1)), 'utf8')), JSON.parse(await readFile(join(ROOT, 'packaging/cloudwatch-agent.json'), 'utf8')))
    const runtime = (await run('node', [join(ROOT, 'scripts/node-runtime.ts'), 'elf-arch', join(dir, 'opt/ebs-worker/node/bin/node')])).stdout.trim()
    t.equal(runtime, a.node, `the runtime is an ${a.node} executable`)
    t.match(await readFile(join(dir, 'opt/ebs-worker/node/PROVENANCE'), 'utf8'), new RegExp(`^node v24\\.\\S+ linux-${a.node}\\nfrom .*\\nsha256 [0-9a-f]{64} `))
    if (a.node === 'x64') {
      const { stdout } = await run(join(dir, 'opt/ebs-worker/bin/ebs-worker'), ['--version'])
      t.equal(stdout.trim(), version, 'the packaged launcher runs the packaged runtime')
    }
  })

  t.test(`the ${a.deb} DEB`, async (t) => {
    const deb = built.get(a.node)!.deb
    t.equal(deb, join(work, 'pkg', `ebs-worker_${version}-1_${a.deb}.deb`))
    t.equal((await debQ('-f', deb, 'Architecture')).trim(), a.deb, 'its architecture')
    t.equal((await debQ('-f', deb, 'Version')).trim(), `${version}-1`)
    const contents = await debQ('-c', deb)
    t.match(contents, /^l\S+ root\/root .* \.\/usr\/bin\/ebs-worker -> \/opt\/ebs-worker\/bin\/ebs-worker$/m, '/usr/bin/ebs-worker links to the launcher')
    for (const f of ['/usr/lib/systemd/system/ebs-worker.service', '/usr/lib/sysusers.d/ebs-worker.conf', FRAGMENT, '/etc/logrotate.d/ebs-worker', '/opt/ebs-worker/node/bin/node']) {
      t.match(contents, new RegExp(`^-\\S+ root/root .* \\.${f.replace(/\./g, '\\.')}$`, 'm'), `${f} is in it, owned by root`)
    }
    t.notMatch(contents, /amazon-cloudwatch-agent\.json$/m, 'not the CloudWatch agent\'s main config')
    const control = join(await tempDir(t, `deb-${a.deb}`), 'DEBIAN')
    await run('dpkg-deb', ['-e', deb, control])
    t.equal((await readFile(join(control, 'conffiles'), 'utf8')).trim(), '/etc/logrotate.d/ebs-worker')
    const postinst = await readFile(join(control, 'postinst'), 'utf8')
    t.match(postinst, /if \[ "\$1" = configure \]; then\nsystemd-sysusers \/usr\/lib\/sysusers\.d\/ebs-worker\.conf/)
    await run('sh', ['-n', join(control, 'postinst')])
    t.match(await readFile(join(control, 'prerm'), 'utf8'), /if \[ "\$1" = remove \]; then\nsystemctl --no-reload disable --now ebs-worker\.service/)
    if (a.node === 'x64') {
      const dir = await tempDir(t, 'deb-x')
      await run('dpkg-deb', ['-x', deb, dir])
      t.equal(await readlink(join(dir, 'usr/bin/ebs-worker')), '/opt/ebs-worker/bin/ebs-worker')
      const { stdout } = await run(join(dir, 'opt/ebs-worker/bin/ebs-worker'), ['--version'])
      t.equal(stdout.trim(), version, 'the packaged launcher runs the packaged runtime')
    }
  })
}

t.test('package.sh refuses what is not a release tarball of a known architecture', async (t) => {
  const dir = await tempDir(t, 'pkg-bad')
  await mkdir(join(dir, 'x'))
  await run('tar', ['-czf', join(dir, `ebs-worker-${version}-linux-ppc64le.tar.gz`), '-C', dir, 'x'])
  const r = await run('bash', [join(ROOT, 'scripts/package.sh'), join(dir, `ebs-worker-${version}-linux-ppc64le.tar.gz`)]).then(() => '', (e: { stderr: string }) => e.stderr)
  t.match(r, /is not named ebs-worker-VERSION-linux-\(x64\|arm64\)\.tar\.gz/)
})

t.test('release.sh refuses a runtime that does not match SHASUMS256.txt', async (t) => {
  const dir = await tempDir(t, 'release-bad')
  const dist = await localNodeDist(dir, ['arm64'])
  await run('sh', ['-c', 'printf x >> "$1"', 'sh', join(dist, `node-v${(JSON.parse(await readFile(join(ROOT, 'node_modules/node/package.json'), 'utf8')) as { version: string }).version}-linux-arm64.tar.gz`)])
  const r = await run('bash', [join(ROOT, 'scripts/release.sh'), '--arch', 'arm64', join(dir, 'out')], { env: { ...env, NODE_DIST: dist, NODE_CACHE: join(dir, 'cache') }, maxBuffer: 16 * MiB })
    .then(() => ({ ok: true, err: '' }), (e: { stderr: string }) => ({ ok: false, err: e.stderr }))
  t.notOk(r.ok, 'the release fails')
  t.match(r.err, /SHASUMS256\.txt says [0-9a-f]{64}: refusing it/)
})

const hasPacker = await run('packer', ['version']).then(() => true, () => false)
t.test('the Packer template validates for either architecture and installs the RPM', { skip: hasPacker ? false : 'packer is not installed (.ci/run installs it)' }, async (t) => {
  const template = JSON.parse(await readFile(join(ROOT, 'packaging/ebs-worker.pkr.json'), 'utf8'))
  const files = template.build.provisioner.flatMap((p: any) => (p.file ? [p.file.source] : []))
  t.same(files, ['${var.package}'])
  const inline = template.build.provisioner.find((p: any) => p.shell).shell.inline.join('\n')
  t.match(inline, /dnf install -y amazon-cloudwatch-agent awscli-2 \/tmp\/ebs-worker\.rpm/, 'the CloudWatch agent, the aws command (the user-data\'s stack signal) and the package')
  t.notMatch(inline, /amazon-cloudwatch-agent\.json/, 'the agent\'s main config is not written')
  const filter = template.source['amazon-ebs'].worker.source_ami_filter.filters
  t.equal(filter.architecture, '${var.arch}')
  t.match(filter.name, /^al2023-ami-2023\.\*-kernel-\*-\$\{var\.arch\}$/, 'Amazon Linux 2023 of the chosen architecture')
  const validate = (vars: Record<string, string>) => run('packer', ['validate', ...Object.entries({ version, ...vars }).flatMap(([k, v]) => ['-var', `${k}=${v}`]), 'packaging/ebs-worker.pkr.json'], { cwd: ROOT })
    .then(() => ({ ok: true, out: '' }), (e: { stdout: string; stderr: string }) => ({ ok: false, out: e.stdout + e.stderr }))
  for (const a of ARCHES) {
    const arch = a.node === 'x64' ? 'x86_64' : 'arm64'
    const good = await validate({ arch, package: built.get(a.node)!.rpm })
    t.ok(good.ok, `packer validate passes for ${arch}: ${good.out}`)
  }
  const inspect = await run('packer', ['inspect', '-var', 'arch=arm64', 'packaging/ebs-worker.pkr.json'], { cwd: ROOT })
  t.match(inspect.stdout, /local\.instance_type: "c7g\.large"/, 'a Graviton build instance for arm64')
  t.match(inspect.stdout, /local\.rpm_arch: "aarch64"/, 'and the package must be aarch64 (checked on the instance)')
  const missing = await validate({ arch: 'arm64', package: join(work, 'missing.rpm') })
  t.notOk(missing.ok, 'it fails on a missing package')
  t.match(missing.out, /missing\.rpm/)
  const badArch = await validate({ arch: 'ppc64le', package: built.get('arm64')!.rpm })
  t.notOk(badArch.ok, 'and on an architecture other than x86_64 and arm64')
  t.match(badArch.out, /x86_64 or arm64/)
})
