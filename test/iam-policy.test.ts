// The policy evaluator the stand-ins share (test/standin/iam.ts) and what they feed it: condition
// operators as the IAM User Guide defines them, kms:GrantIsForAWSResource only on the grants EBS
// makes (kms.ts), EC2's resource-level authorization with tags (ec2.ts), and the IAM policy
// simulator answering from the same evaluator (iam-api.ts). The roles carry the shipped documents
// of packaging/iam/ (the worker role the fleet's worker-policy.json, as the stack fills it in).
import t from 'tap'
import {
  AttachVolumeCommand, CreateSnapshotsCommand, CreateTagsCommand, CreateVolumeCommand, DeleteVolumeCommand, EC2Client, waitUntilVolumeAvailable,
} from '@aws-sdk/client-ec2'
import { IAMClient, SimulateCustomPolicyCommand, SimulatePrincipalPolicyCommand } from '@aws-sdk/client-iam'
import { CreateGrantCommand, KMSClient } from '@aws-sdk/client-kms'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { MiB, ROOT, tempDir } from './helpers.ts'
import { BACKUP, FLEET_STACK, fleetWorkerPolicy, iamDocument, PROD, REGION } from './controller-world.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { AwsWorld, evaluate, type PolicyDocument, type PolicyStatement } from './standin/iam.ts'
import { IamStandIn } from './standin/iam-api.ts'
import { KmsStandIn } from './standin/kms.ts'

const allowIf = (Condition: PolicyStatement['Condition']): PolicyDocument => ({ Statement: [{ Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: '*', Condition }] })
const allowed = (policy: PolicyDocument, context: Record<string, string | boolean | string[]>): boolean => evaluate(policy, 'ec2:CreateVolume', 'arn:aws:ec2:eu-west-1:1:volume/*', context) === 'allow'

t.test('conditions: Null "false" holds only when the key is present, "true" only when it is absent', async (t) => {
  const present = allowIf({ Null: { 'aws:RequestTag/ebs-worker:task-id': 'false' } })
  t.ok(allowed(present, { 'aws:RequestTag/ebs-worker:task-id': 't-1' }))
  t.notOk(allowed(present, {}))
  const absent = allowIf({ Null: { 'aws:RequestTag/ebs-worker:task-id': 'true' } })
  t.ok(allowed(absent, {}))
  t.notOk(allowed(absent, { 'aws:RequestTag/ebs-worker:task-id': '' }), 'an empty value is still present')
})

t.test('conditions: Bool matches true or false, and an absent key matches neither', async (t) => {
  const grant = allowIf({ Bool: { 'kms:GrantIsForAWSResource': 'true' } })
  t.ok(allowed(grant, { 'kms:GrantIsForAWSResource': true }))
  t.notOk(allowed(grant, { 'kms:GrantIsForAWSResource': false }))
  t.notOk(allowed(grant, {}), 'absent: the condition is false')
  t.ok(allowed(allowIf({ Bool: { 'kms:GrantIsForAWSResource': true } }), { 'kms:GrantIsForAWSResource': true }), 'a JSON boolean in the policy too')
})

t.test('conditions: the values of a key are ORed, keys and operators ANDed, key names compare without case', async (t) => {
  const p = allowIf({ StringEquals: { 'ec2:CreateAction': ['CreateVolume', 'CreateSnapshot'], 'aws:RequestTag/team': 'db' } })
  t.ok(allowed(p, { 'ec2:CreateAction': 'CreateSnapshot', 'aws:RequestTag/team': 'db' }))
  t.notOk(allowed(p, { 'ec2:CreateAction': 'CreateSnapshot' }), 'both keys must match')
  t.notOk(allowed(p, { 'ec2:CreateAction': 'createvolume', 'aws:RequestTag/team': 'db' }), 'values compare with case')
  t.ok(allowed(p, { 'EC2:createaction': 'CreateVolume', 'AWS:RequestTag/team': 'db' }), 'key names do not')
  t.ok(allowed(allowIf({ StringEqualsIgnoreCase: { 'aws:RequestTag/team': 'DB' } }), { 'aws:RequestTag/team': 'db' }), 'unless IgnoreCase')
})

