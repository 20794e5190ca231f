// ebs-worker check through the CLI, on real repositories: a healthy one exits 0; each kind of
// damage is named (backup, pack, offset) with exit 3; what prune clears away is information;
// --read-data-subset's parts read every pack once; forget + prune (with repacking) leave a
// repository that checks clean; the same on the S3 test bed.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { copyFile, mkdir, open, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { encodeRun } from '../agent/repo/index-run.ts'
import { LOCKS, PACKS, packObject } from '../agent/repo/layout.ts'
import { PACK_MAGIC } from '../agent/repo/pack.ts'
import { Repository } from '../agent/repo/repository.ts'
import { FileBackend } from '../agent/storage/file.ts'
import { cli, makeImage, MiB, type Region, ROOT, runCli, s3Available, s3RepoUrl, storageAt, tempDir, type Teardown } from './helpers.ts'

interface PackFile { id: string; path: string; size: number; tree: boolean; entries: Array<{ offset: number; length: number }> }

/** Every pack of a file:// repository, with its trailer. */
async function packsOf(repo: string): Promise<PackFile[]> {
  const r = await Repository.open(new FileBackend(repo))
  const out: PackFile[] = []
  for (const dir of await readdir(join(repo, PACKS))) {
    for (const id of await readdir(join(repo, PACKS, dir))) {
      const path = join(repo, packObject(id))
      const size = (await stat(path)).size
      const { entries, tree } = await r.readPackTrailer(id, size)
      out.push({ id, path, size, tree, entries })
    }
  }
  return out
}

async function flipByte(path: string, at: number): Promise<void> {
  const h = await open(path, 'r+')
  const b = Buffer.alloc(1)
  await h.read(b, 0, 1, at)
  b[0] = b[0]! ^ 0x5a
  await h.write(b, 0, 1, at)
  await h.close()
}

/** A repository with two backups of one volume (the second incremental, sharing most of its tree) and one of another. */
async function fixture(t: Teardown, url?: string, extra: string[] = [], init: string[] = []) {
  const dir = await tempDir(t)
  const repo = url ?? join(dir, 'repo')
  await cli(['init', '--repo', repo, ...init, ...extra])
  const a = join(dir, 'a.img')
  const c = join(dir, 'c.img')
  await makeImage(a, 24 * MiB, [{ kind: 'random', offset: 0, length: 20 * MiB }])
  await makeImage(c, 8 * MiB, [{ kind: 'text', offset: 0, length: 8 * MiB }])
  const first = (await cli(['backup', '--repo', repo, '--device', a, '--volume-id', 'vol-0000000000000000a', '--pack-size', '4MiB', ...extra])).backupId as string
  const h = await open(a, 'r+')
  await h.write(randomBytes(MiB), 0, MiB, 3 * MiB)
  await h.close()
  const second = (await cli(['backup', '--repo', repo, '--device', a, '--volume-id', 'vol-0000000000000000a', '--parent', first, '--pack-size', '4MiB', ...extra])).backupId as string
  const other = (await cli(['backup', '--repo', repo, '--device', c, '--volume-id', 'vol-0000000000000000c', '--pack-size', '4MiB', ...extra])).backupId as string
  return { dir, repo, ids: { first, second, other } }
}

/** A repository and one volume's image: `backup()` backs it up (with a parent: incremental), `change()` writes a random MiB into it. */
async function oneVolume(t: Teardown, size: number, regions: Region[]) {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, size, regions)
  const backup = async (parent?: string) =>
    (await cli(['backup', '--repo', repo, '--device', image, '--volume-id', 'vol-0000000000000000d', '--pack-size', '4MiB', ...(parent ? ['--parent', parent] : [])])).backupId as string
  const change = async (offset: number) => {
    const h = await open(image, 'r+')
    await h.write(randomBytes(MiB), 0, MiB, offset)
    await h.close()
  }
  return { repo, backup, change }
}

/** Runs check; its exit status and JSON report. */
async function check(repo: string, ...args: string[]) {
  const r = await runCli(['check', '--repo', repo, ...args, '--json'])
  if (!r.json) throw new Error(`check printed no JSON (exit ${r.code}): ${r.stderr}`)
  return { code: r.code, report: r.json, damage: (r.json.problems as any[] ?? []).filter((p) => p.severity === 'damage') }
}

