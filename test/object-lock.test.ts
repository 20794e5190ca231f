// S3 Object Lock against the test bed's real S3 (Ceph RGW), in a bucket made with Object Lock and
// a lock period of seconds, so that locks run out while the test runs: what init refuses, what is
// written locked and what is not, forget of a locked backup, prune leaving what is locked and
// deleting it once the lock has run out, locks of what kept backups use extended, and a pack they
// use brought back from behind a delete marker. And the worker's IAM policy that makes it safe.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DeleteObjectCommand, HeadObjectCommand, ListObjectVersionsCommand, PutObjectCommand, S3Client, type ObjectVersion, type DeleteMarkerEntry } from '@aws-sdk/client-s3'
import { parsePeriod } from '../agent/core/units.ts'
import { BACKUPS, CONFIG, INDEXES, PACKS } from '../agent/repo/layout.ts'
import { takeBackupLease } from '../agent/repo/locks.ts'
import { Repository } from '../agent/repo/repository.ts'
import { cli, makeImage, MiB, ROOT, runCli, s3RepoUrl, sha256File, storageAt, tempDir } from './helpers.ts'

/** What the first prune after the forget had to leave (locked), for the case that waits it out. */
const left = { names: new Set<string>(), versions: 0, last: 0 }
/** Older versions the prunes after it deleted. */
let vacuumed = 0

/** Seconds each object is locked: long enough for a backup, a forget and a prune, short enough to wait out. */
const PERIOD = 30

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const until = (at: number) => sleep(Math.max(0, at - Date.now()))

function s3(): S3Client {
  return new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })
}
const client = s3()
t.teardown(() => client.destroy())

function where(url: string): { Bucket: string; prefix: string } {
  const u = new URL(url)
  return { Bucket: u.hostname, prefix: u.pathname.replace(/^\/+|\/+$/g, '') + '/' }
}

/** Every version and delete marker of the repository, by object name. */
async function versionsOf(url: string): Promise<{ versions: ObjectVersion[]; markers: DeleteMarkerEntry[]; name: (key?: string) => string }> {
  const { Bucket, prefix } = where(url)
  const versions: ObjectVersion[] = []
  const markers: DeleteMarkerEntry[] = []
  let marker: { KeyMarker?: string; VersionIdMarker?: string } = {}
  for (;;) {
    const page = await client.send(new ListObjectVersionsCommand({ Bucket, Prefix: prefix, ...marker }))
    versions.push(...(page.Versions ?? []))
    markers.push(...(page.DeleteMarkers ?? []))
    if (!page.IsTruncated) break
    marker = { KeyMarker: page.NextKeyMarker!, VersionIdMarker: page.NextVersionIdMarker! }
  }
  return { versions, markers, name: (key) => (key ?? '').slice(prefix.length) }
}

/** The current version's lock (mode and date), null when it has none. */
async function lockOf(url: string, name: string): Promise<{ mode: string; until: Date } | null> {
  const { Bucket, prefix } = where(url)
  const h = await client.send(new HeadObjectCommand({ Bucket, Key: prefix + name }))
  return h.ObjectLockRetainUntilDate ? { mode: h.ObjectLockMode!, until: h.ObjectLockRetainUntilDate } : null
}

async function currentObjects(url: string): Promise<string[]> {
  const v = await versionsOf(url)
  return v.versions.filter((x) => x.IsLatest).map((x) => v.name(x.Key))
}

async function restoresExactly(url: string, dir: string, id: string, image: string): Promise<boolean> {
  const out = join(dir, `r-${id}-${Math.random().toString(36).slice(2)}.img`)
  await cli(['restore', '--repo', url, '--backup', id, '--device', out])
  return (await sha256File(out)) === (await sha256File(image))
}

t.test('init refuses Object Lock for a file:// repository', async (t) => {
  const dir = await tempDir(t)
  const r = await runCli(['init', '--repo', join(dir, 'repo'), '--object-lock-period', '30d', '--json'])
  t.equal(r.code, 2, 'exit status of bad input')
  t.equal(r.json?.error.code, 'BAD_INPUT')
  t.match(r.json?.error.message, /Object Lock needs an S3 bucket with Object Lock enabled/, r.json?.error.message)
  t.equal((await runCli(['list', '--repo', join(dir, 'repo'), '--json'])).json?.error.code, 'REPO_NOT_FOUND', 'no repository was made')
})