t.test('conditions: a negated operator NORs its values and holds when the key is absent', async (t) => {
  const p = allowIf({ StringNotEquals: { 'aws:RequestTag/env': ['prod', 'stage'] } })
  t.ok(allowed(p, { 'aws:RequestTag/env': 'dev' }))
  t.notOk(allowed(p, { 'aws:RequestTag/env': 'stage' }))
  t.ok(allowed(p, {}), 'absent')
  t.notOk(allowed(allowIf({ StringNotLike: { 'aws:RequestTag/env': 'pr*' } }), { 'aws:RequestTag/env': 'prod' }))
})

t.test('conditions: StringLike takes * and ?; ArnLike matches each ARN component on its own', async (t) => {
  const like = allowIf({ StringLike: { 's3:prefix': ['backups', 'backups/*'] } })
  t.ok(allowed(like, { 's3:prefix': 'backups/packs/ab' }))
  t.notOk(allowed(like, { 's3:prefix': 'other/backups' }))
  t.ok(allowed(allowIf({ StringLike: { 'aws:RequestTag/n': 'v?' } }), { 'aws:RequestTag/n': 'v1' }))
  const arn = allowIf({ ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::*:role/ebs-*' } })
  t.ok(allowed(arn, { 'aws:PrincipalArn': 'arn:aws:iam::222222222222:role/ebs-worker' }))
  t.notOk(allowed(arn, { 'aws:PrincipalArn': 'arn:aws:iam::222222222222:user/ebs-worker' }))
  t.notOk(allowed(allowIf({ ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::*' } }), { 'aws:PrincipalArn': 'arn:aws:iam::222222222222:role/x' }), 'a * stays within its component')
})

t.test('conditions: IfExists holds when the key is absent; ForAnyValue and ForAllValues go through a multivalued key', async (t) => {
  const ifExists = allowIf({ StringEqualsIfExists: { 'aws:RequestTag/env': 'dev' } })
  t.ok(allowed(ifExists, {}))
  t.notOk(allowed(ifExists, { 'aws:RequestTag/env': 'prod' }))
  const any = allowIf({ 'ForAnyValue:StringEquals': { 'aws:TagKeys': ['env', 'team'] } })
  t.ok(allowed(any, { 'aws:TagKeys': ['Name', 'team'] }))
  t.notOk(allowed(any, {}), 'ForAnyValue: absent is false')
  const all = allowIf({ 'ForAllValues:StringEquals': { 'aws:TagKeys': ['env', 'team'] } })
  t.notOk(allowed(all, { 'aws:TagKeys': ['Name', 'team'] }))
  t.ok(allowed(all, { 'aws:TagKeys': ['env'] }))
  t.ok(allowed(all, {}), 'ForAllValues: absent is true')
})

t.test('conditions: an operator the evaluator does not implement is an error, never a silent mismatch', async (t) => {
  t.throws(() => allowed(allowIf({ NumericLessThan: { 'ec2:VolumeSize': '10' } }), { 'ec2:VolumeSize': '5' }), /NumericLessThan is not implemented/)
})

t.test('the shipped documents use only condition operators the evaluator implements', async (t) => {
  const implemented = ['StringEquals', 'StringLike', 'Bool', 'Null', 'StringNotEquals', 'StringNotLike', 'StringEqualsIgnoreCase', 'ArnLike', 'ArnEquals']
  const used = new Set<string>()
  const keys = new Set<string>()
  for (const name of (await readdir(join(ROOT, 'packaging/iam'))).filter((n) => n.endsWith('.json'))) {
    const doc = JSON.parse(await readFile(join(ROOT, 'packaging/iam', name), 'utf8'))
    for (const s of [doc.Statement ?? doc].flat()) {
      for (const [op, entries] of Object.entries(s.Condition ?? {})) {
        used.add(op)
        for (const k of Object.keys(entries as object)) keys.add(k.replace(/\/.*$/, '/…'))
      }
    }
  }
  t.same([...used].filter((op) => !implemented.includes(op.replace(/IfExists$/, '').replace(/^For(Any|All)Values?:/, ''))), [], `operators: ${[...used].join(', ')}`)
  // Who sets each key: EC2 (tags and the request's tag keys, CreateAction, the accounts and groups ModifySnapshotAttribute
  // adds), KMS (grants and uses EBS makes, a direct call's encryption context), STS (the caller of
  // AssumeRole); s3:prefix only S3, which these stand-ins do not authorize (the controller's
  // repository here is a directory).
  t.same([...keys].sort(), ['aws:PrincipalArn', 'aws:RequestTag/…', 'aws:ResourceTag/…', 'aws:TagKeys', 'ec2:Add/…', 'ec2:CreateAction', 'kms:EncryptionContext:purpose', 'kms:GrantIsForAWSResource',
    'kms:ViaService', 's3:prefix'], 'the keys')
})

/** A world with the worker role (the fleet's policy) and an admin, EC2, KMS and IAM stand-ins, and clients as each. */
async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = await tempDir(t)
  const world = new AwsWorld(BACKUP)
  world.addCredentials('AKIAADMIN', { arn: `arn:aws:iam::${BACKUP}:user/admin`, accountId: BACKUP })
  const simulator: PolicyDocument = { Statement: [{ Effect: 'Allow', Action: ['iam:SimulatePrincipalPolicy', 'iam:SimulateCustomPolicy'], Resource: '*' }] }
  world.addCredentials('AKIACONTROLLER', { arn: `arn:aws:iam::${BACKUP}:user/ebs-controller`, accountId: BACKUP, policy: simulator })
  const kms = await new KmsStandIn([], { world }).start()
  t.teardown(() => kms.close())
  const listed = kms.addKey({ accountId: BACKUP, region: REGION })
  const unlisted = kms.addKey({ accountId: BACKUP, region: REGION })
  const worker = world.addRole({ accountId: BACKUP, name: 'ebs-worker', trust: [BACKUP], policy: fleetWorkerPolicy([listed]) })
  const instance = { instanceId: 'i-0b0b0b0b0b0b0b0b1', accountId: BACKUP, region: REGION, availabilityZone: 'eu-west-1a' }
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: MiB, delayMs: 20, world, kms }).start()
  t.teardown(() => ec2.close())
  const iam = await new IamStandIn(world).start()
  t.teardown(() => iam.close())
  const as = (accessKeyId: string, sessionToken?: string) => {
    const credentials = { accessKeyId, secretAccessKey: 'x', ...(sessionToken ? { sessionToken } : {}) }
    const c = {
      ec2: new EC2Client({ endpoint: ec2.endpoint, region: REGION, credentials }),
      kms: new KMSClient({ endpoint: kms.endpoint, region: REGION, credentials }),
      iam: new IAMClient({ endpoint: iam.endpoint, region: REGION, credentials }),
    }
    t.teardown(() => Object.values(c).forEach((x) => x.destroy()))
    return c
  }
  const session = world.sessionFor(worker, instance.instanceId)
  return { world, kms, ec2, worker, instance, listed, unlisted, asWorker: as(session.accessKeyId, session.sessionToken), asAdmin: as('AKIAADMIN'), asController: as('AKIACONTROLLER') }
}

/** The tags the worker creates its volumes with (agent/aws/volumes.ts). */
const taskTags = (tags: Record<string, string> = {}) => [{ ResourceType: 'volume' as const, Tags: Object.entries({
  'ebs-worker:task-id': 't-1', 'ebs-worker:worker': 'i-0b0b0b0b0b0b0b0b1', 'ebs-worker:transient': 'true', ...tags,
}).map(([Key, Value]) => ({ Key, Value })) }]
const taskTag = taskTags()

t.test('KMS: a direct CreateGrant by the fleet\'s worker role is refused, even as DryRun: kms:GrantIsForAWSResource is absent', async (t) => {
  const { asWorker, worker, listed } = await setup(t)
  await t.rejects(asWorker.kms.send(new CreateGrantCommand({ KeyId: listed, GranteePrincipal: worker.arn, Operations: ['Decrypt'], DryRun: true })), { name: 'AccessDeniedException' })
})

t.test('KMS: the grant EBS makes for the worker role carries kms:GrantIsForAWSResource: a volume under a key of KmsKeyArns is made', async (t) => {
  const { asWorker, world, worker, listed } = await setup(t)
  const v = await asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, Encrypted: true, KmsKeyId: listed, TagSpecifications: taskTag }))
  await waitUntilVolumeAvailable({ client: asWorker.ec2, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  t.ok(world.keyUses.some((u) => u.role === worker.arn && u.action === 'kms:CreateGrant' && u.via === 'ec2:CreateVolume' && u.allowed), 'EBS made the grant')
})

t.test('EC2: the fleet policy refuses a volume without its task tag', async (t) => {
  const { asWorker } = await setup(t)
  await t.rejects(asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, DryRun: true })), { name: 'UnauthorizedOperation', message: /ec2:CreateVolume on resource: arn:aws:ec2:eu-west-1:222222222222:volume/ })
  await t.rejects(asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, DryRun: true, TagSpecifications: taskTag })), { name: 'DryRunOperation' })
})

