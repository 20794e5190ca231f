// The controller's bad input and failures (issue 5): an instance that does not exist, a role that
// cannot be assumed, a KMS key the worker cannot use, a snapshot that never completes, a worker
// that never answers, a key that does not exist where the restore goes, a failure after the
// instance was built; each says what went wrong, undoes what it made and says what it could not.
import t from 'tap'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import { saveOldLayout, sampleRestorePoint } from './restore-point-fixtures.ts'
import { storageAt } from './helpers.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>

const live = (w: World) => ({
  snapshots: [...w.ec2.snapshots.values()].filter((s) => !s.deleted),
  shared: [...w.ec2.snapshots.values()].filter((s) => !s.deleted && s.sharedWith.length),
  volumes: [...w.ec2.volumes.values()].filter((v) => v.state !== 'deleted'),
  instances: [...w.ec2.instances.values()].filter((i) => i.state !== 'terminated' && i.state !== 'shutting-down'),
})

t.test('bad input: an instance that does not exist', async (t) => {
  const w = await controllerWorld(t)
  const missing = await w.controller(['backup-instance', '--instance', 'i-0123456789abcdef0', '--source-role', w.roles.source.arn])
  t.match(missing, { code: 1, json: { error: { code: 'INSTANCE_NOT_FOUND', message: /i-0123456789abcdef0/ } } }, 'an instance that does not exist')
  t.same(live(w).snapshots, [], 'nothing was created')
})

t.test('bad input: a role that cannot be assumed, or is not an ARN', async (t) => {
  const w = await controllerWorld(t)
  // A real instance, so that a flow that went on despite the refused role would leave snapshots.
  const instanceId = await w.instance(PROD, 'eu-west-1a', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  const untrusted = w.world.addRole({ accountId: PROD, name: 'locked', trust: ['999999999999'] })
  const denied = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', untrusted.arn])
  t.match(denied, { code: 1, json: { error: { code: 'ROLE_NOT_ASSUMABLE', message: new RegExp(`${untrusted.arn}.*trust policy`) } } }, 'a role that cannot be assumed, named')
  const bad = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', 'not-an-arn'])
  t.match(bad, { code: 2, json: { error: { code: 'BAD_INPUT' } } }, 'a role that is not an ARN is bad input')
  t.same(live(w).snapshots, [], 'nothing was created')
})

/** A production instance whose second volume is under a key the worker account may not use. */
async function privateKeyInstance(w: World): Promise<string> {
  return w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: w.keys.prodPrivate }])
}

t.test('a KMS key the worker account may not use, with the worker role to check: refused before anything is created', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await privateKeyInstance(w)
  // Refused before anything is created, naming role, key and actions.
  const checked = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn])
  t.equal(checked.code, 1)
  t.equal(checked.json!.error.code, 'ACCESS_DENIED')
  t.match(checked.json!.error.message, new RegExp(`${w.roles.worker.arn}.*kms:CreateGrant on ${w.keys.prodPrivate}.*kms:Decrypt on ${w.keys.prodPrivate}.*Nothing was created`), 'names the role, the key and each missing action')
  t.same(live(w).snapshots, [], 'nothing was created')
})

t.test('a KMS key the worker account may not use, unchecked: the worker\'s ACCESS_DENIED, then cleanup', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await privateKeyInstance(w)
  // The worker finds out: EBS rolls its volume back; the controller cleans up.
  w.startWorker()
  const r = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(r.code, 1)
  t.equal(r.json!.error.code, 'ACCESS_DENIED', 'the worker\'s ACCESS_DENIED reaches the user')
  t.match(r.json!.error.message, /\/dev\/sdf.*rolled back.*KMS key/, 'naming the volume and the key problem')
  t.same(r.json!.error.notCleaned, [], 'everything was cleaned up')
  t.same(live(w).shared, [], 'no snapshot is still shared')
  t.same(live(w).snapshots.filter((s) => s.ownerId === PROD), [], 'the snapshots were deleted')
  t.same(live(w).volumes.filter((v) => v.ownerId === BACKUP), [], 'the worker kept no volume')
})

t.test('a snapshot that never completes, and a cleanup step that fails', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  w.ec2.holdSnapshots = true
  // The source role may create snapshots but, here, not delete them.
  w.roles.source.policy = { Statement: [...w.roles.source.policy!.Statement, { Effect: 'Deny', Action: 'ec2:DeleteSnapshot', Resource: '*' }] }
  const r = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--snapshot-timeout', '1'])
  t.equal(r.code, 1)
  t.equal(r.json!.error.code, 'SNAPSHOT_TIMEOUT')
  t.match(r.json!.error.notCleaned, [/delete snapshot snap-.*UnauthorizedOperation/], 'what could not be cleaned is said')
  t.match(r.json!.error.message, /Could not clean up: delete snapshot snap-/)
})