t.test('a healthy repository checks clean, structure and data', async (t) => {
  const f = await fixture(t)
  const s = await check(f.repo)
  t.equal(s.code, 0, 'exit 0')
  t.same(s.report.problems, [], 'nothing to report')
  t.equal(s.report.backups, 3, 'every backup')
  t.ok(s.report.nodes >= 3 && s.report.references > 20, `its nodes (${s.report.nodes}) and references (${s.report.references}) are checked`)
  const d = await check(f.repo, '--read-data')
  t.equal(d.code, 0, 'exit 0 with --read-data')
  t.equal(d.report.packs.read, d.report.packs.total, 'every pack is read')
  t.ok(d.report.packs.blobsRead >= 28, `every blob re-hashed (${d.report.packs.blobsRead})`)
})

t.test('a flipped byte in a data pack: found by --read-data, not by the structure check (no trailer or node is hit)', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree && p.entries.length > 1)!
  const blob = pack.entries[1]!
  await flipByte(pack.path, blob.offset + Math.floor(blob.length / 2))
  t.equal((await check(f.repo)).code, 0, 'the structure check does not read chunks: exit 0')
  const d = await check(f.repo, '--read-data')
  t.equal(d.code, 3, 'exit 3 with --read-data')
  t.equal(d.damage.length, 1, 'one problem')
  t.match(d.damage[0], { kind: 'blob', pack: pack.id, offset: blob.offset }, 'named by pack and offset')
  t.ok(d.damage[0].backups?.length >= 1, `and the backups that refer to it (${d.damage[0].backups})`)
})

t.test('a flipped byte in a pack\'s trailer is found by the structure check', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree)!
  const end = pack.entries.at(-1)!.offset + pack.entries.at(-1)!.length
  await flipByte(pack.path, end + Math.floor((pack.size - 12 - end) / 2))
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.ok(s.damage.some((p) => p.pack === pack.id && p.backups?.length), 'the pack is named, with the backups that use it')
})

t.test('a truncated pack is named', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree)!
  await truncate(pack.path, pack.size - 100)
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage, [{ kind: 'pack', pack: pack.id }], 'the pack is named')
})

t.test('a deleted data pack is named, with the backups that need it', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree)!
  await rm(pack.path)
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  const missing = s.damage.find((p) => p.kind === 'pack' && p.pack === pack.id)
  t.ok(missing, 'the missing pack is named')
  t.ok(missing?.backups?.some((b: string) => Object.values(f.ids).includes(b)), `with a backup that refers to it (${missing?.backups})`)
  t.equal(typeof missing?.offset, 'number', 'and the offset of a blob it held')
})

t.test('a deleted tree pack is named, with the backups whose chunk lists were in it', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => p.tree)!
  await rm(pack.path)
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage.find((p) => p.pack === pack.id), { kind: 'pack', backups: Array }, 'the tree pack is named with its backups')
})

t.test('a damaged manifest is named by its backup', async (t) => {
  const f = await fixture(t)
  const path = join(f.repo, 'backups', f.ids.other)
  await flipByte(path, Math.floor((await stat(path)).size / 2))
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage, [{ kind: 'manifest', backups: [f.ids.other] }], 'the backup is named')
})

t.test('a damaged chunk-list node is named by backup, pack and offset', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => p.tree)!
  const node = pack.entries[0]!
  await flipByte(pack.path, node.offset + Math.floor(node.length / 2))
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage.find((p) => p.kind === 'node'), { pack: pack.id, offset: node.offset, backups: Array }, 'the node is named')
})

t.test('a trailer that disagrees with the references is named', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree && p.entries.length > 1)!
  // A well-formed trailer that says the second blob's plaintext is one byte longer.
  const r = await Repository.open(new FileBackend(f.repo))
  const { entries, blobsEnd } = await r.readPackTrailer(pack.id, pack.size)
  entries[1]!.rawLength += 1
  const trailer = await r.codec.encode('pack-trailer', encodeRun(entries))
  const tail = Buffer.alloc(4)
  tail.writeUInt32LE(trailer.length)
  const blobs = (await readFile(pack.path)).subarray(0, blobsEnd)
  await writeFile(pack.path, Buffer.concat([blobs, trailer, tail, PACK_MAGIC]))
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage.find((p) => p.kind === 'reference'), { pack: pack.id, offset: entries[1]!.offset, backups: Array }, 'the reference is named by backup, pack and offset')
  t.ok(s.damage.some((p) => p.kind === 'run' && p.pack === pack.id), 'and so is the index run that disagrees with it')
})

