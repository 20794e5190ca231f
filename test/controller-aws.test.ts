// The controller's flows against AWS behaviours the stand-ins follow since issue 13, end to end
// (ebs-controller and an ebs-worker daemon as child processes, test/controller-world.ts): EC2's
// eventual consistency (ids just created not visible yet), and gp2 volumes, whose Iops as
// DescribeVolumes reports it (the baseline) CreateVolume refuses.
import t, { type Test } from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
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

/** An instance of the backup account whose two volumes are gp2, backed up by the controller: its restore point. */
async function gp2Backup(t: Test, w: World) {
  w.startWorker()
  const instanceId = await w.instance(BACKUP, 'eu-west-1b', [{ device: '/dev/xvda', volumeType: 'gp2' }, { device: '/dev/sdf', kmsKeyId: w.keys.backup, volumeType: 'gp2' }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  return { instanceId, rp: b.json!.restorePoint }
}

t.test('a gp2 instance: backed up without its baseline IOPS, restored as gp2', async (t) => {
  const w = await controllerWorld(t)
  const { rp } = await gp2Backup(t, w)
  t.same(rp.volumes.map((v: { volumeType: string; iops?: number }) => [v.volumeType, v.iops]), [['gp2', undefined], ['gp2', undefined]], 'the restore point: gp2, no IOPS')
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', 'alias/backup-ebs', '--restore-role', w.roles.localRestore.arn])
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  t.same(w.ec2.attachedTo(r.json!.instanceId).map((v) => [v.attachment!.device, v.volumeType, v.iops]), [['/dev/xvda', 'gp2', 100], ['/dev/sdf', 'gp2', 100]], 'its volumes are gp2, at their baseline')
})

t.test('a restore point that recorded gp2\'s baseline IOPS restores, into another account too', async (t) => {
  const w = await controllerWorld(t)
  const { instanceId, rp } = await gp2Backup(t, w)
  // As every restore point written before recorded DescribeVolumes' Iops, whatever the type.
  const file = join(w.repo.slice('file://'.length), 'restore-points', instanceId, `${rp.id}.json`)
  const json = JSON.parse(await readFile(file, 'utf8'))
  for (const v of json.volumes) v.iops = 100
  await writeFile(file, JSON.stringify(json))
  const r = await restoreIntoTarget(w, rp.id)
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  t.same(w.ec2.attachedTo(r.json!.instanceId).map((v) => [v.ownerId, v.volumeType]), [[TARGET, 'gp2'], [TARGET, 'gp2']], 'the target account\'s volumes are gp2')
})

type Check = { role: string; key: string; action: string; ok: boolean; detail?: string }

/** preflight backup-instance of a production instance for a worker in the backup account, copying under the production key. */
async function backupPreflight(w: World) {
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  const p = await w.controller(['preflight', 'backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--reencrypt-with', w.keys.prod])
  return { p, checks: (p.json?.checks ?? []) as Check[] }
}

t.test('preflight: EC2 answering a DryRun on the placeholder snapshot with InvalidSnapshot.NotFound is the permission not refused', async (t) => {
  const w = await controllerWorld(t)
  const { p, checks } = await backupPreflight(w)
  t.equal(p.code, 0, `every permission there${p.said}`)
  t.match(checks.find((c) => c.action === 'ec2:CopySnapshot'), { ok: true, detail: /not refused.*InvalidSnapshot\.NotFound/ }, 'ec2:CopySnapshot: ok, saying why')
  // Allowed only on the controller's tagged snapshots, which the placeholder is not: simulated instead.
  for (const action of ['ec2:DeleteSnapshot', 'ec2:ModifySnapshotAttribute']) {
    t.match(checks.find((c) => c.action === action), { ok: true, detail: /IAM policy simulator: allowed on a snapshot tagged ebs-controller:restore-point/ }, `${action}: ok, saying how it was found`)
  }
})

t.test('preflight: a DeleteSnapshot the role may not make is still missing', async (t) => {
  const w = await controllerWorld(t)
  w.roles.source.policy = { Statement: [...w.roles.source.policy!.Statement, { Effect: 'Deny', Action: 'ec2:DeleteSnapshot', Resource: '*' }] }
  const { p, checks } = await backupPreflight(w)
  t.equal(p.code, 1, 'a missing permission: exit status 1')
  t.same(checks.filter((c) => !c.ok).map((c) => c.action), ['ec2:DeleteSnapshot'], 'DeleteSnapshot, and nothing else')
  t.match(checks.find((c) => c.action === 'ec2:DeleteSnapshot')?.detail, /IAM policy simulator: explicitDeny/, 'found denied by the role\'s own policies')
})
