// ebs-controller forget: a retention policy over each instance's restore points, each kept or
// forgotten whole with its volume backups. Real backups (ebs-worker backup --time) in an encrypted
// repository, restore points written as the controller writes them, and ebs-controller as a child
// process without the repository key, on file:// and on the test bed's S3 (Ceph RGW).
import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { newRestorePointId, RestorePointStore, type RestorePoint } from '../controller/restore-point.ts'
import { saveOldLayout, sampleRestorePoint } from './restore-point-fixtures.ts'
import { cli, lastJsonLine, makeImage, MiB, ROOT, s3Available, s3RepoUrl, sha256File, storageAt, tempDir, type Teardown } from './helpers.ts'

const A = 'i-0aaaaaaaaaaaaaaaa'
const B = 'i-0bbbbbbbbbbbbbbbb'

interface Run { code: number | null; stdout: string; stderr: string; json: Record<string, any> | null }

/** ebs-controller as a child process, with --json; no key file, no queues. */
function controller(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'controller/bin/ebs-controller.ts'), ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr, json: lastJsonLine(stdout) }))
  })
}

async function forget(args: string[]): Promise<Record<string, any>> {
  const r = await controller(['forget', ...args])
  if (r.code !== 0 || !r.json) throw new Error(`ebs-controller forget exited ${r.code}: ${r.stderr}`)
  return r.json
}

/** An encrypted repository and an image to back up. */
async function fixture(t: Teardown, where: 'file' | 's3') {
  const dir = await tempDir(t)
  const repo = where === 'file' ? `file://${join(dir, 'repo')}` : await s3RepoUrl()
  const key = join(dir, 'repo.key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', key])
  const image = join(dir, 'vol.img')
  await makeImage(image, 2 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const store = new RestorePointStore(repo)
  const worker = (args: string[]) => cli([...args, '--repo', repo, '--key-file', key])
  const backups = async (): Promise<string[]> => (await worker(['list'])).backups.map((b: { id: string }) => b.id)

  /**
   * A restore point of `instance` made at `day` (ISO date, 10:00 UTC), of `volumes` volume
   * backups made then (or of the given backup ids), with the instance's tags.
   */
  const point = async (instance: string, day: string, volumes: number | string[], tags: Record<string, string> = {}, oldLayout = false): Promise<RestorePoint> => {
    const at = new Date(`${day}T10:00:00Z`)
    const ids = typeof volumes === 'number'
      ? await Promise.all(Array.from({ length: volumes }, async () => (await worker(['backup', '--device', image, '--time', at.toISOString()])).backupId as string))
      : volumes
    const sample = sampleRestorePoint(newRestorePointId(at), instance)
    const rp: RestorePoint = {
      ...sample, createdAt: new Date(at.getTime() + 5 * 60_000).toISOString(), instance: { ...sample.instance, tags },
      volumes: ids.map((backupId, i) => ({ ...sample.volumes[0]!, deviceName: `/dev/xvd${'abcd'[i]}`, volumeId: `vol-${instance.slice(2)}${i}`, backupId })),
    }
    if (oldLayout) await saveOldLayout(storageAt(repo), rp)
    else await store.save(rp)
    return rp
  }
  return { dir, repo, key, image, store, worker, backups, point }
}

const backupsOf = (...rps: RestorePoint[]): string[] => rps.flatMap((rp) => rp.volumes.map((v) => v.backupId)).sort()

for (const [where, skip] of [['file', false], ['s3', !s3Available && 'no S3 test bed (npm test starts one)']] as const) {
  t.test(`${where}: a policy per instance; each restore point kept or forgotten whole, with its backups, without the key`, { skip }, async (t) => {
    const f = await fixture(t, where)
    const a1 = await f.point(A, '2026-11-01', 2)
    const a2 = await f.point(A, '2026-11-02', 2)
    const a3 = await f.point(A, '2026-11-03', 2)
    const b1 = await f.point(B, '2026-11-01', 1)
    const b2 = await f.point(B, '2026-11-03', 1)
    const r = await forget(['--repo', f.repo, '--keep-last', '1'])
    t.same(r.groups.map((g: any) => [g.instance, g.keep.map((k: any) => k.id), g.forget.map((p: any) => p.id)]),
      [[A, [a3.id], [a2.id, a1.id]], [B, [b2.id], [b1.id]]], 'each instance keeps its newest restore point')
    t.same(r.groups[0].keep[0].reasons, [{ rule: 'last', period: '#1' }], 'and says why')
    t.same([...r.forgotten].sort(), [a1.id, a2.id, b1.id].sort(), 'the forgotten restore points')
    t.same([...r.backupsForgotten].sort(), backupsOf(a1, a2, b1), 'with every one of their backups')
    t.same(await f.store.list(), [a3.id, b2.id].sort(), 'the repository holds the kept restore points')
    t.same(await f.backups(), backupsOf(a3, b2), 'and exactly their backups')
    const out = join(f.dir, 'restored.img')
    await f.worker(['restore', '--backup', a3.volumes[1]!.backupId, '--device', out])
    t.equal(await sha256File(out), await sha256File(f.image), 'a kept restore point\'s backup restores exactly')
  })
}

