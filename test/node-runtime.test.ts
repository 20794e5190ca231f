// scripts/node-runtime.ts: the release's runtime is an official Node.js tarball whose sha256 is the
// one SHASUMS256.txt gives, and its executable is for the release's architecture. On local files
// (a SHASUMS256.txt and tarballs made here): the tests never need the network.
import t from 'tap'
import { createHash } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { elfArch, expectedSha256, fetchNodeRuntime, nodeTarballName, verifyAgainstShasums } from '../scripts/node-runtime.ts'
import { elfHeader, localNodeDist, NODE_VERSION } from './node-dist.ts'
import { ROOT, tempDir } from './helpers.ts'

const SHASUMS = [
  'a'.repeat(64) + '  node-v24.21.0-linux-arm64.tar.gz',
  'b'.repeat(64) + '  node-v24.21.0-linux-x64.tar.gz',
  'c'.repeat(64) + '  node-v24.21.0-linux-x64.tar.xz',
  'not a checksum line',
].join('\n')

t.test('the checksum of a name, from SHASUMS256.txt', async (t) => {
  t.equal(nodeTarballName('24.21.0', 'arm64'), 'node-v24.21.0-linux-arm64.tar.gz')
  t.throws(() => nodeTarballName('24', 'x64'), /not a Node version/)
  t.equal(expectedSha256(SHASUMS, 'node-v24.21.0-linux-x64.tar.gz'), 'b'.repeat(64))
  t.equal(expectedSha256(SHASUMS, 'node-v24.21.0-linux-arm64.tar.gz'), 'a'.repeat(64))
  t.throws(() => expectedSha256(SHASUMS, 'node-v24.21.0-linux-ppc64le.tar.gz'), /no checksum for node-v24\.21\.0-linux-ppc64le/)
  t.throws(() => expectedSha256(`${SHASUMS}\n${'d'.repeat(64)}  node-v24.21.0-linux-x64.tar.gz`, 'node-v24.21.0-linux-x64.tar.gz'), /2 different checksums/)
  t.throws(() => expectedSha256(SHASUMS, 'v24.21.0-linux-x64.tar.gz'), /no checksum/, 'the whole name, not a suffix')
})

t.test('a file is accepted only with the checksum SHASUMS256.txt gives it', async (t) => {
  const dir = await tempDir(t, 'node-runtime')
  const file = join(dir, 'node-v24.21.0-linux-x64.tar.gz')
  await writeFile(file, 'the runtime\n')
  const real = createHash('sha256').update('the runtime\n').digest('hex')
  const sum = (real[0] === '0' ? '1' : '0') + real.slice(1)
  t.equal(await verifyAgainstShasums(file, `${real}  node-v24.21.0-linux-x64.tar.gz\n`, 'node-v24.21.0-linux-x64.tar.gz'), real, 'matching: accepted')
  await t.rejects(verifyAgainstShasums(file, `${sum}  node-v24.21.0-linux-x64.tar.gz\n`, 'node-v24.21.0-linux-x64.tar.gz'), /refusing it/, 'one changed byte of the sum: refused')
  await writeFile(file, 'the runtime, tampered\n')
  await t.rejects(verifyAgainstShasums(file, `${real}  node-v24.21.0-linux-x64.tar.gz\n`, 'node-v24.21.0-linux-x64.tar.gz'), /refusing it/, 'a changed file: refused')
})

t.test('the ELF machine of the runtime', async (t) => {
  const dir = await tempDir(t, 'node-elf')
  t.equal(await elfArch(join(ROOT, 'node_modules/node/bin/node')), 'x64', 'the real Node 24 binary')
  await writeFile(join(dir, 'arm'), elfHeader(0xb7))
  t.equal(await elfArch(join(dir, 'arm')), 'arm64')
  await writeFile(join(dir, 'riscv'), elfHeader(0xf3))
  await t.rejects(elfArch(join(dir, 'riscv')), /neither x86-64 nor AArch64/)
  await writeFile(join(dir, 'script'), '#!/bin/sh\necho hello, I am node\n')
  await t.rejects(elfArch(join(dir, 'script')), /not an ELF/)
})

t.test('fetching from a distribution: checked, cached, and refused when it does not match', async (t) => {
  const dir = await tempDir(t, 'node-fetch')
  const dist = await localNodeDist(dir, ['x64', 'arm64'])
  const cacheDir = join(dir, 'cache')
  const got = await fetchNodeRuntime({ version: NODE_VERSION, arch: 'arm64', cacheDir, dist })
  t.equal(got.path, join(cacheDir, `node-v${NODE_VERSION}-linux-arm64.tar.gz`))
  t.equal(got.sha256, expectedSha256(await readFile(join(dist, 'SHASUMS256.txt'), 'utf8'), `node-v${NODE_VERSION}-linux-arm64.tar.gz`))
  // A tampered tarball in the distribution is refused, and nothing lands in the cache.
  const x64 = join(dist, `node-v${NODE_VERSION}-linux-x64.tar.gz`)
  await writeFile(x64, Buffer.concat([await readFile(x64), Buffer.from('extra')]))
  await t.rejects(fetchNodeRuntime({ version: NODE_VERSION, arch: 'x64', cacheDir, dist }), /refusing it/)
  await t.rejects(readFile(join(cacheDir, `node-v${NODE_VERSION}-linux-x64.tar.gz`)), { code: 'ENOENT' }, 'not cached')
  // A cached tarball that no longer matches is fetched again (here: from the good distribution).
  await writeFile(got.path, 'corrupted in the cache')
  const again = await fetchNodeRuntime({ version: NODE_VERSION, arch: 'arm64', cacheDir, dist })
  t.equal(again.sha256, got.sha256, 'fetched again and checked')
  await t.rejects(fetchNodeRuntime({ version: NODE_VERSION, arch: 'arm64', cacheDir, dist: 'relative/dir' }), /neither a URL nor an absolute directory/)
})
