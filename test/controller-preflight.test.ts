// preflight: every permission a flow needs, as role × KMS key × action → ok / missing, found
// before anything is created; each missing permission is found on its own.
import t from 'tap'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'
import { KmsStandIn } from './standin/kms.ts'
import type { Test } from 'tap'

type World = Awaited<ReturnType<typeof controllerWorld>>
type Check = { role: string; key: string; action: string; ok: boolean; detail?: string }

const counts = (w: World) => ({ snapshots: w.ec2.snapshots.size, volumes: w.ec2.volumes.size, instances: w.ec2.instances.size })
const missing = (checks: Check[]) => checks.filter((c) => !c.ok).map((c) => `${c.role} | ${c.key} | ${c.action}`)
const row = (checks: Check[], role: string, key: string, action: string) => checks.find((c) => c.role === role && c.key === key && c.action === action)

/** A world with a production instance of two volumes under the production key, and the backup preflight's arguments for it. */
async function backupWorld(t: Test) {
  const w = await controllerWorld(t)
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
  const args = ['preflight', 'backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn]
  return { w, instanceId, args }
}

t.test('backup: every permission there: each row ok, as a table, nothing created', async (t) => {
  const { w, args } = await backupWorld(t)
  const before = counts(w)
  const ok = await w.controller(args)
  t.equal(ok.code, 0, `all permissions there${ok.said}`)
  const checks = ok.json!.checks as Check[]
  t.same(missing(checks), [])
  for (const [role, key, action] of [
    [w.roles.source.arn, '-', 'ec2:CreateSnapshots'], [w.roles.source.arn, '-', 'ec2:ModifySnapshotAttribute'], [w.roles.source.arn, w.keys.prod, 'kms:DescribeKey'],
    [w.roles.worker.arn, w.keys.prod, 'kms:CreateGrant'], [w.roles.worker.arn, w.keys.prod, 'kms:Decrypt'],
  ] as Array<[string, string, string]>) t.ok(row(checks, role, key, action)?.ok, `row ${role} × ${key} × ${action}: ok`)
  t.same(JSON.parse(ok.stdout), ok.json, 'with --json, stdout is the JSON alone')
  const term = await w.controllerOnTerminal(args)
  t.equal(term.code, 0, 'on a terminal, without --json')
  t.match(term.output, /role\s+KMS key\s+action\s+result/, 'printed as a table')
  t.same(counts(w), before, 'nothing was created')
})

t.test('backup: the source role\'s DescribeKey row is what KMS answered', async (t) => {
  const { w, args } = await backupWorld(t)
  w.roles.source.policy = { Statement: [...w.roles.source.policy!.Statement, { Effect: 'Deny', Action: 'kms:DescribeKey', Resource: '*' }] }
  const r = await w.controller(args)
  t.equal(r.code, 1, 'a missing permission: exit status 1')
  const checks = r.json!.checks as Check[]
  t.same(missing(checks), [`${w.roles.source.arn} | ${w.keys.prod} | kms:DescribeKey`], 'the source key\'s DescribeKey refused, and nothing else')
  t.match(row(checks, w.roles.source.arn, w.keys.prod, 'kms:DescribeKey')?.detail, /AccessDeniedException/, 'with KMS\'s reason')
  t.ok(row(checks, w.roles.worker.arn, w.keys.prod, 'kms:Decrypt')?.ok, 'the other checks still ran')
})

t.test('backup: a source key the worker account may not use: each action named, with the reason', async (t) => {
  const w = await controllerWorld(t)
  const privateInstance = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prodPrivate }])
  const before = counts(w)
  const p1 = await w.controller(['preflight', 'backup-instance', '--instance', privateInstance, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn])
  t.equal(p1.code, 1, 'a missing permission: exit status 1')
  t.same(missing(p1.json!.checks), [
    `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:DescribeKey`, `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:CreateGrant`, `${w.roles.worker.arn} | ${w.keys.prodPrivate} | kms:Decrypt`,
  ], 'the worker role cannot use the private key: each action named')
  t.match(row(p1.json!.checks, w.roles.worker.arn, w.keys.prodPrivate, 'kms:CreateGrant')?.detail, /AccessDeniedException/, 'with the reason')
  const term = await w.controllerOnTerminal(['preflight', 'backup-instance', '--instance', privateInstance, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn])
  t.match(term.output, /missing:\n(.*\n)*.*kms:CreateGrant: AccessDeniedException/, 'on a terminal too, with the reason')
  t.same(counts(w), before, 'nothing was created')
})

