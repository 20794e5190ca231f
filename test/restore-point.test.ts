// Restore points in the repository (controller/restore-point.ts), on file:// and on the test bed's
// S3 (Ceph RGW), beside the agent's own objects: written once under their instance, read back,
// listed; an instance's latest found by reading its own only; the old layout still read.
import t from 'tap'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { newRestorePointId, RestorePointStore, type RestorePoint } from '../controller/restore-point.ts'
import type { Backend } from '../agent/storage/types.ts'
import { saveOldLayout, sampleRestorePoint } from './restore-point-fixtures.ts'
import { cli, lastJsonLine, ROOT, s3Available, s3RepoUrl, storageAt, tempDir, type Teardown } from './helpers.ts'

const A = 'i-0123456789abcdef0'
const B = 'i-0fedcba9876543210'

const sample = (id: string, instanceId = A): RestorePoint => sampleRestorePoint(id, instanceId)
const at = (hour: number): string => newRestorePointId(new Date(Date.UTC(2026, 10, 23, hour)))

/** The repository's storage, with every object read (get or ranged get) counted by name. */
function counting(backend: Backend): { backend: Backend; reads: string[] } {
  const reads: string[] = []
  return {
    reads,
    backend: {
      url: backend.url,
      get: (name) => (reads.push(name), backend.get(name)),
      getRange: (name, offset, length, into) => (reads.push(name), backend.getRange(name, offset, length, into)),
      put: (name, data, options) => backend.put(name, data, options),
      list: (prefix) => backend.list(prefix),
      delete: (name) => backend.delete(name),
    },
  }
}

const repos: Array<[string, (t: Teardown) => Promise<string>, false | string]> = [
  ['file://', async (t) => {
    const url = `file://${join(await tempDir(t), 'repo')}`
    await cli(['init', '--repo', url])
    return url
  }, false],
  ['s3:// (the test bed)', async () => {
    const url = await s3RepoUrl()
    await cli(['init', '--repo', url])
    return url
  }, !s3Available && 'no S3 test bed (npm test starts one)'],
]

for (const [where, repo, skip] of repos) {
  t.test(where, { skip }, async (t) => {
    t.test('written once, under its instance; read back; listed oldest first', async (t) => {
      const url = await repo(t)
      const store = new RestorePointStore(url)
      t.same(await store.list(), [], 'none yet')
      const a = sample(at(7))
      const b = sample(at(8))
      await store.save(b)
      await store.save(a)
      t.same(await store.load(a.id), a, 'read back as written')
      t.same(await store.list(), [a.id, b.id], 'listed oldest first')
      t.same((await store.entries()).map((e) => e.object), [a, b].map((rp) => `restore-points/${A}/${rp.id}.json`), 'each in its instance\'s folder')
      await t.rejects(store.save(a), { code: 'STORAGE_ERROR' }, 'written once: never overwritten')
      await t.rejects(store.load('rp-20261123T000000Z-00000000'), { code: 'RESTORE_POINT_NOT_FOUND' })
      t.equal((await cli(['list', '--repo', url])).backups.length, 0, 'the agent does not mistake them for backups')
    })

    t.test('ids are checked before they name an object', async (t) => {
      const store = new RestorePointStore(await repo(t))
      await t.rejects(store.load('../config'), { code: 'BAD_INPUT' }, 'a restore point id')
      await t.rejects(store.save(sample(at(7), '../config')), { code: 'BAD_INPUT' }, 'an instance id')
      await t.rejects(store.latestOf('i-0123/../..'), { code: 'BAD_INPUT' }, 'an instance id to look up')
    })

    t.test('an instance\'s latest restore point is found by reading its own only', async (t) => {
      const { backend, reads } = counting(storageAt(await repo(t)))
      const store = new RestorePointStore(backend)
      const ofA = [sample(at(1), A), sample(at(3), A)]
      const ofB = [sample(at(2), B), sample(at(4), B), sample(at(5), B)]
      for (const rp of [...ofA, ...ofB]) await store.save(rp)
      const old = await saveOldLayout(backend, sample(at(0), B))
      reads.length = 0
      t.same(await store.latestOf(A), ofA[1], 'A\'s latest, though B\'s are newer')
      t.same(reads, [`restore-points/${A}/${ofA[1]!.id}.json`], 'one object read: that one')
      reads.length = 0
      t.same(await store.latestOf(B), ofB[2], 'B\'s latest')
      t.same(reads, [`restore-points/${B}/${ofB[2]!.id}.json`], 'and again only that one (not the old-layout one either)')
      t.notOk(reads.includes(old))
    })

    t.test('restore points of the old layout still load and list', async (t) => {
      const { backend, reads } = counting(storageAt(await repo(t)))
      const store = new RestorePointStore(backend)
      const old = sample(at(1), A)
      await saveOldLayout(backend, old)
      const other = sample(at(2), B)
      await store.save(other)
      t.same(await store.list(), [old.id, other.id], 'listed with the new ones')
      t.same((await store.entries()).map((e) => e.instanceId), [null, B], 'an old one\'s instance is not known from its name')
      reads.length = 0
      t.same(await store.load(old.id), old, 'loaded by id')
      t.same(reads, [`restore-points/${old.id}.json`], 'found by listing: no other object read')
      t.same(await store.latestOf(A), old, 'an instance with no restore point of the new layout still finds its latest among the old ones')
      t.equal(await store.latestOf('i-0aaaaaaaaaaaaaaaa'), null, 'an instance with none: null')
    })

    t.test('ebs-controller list: each restore point with its instance, time and volumes; --instance; --json prints only JSON', async (t) => {
      const url = await repo(t)
      const store = new RestorePointStore(url)
      const old = sample(at(1), A)
      await saveOldLayout(storageAt(url), old)
      const rp = sample(at(2), B)
      await store.save(rp)
      const list = (args: string[]) => promisify(execFile)(process.execPath, [join(ROOT, 'controller/bin/ebs-controller.ts'), 'list', '--repo', url, ...args])
      const human = (await list([])).stdout
      const lines = (x: RestorePoint) => [`${x.id}  ${x.instance.instanceId}  ${x.createdAt}  ${x.volumes.length} volume${x.volumes.length === 1 ? '' : 's'}`,
        ...x.volumes.map((v) => `  ${v.deviceName}  ${v.volumeId}  ${v.sizeGiB} GiB  backup ${v.backupId}`)]
      t.equal(human, [...lines(old), ...lines(rp)].join('\n') + '\n', 'oldest first: id, instance (the old layout\'s too, read), time, and each volume')
      const entry = (x: RestorePoint) => ({
        id: x.id, instanceId: x.instance.instanceId, createdAt: x.createdAt,
        volumes: x.volumes.map((v) => ({ deviceName: v.deviceName, volumeId: v.volumeId, sizeGiB: v.sizeGiB, backupId: v.backupId })),
      })
      const { stdout } = await list(['--json'])
      t.same(JSON.parse(stdout), { ok: true, repository: url, restorePoints: [entry(old), entry(rp)] }, 'with --json: one JSON object, nothing else on stdout')
      t.same(JSON.parse((await list(['--instance', A, '--json'])).stdout).restorePoints, [entry(old)], '--instance: only that instance\'s (the old layout\'s included)')
      t.equal((await list(['--instance', 'i-0aaaaaaaaaaaaaaaa'])).stdout, 'no restore points of i-0aaaaaaaaaaaaaaaa\n', 'an instance without any: said so')
    })
  })
}