t.test('init refuses a bucket without Object Lock', async (t) => {
  const url = await s3RepoUrl('plain')
  const r = await runCli(['init', '--repo', url, '--object-lock-period', '30d', '--json'])
  t.equal(r.json?.error.code, 'BAD_INPUT')
  t.match(r.json?.error.message, /does not have Object Lock enabled/, r.json?.error.message)
  t.equal((await runCli(['list', '--repo', url, '--json'])).json?.error.code, 'REPO_NOT_FOUND', 'no config was written')
})

t.test('--object-lock-period takes 30d, 2w, 1y, 90s and refuses months, zero and the unbounded', async (t) => {
  t.equal(parsePeriod('30d'), 30 * 86_400)
  t.equal(parsePeriod('2w'), 14 * 86_400)
  t.equal(parsePeriod('1y'), 365 * 86_400)
  t.equal(parsePeriod('1y2w'), 379 * 86_400)
  t.equal(parsePeriod('90s'), 90)
  for (const bad of ['1m', '30', 'd', '1d1d', '-1d']) t.equal(parsePeriod(bad), null, `"${bad}" is not one`)
  const url = await s3RepoUrl('bounds', { objectLock: true })
  for (const bad of ['0s', '101y', '1m']) {
    const r = await runCli(['init', '--repo', url, '--object-lock-period', bad, '--json'])
    t.equal(r.json?.error.code, 'BAD_INPUT', `${bad} is refused: ${r.json?.error.message}`)
  }
  const r = await runCli(['init', '--repo', url, '--object-lock-mode', 'compliance', '--json'])
  t.match(r.json?.error.message, /--object-lock-mode needs --object-lock-period/)
})

// One repository for what follows, in order: A kept, B forgotten right after it is made.
const world = (async () => {
  const dir = await tempDir(t)
  const url = await s3RepoUrl('locked', { objectLock: true })
  const init = await cli(['init', '--repo', url, '--object-lock-period', `${PERIOD}s`])
  const images = { a: join(dir, 'a.img'), b: join(dir, 'b.img') }
  await makeImage(images.a, 20 * MiB, [{ kind: 'random', offset: 0, length: 20 * MiB }])
  await makeImage(images.b, 4 * MiB, [{ kind: 'random', offset: 0, length: 4 * MiB }])
  // A's first pack (12 MiB) goes up as a multipart upload, which RGW does not lock by itself.
  const a = (await cli(['backup', '--repo', url, '--device', images.a, '--pack-size', '12MiB'])).backupId as string
  const aWritten = Date.now()
  const b = (await cli(['backup', '--repo', url, '--device', images.b])).backupId as string
  const bWritten = Date.now()
  return { dir, url, init, images, a, b, aWritten, bWritten }
})()
world.catch(() => {})

t.test('compliance mode: objects are written locked in compliance mode, and forget still works', async (t) => {
  const dir = await tempDir(t)
  const url = await s3RepoUrl('compliance', { objectLock: true })
  const init = await cli(['init', '--repo', url, '--object-lock-period', '10s', '--object-lock-mode', 'compliance'])
  t.same(init.objectLock, { mode: 'compliance', periodSeconds: 10 })
  const image = join(dir, 'c.img')
  await makeImage(image, 1 * MiB, [{ kind: 'random', offset: 0, length: 1 * MiB }])
  const id = (await cli(['backup', '--repo', url, '--device', image])).backupId as string
  t.equal((await lockOf(url, `${BACKUPS}${id}`))?.mode, 'COMPLIANCE', 'the manifest is locked in compliance mode')
  t.same((await cli(['forget', '--repo', url, id])).forgotten, [id], 'and forgotten all the same (a delete marker)')
})

t.test('init on a bucket with Object Lock records the mode and period', async (t) => {
  const { url, init } = await world
  t.same(init.objectLock, { mode: 'governance', periodSeconds: PERIOD }, 'in the JSON')
  const config = JSON.parse((await storageAt(url).get(CONFIG))!.toString('utf8'))
  t.same(config.objectLock, { mode: 'governance', periodSeconds: PERIOD }, 'in the config')
})

