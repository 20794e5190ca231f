// A restore flushes what it wrote as it goes (one fdatasync at a time in the background, every
// 64 MiB), so that the device's writeback overlaps the download and the final flush finds little
// left; and it still ends with a flush before it reports success. Counted with strace on the real
// CLI writing a real file.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CLI, cli, makeImage, MiB, sha256File, tempDir } from './helpers.ts'

t.test('a 200 MiB restore flushes on the way and at the end', async (t) => {
  const dir = await tempDir(t)
  const repo = `file://${join(dir, 'repo')}`
  const image = join(dir, 'vol.img')
  await makeImage(image, 200 * MiB, [{ kind: 'random', offset: 0, length: 200 * MiB }])
  await cli(['init', '--repo', repo])
  const b = await cli(['backup', '--repo', repo, '--device', image])
  const target = join(dir, 'restored.img')
  const trace = join(dir, 'strace.log')
  execFileSync('strace', ['-f', '-qq', '-e', 'trace=fdatasync', '-o', trace, process.execPath, CLI, 'restore', '--repo', repo, '--backup', b.backupId, '--device', target, '--json'], { stdio: 'ignore' })
  const flushes = (await readFile(trace, 'utf8')).split('\n').filter((l) => /fdatasync\(\d+\)\s+= 0/.test(l))
  t.ok(flushes.length >= 3, `fdatasync ${flushes.length} times: some during the restore, one at its end (expected at least 3 for 200 MiB)`)
  t.equal(await sha256File(target), await sha256File(image), 'and the data is the backup\'s')
})