t.test('a worker that never answers: timeout, then cleanup', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  // No worker is running.
  const r = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--task-timeout', '2'])
  t.equal(r.code, 1)
  t.equal(r.json!.error.code, 'TASK_TIMEOUT')
  t.match(r.json!.error.message, /no worker answered.*stays on the queue/, 'says so, and that the task may still run')
  t.same(live(w).shared, [], 'the snapshot was unshared')
  t.same(live(w).snapshots, [], 'and deleted')
})

/** A backup of a two-volume production instance by a worker in the backup account, whose default key the target account may use: its restore point id. */
async function backedUpAcrossAccounts(t: Test, w: World): Promise<string> {
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  return b.json!.restorePoint.id
}

t.test('restore: a key that does not exist there, or a restore point that does not exist: nothing is created', async (t) => {
  const w = await controllerWorld(t)
  const rp = await backedUpAcrossAccounts(t, w)
  const before = live(w)

  const otherRegion = w.keys.target.replace(REGION, 'us-east-2')
  const r1 = await w.controller(['restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', 'alias/nope', '--restore-role', w.roles.restore.arn])
  t.match(r1, { code: 1, json: { error: { code: 'KEY_NOT_FOUND', message: /alias\/nope does not exist in account 333333333333, Region eu-west-1.*Nothing was created/ } } }, 'a key that does not exist')
  const r2 = await w.controller(['restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', otherRegion, '--restore-role', w.roles.restore.arn])
  t.match(r2, { code: 1, json: { error: { code: 'KEY_NOT_FOUND' } } }, 'a key of another Region')
  const r3 = await w.controller(['restore-instance', '--backup', 'rp-20261123T000000Z-00000000', '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target, '--restore-role', w.roles.restore.arn])
  t.match(r3, { code: 1, json: { error: { code: 'RESTORE_POINT_NOT_FOUND' } } }, 'a restore point that does not exist')
  t.same(live(w), before, 'nothing was created')
})

t.test('restore: a failure after the instance was built undoes everything', async (t) => {
  const w = await controllerWorld(t)
  const rp = await backedUpAcrossAccounts(t, w)
  const before = live(w)
  // The target key lets the restore role describe it but not use it: the instance is built, the
  // first volume is rolled back by EBS; everything made is undone.
  const describeOnly = w.kms.addKey({ accountId: TARGET, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: w.roles.restore.arn }, Action: 'kms:DescribeKey', Resource: '*' }] } })
  const r4 = await w.controller(['restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', describeOnly, '--restore-role', w.roles.restore.arn])
  t.equal(r4.code, 1)
  t.equal(r4.json!.error.code, 'ACCESS_DENIED')
  t.match(r4.json!.error.message, new RegExp(`${w.roles.restore.arn}.*rolled back.*${describeOnly}`), 'names the role and the key')
  t.same(r4.json!.error.notCleaned, [], 'and everything was cleaned up')
  const after = live(w)
  t.same(after.instances.map((i) => i.instanceId), before.instances.map((i) => i.instanceId), 'the new instance was terminated')
  t.ok(w.world.calls.some((c) => c.role === w.roles.restore.arn && c.action === 'TerminateInstances' && c.allowed), 'by the restore role, as packaging/iam/restore-role-policy.json allows')
  t.same(after.snapshots.map((s) => s.snapshotId), before.snapshots.map((s) => s.snapshotId), 'the intermediate snapshots deleted')
  t.same(after.volumes.map((v) => v.volumeId).sort(), before.volumes.map((v) => v.volumeId).sort(), 'the worker and target volumes deleted')
})

/**
 * A same-account backup, and a restore of it under a key whose policy names the restore role only
 * (the workers' CreateVolume under it is rolled back): the restore's arguments and that key.
 */
async function restoreUnderRestoreRoleKey(t: Test, w: World) {
  w.startWorker()
  const instanceId = await w.instance(BACKUP, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.backup }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  const restoreOnly = w.kms.addKey({ accountId: BACKUP, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: w.roles.localRestore.arn }, Action: 'kms:*', Resource: '*' }] } })
  const args = ['restore-instance', '--backup', b.json!.restorePoint.id, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', restoreOnly, '--restore-role', w.roles.localRestore.arn]
  return { args, restoreOnly }
}

t.test('restore: a target key the worker may not use, with the worker role to check: refused up front', async (t) => {
  const w = await controllerWorld(t)
  const { args, restoreOnly } = await restoreUnderRestoreRoleKey(t, w)
  const before = live(w)
  // Refused up front, naming the role, the key and each action.
  const checked = await w.controller([...args, '--worker-role', w.roles.worker.arn])
  t.match(checked, { code: 1, json: { error: { code: 'ACCESS_DENIED', message: new RegExp(`${w.roles.worker.arn} cannot use ${restoreOnly}.*kms:CreateGrant, kms:GenerateDataKeyWithoutPlaintext refused.*Nothing was created`) } } })
  t.same(live(w), before, 'nothing was created')
})

