// Full backups and restores through the real CLI, on file:// and on a real S3 (Ceph RGW),
// encrypted and not: the restored bytes must equal the source bytes.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { open, stat } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { cli, makeExt4Image, makeImage, MiB, s3RepoUrl, sha256File, tempDir } from './helpers.ts'

const backends = [
  { name: 'file', url: async (dir: string) => `file://${join(dir, 'repo')}` },
  { name: 's3', url: async () => s3RepoUrl() },
]

for (const backend of backends) {
  for (const encrypted of [false, true]) {
    t.test(`${backend.name} repository, ${encrypted ? 'encrypted' : 'not encrypted'}`, async (t) => {
      const dir = await tempDir(t)
      const repo = await backend.url(dir)
      const keyArgs = encrypted ? ['--key-file', join(dir, 'repo.key')] : []
      const init = await cli(['init', '--repo', repo, ...(encrypted ? ['--encrypt'] : []), ...keyArgs])
      t.equal(init.encrypted, encrypted, 'init reports the encryption mode')

      // An ext4 filesystem with real files, then a large zero region, random data and a
      // tail that is not a multiple of the chunk size.
      const image = join(dir, 'disk.img')
      const ext4 = await makeExt4Image(dir, 24 * MiB)
      const size = 64 * MiB + 123 * 1024 + 7
      await makeImage(image, size, [
        { kind: 'random', offset: 40 * MiB, length: 6 * MiB + 1000 },
        { kind: 'text', offset: 50 * MiB, length: 5 * MiB },
        { kind: 'bytes', offset: size - 5000, data: randomBytes(5000) },
      ])
      execFileSync('dd', [`if=${ext4}`, `of=${image}`, 'conv=notrunc', 'status=none', 'bs=1M'])
      const source = await sha256File(image)

      const b1 = await cli(['backup', '--repo', repo, '--device', image, ...keyArgs, '--pack-size', '8MiB'])
      t.equal(b1.size, size, 'backup covers the whole image')
      // Every byte that holds data is read; the image's holes are not (SEEK_DATA).
      const allocated = (await stat(image)).blocks * 512
      t.ok(b1.bytesRead >= allocated && b1.bytesRead < size, `a full backup reads every byte of data, and no hole (${b1.bytesRead} of ${size}, ${allocated} allocated)`)
      t.ok(b1.chunksZero >= 10, `zero chunks are recognised (${b1.chunksZero})`)
      t.ok(b1.bytesStored < b1.bytesNew, `stored bytes are compressed (${b1.bytesStored} < ${b1.bytesNew})`)
      t.ok(b1.bytesNew < size - 10 * MiB, 'zero chunks are not stored')

      // Restore into a new image file: created sparse, so zero chunks need no writing.
      const fresh = join(dir, 'restored.img')
      const r1 = await cli(['restore', '--repo', repo, '--backup', b1.backupId, '--device', fresh, ...keyArgs])
      t.equal(await sha256File(fresh), source, 'restored image equals the source byte for byte')
      t.equal((await stat(fresh)).size, size, 'restored image has the source size')
      t.equal(r1.zeroChunksSkipped, b1.chunksZero, 'a new target skips zero chunks')

      // Restore over an image full of old data (an image file that is not empty: --force): zero chunks must be written.
      const dirty = join(dir, 'dirty.img')
      await makeImage(dirty, size, [{ kind: 'random', offset: 0, length: size }])
      const r2 = await cli(['restore', '--repo', repo, '--backup', b1.backupId, '--device', dirty, '--force', ...keyArgs])
      t.equal(r2.zeroChunksSkipped, 0, 'a used target gets its zero chunks written')
      t.equal(await sha256File(dirty), source, 'restore over old data equals the source')

      const v = await cli(['verify', '--repo', repo, '--backup', b1.backupId, ...keyArgs])
      t.equal(v.chunksVerified, b1.chunksNew, 'verify reads back every stored chunk')

      // The same volume again: everything is already stored.
      const b2 = await cli(['backup', '--repo', repo, '--device', image, ...keyArgs])
      t.equal(b2.bytesStored, 0, 'a second backup of unchanged data stores nothing')
      t.equal(b2.chunksNew, 0, 'and finds every chunk already stored')

      // Another volume sharing most data: only its own chunks are stored.
      const other = join(dir, 'other.img')
      execFileSync('cp', ['--sparse=always', image, other])
      const patch = randomBytes(MiB)
      const h = await open(other, 'r+')
      await h.write(patch, 0, patch.length, 3 * MiB)
      await h.close()
      const b3 = await cli(['backup', '--repo', repo, '--device', other, ...keyArgs])
      t.equal(b3.chunksNew, 1, 'a volume that differs in one chunk stores one chunk')
      t.ok(b3.bytesStored < 1.1 * MiB, `and about one chunk of bytes (${b3.bytesStored})`)
      const r3 = join(dir, 'other-restored.img')
      await cli(['restore', '--repo', repo, '--backup', b3.backupId, '--device', r3, ...keyArgs])
      t.equal(await sha256File(r3), await sha256File(other), 'the deduplicated volume restores exactly')

      const list = await cli(['list', '--repo', repo, ...keyArgs])
      t.same(list.backups.map((b: { id: string }) => b.id).sort(), [b1.backupId, b2.backupId, b3.backupId].sort(), 'list shows the three backups')
    })
  }
}