t.test('an index run entry pointing at nothing is named by run', async (t) => {
  const f = await fixture(t)
  const r = await Repository.open(new FileBackend(f.repo))
  const pack = (await packsOf(f.repo)).find((p) => !p.tree)!
  const nowhere = await r.saveRun([{ id: randomBytes(32), pack: randomBytes(16).toString('hex'), offset: 0, length: 100, rawLength: 100 }])
  const between = await r.saveRun([{ id: randomBytes(32), pack: pack.id, offset: 7, length: 100, rawLength: 100 }])
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage.find((p) => p.run === nowhere), { kind: 'run' }, 'a run entry into a pack that does not exist')
  t.match(s.damage.find((p) => p.run === between), { kind: 'run', pack: pack.id, offset: 7 }, 'a run entry where no blob starts')
})

t.test('a damaged config is damage', async (t) => {
  const f = await fixture(t)
  await writeFile(join(f.repo, 'config'), '{"format": "ebs-worker-repository", "version": 2, "chunkSize": "x"')
  const s = await check(f.repo)
  t.equal(s.code, 3, 'exit 3')
  t.match(s.damage, [{ kind: 'config' }])
})

t.test('left-overs are information, not damage: packs nobody refers to, stale locks', async (t) => {
  const f = await fixture(t)
  const pack = (await packsOf(f.repo)).find((p) => !p.tree)!
  const stray = randomBytes(16).toString('hex')
  await mkdir(join(f.repo, PACKS, stray.slice(0, 2)), { recursive: true })
  await copyFile(pack.path, join(f.repo, packObject(stray)))
  const r = await Repository.open(new FileBackend(f.repo))
  await r.putLock(`${LOCKS}backup-20200101T000000Z-00000000-deadbeef`, { version: 1, kind: 'backup', id: 'x', host: 'gone', pid: 1, createdAt: '2020-01-01T00:00:00.000Z' })
  const old = new Date(Date.now() - 3 * 3_600_000)
  await utimes(join(f.repo, LOCKS, 'backup-20200101T000000Z-00000000-deadbeef'), old, old)
  const s = await check(f.repo)
  t.equal(s.code, 0, 'exit 0')
  t.match(s.report.problems, [{ severity: 'info', kind: 'lock' }, { severity: 'info', kind: 'unreferenced', pack: stray }], 'both are told')
})

t.test('--read-data-subset 1/2 and 2/2 together read every pack once', async (t) => {
  const f = await fixture(t)
  const packs = await packsOf(f.repo)
  // Damage every pack's first blob: what each part finds says which packs it read.
  for (const p of packs) await flipByte(p.path, p.entries[0]!.offset + Math.floor(p.entries[0]!.length / 2))
  const one = await check(f.repo, '--read-data-subset', '1/2')
  const two = await check(f.repo, '--read-data-subset', '2/2')
  const read = (r: Awaited<ReturnType<typeof check>>) => new Set(r.report.problems.filter((p: any) => p.kind === 'blob').map((p: any) => p.pack as string))
  const a = read(one)
  const b = read(two)
  t.equal(one.report.packs.read + two.report.packs.read, packs.length, `${one.report.packs.read} + ${two.report.packs.read} packs read of ${packs.length}`)
  t.same([...a].filter((p) => b.has(p)), [], 'no pack is read by both')
  t.same([...a, ...b].sort(), packs.map((p) => p.id).sort(), 'every pack is read by one')
  t.equal(one.code, 3, 'each part found its damage')
})

t.test('--read-data-subset takes N/M or a percentage, nothing else', async (t) => {
  const f = await fixture(t)
  const all = await check(f.repo, '--read-data-subset', '100%')
  t.equal(all.report.packs.read, all.report.packs.total, '100% reads every pack')
  for (const bad of ['0/2', '3/2', '0%', '101%', 'half']) t.equal((await runCli(['check', '--repo', f.repo, '--read-data-subset', bad])).code, 2, `"${bad}" is refused`)
})

