// The largest volumes: 64 TiB sparse image files on XFS (ext4 files stop at 16 TiB), on a loop
// device of the test's own. A backup reads only the data (SEEK_DATA), a restore into a new file
// writes only the data, memory stays under a bound that does not depend on the size, and an
// incremental's new metadata does not depend on it either.
import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, open } from 'node:fs/promises'
import { join } from 'node:path'
import { CLI, cli, lastJsonLine, MiB, tempDir, type Teardown } from './helpers.ts'

const GiB = 1024 * MiB
const TiB = 1024 * GiB

/** An XFS file system on a loop device over a sparse file, mounted for the test. */
async function xfs(t: Teardown): Promise<string> {
  const dir = await tempDir(t, 'ebs-worker-xfs')
  const backing = join(dir, 'xfs.img')
  execFileSync('truncate', ['-s', '16G', backing])
  execFileSync('mkfs.xfs', ['-q', '-f', backing])
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  execFileSync('mount', ['-o', 'loop', backing, mnt])
  t.teardown(() => execFileSync('umount', ['--lazy', mnt]))
  return mnt
}

/** A sparse image of `size` bytes with `regions` of data (the rest are holes). */
async function sparseImage(path: string, size: number, regions: Array<{ offset: number; length: number }>): Promise<void> {
  const h = await open(path, 'w')
  try {
    await h.truncate(size)
    for (const r of regions) {
      for (let done = 0; done < r.length; done += 8 * MiB) {
        const n = Math.min(8 * MiB, r.length - done)
        // Half random, half text: compressible and not.
        const data = Buffer.concat([randomBytes(n / 2), Buffer.alloc(n / 2, `region ${r.offset} `)])
        await h.write(data, 0, n, r.offset + done)
      }
    }
  } finally {
    await h.close()
  }
}

/** The data extents of a file (SEEK_DATA / SEEK_HOLE, through python3 like the agent). */
function extents(path: string): Array<[number, number]> {
  const out = execFileSync('python3', ['-c', `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); end = os.fstat(fd).st_size; at = 0
while at < end:
    try: s = os.lseek(fd, at, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO: break
        raise
    h = os.lseek(fd, s, os.SEEK_HOLE); print(s, h); at = h
`, path], { encoding: 'utf8' })
  return out.trim().split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number])
}

async function sha256Range(path: string, offset: number, length: number): Promise<string> {
  const h = await open(path, 'r')
  const hash = createHash('sha256')
  const buf = Buffer.alloc(8 * MiB)
  try {
    for (let done = 0; done < length; ) {
      const { bytesRead } = await h.read(buf, 0, Math.min(buf.length, length - done), offset + done)
      hash.update(buf.subarray(0, bytesRead))
      done += bytesRead
    }
  } finally {
    await h.close()
  }
  return hash.digest('hex')
}

/** Runs the CLI under /usr/bin/time: its JSON and its peak resident memory. */
function measured(args: string[]): Promise<{ json: Record<string, any>; maxRss: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', 'maxrss-kib %M', process.execPath, CLI, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => {
      const json = lastJsonLine(stdout)
      const rss = /maxrss-kib (\d+)/.exec(stderr)
      if (code !== 0 || !json || !rss) return reject(new Error(`ebs-worker ${args.join(' ')} exited ${code}: ${stderr}`))
      resolve({ json, maxRss: Number(rss[1]) * 1024, stderr })
    })
  })
}

/** Peak memory of a backup or restore at the defaults, whatever the volume's size. */
const RSS_BOUND = 512 * MiB