t.test('EC2: the fleet policy lets the worker create volumes only tagged with their task and worker, as transient', async (t) => {
  const { asWorker } = await setup(t)
  const create = (TagSpecifications: ReturnType<typeof taskTags>) => asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, DryRun: true, TagSpecifications }))
  await t.rejects(create(taskTags()), { name: 'DryRunOperation' }, 'task, worker, transient=true: allowed')
  await t.rejects(create([{ ResourceType: 'volume', Tags: [{ Key: 'ebs-worker:task-id', Value: 't-1' }] }]), { name: 'UnauthorizedOperation' }, 'the task tag alone: refused')
  await t.rejects(create(taskTags({ 'ebs-worker:transient': 'false' })), { name: 'UnauthorizedOperation' }, 'made as kept: refused')
})

t.test('EC2: the fleet policy lets the worker delete only its transient volumes, and never make a kept one transient', async (t) => {
  const { asWorker } = await setup(t)
  const make = async () => {
    const v = await asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, TagSpecifications: taskTag }))
    await waitUntilVolumeAvailable({ client: asWorker.ec2, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
    return v.VolumeId!
  }
  const tag = (id: string, tags: Record<string, string>) => asWorker.ec2.send(new CreateTagsCommand({ Resources: [id], Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) }))
  const del = (id: string) => asWorker.ec2.send(new DeleteVolumeCommand({ VolumeId: id, DryRun: true }))
  const kept = await make()
  await t.rejects(del(kept), { name: 'DryRunOperation' }, 'a transient volume: deleting allowed')
  await tag(kept, { 'ebs-worker:restored-backup': 'b-1', 'ebs-worker:transient': 'false' })
  t.pass('marking it kept (a restore done): allowed')
  await t.rejects(del(kept), { name: 'UnauthorizedOperation', message: /ec2:DeleteVolume/ }, 'a kept volume: deleting refused')
  await t.rejects(tag(kept, { 'ebs-worker:transient': 'true' }), { name: 'UnauthorizedOperation' }, 'making it transient again: refused')
  await t.rejects(tag(kept, { Name: 'x' }), { name: 'UnauthorizedOperation' }, 'any other tag: refused')
  await tag(kept, { 'ebs-worker:worker': 'i-0c0c0c0c0c0c0c0c1' })
  t.pass('taking it over (its worker tag): allowed')
})

