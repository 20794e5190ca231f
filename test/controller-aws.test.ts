// The controller's flows against AWS behaviours the stand-ins follow since issue 13, end to end
// (ebs-controller and an ebs-worker daemon as child processes, test/controller-world.ts): EC2's
// eventual consistency (ids just created not visible yet).
import t from 'tap'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>

/** The restore role's restore of `rp` into the target account, the backup account's default key being a customer managed one. */
function restoreIntoTarget(w: World, rp: string) {
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  return w.controller(['restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target, '--restore-role', w.roles.restore.arn])
}

t.test('eventual consistency: every snapshot, volume and instance just made and not visible yet is waited for', async (t) => {
  const w = await controllerWorld(t)
  w.ec2.visibilityLag = 4
  w.startWorker()
  // The aws/ebs root is copied under the production key (CopySnapshot), the copy shared with the workers.
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda' }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--reencrypt-with', 'alias/prod-ebs'])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  const rp = b.json!.restorePoint
  const copy = [...w.ec2.snapshots.values()].find((s) => s.description.includes('re-encrypted'))!
  t.same(rp.volumes.map((v: { snapshotId: string }) => w.ec2.missed.get(v.snapshotId)), [4, 4], 'CreateSnapshots\' snapshots were waited for')
  t.equal(w.ec2.missed.get(copy.snapshotId), 4, 'and CopySnapshot\'s copy')
  const r = await restoreIntoTarget(w, rp.id)
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  t.equal(w.ec2.missed.get(r.json!.instanceId), 4, 'RunInstances\' instance was waited for')
  t.same(r.json!.volumes.map((v: { volumeId: string }) => w.ec2.missed.get(v.volumeId)), [4, 4], 'and the target account\'s volumes')
  const workerSnapshots = [...w.ec2.snapshots.values()].filter((s) => s.ownerId === BACKUP && s.description.startsWith('ebs-worker restore'))
  t.same(workerSnapshots.map((s) => w.ec2.missed.get(s.snapshotId)), [4, 4], 'and the workers\' snapshots of the restored volumes')
})
