// The seeds' four flows end to end (shared/seeds/, DESIGN.md §2): ebs-controller as a child
// process, a real ebs-worker daemon on fauxqs, the EC2/KMS/STS stand-ins with three accounts and
// the IAM documents of packaging/iam/. Each flow checks the restored instance's volumes byte for
// byte against the source and the KMS keys each role used against the seed's list.
import t from 'tap'
import { sha256File } from './helpers.ts'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'
import { KmsStandIn } from './standin/kms.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>

/** Each volume of the restored instance, in device order, holds the source volume's bytes. */
async function sameData(t: any, w: World, sourceInstance: string, restoredInstance: string): Promise<void> {
  const source = w.ec2.attachedTo(sourceInstance)
  const restored = w.ec2.attachedTo(restoredInstance)
  t.same(restored.map((v) => v.attachment!.device), source.map((v) => v.attachment!.device), 'the restored instance has the original devices, in order')
  for (const [i, v] of source.entries()) {
    t.equal(await sha256File(restored[i]!.file), await sha256File(v.file), `${v.attachment!.device}: the restored volume holds the source's bytes`)
  }
}

t.test('same account: backup of an instance, then restore it with a chosen key', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  // The instance lives in the worker's account, in another AZ; its root is under aws/ebs.
  const instanceId = await w.instance(BACKUP, 'eu-west-1b', [{ device: '/dev/xvda' }, { device: '/dev/sdf', kmsKeyId: w.keys.backup }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(b.code, 0, `backup-instance succeeds: ${b.stderr}`)
  const rp = b.json!.restorePoint
  t.match(rp, { instance: { instanceId, accountId: BACKUP, instanceType: 'm6i.xlarge', rootDeviceName: '/dev/xvda', availabilityZone: 'eu-west-1b', tags: { Name: 'app-1' } } })
  t.same(rp.volumes.map((v: any) => v.deviceName), ['/dev/xvda', '/dev/sdf'], 'every volume, in device order')
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION))
  // Seed: "The IAM role [of the workers] must have permissions to access the KMS keys with which
  // EBS volumes of the EC2 instance are encrypted (source KMS keys)."
  t.same(w.world.keysUsedBy(w.roles.worker.arn), [awsEbs, w.keys.backup].sort(), 'the worker used the source keys, and only them')
  t.same([...w.ec2.snapshots.values()].filter((s) => !s.deleted && s.ownerId === BACKUP).length, 0, 'the instance snapshots were deleted after the backup')
  t.notOk([...w.ec2.volumes.values()].some((v) => v.tags['ebs-worker:task-id'] && v.state !== 'deleted'), 'and the worker\'s volumes')

  const usesBefore = w.world.keyUses.length
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', 'alias/backup-ebs', '--restore-role', w.roles.localRestore.arn])
  t.equal(r.code, 0, `restore-instance succeeds: ${r.stderr}`)
  const restored = w.ec2.instances.get(r.json!.instanceId)!
  t.match(restored, { ownerId: BACKUP, instanceType: 'm6i.xlarge', state: 'running', availabilityZone: 'eu-west-1a' }, 'a running instance of the same type, in the workers\' AZ')
  await sameData(t, w, instanceId, restored.instanceId)
  t.ok(w.ec2.attachedTo(restored.instanceId).every((v) => v.kmsKeyId === w.keys.backup), 'every volume under the chosen key')
  // Seed: "The IAM role must have permissions to access to the KMS key with which you want to encrypt EBS volumes of the restored EC2 instance."
  const restoreUses = w.world.keyUses.slice(usesBefore)
  t.same([...new Set(restoreUses.filter((u) => u.role === w.roles.worker.arn && u.allowed).map((u) => u.key))], [w.keys.backup], 'the worker used the chosen key, and only it')
})