t.test('EC2: the fleet policy lets the worker attach its volumes only to the fleet\'s instances', async (t) => {
  const { asWorker, ec2, instance } = await setup(t)
  const v = await asWorker.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, TagSpecifications: taskTag }))
  await waitUntilVolumeAvailable({ client: asWorker.ec2, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  const attach = () => asWorker.ec2.send(new AttachVolumeCommand({ VolumeId: v.VolumeId!, InstanceId: instance.instanceId, Device: '/dev/sdf', DryRun: true }))
  await t.rejects(attach(), { name: 'UnauthorizedOperation', message: /instance\/i-0b0b0b0b0b0b0b0b1/ }, 'an instance without the fleet tag')
  ec2.instances.get(instance.instanceId)!.tags['ebs-worker:fleet'] = FLEET_STACK
  await t.rejects(attach(), { name: 'DryRunOperation' }, 'the fleet\'s')
})

t.test('EC2: a create call\'s tags are refused without ec2:CreateTags for that create action', async (t) => {
  const { world, ec2, asAdmin } = await setup(t)
  const instanceId = await ec2.addInstance({ accountId: BACKUP, region: REGION, availabilityZone: 'eu-west-1a', volumes: [] })
  const policy = iamDocument<PolicyDocument>('source-role-policy.json')
  const role = world.addRole({ accountId: BACKUP, name: 'untagging', trust: [BACKUP], policy: { Statement: policy.Statement.filter((s) => s.Sid !== 'TagSnapshotsOnCreation') } })
  const s = world.sessionFor(role, 'x')
  const client = new EC2Client({ endpoint: ec2.endpoint, region: REGION, credentials: { accessKeyId: s.accessKeyId, secretAccessKey: 'x', sessionToken: s.sessionToken } })
  t.teardown(() => client.destroy())
  const tagged = { InstanceSpecification: { InstanceId: instanceId }, DryRun: true, TagSpecifications: [{ ResourceType: 'snapshot' as const, Tags: [{ Key: 'k', Value: 'v' }] }] }
  await t.rejects(client.send(new CreateSnapshotsCommand(tagged)), { name: 'UnauthorizedOperation', message: /ec2:CreateTags/ })
  await t.rejects(client.send(new CreateSnapshotsCommand({ ...tagged, TagSpecifications: [] })), { name: 'DryRunOperation' }, 'untagged: allowed')
  await t.rejects(asAdmin.ec2.send(new CreateSnapshotsCommand(tagged)), { name: 'DryRunOperation' }, 'an administrator may')
})