t.test('after forget + prune, and after repacking, the repository checks clean', async (t) => {
  const f = await fixture(t)
  await cli(['forget', '--repo', f.repo, f.ids.other])
  await cli(['prune', '--repo', f.repo, '--grace', '0'])
  const s = await check(f.repo, '--read-data')
  t.equal(s.code, 0, `clean after prune (${s.report.problems.map((p: any) => p.message)})`)
  // The first backup forgotten: the packs it shares with the second are partly unused, and repacked.
  await cli(['forget', '--repo', f.repo, f.ids.first])
  const p = await cli(['prune', '--repo', f.repo, '--grace', '0', '--max-unused', '0'])
  t.ok(p.packs.repacked > 0, `packs were repacked (${p.packs.repacked}): references go through moved records`)
  const r = await check(f.repo, '--read-data')
  t.equal(r.code, 0, `clean after repacking (${r.report.problems.map((p: any) => p.message)})`)
  t.same(r.report.problems, [], 'nothing left over')
})

t.test('a version 1 repository is refused, naming migrate', async (t) => {
  const r = await runCli(['check', '--repo', join(ROOT, 'test/fixtures/repo-v1/repo'), '--key-file', join(ROOT, 'test/fixtures/repo-v1/repo.key'), '--json'])
  t.equal(r.code, 1, 'exit 1')
  t.match(r.json?.error, { code: 'REPO_VERSION', message: /ebs-worker migrate/ })
})

t.test('on S3, encrypted: clean with --read-data, and a deleted pack named', { skip: !s3Available && 'no S3 test bed' }, async (t) => {
  const dir = await tempDir(t)
  const key = ['--key-file', join(dir, 'repo.key')]
  const f = await fixture(t, await s3RepoUrl('check'), key, ['--encrypt'])
  const s = await check(f.repo, '--read-data', ...key)
  t.equal(s.code, 0, `exit 0 (${s.report.problems.map((p: any) => p.message)})`)
  t.ok(s.report.packs.read > 3, `every pack read (${s.report.packs.read})`)
  const storage = storageAt(f.repo)
  const packs: string[] = []
  for await (const obj of storage.list(PACKS)) packs.push(obj.name)
  await storage.delete(packs[0]!)
  const d = await check(f.repo, ...key)
  t.equal(d.code, 3, 'exit 3')
  t.match(d.damage, [{ kind: 'pack', pack: packs[0]!.split('/').pop(), backups: Array }], 'the deleted pack is named with its backups')
})

t.test('two backups that each wrote an identical node keep their copies through prune with repacking: both restore, check is clean', async (t) => {
  const { repo, backup, change } = await oneVolume(t, 16 * MiB, [{ kind: 'random', offset: 0, length: 16 * MiB }])
  const parent = await backup()
  // The same change backed up twice from the same parent: the second finds the first's chunks in
  // its dedup window, so its leaf is byte for byte the first's (same id) — but it stores its own.
  await change(5 * MiB)
  const b1 = await backup(parent)
  const b2 = await backup(parent)
  await cli(['prune', '--repo', repo, '--grace', '0', '--max-unused', '0'])
  for (const id of [parent, b1, b2]) await cli(['verify', '--repo', repo, '--backup', id])
  t.pass('every backup verifies')
  const s = await check(repo, '--read-data')
  t.equal(s.code, 0, `check is clean (${s.report.problems.map((p: any) => p.message)})`)
})

t.test('damage in a subtree later backups took whole names every backup that reaches it', async (t) => {
  // 256 chunks: two leaves. The second backup changes only the second leaf, and takes the first whole.
  const { repo, backup, change } = await oneVolume(t, 256 * MiB, [{ kind: 'random', offset: 0, length: 2 * MiB }, { kind: 'random', offset: 200 * MiB, length: MiB }])
  const first = await backup()
  await change(200 * MiB)
  const second = await backup(first)
  // The chunk at offset 0, in the first leaf.
  const r = await Repository.open(new FileBackend(repo))
  const m = await r.loadManifest(first)
  const chunk0 = (await (await r.chunkList(m)).leaf(0))[0]!
  await flipByte(join(repo, packObject(chunk0.pack)), chunk0.offset + 10)
  const d = await check(repo, '--read-data')
  t.equal(d.code, 3, 'exit 3')
  t.match(d.damage, [{ kind: 'blob', pack: chunk0.pack, offset: chunk0.offset }], 'the chunk is named')
  t.same(d.damage[0]?.backups, [first, second].sort(), 'with both backups, though the second never walked that leaf')
})
