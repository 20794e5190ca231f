// The pure pieces, tested without I/O: blob codec, index encoding, backup planning, restore
// request coalescing, manifest checksum, URL and size parsing.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { BlobCodec } from '../agent/repo/codec.ts'
import { ChunkIndex, decodeIndex, encodeIndex, type IndexEntry } from '../agent/repo/chunk-index.ts'
import { parseSize } from '../agent/cli/options.ts'
import { parseS3Url, repositoryAllowed } from '../agent/storage/open.ts'
import { backupChecksum, decodeManifest, encodeManifest, newBackupId, ZERO_ID, type Manifest } from '../agent/repo/manifest.ts'
import { chunksToRead } from '../agent/core/plan.ts'
import { planRequests } from '../agent/repo/chunk-reader.ts'

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

t.test('which chunks a backup reads', async (t) => {
  const all = chunksToRead(10 * MiB, MiB, null, null)
  t.equal(all.reduce((a, b) => a + b, 0), 10, 'no parent: every chunk')
  const none = chunksToRead(10 * MiB, MiB, { size: 10 * MiB, chunkSize: MiB }, [])
  t.equal(none.reduce((a, b) => a + b, 0), 0, 'no change: no chunk')
  const some = chunksToRead(10 * MiB, MiB, { size: 10 * MiB, chunkSize: MiB }, [{ offset: MiB - 1, length: 2 }, { offset: 9 * MiB, length: 1 }])
  t.same([...some.keys()].filter((i) => some[i]), [0, 1, 9], 'a range straddling a boundary touches both chunks')
  t.throws(() => chunksToRead(10 * MiB, MiB, { size: 10 * MiB, chunkSize: 2 * MiB }, []), { code: 'BACKUP_INCOMPATIBLE' })
  t.throws(() => chunksToRead(10 * MiB, MiB, { size: 10 * MiB, chunkSize: MiB }, [{ offset: 10 * MiB, length: 1 }]), { code: 'BAD_INPUT' })
})

function manifestOf(ids: Buffer[], size: number, chunkSize: number): Manifest {
  const chunks = Buffer.concat(ids)
  return {
    id: newBackupId(), createdAt: new Date().toISOString(), source: { device: '/dev/x' }, size, chunkSize, parent: null, chunks,
    checksum: backupChecksum(size, chunkSize, chunks), tags: {},
    stats: { bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksTotal: ids.length, chunksZero: 0, chunksNew: 0, chunksReused: 0, chunksFromParent: 0, durationMs: 0 },
  }
}

t.test('restore requests are coalesced within limits', async (t) => {
  const ids = Array.from({ length: 6 }, () => randomBytes(32))
  const index = new ChunkIndex()
  // Pack A: chunks 0,1,2 adjacent; chunk 3 far away. Pack B: chunk 4. Chunk 5 = chunk 0's content.
  const A = 'a'.repeat(32)
  const B = 'b'.repeat(32)
  index.add({ id: ids[0]!, pack: A, offset: 0, length: 100, rawLength: MiB })
  index.add({ id: ids[1]!, pack: A, offset: 100, length: 100, rawLength: MiB })
  index.add({ id: ids[2]!, pack: A, offset: 200, length: 100, rawLength: MiB })
  index.add({ id: ids[3]!, pack: A, offset: 10 * MiB, length: 100, rawLength: MiB })
  index.add({ id: ids[4]!, pack: B, offset: 0, length: 100, rawLength: MiB })
  const m = manifestOf([ids[0]!, ids[1]!, ids[2]!, ids[3]!, ids[4]!, ids[0]!, ZERO_ID], 7 * MiB, MiB)
  const { requests, zero } = planRequests(m, index, 16 * MiB)
  t.same(zero, [6], 'zero chunks listed apart')
  t.same(requests.map((r) => [r.pack, r.offset, r.length, r.chunks.length]), [[A, 0, 300, 3], [A, 10 * MiB, 100, 1], [B, 0, 100, 1]], 'adjacent blobs in one GET')
  t.same(requests[0]!.chunks[0]!.targets, [0, 5], 'identical chunks are fetched once, written twice')
  const small = planRequests(m, index, 200)
  t.equal(small.requests.length, 4, 'the size limit splits requests')
  const missing = manifestOf([randomBytes(32)], MiB, MiB)
  t.throws(() => planRequests(missing, index, MiB), { code: 'CHUNK_MISSING' })
})

t.test('manifest encoding and checksum', async (t) => {
  const m = manifestOf([randomBytes(32), ZERO_ID], MiB + 1, MiB)
  t.same(decodeManifest(encodeManifest(m), m.id), m, 'round trip')
  const tampered = JSON.parse(encodeManifest(m).toString())
  const chunks = Buffer.from(tampered.chunks, 'base64')
  chunks[0]! ^= 1
  tampered.chunks = chunks.toString('base64')
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify(tampered)), m.id), { code: 'CHECKSUM_MISMATCH' }, 'a changed chunk list fails the checksum')
  t.throws(() => decodeManifest(Buffer.from(JSON.stringify({ ...tampered, version: 7 })), m.id), { code: 'REPO_VERSION' })
  t.throws(() => decodeManifest(encodeManifest(m), newBackupId()), { code: 'REPO_FORMAT' }, 'a manifest under another name is refused')
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
