// preflight: every permission a flow needs, as role × KMS key × action → ok / missing, found
// before anything is created; each missing permission is found on its own.
import t from 'tap'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'
import { KmsStandIn } from './standin/kms.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>
type Check = { role: string; key: string; action: string; ok: boolean; detail?: string }

const counts = (w: World) => ({ snapshots: w.ec2.snapshots.size, volumes: w.ec2.volumes.size, instances: w.ec2.instances.size })
const missing = (checks: Check[]) => checks.filter((c) => !c.ok).map((c) => `${c.role} | ${c.key} | ${c.action}`)

t.test('backup: all there, then each missing permission found', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
  const args = ['preflight', 'backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn]
  const before = counts(w)
  const ok = await w.controller(args)
  t.equal(ok.code, 0, `all permissions there${ok.said}`)
  const checks = ok.json!.checks as Check[]
  t.same(missing(checks), [])
  for (const want of [
    [w.roles.source.arn, '-', 'ec2:CreateSnapshots'], [w.roles.source.arn, '-', 'ec2:ModifySnapshotAttribute'], [w.roles.source.arn, w.keys.prod, 'kms:DescribeKey'],
    [w.roles.worker.arn, w.keys.prod, 'kms:CreateGrant'], [w.roles.worker.arn, w.keys.prod, 'kms:Decrypt'],
  ]) t.ok(checks.some((c) => c.role === want[0] && c.key === want[1] && c.action === want[2] && c.ok), `row ${want.join(' × ')}: ok`)
  t.match(ok.stdout, /role\s+KMS key\s+action\s+result/, 'printed as a table')
  t.same(counts(w), before, 'nothing was created')

  // A source key whose policy does not let the worker account use it.
  const privateInstance = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prodPrivate }])
  const p1 = await w.controller(['preflight', 'backup-instance', '--instance', privateInstance, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn])
  t.equal(p1.code, 1, 'a missing permission: exit status 1')
  t.same(missing(p1.json!.checks), [
    `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:DescribeKey`, `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:CreateGrant`, `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:Decrypt`,
  ], 'the worker role cannot use the private key: each action named')
  t.match(p1.stdout, /missing:\n(.*\n)*.*kms:CreateGrant: AccessDeniedException/, 'with the reason')

  // aws/ebs: the snapshot could not be shared; --reencrypt-with turns it into the copy's checks.
  const managed = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda' }])
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(PROD, REGION))
  const p2 = await w.controller(['preflight', 'backup-instance', '--instance', managed, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.same(missing(p2.json!.checks), [`${w.roles.source.arn} | ${awsEbs} | share snapshots with ${BACKUP}`], 'the aws/ebs rule is a row')
  const p3 = await w.controller(['preflight', 'backup-instance', '--instance', managed, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--reencrypt-with', w.keys.prod, '--worker-role', w.roles.worker.arn])
  t.equal(p3.code, 0, `with --reencrypt-with: ${p3.stdout}`)

  // The source role without ec2:CreateSnapshots; a role that cannot be assumed.
  w.roles.source.policy = { Statement: [...w.roles.source.policy!.Statement, { Effect: 'Deny', Action: 'ec2:CreateSnapshots', Resource: '*' }] }
  const p4 = await w.controller(args)
  t.same(missing(p4.json!.checks), [`${w.roles.source.arn} | - | ec2:CreateSnapshots`], 'a missing EC2 action')
  const p5 = await w.controller(['preflight', 'backup-instance', '--instance', instanceId, '--source-role', `arn:aws:iam::${PROD}:role/missing`])
  t.same(missing(p5.json!.checks), [`arn:aws:iam::${PROD}:role/missing | - | sts:AssumeRole`], 'a role that cannot be assumed')
  t.equal(w.ec2.snapshots.size, before.snapshots, 'still nothing created')
})

t.test('restore: all there, then each missing permission found', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  const rp = b.json!.restorePoint.id
  const args = (key: string) => ['preflight', 'restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', key, '--restore-role', w.roles.restore.arn, '--worker-role', w.roles.worker.arn]
  const before = counts(w)

  // The worker account's default key is aws/ebs: that row is missing.
  const p1 = await w.controller(args(w.keys.target))
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION))
  t.same(missing(p1.json!.checks).filter((m) => m.includes('share')), [`worker account ${BACKUP} | ${awsEbs} (default EBS key of ${REGION}) | share snapshots with ${TARGET}`], 'aws/ebs default key: cannot share')

  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  const p2 = await w.controller(args(w.keys.target))
  t.equal(p2.code, 0, `a customer managed default key that the target account may use: all ok ${p2.stdout}`)
  t.ok((p2.json!.checks as Check[]).some((c) => c.role === w.roles.restore.arn && c.key.startsWith(w.keys.workerDefault) && c.action === 'kms:Decrypt' && c.ok), 'the restore role may read the worker default key')

  // A target key the restore role may describe but not use; a worker default key the target account may not use.
  const describeOnly = w.kms.addKey({ accountId: TARGET, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: w.roles.restore.arn }, Action: 'kms:DescribeKey', Resource: '*' }] } })
  const p3 = await w.controller(args(describeOnly))
  t.same(missing(p3.json!.checks), [`${w.roles.restore.arn} | ${describeOnly} | kms:CreateGrant`, `${w.roles.restore.arn} | ${describeOnly} | kms:GenerateDataKeyWithoutPlaintext`], 'the target key: each missing action')
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.backup)
  const p4 = await w.controller(args(w.keys.target))
  t.same(missing(p4.json!.checks).filter((m) => m.startsWith(w.roles.restore.arn)), [
    `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:DescribeKey`, `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:CreateGrant`,
    `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:Decrypt`,
  ], 'a worker default key whose policy does not name the target account')
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  w.roles.restore.policy = { Statement: [...w.roles.restore.policy!.Statement, { Effect: 'Deny', Action: 'ec2:RunInstances', Resource: '*' }] }
  const p5 = await w.controller(args(w.keys.target))
  t.same(missing(p5.json!.checks), [`${w.roles.restore.arn} | - | ec2:RunInstances`], 'a missing EC2 action of the restore role')
  t.same(counts(w), before, 'nothing was created')
})
