// Incremental backups: with a parent, stored chunks are not uploaded again; with changed byte
// ranges (what EBS ListChangedBlocks reports), only those ranges are read.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { cli, makeImage, MiB, runCli, s3RepoUrl, sha256File, tempDir } from './helpers.ts'

async function patch(path: string, offset: number, data: Buffer): Promise<void> {
  const h = await open(path, 'r+')
  try {
    await h.write(data, 0, data.length, offset)
  } finally {
    await h.close()
  }
}

for (const backend of ['file', 's3'] as const) t.test(`changed ranges on ${backend}: only changed chunks are read, the rest comes from the parent`, async (t) => {
  const dir = await tempDir(t)
  const repo = backend === 's3' ? await s3RepoUrl() : join(dir, 'repo')
  const key = join(dir, 'key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', key])
  const image = join(dir, 'vol.img')
  const size = 48 * MiB + 4096
  await makeImage(image, size, [
    { kind: 'random', offset: 0, length: 8 * MiB },
    { kind: 'text', offset: 20 * MiB, length: 4 * MiB },
  ])
  const full = await cli(['backup', '--repo', repo, '--key-file', key, '--device', image])
  const fullSum = await sha256File(image)

  // Change three places: one inside a chunk, one straddling two chunks, one in the last partial chunk.
  const changes = [
    { offset: 2 * MiB + 100, data: randomBytes(1000) },
    { offset: 30 * MiB - 10, data: randomBytes(20) },
    { offset: size - 100, data: randomBytes(50) },
  ]
  for (const c of changes) await patch(image, c.offset, c.data)
  const ranges = join(dir, 'changed.json')
  await writeFile(ranges, JSON.stringify(changes.map((c) => ({ offset: c.offset, length: c.data.length }))))

  const inc = await cli(['backup', '--repo', repo, '--key-file', key, '--device', image, '--parent', full.backupId, '--changed-ranges', ranges])
  const expectedChunks = 4 // chunk 2, chunks 29 and 30, and the last one
  t.equal(inc.parent, full.backupId, 'the manifest names its parent')
  t.equal(inc.chunksTotal - inc.chunksFromParent, expectedChunks, 'exactly the chunks touched by the ranges were read')
  t.equal(inc.bytesRead, 3 * MiB + 4096, 'bytes read = the changed chunks only')
  t.ok(inc.bytesStored > 0 && inc.bytesStored < 4 * MiB, 'only changed chunks were stored')

  const restored = join(dir, 'restored.img')
  await cli(['restore', '--repo', repo, '--key-file', key, '--backup', inc.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'the incremental backup restores the changed volume')
  t.not(await sha256File(restored), fullSum, 'which differs from the parent')

  const back = join(dir, 'parent-restored.img')
  await cli(['restore', '--repo', repo, '--key-file', key, '--backup', full.backupId, '--device', back])
  t.equal(await sha256File(back), fullSum, 'the parent still restores to the old content')
})

t.test('parent without ranges: everything is read, only new chunks are stored', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo, '--chunk-size', '512KiB'])
  const image = join(dir, 'vol.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: 0, length: 16 * MiB }])
  const full = await cli(['backup', '--repo', repo, '--device', image])
  await patch(image, 5 * MiB, randomBytes(10))
  const inc = await cli(['backup', '--repo', repo, '--device', image, '--parent', full.backupId])
  t.equal(inc.bytesRead, 16 * MiB, 'a parent alone does not narrow the reads')
  t.equal(inc.chunksNew, 1, 'one 512 KiB chunk changed, one is stored')
  const restored = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', inc.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'restores exactly')
})

t.test('a grown volume reads its old last chunk and the new space', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 10 * MiB + 300, [{ kind: 'random', offset: 0, length: 10 * MiB + 300 }])
  const full = await cli(['backup', '--repo', repo, '--device', image])
  const h = await open(image, 'r+')
  await h.truncate(12 * MiB)
  await h.close()
  const ranges = join(dir, 'r.json')
  await writeFile(ranges, '[]')
  const inc = await cli(['backup', '--repo', repo, '--device', image, '--parent', full.backupId, '--changed-ranges', ranges])
  t.equal(inc.chunksFromParent, 10, 'whole old chunks come from the parent')
  t.equal(inc.bytesRead, 2 * MiB, 'the old partial chunk and the new space are read')
  const restored = join(dir, 'r.img')
  await cli(['restore', '--repo', repo, '--backup', inc.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'restores exactly')
})

t.test('bad changed ranges are refused with a clear error', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, 4 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const full = await cli(['backup', '--repo', repo, '--device', image])
  const bad = join(dir, 'bad.json')
  const cases: Array<[string, RegExp]> = [
    ['not json', /is not JSON/],
    ['[{"offset": 1}]', /must be a JSON array/],
    ['[{"offset": 0, "length": 99999999}]', /ends beyond/],
  ]
  for (const [text, message] of cases) {
    await writeFile(bad, text)
    const r = await runCli(['backup', '--repo', repo, '--device', image, '--parent', full.backupId, '--changed-ranges', bad, '--json'])
    t.equal(r.code, 2, `exit 2 for ${text}`)
    t.equal(r.json?.error.code, 'BAD_INPUT', 'code BAD_INPUT')
    t.match(r.json?.error.message, message, 'message says what is wrong')
  }
  const noParent = await runCli(['backup', '--repo', repo, '--device', image, '--changed-ranges', bad, '--json'])
  t.match(noParent.json?.error.message, /need a parent/, 'ranges without a parent are refused')
})
