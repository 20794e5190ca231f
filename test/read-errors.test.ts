// A disk that fails to read: a FUSE file with a bad region (test/fixtures/faulty-fs.py; EIO on
// any read touching it) under a read-only loop device, since this machine has no device-mapper
// for dm-error. The backup must stop with DEVICE_UNUSABLE naming the device and the offset, and
// leave no backup behind.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { MiB, faultyFile, makeImage, runCli, tempDir } from './helpers.ts'

t.test('a read error is DEVICE_UNUSABLE, names the device and offset, and records nothing', async (t) => {
  const dir = await tempDir(t)
  const backing = join(dir, 'backing.img')
  await makeImage(backing, 32 * MiB, [{ kind: 'random', offset: 0, length: 32 * MiB }])
  const bad = 20 * MiB + 4096
  const file = await faultyFile(t, backing, { badStart: bad, badEnd: bad + 4096 })
  const loop = execFileSync('losetup', ['--find', '--show', '--read-only', file], { encoding: 'utf8' }).trim()
  t.teardown(() => execFileSync('losetup', ['-d', loop]))

  const repo = join(dir, 'repo')
  await runCli(['init', '--repo', repo])
  const r = await runCli(['backup', '--repo', repo, '--device', loop, '--json'])
  t.not(r.code, 0, 'the backup fails')
  t.equal(r.json?.error?.code, 'DEVICE_UNUSABLE', 'with DEVICE_UNUSABLE')
  // The failing read is the chunk holding the bad region (20 MiB with 1 MiB chunks), or one next to
  // it: the block layer may merge concurrent reads of neighbouring chunks into one request to the
  // loop device, and every read in a failed request fails (seen: 21 MiB).
  const where = /cannot read (\S+) at offset (\d+)/.exec(String(r.json?.error?.message))
  t.equal(where?.[1], loop, `naming the device (${r.json?.error?.message})`)
  const offset = Number(where?.[2])
  t.ok(offset % MiB === 0 && Math.abs(offset - 20 * MiB) <= 2 * MiB, `and the chunk where the read failed, at or next to the bad region (${offset})`)
  t.equal((await runCli(['list', '--repo', repo, '--json'])).json?.backups?.length, 0, 'and no backup is recorded')
})