t.test('a 64 TiB sparse image holding 1 GiB backs up and restores exactly, in bounded memory', async (t) => {
  const mnt = await xfs(t)
  const repo = join(mnt, 'repo')
  await cli(['init', '--repo', repo])
  const size = 64 * TiB
  // About 1 GiB in a dozen places, from the first MiB to the last.
  const regions = [0, 1, 3, 7, 9, 16, 22, 31, 40, 47, 55, 63].map((tib, i) => ({
    offset: i === 0 ? 0 : tib * TiB + (i * 37 + 5) * MiB, length: (i === 11 ? 80 : 88) * MiB,
  }))
  regions[11] = { offset: size - 80 * MiB, length: 80 * MiB }
  const source = join(mnt, 'source.img')
  await sparseImage(source, size, regions)
  const data = regions.reduce((n, r) => n + r.length, 0)

  const b = await measured(['backup', '--repo', repo, '--device', source])
  t.equal(b.json.size, size, 'the backup covers 64 TiB')
  t.ok(b.json.bytesRead >= data && b.json.bytesRead <= data + regions.length * 2 * MiB, `it reads the data only (${b.json.bytesRead / MiB} MiB of ${data / MiB})`)
  t.ok(b.maxRss < RSS_BOUND, `backup peak RSS ${Math.round(b.maxRss / MiB)} MiB < ${RSS_BOUND / MiB} MiB`)

  const target = join(mnt, 'restored.img')
  const r = await measured(['restore', '--repo', repo, '--backup', b.json.backupId, '--device', target])
  t.ok(r.maxRss < RSS_BOUND, `restore peak RSS ${Math.round(r.maxRss / MiB)} MiB < ${RSS_BOUND / MiB} MiB`)
  t.equal(r.json.bytesWritten, b.json.bytesRead, 'the restore writes what the backup read, not the holes')

  // Data only where the source had it: every restored extent lies within a source region (to the chunk).
  const restored = extents(target)
  const inSource = (s: number, e: number) => regions.some((g) => s >= Math.floor(g.offset / MiB) * MiB && e <= Math.ceil((g.offset + g.length) / MiB) * MiB)
  t.ok(restored.length > 0 && restored.every(([s, e]) => inSource(s, e)), `the restored file has data only where the source had (${restored.length} extents)`)
  for (const g of regions) t.equal(await sha256Range(target, g.offset, g.length), await sha256Range(source, g.offset, g.length), `region at ${g.offset} restores exactly`)
  const v = await measured(['verify', '--repo', repo, '--backup', b.json.backupId])
  t.ok(v.maxRss < RSS_BOUND, `verify peak RSS ${Math.round(v.maxRss / MiB)} MiB`)
})

t.test('an incremental after a 1 MiB change adds metadata whose size does not depend on the volume size', async (t) => {
  const mnt = await xfs(t)
  const added: Record<string, number> = {}
  for (const size of [64 * GiB, TiB]) {
    const repo = join(mnt, `repo-${size}`)
    await cli(['init', '--repo', repo])
    const image = join(mnt, `vol-${size}.img`)
    // Data spread over the whole volume: a MiB every 4 GiB.
    const regions = Array.from({ length: size / (4 * GiB) }, (_, i) => ({ offset: i * 4 * GiB, length: MiB }))
    await sparseImage(image, size, regions)
    const full = await cli(['backup', '--repo', repo, '--device', image])
    const h = await open(image, 'r+')
    await h.write(randomBytes(MiB), 0, MiB, size / 2)
    await h.close()
    const incr = await cli(['backup', '--repo', repo, '--device', image, '--parent', full.backupId])
    t.equal(incr.chunksNew, 1, `${size / GiB} GiB: one new chunk`)
    added[size] = incr.bytesMetadata
    t.ok(full.bytesMetadata > incr.bytesMetadata, `${size / GiB} GiB: less than the full backup's list (${incr.bytesMetadata} < ${full.bytesMetadata})`)
  }
  const [small, large] = [added[64 * GiB]!, added[TiB]!]
  // Version 1 stored the whole chunk list again: 2 MiB for 64 GiB, 32 MiB for 1 TiB. Version 2
  // writes the changed leaf and one node per level above it: the 1 TiB list has one more level.
  t.ok(small < 16 * 1024 && large < 16 * 1024, `a few KiB either way (${small} and ${large} bytes), where version 1 stored 2 and 32 MiB`)
  t.ok(large - small < 4 * 1024, `at most one node more for the 16 times larger volume (${large - small} bytes)`)
})

t.test('list over backups of a 64 TiB volume reads small manifests only, in little memory', async (t) => {
  const mnt = await xfs(t)
  const repo = join(mnt, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(mnt, 'big.img')
  await sparseImage(image, 64 * TiB, [{ offset: 0, length: MiB }, { offset: 32 * TiB, length: MiB }])
  let parent: string | null = null
  for (let i = 0; i < 3; i++) {
    const b: Record<string, any> = await cli(['backup', '--repo', repo, '--device', image, ...(parent ? ['--parent', parent] : [])])
    parent = b.backupId
  }
  const l = await measured(['list', '--repo', repo])
  t.equal(l.json.backups.length, 3)
  t.ok(l.maxRss < 256 * MiB, `list peak RSS ${Math.round(l.maxRss / MiB)} MiB`)
  const manifests = execFileSync('find', [join(repo, 'backups'), '-type', 'f', '-printf', '%s\n'], { encoding: 'utf8' }).trim().split('\n').map(Number)
  t.ok(manifests.every((n) => n < 4096), `each manifest is a few hundred bytes (${manifests.join(', ')})`)
})
