// The pure pieces, tested without I/O: blob codec, index encoding, backup planning, restore
// request coalescing, manifest checksum, URL and size parsing.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { BlobCodec } from '../agent/repo/codec.ts'
import { ChunkIndex, decodeIndex, encodeIndex, type IndexEntry } from '../agent/repo/chunk-index.ts'
import { parseSize } from '../agent/cli/options.ts'
import { parseS3Url, repositoryAllowed } from '../agent/storage/open.ts'
import { backupChecksum, decodeManifest, encodeManifest, newBackupId, treeChecksum, ZERO_ID, type ManifestV1, type ManifestV2 } from '../agent/repo/manifest.ts'
import { planStretches, type PlanInput } from '../agent/core/plan.ts'
import { planWindow } from '../agent/repo/chunk-reader.ts'
import { v1List } from '../agent/repo/chunk-list.ts'
import { ZERO_REF, type BlobRef } from '../agent/repo/tree.ts'

const MiB = 1024 * 1024

t.test('blob codec', async (t) => {
  const plain = new BlobCodec({ key: null, compressionLevel: 3 })
  const key = randomBytes(32)
  const sealed = new BlobCodec({ key, compressionLevel: 3 })
  const text = Buffer.from('abc'.repeat(100000))
  const random = randomBytes(100000)
  for (const [name, codec] of [['plain', plain], ['encrypted', sealed]] as const) {
    const a = await codec.encode('chunk', text)
    t.ok(a.length < text.length / 10, `${name}: compressible data shrinks`)
    t.same(await codec.decode('chunk', a), text, `${name}: round trip (compressed)`)
    const b = await codec.encode('chunk', random)
    t.ok(b.length <= random.length + 29, `${name}: incompressible data is stored raw`)
    t.same(await codec.decode('chunk', b), random, `${name}: round trip (raw)`)
    // The last bytes are zstd's content checksum, or the GCM tag.
    const damaged = Buffer.from(a)
    damaged[damaged.length - 1]! ^= 1
    await t.rejects(codec.decode('chunk', damaged), { code: 'CHUNK_CORRUPT' }, `${name}: damage is detected`)
  }
  const blob = await sealed.encode('chunk', text)
  for (const at of [0, 5, 20, blob.length - 20]) {
    const damaged = Buffer.from(blob)
    damaged[at]! ^= 0x10
    await t.rejects(sealed.decode('chunk', damaged), { code: 'CHUNK_CORRUPT' }, `encrypted: a flipped bit at ${at} is detected`)
  }
  await t.rejects(sealed.decode('manifest', blob), { code: 'CHUNK_CORRUPT' }, 'a chunk cannot pass for a manifest')
  await t.rejects(new BlobCodec({ key: randomBytes(32), compressionLevel: 3 }).decode('chunk', blob), { code: 'CHUNK_CORRUPT' }, 'another key fails')
  await t.rejects(plain.decode('chunk', blob), { code: 'CHUNK_CORRUPT' }, 'an encrypted blob needs the key')
})

t.test('index encoding', async (t) => {
  const entries: IndexEntry[] = Array.from({ length: 5 }, (_, i) => ({
    id: randomBytes(32), pack: randomBytes(16).toString('hex'), offset: i * 1000, length: 999 + i, rawLength: MiB,
  }))
  const buf = encodeIndex(entries)
  t.same(decodeIndex(buf, 'x'), entries, 'round trip')
  t.throws(() => decodeIndex(buf.subarray(0, buf.length - 1), 'x'), { code: 'REPO_FORMAT' }, 'truncation detected')
  t.throws(() => decodeIndex(Buffer.from('garbage!garbage!'), 'x'), { code: 'REPO_FORMAT' }, 'garbage detected')
  const index = new ChunkIndex()
  for (const e of entries) index.add(e)
  index.add({ ...entries[0]!, pack: 'f'.repeat(32) })
  t.equal(index.size, 5, 'duplicates are kept once')
  t.equal(index.get(entries[0]!.id)?.pack, entries[0]!.pack, 'the first location wins')
})

/** The chunks a plan reads, one number each. */
function readChunks(input: PlanInput): number[] {
  const out: number[] = []
  for (const s of planStretches(input)) if (s.kind === 'read') for (let i = s.from; i < s.to; i++) out.push(i)
  return out
}