t.test('backup: the aws/ebs rule is a row; --reencrypt-with turns it into the copy\'s checks', async (t) => {
  const w = await controllerWorld(t)
  const managed = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda' }])
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(PROD, REGION))
  const p2 = await w.controller(['preflight', 'backup-instance', '--instance', managed, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.same(missing(p2.json!.checks), [`${w.roles.source.arn} | ${awsEbs} | share snapshots with ${BACKUP}`], 'the aws/ebs rule is a row')
  const p3 = await w.controller(['preflight', 'backup-instance', '--instance', managed, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--reencrypt-with', w.keys.prod, '--worker-role', w.roles.worker.arn])
  t.equal(p3.code, 0, `with --reencrypt-with: ${p3.stdout}`)
})

t.test('backup: a missing EC2 action of the source role', async (t) => {
  const { w, args } = await backupWorld(t)
  const before = counts(w)
  w.roles.source.policy = { Statement: [...w.roles.source.policy!.Statement, { Effect: 'Deny', Action: 'ec2:CreateSnapshots', Resource: '*' }] }
  const p4 = await w.controller(args)
  t.same(missing(p4.json!.checks), [`${w.roles.source.arn} | - | ec2:CreateSnapshots`], 'a missing EC2 action')
  t.equal(w.ec2.snapshots.size, before.snapshots, 'still nothing created')
})

t.test('backup: the source role\'s rights on the backup\'s own snapshots are simulated: sharing allowed with another account only is found', async (t) => {
  const { w, args } = await backupWorld(t)
  const before = counts(w)
  // As if the policy named another worker account than the one this backup is for.
  w.roles.source.policy = JSON.parse(JSON.stringify(w.roles.source.policy!).replaceAll(`"ec2:Add/userId":["${BACKUP}"]`, `"ec2:Add/userId":["${TARGET}"]`))
  const r = await w.controller(args)
  t.same(missing(r.json!.checks), [`${w.roles.source.arn} | - | ec2:ModifySnapshotAttribute`], 'the share row, and only it')
  t.match(row(r.json!.checks, w.roles.source.arn, '-', 'ec2:ModifySnapshotAttribute')?.detail, /IAM policy simulator: implicitDeny on a snapshot tagged ebs-controller:restore-point, sharing it with 222222222222/)
  t.ok(row(r.json!.checks, w.roles.source.arn, '-', 'ec2:DeleteSnapshot')?.ok, 'deleting them is still allowed')
  t.same(counts(w), before, 'nothing was created')
})

t.test('backup: a role that cannot be assumed', async (t) => {
  const { w, instanceId } = await backupWorld(t)
  const p5 = await w.controller(['preflight', 'backup-instance', '--instance', instanceId, '--source-role', `arn:aws:iam::${PROD}:role/missing`])
  t.same(missing(p5.json!.checks), [`arn:aws:iam::${PROD}:role/missing | - | sts:AssumeRole`], 'a role that cannot be assumed')
})

/** A world with a backup of a production instance, and the restore preflight's arguments for its restore point with a target key. */
async function restoreWorld(t: Test) {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  const rp = b.json!.restorePoint.id
  const args = (key: string) => ['preflight', 'restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', key, '--restore-role', w.roles.restore.arn, '--worker-role', w.roles.worker.arn]
  return { w, args }
}

t.test('restore: the worker account\'s default key is aws/ebs: that row is missing', async (t) => {
  const { w, args } = await restoreWorld(t)
  const before = counts(w)
  const p1 = await w.controller(args(w.keys.target))
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION))
  t.same(missing(p1.json!.checks).filter((m) => m.includes('share')), [`worker account ${BACKUP} | ${awsEbs} (default EBS key of ${REGION}) | share snapshots with ${TARGET}`], 'aws/ebs default key: cannot share')
  t.same(counts(w), before, 'nothing was created')
})

t.test('restore: a customer managed default key that the target account may use: all ok', async (t) => {
  const { w, args } = await restoreWorld(t)
  const before = counts(w)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  const p2 = await w.controller(args(w.keys.target))
  t.equal(p2.code, 0, `a customer managed default key that the target account may use: all ok ${p2.stdout}`)
  t.ok((p2.json!.checks as Check[]).some((c) => c.role === w.roles.restore.arn && c.key.startsWith(w.keys.workerDefault) && c.action === 'kms:Decrypt' && c.ok), 'the restore role may read the worker default key')
  t.same(counts(w), before, 'nothing was created')
})

t.test('restore: a target key the restore role may describe but not use: each missing action', async (t) => {
  const { w, args } = await restoreWorld(t)
  const before = counts(w)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  const describeOnly = w.kms.addKey({ accountId: TARGET, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: w.roles.restore.arn }, Action: 'kms:DescribeKey', Resource: '*' }] } })
  const p3 = await w.controller(args(describeOnly))
  t.same(missing(p3.json!.checks), [`${w.roles.restore.arn} | ${describeOnly} | kms:CreateGrant`, `${w.roles.restore.arn} | ${describeOnly} | kms:GenerateDataKeyWithoutPlaintext`], 'the target key: each missing action')
  t.same(counts(w), before, 'nothing was created')
})

t.test('restore: a worker default key whose policy does not name the target account', async (t) => {
  const { w, args } = await restoreWorld(t)
  const before = counts(w)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.backup)
  const p4 = await w.controller(args(w.keys.target))
  t.same(missing(p4.json!.checks).filter((m) => m.startsWith(w.roles.restore.arn)), [
    `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:DescribeKey`, `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:CreateGrant`,
    `${w.roles.restore.arn} | ${w.keys.backup} (worker default EBS key) | kms:Decrypt`,
  ], 'each action of the restore role on it')
  t.same(counts(w), before, 'nothing was created')
})

t.test('restore: a missing EC2 action of the restore role', async (t) => {
  const { w, args } = await restoreWorld(t)
  const before = counts(w)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  w.roles.restore.policy = { Statement: [...w.roles.restore.policy!.Statement, { Effect: 'Deny', Action: 'ec2:RunInstances', Resource: '*' }] }
  const p5 = await w.controller(args(w.keys.target))
  t.same(missing(p5.json!.checks), [`${w.roles.restore.arn} | - | ec2:RunInstances`], 'a missing EC2 action of the restore role')
  t.same(counts(w), before, 'nothing was created')
})