t.test('restore: a target key the worker may not use, unchecked: the worker finds out, nothing is left', async (t) => {
  const w = await controllerWorld(t)
  const { args, restoreOnly } = await restoreUnderRestoreRoleKey(t, w)
  const before = live(w)
  const r = await w.controller(args)
  t.equal(r.code, 1)
  t.equal(r.json!.error.code, 'ACCESS_DENIED')
  t.match(r.json!.error.message, new RegExp(`/dev/xvda.*rolled back.*${restoreOnly}.*worker role`), 'names the volume, the key and whose permission is missing')
  t.same(r.json!.error.notCleaned, [], 'nothing left to clean')
  t.same(live(w), before, 'and nothing left behind')
})

/**
 * A finished backup that kept its snapshots (its restore point exists), and what a controller
 * that died left: a snapshot of a restore point never written, from yesterday, and one from a
 * backup that may still be running; and an old snapshot that is not the controller's.
 */
async function afterADeadController(t: Test, w: World) {
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1a', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--keep-snapshots'])
  t.equal(b.code, 0, `a backup keeping its snapshots${b.said}`)
  const kept = live(w).snapshots.filter((s) => s.tags['ebs-controller:restore-point'] === b.json!.restorePoint.id).map((s) => s.snapshotId)
  t.equal(kept.length, 1, 'one kept snapshot')
  const image = w.ec2.attachedTo(instanceId)[0]!.file
  const orphan = w.ec2.addSnapshot({ image, sizeGiB: 2, ownerId: PROD, sharedWith: [BACKUP] })
  Object.assign(w.ec2.snapshots.get(orphan)!, { tags: { 'ebs-controller:restore-point': 'rp-20261122T010000Z-0badc0de' }, startTime: new Date(Date.now() - 86_400_000).toISOString() })
  const recent = w.ec2.addSnapshot({ image, sizeGiB: 2, ownerId: PROD })
  w.ec2.snapshots.get(recent)!.tags['ebs-controller:restore-point'] = 'rp-20261123T080000Z-5ee5ee5e'
  // Old enough to be swept, but not the controller's: the tag filter alone must keep it.
  const untagged = w.ec2.addSnapshot({ image, sizeGiB: 2, ownerId: PROD })
  w.ec2.snapshots.get(untagged)!.startTime = new Date(Date.now() - 86_400_000).toISOString()
  return { kept, orphan, recent, untagged }
}

t.test('sweep-snapshots --dry-run names the orphans of a controller that died, and deletes nothing', async (t) => {
  const w = await controllerWorld(t)
  const { orphan } = await afterADeadController(t, w)
  const dry = await w.controller(['sweep-snapshots', '--source-role', w.roles.source.arn, '--older-than-hours', '1', '--dry-run'])
  t.equal(dry.code, 0, `a dry run${dry.said}`)
  t.same(dry.json!.deleted.map((d: any) => d.snapshotId), [orphan], 'names the orphan')
  t.ok(live(w).snapshots.some((s) => s.snapshotId === orphan), 'and deletes nothing')
})

t.test('sweep-snapshots deletes the orphans of a controller that died, and only those', async (t) => {
  const w = await controllerWorld(t)
  const { kept, orphan, recent, untagged } = await afterADeadController(t, w)
  const swept = await w.controller(['sweep-snapshots', '--source-role', w.roles.source.arn, '--older-than-hours', '1'])
  t.equal(swept.code, 0, `the sweep${swept.said}`)
  t.same(swept.json!.deleted, [{ snapshotId: orphan, restorePoint: 'rp-20261122T010000Z-0badc0de' }], 'deletes the orphan')
  t.same(swept.json!.kept.map((k: any) => k.snapshotId).sort(), [...kept, recent].sort(), 'keeps the kept snapshot and the recent one')
  const left = live(w).snapshots.map((s) => s.snapshotId)
  t.notOk(left.includes(orphan), 'the orphan is gone (and with it its sharing)')
  t.ok([...kept, recent, untagged].every((id) => left.includes(id)), 'the others are there, and untagged snapshots are never looked at')
})

t.test('sweep-snapshots keeps the snapshots of restore points of the old layout', async (t) => {
  const w = await controllerWorld(t)
  const id = 'rp-20261120T010000Z-01d1a0a7'
  await saveOldLayout(storageAt(w.repo), sampleRestorePoint(id))
  const image = join(w.dir, 'old.img')
  await writeFile(image, '')
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 2, ownerId: PROD })
  Object.assign(w.ec2.snapshots.get(snapshotId)!, { tags: { 'ebs-controller:restore-point': id }, startTime: new Date(Date.now() - 86_400_000).toISOString() })
  const swept = await w.controller(['sweep-snapshots', '--source-role', w.roles.source.arn, '--older-than-hours', '1'])
  t.equal(swept.code, 0, `the sweep${swept.said}`)
  t.same(swept.json!.deleted, [], 'deletes nothing')
  t.same(swept.json!.kept, [{ snapshotId, restorePoint: id, why: 'its restore point exists (kept with --keep-snapshots)' }], 'its restore point, at restore-points/<id>.json, exists')
})
