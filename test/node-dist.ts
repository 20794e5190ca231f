// A local stand-in for https://nodejs.org/dist/vX.Y.Z, so that scripts/release.sh runs without the
// network: node-vX.Y.Z-linux-<arch>.tar.gz laid out as the official ones are (node-v…/bin/node,
// node-v…/LICENSE) and their SHASUMS256.txt. The x64 runtime is the real Node 24 the tests run on
// (node_modules/node); there is no arm64 one on an x86-64 test machine, so the arm64 "runtime" is
// the smallest AArch64 ELF header, enough for the release's architecture check (it does not run).
import { execFile } from 'node:child_process'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { nodeTarballName, sha256OfFile, type NodeArch } from '../scripts/node-runtime.ts'
import { ROOT } from './helpers.ts'

const run = promisify(execFile)

export const NODE_VERSION = (JSON.parse(await readFile(join(ROOT, 'node_modules/node/package.json'), 'utf8')) as { version: string }).version

/** An ELF64 little-endian header for the given machine (0xb7 AArch64, 0x3e x86-64). */
export function elfHeader(machine: number): Buffer {
  const h = Buffer.alloc(64)
  h.writeUInt32BE(0x7f454c46, 0)
  h[4] = 2 // ELFCLASS64
  h[5] = 1 // little-endian
  h[6] = 1 // EV_CURRENT
  h.writeUInt16LE(2, 16) // ET_EXEC
  h.writeUInt16LE(machine, 18)
  return h
}

/** Makes a directory that NODE_DIST can name, with the tarballs of `arches` and SHASUMS256.txt. */
export async function localNodeDist(dir: string, arches: NodeArch[] = ['x64']): Promise<string> {
  const dist = join(dir, 'node-dist')
  await mkdir(dist, { recursive: true })
  const lines: string[] = []
  for (const arch of arches) {
    const name = nodeTarballName(NODE_VERSION, arch)
    const top = name.replace(/\.tar\.gz$/, '')
    const tree = join(dir, 'node-tree', top)
    await mkdir(join(tree, 'bin'), { recursive: true })
    if (arch === 'x64') await copyFile(join(ROOT, 'node_modules/node/bin/node'), join(tree, 'bin/node'))
    else await writeFile(join(tree, 'bin/node'), elfHeader(0xb7), { mode: 0o755 })
    await writeFile(join(tree, 'LICENSE'), 'Node.js is licensed for use as follows: (test stand-in)\n')
    await run('sh', ['-c', `tar -C "$1" -cf - "$2" | gzip -1 > "$3"`, 'sh', join(dir, 'node-tree'), top, join(dist, name)])
    lines.push(`${await sha256OfFile(join(dist, name))}  ${name}`)
  }
  lines.push(`${'0'.repeat(64)}  node-v${NODE_VERSION}-win-x64.zip`)
  await writeFile(join(dist, 'SHASUMS256.txt'), `${lines.join('\n')}\n`)
  return dist
}
