// Real block devices: loop devices over image files (the tests run as root). Backups read the
// device read-only; restores refuse a device that is mounted or too small, and leave it untouched.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { attachLoop, backedUpImage, cli, makeExt4Image, makeImage, MiB, runCli, sha256File, tempDir } from './helpers.ts'

t.test('backup from a loop device, restore onto loop devices', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  const key = join(dir, 'key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', key])
  const image = await makeExt4Image(dir, 40 * MiB + 512 * 1024)
  await makeImage(image, 40 * MiB + 512 * 1024, [{ kind: 'random', offset: 30 * MiB, length: 3 * MiB }])
  const source = attachLoop(t, image)
  const sourceSum = await sha256File(source)

  const b = await cli(['backup', '--repo', repo, '--key-file', key, '--device', source])
  t.equal(b.size, 40 * MiB + 512 * 1024, 'size comes from sysfs')

  // A used device full of old data: every chunk, zeros included, must be written.
  const usedImage = join(dir, 'used.img')
  await makeImage(usedImage, 48 * MiB, [{ kind: 'random', offset: 0, length: 48 * MiB }])
  const used = attachLoop(t, usedImage)
  const r = await cli(['restore', '--repo', repo, '--key-file', key, '--backup', b.backupId, '--device', used])
  t.equal(r.zeroChunksSkipped, 0, 'no zero chunk skipped on a used device')
  t.equal(await sha256File(used, b.size), sourceSum, 'the used device now holds the backup, byte for byte')

  // A new empty volume: --fresh-target skips zero chunks and the result is still exact.
  const freshImage = join(dir, 'fresh.img')
  await makeImage(freshImage, 40 * MiB + 512 * 1024, [])
  const fresh = attachLoop(t, freshImage)
  const f = await cli(['restore', '--repo', repo, '--key-file', key, '--backup', b.backupId, '--device', fresh, '--fresh-target'])
  t.ok(f.zeroChunksSkipped > 0, `zero chunks skipped on a fresh target (${f.zeroChunksSkipped})`)
  t.equal(await sha256File(fresh), sourceSum, 'the fresh device holds the backup')
})

t.test('a mounted device is refused and left untouched', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 32 * MiB, [{ kind: 'random', offset: 0, length: 8 * MiB }])
  const b = await cli(['backup', '--repo', repo, '--device', image])

  const target = await makeExt4Image(dir, 32 * MiB)
  const dev = attachLoop(t, target)
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  execFileSync('mount', ['-o', 'ro', dev, mnt])
  t.teardown(() => {
    execFileSync('umount', [mnt])
  })
  const before = await sha256File(dev)
  const r = await runCli(['restore', '--repo', repo, '--backup', b.backupId, '--device', dev, '--json'])
  t.equal(r.code, 1, 'nonzero exit')
  t.equal(r.json?.error.code, 'DEVICE_UNUSABLE', 'DEVICE_UNUSABLE')
  t.match(r.json?.error.message, new RegExp(`mounted on ${mnt}`), 'says where it is mounted')
  t.equal(await sha256File(dev), before, 'the device is untouched')
})

t.test('a device smaller than the backup is refused and left untouched', async (t) => {
  const dir = await tempDir(t)
  const { repo, backupId } = await backedUpImage(dir, 16 * MiB)
  const smallImage = join(dir, 'small.img')
  await makeImage(smallImage, 8 * MiB, [{ kind: 'text', offset: 0, length: 8 * MiB }])
  const small = attachLoop(t, smallImage)
  const before = await sha256File(small)
  const r = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', small, '--json'])
  t.equal(r.json?.error.code, 'TARGET_TOO_SMALL')
  t.equal(await sha256File(small), before, 'the device is untouched')
})