t.test('IAM: SimulatePrincipalPolicy allows the fleet role kms:CreateGrant with EBS\'s context, and not without it', async (t) => {
  const { asController, worker, listed, unlisted } = await setup(t)
  const simulate = async (key: string, withContext: boolean) => (await asController.iam.send(new SimulatePrincipalPolicyCommand({
    PolicySourceArn: worker.arn, ActionNames: ['kms:CreateGrant'], ResourceArns: [key],
    ...(withContext ? { ContextEntries: [{ ContextKeyName: 'kms:GrantIsForAWSResource', ContextKeyType: 'boolean', ContextKeyValues: ['true'] }] } : {}),
  }))).EvaluationResults?.[0]?.EvalDecision
  t.equal(await simulate(listed, true), 'allowed', 'as EBS asks')
  t.equal(await simulate(listed, false), 'implicitDeny', 'a direct call')
  t.equal(await simulate(unlisted, true), 'implicitDeny', 'a key not in KmsKeyArns')
})

t.test('IAM: the simulator refuses a role of another account, a resource policy for a role, and callers without the permission', async (t) => {
  const { world, asController, asWorker, worker } = await setup(t)
  const other = world.addRole({ accountId: PROD, name: 'elsewhere', trust: [PROD] })
  const simulate = (client: IAMClient, arn: string, extra = {}) => client.send(new SimulatePrincipalPolicyCommand({ PolicySourceArn: arn, ActionNames: ['kms:CreateGrant'], ...extra }))
  await t.rejects(simulate(asController.iam, other.arn), { name: 'NoSuchEntity' }, 'another account\'s role')
  await t.rejects(simulate(asController.iam, worker.arn, { ResourcePolicy: JSON.stringify(KmsStandIn.rootPolicy(BACKUP)) }), { name: 'InvalidInput' }, 'a resource policy, for a role')
  await t.rejects(simulate(asWorker.iam, worker.arn), { name: 'AccessDenied' }, 'the worker may not simulate')
})

t.test('IAM: SimulateCustomPolicy evaluates the statements given, with the context given', async (t) => {
  const { asController, listed } = await setup(t)
  const statement = { Effect: 'Allow', Action: 'kms:CreateGrant', Resource: '*', Condition: { Bool: { 'kms:GrantIsForAWSResource': 'true' } } }
  const decide = async (value: string) => (await asController.iam.send(new SimulateCustomPolicyCommand({
    PolicyInputList: [JSON.stringify({ Version: '2012-10-17', Statement: [statement] })], ActionNames: ['kms:CreateGrant'], ResourceArns: [listed],
    ContextEntries: [{ ContextKeyName: 'kms:GrantIsForAWSResource', ContextKeyType: 'boolean', ContextKeyValues: [value] }],
  }))).EvaluationResults?.[0]?.EvalDecision
  t.equal(await decide('true'), 'allowed')
  t.equal(await decide('false'), 'implicitDeny')
})