t.test('which chunks a backup reads', async (t) => {
  const parent = { size: 10 * MiB, chunkSize: MiB }
  t.equal(readChunks({ size: 10 * MiB, chunkSize: MiB }).length, 10, 'no parent: every chunk')
  t.same(readChunks({ size: 10 * MiB, chunkSize: MiB, marked: [], otherwise: 'parent', parent }), [], 'no change: no chunk')
  const some = readChunks({ size: 10 * MiB, chunkSize: MiB, marked: [{ offset: 9 * MiB, length: 1 }, { offset: MiB - 1, length: 2 }], otherwise: 'parent', parent })
  t.same(some, [0, 1, 9], 'a range straddling a boundary touches both chunks (ranges in any order)')
  t.same(readChunks({ size: 12 * MiB, chunkSize: MiB, marked: [], otherwise: 'parent', parent }), [10, 11], 'a grown volume reads what the parent has not')
  t.same([...planStretches({ size: 10 * MiB, chunkSize: MiB, marked: [{ offset: 3 * MiB, length: MiB }], otherwise: 'zero' })],
    [{ from: 0, to: 3, kind: 'zero' }, { from: 3, to: 4, kind: 'read' }, { from: 4, to: 10, kind: 'zero' }], 'written ranges: the rest is zeros, unread')
  t.throws(() => [...planStretches({ size: 10 * MiB, chunkSize: MiB, marked: [], otherwise: 'parent', parent: { size: 10 * MiB, chunkSize: 2 * MiB } })], { code: 'BACKUP_INCOMPATIBLE' })
  t.throws(() => [...planStretches({ size: 10 * MiB, chunkSize: MiB, marked: [{ offset: 10 * MiB, length: 1 }], otherwise: 'parent', parent })], { code: 'BAD_INPUT' })
})

const stats = { bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksTotal: 2, chunksZero: 0, chunksNew: 0, chunksReused: 0, chunksFromParent: 0, durationMs: 0 }

t.test('restore requests are coalesced within limits', async (t) => {
  const A = 'a'.repeat(32)
  const B = 'b'.repeat(32)
  const ref = (pack: string, offset: number): BlobRef => ({ id: randomBytes(32), pack, offset, length: 100, rawLength: MiB })
  // Pack A: chunks 0,1,2 adjacent; chunk 3 far away. Pack B: chunk 4. Chunk 5 = chunk 0's content.
  const entries = [ref(A, 0), ref(A, 100), ref(A, 200), ref(A, 10 * MiB), ref(B, 0)]
  entries.push(entries[0]!, ZERO_REF)
  const { requests, zero } = planWindow(entries, 0, 16 * MiB)
  t.same(zero, [6], 'zero chunks listed apart')
  t.same(requests.map((r) => [r.pack, r.offset, r.length, r.chunks.length]), [[A, 0, 300, 3], [A, 10 * MiB, 100, 1], [B, 0, 100, 1]], 'adjacent blobs in one GET')
  t.same(requests[0]!.chunks[0]!.targets, [0, 5], 'identical chunks are fetched once, written twice')
  t.equal(planWindow(entries, 0, 200).requests.length, 4, 'the size limit splits requests')
  t.same(planWindow(entries, 40, 16 * MiB, (i) => i < 43).requests.map((r) => r.chunks.flatMap((c) => c.targets)), [[45], [43], [44]], 'numbered from the window\'s first chunk, done ones left out')
})

t.test('a version 1 chunk list maps its ids through the index', async (t) => {
  const ids = [randomBytes(32), randomBytes(32)]
  const index = new ChunkIndex()
  index.add({ id: ids[0]!, pack: 'a'.repeat(32), offset: 0, length: 100, rawLength: MiB })
  const v1 = (list: Buffer[]): ManifestV1 => {
    const chunks = Buffer.concat(list)
    return { version: 1, id: newBackupId(), createdAt: new Date().toISOString(), source: { device: '/dev/x' }, size: list.length * MiB, chunkSize: MiB, parent: null, chunks,
      checksum: backupChecksum(list.length * MiB, MiB, chunks), tags: {}, stats }
  }
  const leaf = await v1List(v1([ids[0]!, ZERO_ID]), index).leaf(0)
  t.same(leaf.map((e) => e.offset), [0, 0])
  t.ok(leaf[0]!.id.equals(ids[0]!) && leaf[1] === ZERO_REF, 'a stored chunk and a zero chunk')
  await t.rejects(v1List(v1([ids[1]!]), index).leaf(0), { code: 'CHUNK_MISSING' }, 'a chunk no index lists')
})

