// `npm run demo`: the main job on an embedded default. Makes a sample disk image (an ext4
// filesystem with real files, random and compressible data and a large zero region), backs it
// up into a local encrypted file:// repository, restores it into a second image, verifies the
// backup, backs up again to show deduplication, and prints a short summary.
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { cp, mkdir, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const MiB = 1024 * 1024
const root = new URL('..', import.meta.url).pathname
const work = process.env.EBS_WORKER_DEMO_DIR ?? join(tmpdir(), 'ebs-worker-demo')
const repo = `file://${join(work, 'repo')}`
const key = join(work, 'repo.key')
const image = join(work, 'disk.img')
const restored = join(work, 'restored.img')
const size = 256 * MiB

function run(args: string[]): Record<string, any> {
  console.log(`\n$ ebs-worker ${args.join(' ')}`)
  const human = spawnSync(process.execPath, [join(root, 'agent/bin/ebs-worker.ts'), ...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  const last = human.stdout.trim().split('\n').pop() ?? ''
  if (human.status !== 0) {
    console.error(last)
    process.exit(human.status ?? 1)
  }
  const result = JSON.parse(last)
  console.log(Object.entries(result).filter(([k]) => k !== 'ok').map(([k, v]) => `  ${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('\n'))
  return result
}

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function makeSampleImage(): Promise<void> {
  const h = await open(image, 'w')
  await h.truncate(size)
  // 64 MiB of random data (incompressible), 32 MiB of text (compressible), the rest zeros.
  for (let at = 96 * MiB; at < 160 * MiB; at += 4 * MiB) await h.write(randomBytes(4 * MiB), 0, 4 * MiB, at)
  const text = Buffer.from('ebs-worker demo: EBS volume data, chunked, deduplicated, compressed and encrypted.\n'.repeat(52429)).subarray(0, 4 * MiB)
  for (let at = 176 * MiB; at < 208 * MiB; at += 4 * MiB) await h.write(text, 0, text.length, at)
  await h.close()
  // An ext4 filesystem with this project's own files at the start, as a real volume would have.
  const content = join(work, 'content')
  await cp(join(root, 'agent'), join(content, 'srv/ebs-worker/agent'), { recursive: true })
  const fs = join(work, 'fs.img')
  try {
    execFileSync('truncate', ['-s', `${64 * MiB}`, fs])
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, fs])
    execFileSync('dd', [`if=${fs}`, `of=${image}`, 'bs=1M', 'conv=notrunc', 'status=none'])
  } catch {
    console.log('(mkfs.ext4 not available: the sample image has no filesystem)')
  } finally {
    await rm(fs, { force: true })
    await rm(content, { recursive: true, force: true })
  }
}

await rm(work, { recursive: true, force: true })
await mkdir(work, { recursive: true })
console.log(`ebs-worker demo in ${work}`)
await makeSampleImage()
const sourceSum = await sha256(image)

run(['init', '--repo', repo, '--encrypt', '--key-file', key])
const first = run(['backup', '--repo', repo, '--key-file', key, '--device', image])
run(['restore', '--repo', repo, '--key-file', key, '--backup', first.backupId, '--device', restored])
run(['verify', '--repo', repo, '--key-file', key, '--backup', first.backupId])
const second = run(['backup', '--repo', repo, '--key-file', key, '--device', image, '--parent', first.backupId])
const restoredSum = await sha256(restored)

const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`
console.log(`
Summary
  sample image          ${mib(size)} (ext4 + 64 MiB random + 32 MiB text + zeros)
  first backup          ${first.backupId}: read ${mib(first.bytesRead)}, stored ${mib(first.bytesStored)} (compressed, encrypted, zero chunks skipped)
  second backup         ${second.backupId}: stored ${mib(second.bytesStored)} (everything deduplicated)
  restored image        ${restoredSum === sourceSum ? 'identical to the source (sha256 ' + sourceSum.slice(0, 16) + '…)' : 'DIFFERS FROM THE SOURCE'}
  repository            ${repo} (key ${key})`)
process.exit(restoredSum === sourceSum ? 0 : 1)
