// The Node runtime a release bundles, fetched from the official Node.js distribution and checked
// against its SHASUMS256.txt (https://nodejs.org/dist/vX.Y.Z/SHASUMS256.txt: "sha256  file" lines
// for every file of the release; nodejs/node README, "Verifying binaries"). scripts/release.sh runs
//   node scripts/node-runtime.ts fetch VERSION ARCH CACHE_DIR   prints the checked tarball's path
//   node scripts/node-runtime.ts elf-arch FILE                  prints x64 or arm64 (the ELF's machine)
// NODE_DIST is where the files are: https://nodejs.org/dist/vVERSION by default, or a mirror (a
// URL or a local directory with the tarball and SHASUMS256.txt, which is what the tests use: they
// never need the network). A tarball already in CACHE_DIR is used only if it still matches.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { isAbsolute, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

export type NodeArch = 'x64' | 'arm64'
export const NODE_ARCHES: readonly NodeArch[] = ['x64', 'arm64']

/** The official Linux tarball of a Node version for an architecture. */
export function nodeTarballName(version: string, arch: NodeArch): string {
  if (!/^\d+\.\d+\.\d+$/.test(version)) throw new Error(`node-runtime: "${version}" is not a Node version (X.Y.Z)`)
  return `node-v${version}-linux-${arch}.tar.gz`
}

/** The sha256 SHASUMS256.txt gives for `name`; an error if it names it not once, or not as sha256. */
export function expectedSha256(shasums: string, name: string): string {
  const sums = new Set<string>()
  for (const line of shasums.split('\n')) {
    const m = /^([0-9a-f]{64}) [ *]?(\S+)$/.exec(line.trim())
    if (m && m[2] === name) sums.add(m[1]!)
  }
  if (sums.size === 0) throw new Error(`node-runtime: SHASUMS256.txt has no checksum for ${name}`)
  if (sums.size > 1) throw new Error(`node-runtime: SHASUMS256.txt has ${sums.size} different checksums for ${name}`)
  return [...sums][0]!
}

export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Throws unless the file at `path` is the `name` that SHASUMS256.txt describes. */
export async function verifyAgainstShasums(path: string, shasums: string, name: string): Promise<string> {
  const expected = expectedSha256(shasums, name)
  const actual = await sha256OfFile(path)
  if (actual !== expected) throw new Error(`node-runtime: ${name} has sha256 ${actual}, SHASUMS256.txt says ${expected}: refusing it`)
  return actual
}

/** The architecture an ELF executable is for, from its header's e_machine. */
export async function elfArch(path: string): Promise<NodeArch> {
  const handle = await open(path, 'r')
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(20), 0, 20, 0)
    if (bytesRead < 20 || buffer.readUInt32BE(0) !== 0x7f454c46) throw new Error(`node-runtime: ${path} is not an ELF executable`)
    if (buffer[4] !== 2 || buffer[5] !== 1) throw new Error(`node-runtime: ${path} is not a 64-bit little-endian ELF`)
    const machine = buffer.readUInt16LE(18)
    if (machine === 0x3e) return 'x64'
    if (machine === 0xb7) return 'arm64'
    throw new Error(`node-runtime: ${path} is for ELF machine 0x${machine.toString(16)}, neither x86-64 nor AArch64`)
  } finally {
    await handle.close()
  }
}

const isUrl = (dist: string): boolean => /^https?:\/\//.test(dist)

async function readFromDist(dist: string, name: string): Promise<Buffer> {
  if (!isUrl(dist)) return readFile(join(dist.replace(/^file:\/\//, ''), name))
  const url = `${dist.replace(/\/$/, '')}/${name}`
  const res = await fetch(url)
  if (!res.ok) throw new Error(`node-runtime: GET ${url}: HTTP ${res.status}`)
  return Buffer.from(await res.arrayBuffer())
}

export interface FetchOptions {
  version: string
  arch: NodeArch
  cacheDir: string
  /** A URL or a local directory with the release's files; default https://nodejs.org/dist/vVERSION. */
  dist?: string
}

/** The official tarball, in the cache and matching SHASUMS256.txt, fetched if it is not there. */
export async function fetchNodeRuntime(o: FetchOptions): Promise<{ path: string; sha256: string; source: string }> {
  const name = nodeTarballName(o.version, o.arch)
  const dist = o.dist || `https://nodejs.org/dist/v${o.version}`
  if (!isUrl(dist) && !isAbsolute(dist.replace(/^file:\/\//, ''))) throw new Error(`node-runtime: NODE_DIST ${dist} is neither a URL nor an absolute directory`)
  const shasums = (await readFromDist(dist, 'SHASUMS256.txt')).toString('utf8')
  await mkdir(o.cacheDir, { recursive: true })
  const path = join(o.cacheDir, name)
  const source = `${dist.replace(/\/$/, '')}/${name}`
  const cached = await verifyAgainstShasums(path, shasums, name).catch(() => null)
  if (cached) return { path, sha256: cached, source }
  const tmp = `${path}.${process.pid}.tmp`
  try {
    await writeFile(tmp, await readFromDist(dist, name))
    const sha256 = await verifyAgainstShasums(tmp, shasums, name)
    await rename(tmp, path)
    return { path, sha256, source }
  } finally {
    await rm(tmp, { force: true })
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv
  if (command === 'fetch' && args.length === 3) {
    const [version, arch, cacheDir] = args as [string, string, string]
    if (!NODE_ARCHES.includes(arch as NodeArch)) throw new Error(`node-runtime: arch ${arch} is not one of ${NODE_ARCHES.join(', ')}`)
    const r = await fetchNodeRuntime({ version, arch: arch as NodeArch, cacheDir, dist: process.env.NODE_DIST })
    process.stdout.write(`${r.path}\n${r.sha256}\n${r.source}\n`)
  } else if (command === 'elf-arch' && args.length === 1) {
    process.stdout.write(`${await elfArch(args[0]!)}\n`)
  } else {
    throw new Error('usage: node-runtime.ts fetch VERSION x64|arm64 CACHE_DIR | elf-arch FILE')
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(1)
  })
}