t.test('manifest encoding and checksum', async (t) => {
  const tree = { root: { id: randomBytes(32), pack: 'c'.repeat(32), offset: 7, length: 300, rawLength: 600 }, leafChunks: 128, fanout: 64 }
  const m: ManifestV2 = {
    version: 2, id: newBackupId(), createdAt: new Date().toISOString(), source: { device: '/dev/x' }, size: MiB + 1, chunkSize: MiB, parent: null,
    tree, checksum: treeChecksum(MiB + 1, MiB, tree), tags: {}, stats,
  }
  const encoded = encodeManifest(m)
  t.ok(encoded.length < 1024, `a small header (${encoded.length} bytes)`)
  t.same(decodeManifest(encoded, m.id), m, 'round trip')
  const tampered = JSON.parse(encoded.toString())
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify({ ...tampered, size: MiB + 2 })), m.id), { code: 'CHECKSUM_MISMATCH' }, 'a changed size fails the checksum')
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify({ ...tampered, tree: { ...tampered.tree, leafChunks: 64 } })), m.id), { code: 'CHECKSUM_MISMATCH' }, 'so does another shape')
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify({ ...tampered, version: 7 })), m.id), { code: 'REPO_VERSION' })
  t.throws(() => decodeManifest(encoded, newBackupId()), { code: 'REPO_FORMAT' }, 'a manifest under another name is refused')
  // Version 1: the ids in the manifest, their checksum over all of them.
  const chunks = Buffer.concat([randomBytes(32), ZERO_ID])
  const v1doc = { format: 'ebs-worker-backup', version: 1, id: m.id, createdAt: m.createdAt, source: m.source, size: MiB + 1, chunkSize: MiB, parent: null,
    chunks: chunks.toString('base64'), checksum: backupChecksum(MiB + 1, MiB, chunks), stats, tags: {} }
  t.match(decodeManifest(Buffer.from(JSON.stringify(v1doc)), m.id), { version: 1, size: MiB + 1 }, 'a version 1 manifest still reads')
  chunks[0]! ^= 1
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify({ ...v1doc, chunks: chunks.toString('base64') })), m.id), { code: 'CHECKSUM_MISMATCH' }, 'and its checksum is checked')
})

t.test('parsing', async (t) => {
  t.equal(parseSize('1MiB'), MiB)
  t.equal(parseSize('512k'), 512 * 1024)
  t.equal(parseSize('4096'), 4096)
  t.throws(() => parseSize('lots'))
  t.match(parseS3Url('s3://bucket/a/b/'), { bucket: 'bucket', prefix: 'a/b' })
  t.match(parseS3Url('s3://bucket?region=eu-west-1&path-style=false'), { bucket: 'bucket', prefix: '', region: 'eu-west-1', forcePathStyle: false })
  t.throws(() => parseS3Url('s3://bucket/x?colour=blue'), { code: 'BAD_INPUT' })
  t.throws(() => parseS3Url('s3://bucket/x?checksums=never'), { code: 'BAD_INPUT' })
  for (const bad of ['s3://../x', 's3://ab/x', 's3://My-Bucket/x', 's3://my_bucket/x', 's3://a..b/x', 's3://-bucket/x', 's3://192.168.1.1/x', 's3://xn--bucket/x', 's3://bucket/a/%2E%2E%2Fb', 's3://bucket:9000/x']) {
    t.throws(() => parseS3Url(bad), { code: 'BAD_INPUT' }, `${bad} is refused`)
  }
})

t.test('repository allowlists compare where the URL points', async (t) => {
  const allowed = ['s3://backups-bucket/prod', 's3://backups-bucket/teams/*', 'file:///srv/repos/*', 's3://other-bucket/x?region=eu-west-1']
  for (const ok of ['s3://backups-bucket/prod', 's3://backups-bucket/prod/', 's3://backups-bucket/teams/a', 's3://backups-bucket/teams/a/b', 'file:///srv/repos/a',
    'file:///srv/repos/a/../b', 's3://other-bucket/x?region=eu-west-1', 's3://backups-bucket/teams', 'file:///srv/repos']) t.ok(repositoryAllowed(ok, allowed), `${ok} is allowed`)
  for (const no of ['s3://backups-bucket/prod/sub', 's3://backups-bucket/production', 's3://backups-bucket/teamsx/a', 's3://backups-bucket/teams/../prod2',
    'file:///srv/repos-x/a', 'file:///srv/repos/../etc', 'file:///etc', 's3://other-bucket/x', 's3://other-bucket/x?region=eu-west-1&endpoint=http://evil.example',
    's3://backups-bucket/prod?endpoint=http://evil.example']) t.notOk(repositoryAllowed(no, allowed), `${no} is not`)
  t.throws(() => repositoryAllowed('s3://../x', allowed), { code: 'BAD_INPUT' })
  t.throws(() => repositoryAllowed('ftp://x/y', allowed), { code: 'BAD_INPUT' })
})
