// The worker role's kms:CreateGrant, checked as EBS makes the grant (controller/grants.ts; issue
// 13): with the fleet's own policy (packaging/iam/worker-policy.json), which allows grants only
// for AWS resources, a correct policy passes and a wrong one is found, before anything is created.
import t, { type Test } from 'tap'
import { BACKUP, controllerWorld, fleetWorkerPolicy, PROD, REGION } from './controller-world.ts'
import { KmsStandIn } from './standin/kms.ts'
import type { PolicyDocument } from './standin/iam.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>
type Check = { role: string; key: string; action: string; ok: boolean; detail?: string }

const counts = (w: World) => ({ snapshots: w.ec2.snapshots.size, volumes: w.ec2.volumes.size, instances: w.ec2.instances.size })
const missing = (checks: Check[]) => checks.filter((c) => !c.ok).map((c) => `${c.role} | ${c.key} | ${c.action}`)

/** A production instance under `key` (default: the production key), and the backup preflight's arguments for it. */
async function backupWorld(t: Test, key?: (w: World) => string) {
  const w = await controllerWorld(t)
  const kmsKeyId = key ? key(w) : w.keys.prod
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId }])
  const args = ['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn]
  return { w, kmsKeyId, args }
}

/** The fleet's policy without its statement for grants (VolumeKeyGrantsForEbs). */
const withoutGrants = (p: PolicyDocument): PolicyDocument => ({ ...p, Statement: p.Statement.filter((s) => s.Sid !== 'VolumeKeyGrantsForEbs') })

t.test('preflight: the fleet\'s worker policy passes its grant rows, asked as EBS asks (never with a direct CreateGrant)', async (t) => {
  const { w, args } = await backupWorld(t)
  const r = await w.controller(['preflight', ...args])
  t.equal(r.code, 0, `every row ok${r.said}`)
  t.ok((r.json!.checks as Check[]).find((c) => c.role === w.roles.worker.arn && c.key === w.keys.prod && c.action === 'kms:CreateGrant')?.ok, 'the worker\'s CreateGrant on the source key')
  const controller = `arn:aws:iam::${BACKUP}:user/ebs-controller`
  t.ok(w.world.calls.some((c) => c.principal === controller && c.action === 'SimulatePrincipalPolicy' && c.allowed), 'the controller simulated the worker role\'s policies')
  t.ok(w.world.calls.some((c) => c.role === w.roles.source.arn && c.action === 'GetKeyPolicy' && c.allowed), 'the source role read the source key\'s policy')
  t.notOk(w.world.calls.some((c) => c.role === w.roles.worker.arn && c.action === 'CreateGrant'), 'the worker role made no CreateGrant call')
})

t.test('preflight: a worker policy without its grant statement: the CreateGrant row is missing, naming the IAM policies', async (t) => {
  const { w, args } = await backupWorld(t)
  w.roles.worker.policy = withoutGrants(w.roles.worker.policy!)
  const r = await w.controller(['preflight', ...args])
  t.equal(r.code, 1, 'a missing permission: exit status 1')
  t.same(missing(r.json!.checks), [`${w.roles.worker.arn} | ${w.keys.prod} | kms:CreateGrant`], 'that row, and only it')
  t.match((r.json!.checks as Check[]).find((c) => !c.ok)!.detail, new RegExp(`AccessDeniedException: KMS would refuse EBS kms:CreateGrant.*the IAM policies of ${w.roles.worker.arn} do not allow it`))
})

t.test('preflight: a key policy that lets the worker account decrypt but not make grants: the CreateGrant row is missing, naming the key policy', async (t) => {
  const { w, kmsKeyId, args } = await backupWorld(t, (w) => w.kms.addKey({
    accountId: PROD, region: REGION, policy: {
      Statement: [...KmsStandIn.rootPolicy(PROD).Statement,
        { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${BACKUP}:root` }, Action: ['kms:DescribeKey', 'kms:Decrypt', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:ReEncrypt*'], Resource: '*' }],
    },
  }))
  // The fleet lists the key (KmsKeyArns): only its key policy is short of the grant.
  w.roles.worker.policy = fleetWorkerPolicy([w.keys.prod, w.keys.backup, w.keys.workerDefault, KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION)), kmsKeyId])
  const r = await w.controller(['preflight', ...args])
  t.same(missing(r.json!.checks), [`${w.roles.worker.arn} | ${kmsKeyId} | kms:CreateGrant`], 'that row, and only it')
  t.match((r.json!.checks as Check[]).find((c) => !c.ok)!.detail, new RegExp(`the key policy of ${kmsKeyId} allows it neither to ${w.roles.worker.arn} nor to account ${BACKUP}`))
})

t.test('preflight: a controller that may not simulate says the grant could not be checked, and why', async (t) => {
  const { w, args } = await backupWorld(t)
  const controller = w.world.principals.get('AKIACONTROLLER')!
  controller.policy = { ...controller.policy!, Statement: controller.policy!.Statement.filter((s) => s.Sid !== 'TheWorkerRolesGrantsAsEbsMakesThem') }
  const r = await w.controller(['preflight', ...args])
  // The worker role's Decrypt, which its policy allows only through EBS (kms:ViaService), is simulated too.
  t.same(missing(r.json!.checks), [`${w.roles.worker.arn} | ${w.keys.prod} | kms:CreateGrant`, `${w.roles.worker.arn} | ${w.keys.prod} | kms:Decrypt`])
  t.match((r.json!.checks as Check[]).find((c) => !c.ok)!.detail, /cannot check kms:CreateGrant.*AccessDenied.*iam:SimulatePrincipalPolicy/)
})

t.test('backup-instance --worker-role with a worker policy without its grant statement: ACCESS_DENIED naming kms:CreateGrant, before anything is created', async (t) => {
  const { w, args } = await backupWorld(t)
  w.roles.worker.policy = withoutGrants(w.roles.worker.policy!)
  const before = counts(w)
  const r = await w.controller(args)
  t.match(r, { code: 1, json: { error: { code: 'ACCESS_DENIED' } } }, 'refused')
  t.match(r.json!.error.message, new RegExp(`${w.roles.worker.arn}.*kms:CreateGrant on ${w.keys.prod}.*the IAM policies of ${w.roles.worker.arn} do not allow it.*Nothing was created`), 'naming the role, the action, the key and why')
  t.same(counts(w), before, 'nothing was created')
})