t.test('forget of a locked backup succeeds: a delete marker hides its manifest, and it is gone from the list', async (t) => {
  const { url, b } = await world
  const r = await cli(['forget', '--repo', url, b])
  t.same(r.forgotten, [b])
  t.notOk((await cli(['list', '--repo', url])).backups.some((x: { id: string }) => x.id === b), 'not listed')
  const v = await versionsOf(url)
  t.ok(v.markers.some((m) => v.name(m.Key) === `${BACKUPS}${b}` && m.IsLatest), 'its manifest has a delete marker on top')
  t.ok(v.versions.some((x) => v.name(x.Key) === `${BACKUPS}${b}` && !x.IsLatest), 'and its locked version under it')
})

t.test('prune right after leaves the locked versions, and says what it left until when', async (t) => {
  const { url, b, bWritten } = await world
  const before = await versionsOf(url)
  const dry = await cli(['prune', '--repo', url, '--grace', '0', '--dry-run'])
  t.ok(dry.kept.some((k: { object: string; until: string }) => k.object === `${BACKUPS}${b}` && Date.parse(k.until) > Date.now()), 'a dry run already says B\'s manifest must stay, and until when')
  t.same((await versionsOf(url)).versions.map((x) => x.VersionId).sort(), before.versions.map((x) => x.VersionId).sort(), 'and changes nothing')
  const r = await cli(['prune', '--repo', url, '--grace', '0'])
  t.ok(Date.now() < bWritten + PERIOD * 1000, 'within the lock period of what B wrote')
  t.ok(r.packs.deleted >= 1, `B's packs are deleted for readers (${r.packs.deleted})`)
  const after = await versionsOf(url)
  for (const k of r.kept as Array<{ object: string; until: string | null }>) {
    left.names.add(k.object)
    left.versions++
    if (k.until) left.last = Math.max(left.last, Date.parse(k.until))
  }
  const data = (v: typeof after) => v.versions.filter((x) => !v.name(x.Key).startsWith('locks/')).map((x) => x.VersionId).sort()
  t.same(data(after), data(before), 'no version of a pack, run, manifest or config was deleted')
  t.ok(r.locks.left.versions >= r.packs.deleted + 1, `prune reports ${r.locks.left.versions} versions left (${r.locks.left.bytes} bytes)`)
  const manifest = r.kept.find((k: { object: string }) => k.object === `${BACKUPS}${b}`)
  t.ok(manifest, 'B\'s manifest among them')
  t.ok(Date.parse(manifest.until) > Date.now(), `with the date its lock runs out (${manifest.until})`)
  t.ok(r.locks.left.lastUntil, `and the last of those dates (${r.locks.left.lastUntil})`)
  const check = await cli(['check', '--repo', url, '--read-data'])
  t.equal(check.healthy, true, 'check finds no damage: the locked versions under delete markers are not the repository\'s')
  t.same(check.problems.filter((p: { severity: string }) => p.severity === 'damage'), [])
})