t.test('--dry-run says what would be forgotten and changes nothing', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', 1)
  const a2 = await f.point(A, '2026-11-02', 1)
  const r = await forget(['--repo', f.repo, '--keep-last', '1', '--dry-run'])
  t.equal(r.dryRun, true)
  t.same(r.forgotten, [a1.id], 'the restore point that would go')
  t.same(r.backupsForgotten, backupsOf(a1), 'and its backups')
  t.same(await f.store.list(), [a1.id, a2.id], 'both restore points are still there')
  t.same(await f.backups(), backupsOf(a1, a2), 'and their backups')
})

t.test('--instance: only that instance\'s restore points', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', 1)
  const a2 = await f.point(A, '2026-11-02', 1)
  const b1 = await f.point(B, '2026-11-01', 1)
  const b2 = await f.point(B, '2026-11-02', 1)
  const r = await forget(['--repo', f.repo, '--instance', B, '--keep-last', '1'])
  t.same(r.groups.map((g: any) => g.instance), [B], 'one group: that instance')
  t.same(r.forgotten, [b1.id])
  t.same(await f.store.list(), [a1.id, a2.id, b2.id].sort(), 'the other instance\'s restore points are untouched')
  const bad = await controller(['forget', '--repo', f.repo, '--instance', 'web-1', '--keep-last', '1'])
  t.equal(bad.code, 2, 'an --instance that is not an instance id is bad input')
})

t.test('restore points of the old layout count, under the instance their JSON names', async (t) => {
  const f = await fixture(t, 'file')
  const old = await f.point(A, '2026-10-31', 1, {}, true)
  const a1 = await f.point(A, '2026-11-01', 1)
  const r = await forget(['--repo', f.repo, '--keep-last', '1'])
  t.same(r.forgotten, [old.id], 'the old one is forgotten')
  t.same(await f.store.list(), [a1.id], 'its object (restore-points/<id>.json) is gone')
  t.same(await f.backups(), backupsOf(a1), 'and so is its backup')
})

t.test('a backup that a kept restore point also names is left', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', 2)
  const a2 = await f.point(A, '2026-11-02', [a1.volumes[0]!.backupId, (await f.worker(['backup', '--device', f.image, '--time', '2026-11-02T10:00:00Z'])).backupId])
  const r = await forget(['--repo', f.repo, '--keep-last', '1'])
  t.same(r.forgotten, [a1.id])
  t.same(r.backupsForgotten, [a1.volumes[1]!.backupId], 'the backup only the forgotten one names goes')
  t.same(r.backupsSpared, [a1.volumes[0]!.backupId], 'the shared one is left, and said so')
  t.same(await f.backups(), backupsOf(a2), 'the kept restore point has all its backups')
})

t.test('--keep-tag matches the instance\'s tags as the restore point recorded them', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', 1, { retain: 'forever' })
  await f.point(A, '2026-11-02', 1)
  const a3 = await f.point(A, '2026-11-03', 1)
  const r = await forget(['--repo', f.repo, '--keep-last', '1', '--keep-tag', 'retain=forever'])
  t.same(r.groups[0].keep.map((k: any) => [k.id, k.reasons]), [[a3.id, [{ rule: 'last', period: '#1' }]], [a1.id, [{ rule: 'tag', tag: 'retain=forever' }]]])
})

t.test('a policy that would keep nothing of an instance is refused, and nothing is forgotten', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', 1, { retain: 'forever' })
  const b1 = await f.point(B, '2026-11-01', 1)
  const r = await controller(['forget', '--repo', f.repo, '--keep-tag', 'retain=forever'])
  t.equal(r.code, 2, 'exit 2')
  t.equal(r.json?.error.code, 'BAD_INPUT')
  t.match(r.json?.error.message, new RegExp(`refusing to forget every one of the restore points of ${B}`), 'naming the instance')
  t.same(await f.store.list(), [a1.id, b1.id].sort(), 'nothing was forgotten')
})

t.test('without a policy, forget is refused', async (t) => {
  const f = await fixture(t, 'file')
  await f.point(A, '2026-11-01', 1)
  const r = await controller(['forget', '--repo', f.repo])
  t.equal(r.code, 2)
  t.match(r.json?.error.message, /no policy was given, so no restore points would be forgotten/)
  t.equal((await f.store.list()).length, 1)
})

t.test('a restore point naming something that is not a backup id stops the forget before anything is deleted', async (t) => {
  const f = await fixture(t, 'file')
  const a1 = await f.point(A, '2026-11-01', ['../config'])
  const a2 = await f.point(A, '2026-11-02', 1)
  const r = await controller(['forget', '--repo', f.repo, '--keep-last', '1'])
  t.equal(r.json?.error.code, 'REPO_FORMAT')
  t.same(await f.store.list(), [a1.id, a2.id], 'nothing was forgotten')
  t.ok(await storageAt(f.repo).get('config'), 'and the repository\'s config is still there')
})
