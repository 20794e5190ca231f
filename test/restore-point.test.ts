// Restore points in the repository (controller/restore-point.ts): written once, read back, listed,
// on file:// and on the test bed's S3 (Ceph RGW), beside the agent's own objects.
import t from 'tap'
import { join } from 'node:path'
import { newRestorePointId, RestorePointStore, type RestorePoint } from '../controller/restore-point.ts'
import { cli, s3Available, s3RepoUrl, tempDir } from './helpers.ts'

const sample = (id: string): RestorePoint => ({
  format: 'ebs-worker-restore-point', version: 1, id, createdAt: new Date().toISOString(),
  instance: { instanceId: 'i-0123456789abcdef0', accountId: '111111111111', region: 'eu-west-1', availabilityZone: 'eu-west-1b', instanceType: 'm6i.large', imageId: 'ami-0123456789abcdef0', rootDeviceName: '/dev/xvda', tags: {} },
  volumes: [{ deviceName: '/dev/xvda', volumeId: 'vol-0123456789abcdef0', sizeGiB: 8, volumeType: 'gp3', encrypted: true, kmsKeyId: 'arn:aws:kms:eu-west-1:111111111111:key/k', deleteOnTermination: true, snapshotId: 'snap-0123456789abcdef0', backupId: '20261123T071200Z-0a1b2c3d' }],
  worker: { accountId: '222222222222' },
})

async function roundTrip(t: any, url: string): Promise<void> {
  const store = new RestorePointStore(url)
  t.same(await store.list(), [], 'none yet')
  const a = sample(newRestorePointId(new Date('2026-11-23T07:00:00Z')))
  const b = sample(newRestorePointId(new Date('2026-11-23T08:00:00Z')))
  await store.save(b)
  await store.save(a)
  t.same(await store.load(a.id), a, 'read back as written')
  t.same(await store.list(), [a.id, b.id], 'listed oldest first')
  await t.rejects(store.save(a), { code: 'STORAGE_ERROR' }, 'written once: never overwritten')
  await t.rejects(store.load('rp-20261123T000000Z-00000000'), { code: 'RESTORE_POINT_NOT_FOUND' })
  await t.rejects(store.load('../config'), { code: 'BAD_INPUT' }, 'an id is checked before it names a path')
  t.equal((await cli(['list', '--repo', url])).backups.length, 0, 'the agent does not mistake them for backups')
}

t.test('file://', async (t) => {
  const dir = await tempDir(t)
  const url = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', url])
  await roundTrip(t, url)
})

t.test('s3:// (the test bed)', { skip: !s3Available && 'no S3 test bed (npm test starts one)' }, async (t) => {
  const url = await s3RepoUrl()
  await cli(['init', '--repo', url])
  await roundTrip(t, url)
})