t.test('every object a backup relies on is written locked for the period; the records of work under way are not', async (t) => {
  const { url, aWritten } = await world
  const objects = (await currentObjects(url)).filter((n) => n === CONFIG || /^(packs|index|backups|moved)\//.test(n))
  t.ok(objects.some((n) => n.startsWith(PACKS)) && objects.some((n) => n.startsWith(BACKUPS)) && objects.includes(CONFIG), `packs, manifests and the config (${objects.length} objects)`)
  for (const name of objects) {
    const lock = await lockOf(url, name)
    t.equal(lock?.mode, 'GOVERNANCE', `${name} is locked`)
  }
  const { Bucket } = where(url)
  const big = (await versionsOf(url)).versions.filter((x) => x.IsLatest && (x.Size ?? 0) > 8 * MiB)
  t.ok(big.length >= 1, 'a pack above the part size (a multipart upload)…')
  for (const x of big) {
    const h = await client.send(new HeadObjectCommand({ Bucket, Key: x.Key! }))
    t.ok(h.ObjectLockRetainUntilDate && h.ObjectLockRetainUntilDate.getTime() >= aWritten - 10_000, `…is locked too, until ${h.ObjectLockRetainUntilDate?.toISOString()}`)
  }
  const repo = await Repository.open(storageAt(url))
  await repo.saveRecord('tasks', 'task:1', Buffer.from('{}'))
  await repo.saveRecord('checkpoints', 'task:1', Buffer.from('{}'))
  const lease = await takeBackupLease(repo, 'x')
  const records = (await currentObjects(url)).filter((n) => /^(tasks|checkpoints|locks)\//.test(n))
  t.equal(records.length, 3, 'a task record, a checkpoint, a lease')
  for (const name of records) t.equal(await lockOf(url, name), null, `${name} is not locked (rewritten or deleted as work goes on)`)
  await lease.release()
  await repo.deleteRecord('checkpoints', 'task:1')
  await repo.deleteRecord('tasks', 'task:1')
})

t.test('prune extends the locks of what kept backups use', async (t) => {
  const { url, a } = await world
  const kept = (await currentObjects(url)).filter((n) => n === CONFIG || n.startsWith(PACKS) || n.startsWith(INDEXES) || n === `${BACKUPS}${a}`)
  const before = new Map<string, number>()
  for (const name of kept) before.set(name, (await lockOf(url, name))!.until.getTime())
  // Until the first of those locks runs out within half a period: prune extends a lock then
  // (an earlier prune may have extended some already; their dates say so).
  await until(Math.min(...before.values()) - (PERIOD / 2) * 1000 + 1000)
  const started = Date.now()
  const due = kept.filter((name) => before.get(name)! < started + (PERIOD / 2) * 1000)
  t.ok(due.length >= 1, `${due.length} of ${kept.length} locks are due: ${due.join(', ')}`)
  const r = await cli(['prune', '--repo', url, '--grace', '0'])
  vacuumed += r.locks.deleted.versions
  t.ok(r.locks.extended >= due.length, `${r.locks.extended} locks extended (${r.locks.checked} read)`)
  for (const name of kept) {
    const now = (await lockOf(url, name))!.until.getTime()
    const was = `until ${new Date(before.get(name)!).toISOString()} → ${new Date(now).toISOString()}`
    if (due.includes(name)) t.ok(now >= started + PERIOD * 1000, `${name} was due, extended by a period: ${was}`)
    // Clearly not due (the prune takes a few seconds to get there): not asked to change.
    else if (before.get(name)! > started + (PERIOD / 2) * 1000 + 10_000) t.equal(now, before.get(name), `${name} was not due, left: ${was}`)
    t.ok(now >= started + (PERIOD / 2) * 1000, `${name} stays locked for at least half a period after the prune`)
  }
  const again = await cli(['prune', '--repo', url, '--grace', '0'])
  vacuumed += again.locks.deleted.versions
  t.equal(again.locks.extended, 0, 'a prune right after has nothing to extend')
})

t.test('once their locks have run out, prune deletes the older versions and their delete markers', async (t) => {
  const { url } = await world
  // What the first prune had to leave, and the last of its locks (the extension case's prunes
  // may have deleted some already, if their locks had run out by then).
  t.ok(left.names.size >= 2 && left.last > 0, `${left.names.size} objects left locked, until ${new Date(left.last).toISOString()} at the latest`)
  await until(left.last + 5000)
  const r = await cli(['prune', '--repo', url, '--grace', '0'])
  vacuumed += r.locks.deleted.versions
  t.ok(vacuumed >= left.versions, `${vacuumed} older versions deleted in all (${r.locks.deleted.versions} by this prune, ${r.locks.deleted.markers} markers)`)
  const hidden = left.names
  // Prune's own lock (locks/prune) is deleted after its upkeep: its version and marker are the
  // next prune's to clean up, and the only ones left.
  const after = await versionsOf(url)
  const ourLock = (key?: string) => after.name(key) === 'locks/prune'
  t.same(after.versions.filter((x) => hidden.has(after.name(x.Key)) && !ourLock(x.Key)).map((x) => after.name(x.Key)), [], 'no version of B\'s objects is left')
  t.same(after.markers.filter((m) => !ourLock(m.Key)).map((m) => after.name(m.Key)), [], 'nor any delete marker')
  t.same(after.versions.filter((x) => !x.IsLatest && !ourLock(x.Key)).map((x) => after.name(x.Key)), [], 'nor any older version at all')
  t.equal((await cli(['check', '--repo', url, '--read-data'])).healthy, true, 'check is clean after')
})

t.test('the kept backup still restores exactly', async (t) => {
  const { url, dir, a, images } = await world
  t.ok(await restoresExactly(url, dir, a, images.a))
})

t.test('a pack kept backups use, hidden by a delete marker, is brought back by prune', async (t) => {
  const { url, dir, a, images } = await world
  const { Bucket, prefix } = where(url)
  // A data pack: prune's walk reads tree packs (a hidden one stops it: CHUNK_MISSING), not those.
  const v = await versionsOf(url)
  const pack = v.name(v.versions.filter((x) => x.IsLatest && v.name(x.Key).startsWith(PACKS)).sort((x, y) => (y.Size ?? 0) - (x.Size ?? 0))[0]!.Key)
  await client.send(new DeleteObjectCommand({ Bucket, Key: prefix + pack }))
  const broken = await runCli(['restore', '--repo', url, '--backup', a, '--device', join(dir, 'broken.img'), '--json'])
  t.equal(broken.json?.error.code, 'CHUNK_MISSING', 'A cannot be restored while its pack is hidden')
  const check = await runCli(['check', '--repo', url, '--json'])
  t.equal(check.code, 3, 'check reports it as damage (exit 3)')
  t.ok(check.json?.problems.some((p: { severity: string; message: string }) => p.severity === 'damage' && JSON.stringify(p).includes(pack.slice(pack.lastIndexOf('/') + 1))), 'naming the pack')
  const r = await cli(['prune', '--repo', url, '--grace', '0'])
  t.same(r.locks.restored, [pack], 'prune brings it back and says so')
  t.ok(await restoresExactly(url, dir, a, images.a), 'A restores exactly again')
})

t.test('a pack written over is not mistaken for the original: prune keeps the locked original and says so', async (t) => {
  const { url, dir, a, images } = await world
  const { Bucket, prefix } = where(url)
  const v = await versionsOf(url)
  const original = v.versions.filter((x) => x.IsLatest && v.name(x.Key).startsWith(PACKS)).sort((x, y) => (y.Size ?? 0) - (x.Size ?? 0))[0]!
  const pack = v.name(original.Key)
  // What a role with s3:PutObject alone can do to a locked object: put a new version over it.
  const over = await client.send(new PutObjectCommand({ Bucket, Key: original.Key!, Body: randomBytes(original.Size!), ChecksumAlgorithm: 'CRC32' }))
  const r = await cli(['prune', '--repo', url, '--grace', '0'])
  t.same(r.locks.overwritten, [pack], 'prune names it')
  t.ok(r.kept.some((k: { object: string; versionId: string; why: string }) => k.object === pack && k.versionId === original.VersionId && /written over/.test(k.why)), 'and the original among what it leaves')
  const after = await versionsOf(url)
  t.ok(after.versions.some((x) => x.VersionId === original.VersionId), 'the original version is still there')
  t.ok((await client.send(new HeadObjectCommand({ Bucket, Key: original.Key!, VersionId: original.VersionId! }))).ObjectLockRetainUntilDate!.getTime() > Date.now(), 'still locked')
  // The way back: delete what was written over it; the original is the current version again.
  await client.send(new DeleteObjectCommand({ Bucket, Key: prefix + pack, VersionId: over.VersionId! }))
  t.ok(await restoresExactly(url, dir, a, images.a), 'A restores exactly')
  t.same((await cli(['prune', '--repo', url, '--grace', '0'])).locks.overwritten, [], 'and prune finds nothing written over')
})

t.test('the worker\'s policy lets it keep locks alive, never bypass or shorten one', async (t) => {
  const policy = JSON.parse(await readFile(join(ROOT, 'packaging/iam/worker-policy.json'), 'utf8'))
  const granted = (action: string) => policy.Statement.some((s: any) => s.Effect === 'Allow' &&
    [s.Action].flat().some((p: string) => new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`, 'i').test(action)))
  t.notOk(granted('s3:BypassGovernanceRetention'), 'no s3:BypassGovernanceRetention')
  t.ok(policy.Statement.some((s: any) => s.Effect === 'Deny' && [s.Action].flat().includes('s3:BypassGovernanceRetention')), 'and a Deny of it, whatever else the role is given')
  for (const a of ['s3:PutObjectRetention', 's3:GetObjectRetention', 's3:ListBucketVersions', 's3:DeleteObjectVersion', 's3:GetBucketObjectLockConfiguration']) {
    t.ok(granted(a), `${a} is granted`)
  }
})
