// The stand-ins with several accounts (test/standin/iam.ts, sts.ts, kms.ts, ec2.ts), driven by the
// real SDK clients: who may assume which role, who may use which KMS key, and the EBS rules the
// seeds' flows stand on (default keys, sharing, aws/ebs, re-encrypting copies, instances).
import t from 'tap'
import {
  CopySnapshotCommand, CreateSnapshotsCommand, CreateVolumeCommand, DescribeInstancesCommand, DescribeSnapshotsCommand, DescribeVolumesCommand, EC2Client,
  GetEbsDefaultKmsKeyIdCommand, ModifyEbsDefaultKmsKeyIdCommand, ModifySnapshotAttributeCommand, RunInstancesCommand, StopInstancesCommand,
  waitUntilInstanceRunning, waitUntilInstanceStopped, waitUntilSnapshotCompleted, waitUntilVolumeAvailable,
} from '@aws-sdk/client-ec2'
import { CreateGrantCommand, DescribeKeyCommand, KMSClient } from '@aws-sdk/client-kms'
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts'
import { join } from 'node:path'
import { Volumes } from '../agent/aws/volumes.ts'
import { makeImage, MiB, sha256File, tempDir } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { AwsWorld } from './standin/iam.ts'
import { KmsStandIn } from './standin/kms.ts'
import { StsStandIn } from './standin/sts.ts'

const PROD = '111111111111'
const BACKUP = '222222222222'
const REGION = 'eu-west-1'
const WORKER = { instanceId: 'i-0aaaaaaaaaaaaaaa1', accountId: BACKUP, region: REGION, availabilityZone: 'eu-west-1a' }

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = await tempDir(t)
  const world = new AwsWorld(BACKUP)
  world.addCredentials('AKIAPRODADMIN', { arn: `arn:aws:iam::${PROD}:user/admin`, accountId: PROD })
  world.addCredentials('AKIABACKUPADMIN', { arn: `arn:aws:iam::${BACKUP}:user/admin`, accountId: BACKUP })
  const kms = await new KmsStandIn([], { world }).start()
  t.teardown(() => kms.close())
  const sts = await new StsStandIn(world).start()
  t.teardown(() => sts.close())
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance: WORKER, dir: join(dir, 'volumes'), roots, bytesPerGiB: 4 * MiB, delayMs: 30, world, kms }).start()
  t.teardown(() => ec2.close())
  const clients = (accessKeyId: string, sessionToken?: string) => {
    const credentials = { accessKeyId, secretAccessKey: 'x', ...(sessionToken ? { sessionToken } : {}) }
    const c = {
      ec2: new EC2Client({ endpoint: ec2.endpoint, region: REGION, credentials }),
      kms: new KMSClient({ endpoint: kms.endpoint, region: REGION, credentials }),
      sts: new STSClient({ endpoint: sts.endpoint, region: REGION, credentials }),
    }
    t.teardown(() => Object.values(c).forEach((x) => x.destroy()))
    return c
  }
  return { dir, world, kms, sts, ec2, roots, clients }
}

t.test('STS: a role is assumed only by whom its trust policy names; its credentials act in its account', async (t) => {
  const { world, clients } = await setup(t)
  const role = world.addRole({ accountId: PROD, name: 'backup-source', trust: [BACKUP] })
  world.addRole({ accountId: PROD, name: 'nobody', trust: ['333333333333'] })
  const admin = clients('AKIABACKUPADMIN')
  const out = await admin.sts.send(new AssumeRoleCommand({ RoleArn: role.arn, RoleSessionName: 'ctl' }))
  t.match(out.AssumedRoleUser, { Arn: `arn:aws:sts::${PROD}:assumed-role/backup-source/ctl` })
  const as = clients(out.Credentials!.AccessKeyId!, out.Credentials!.SessionToken!)
  t.equal((await as.sts.send(new GetCallerIdentityCommand({}))).Account, PROD, 'the session is in the role\'s account')
  await t.rejects(admin.sts.send(new AssumeRoleCommand({ RoleArn: `arn:aws:iam::${PROD}:role/nobody`, RoleSessionName: 'ctl' })), { name: 'AccessDenied' }, 'not trusted')
  await t.rejects(admin.sts.send(new AssumeRoleCommand({ RoleArn: `arn:aws:iam::${PROD}:role/missing`, RoleSessionName: 'ctl' })), { name: 'AccessDenied' }, 'no such role')
})

t.test('KMS: key policies, identity policies, grants, aws/ebs, DryRun', async (t) => {
  const { world, kms, clients } = await setup(t)
  const own = kms.addKey({ accountId: PROD, region: REGION, aliases: ['alias/prod'] })
  const sharedKey = kms.addKey({
    accountId: PROD, region: REGION,
    policy: { Statement: [...KmsStandIn.rootPolicy(PROD).Statement, { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${BACKUP}:root` }, Action: ['kms:DescribeKey', 'kms:CreateGrant', 'kms:Decrypt'], Resource: '*' }] },
  })
  const worker = world.addRole({ accountId: BACKUP, name: 'worker', trust: [BACKUP], policy: { Statement: [{ Effect: 'Allow', Action: ['kms:DescribeKey', 'kms:CreateGrant'], Resource: '*' }] } })
  const session = world.sessionFor(worker, 'i-1')
  const w = clients(session.accessKeyId, session.sessionToken)
  const prod = clients('AKIAPRODADMIN')

  t.equal((await prod.kms.send(new DescribeKeyCommand({ KeyId: 'alias/prod' }))).KeyMetadata?.Arn, own, 'an alias resolves in the caller\'s account')
  await t.rejects(w.kms.send(new DescribeKeyCommand({ KeyId: own })), { name: 'AccessDeniedException' }, 'another account\'s key, not in its policy')
  t.equal((await w.kms.send(new DescribeKeyCommand({ KeyId: sharedKey }))).KeyMetadata?.KeyManager, 'CUSTOMER', 'a key whose policy names the account')
  await t.rejects(w.kms.send(new CreateGrantCommand({ KeyId: sharedKey, GranteePrincipal: worker.arn, Operations: ['Decrypt'], DryRun: true })), { name: 'DryRunOperationException' }, 'DryRun: would succeed')
  await t.rejects(w.kms.send(new CreateGrantCommand({ KeyId: own, GranteePrincipal: worker.arn, Operations: ['Decrypt'], DryRun: true })), { name: 'AccessDeniedException' }, 'DryRun: refused')
  const awsEbs = kms.awsEbsKey(PROD, REGION)
  await t.rejects(w.kms.send(new CreateGrantCommand({ KeyId: KmsStandIn.arn(awsEbs), GranteePrincipal: worker.arn, Operations: ['Decrypt'], DryRun: true })), { name: 'AccessDeniedException' }, 'aws/ebs: never another account')
  t.equal((await prod.kms.send(new DescribeKeyCommand({ KeyId: 'alias/aws/ebs' }))).KeyMetadata?.KeyManager, 'AWS', 'aws/ebs is AWS managed')
  t.ok(world.keyUses.some((u) => u.key === sharedKey && u.role === worker.arn && u.action === 'kms:CreateGrant' && u.allowed), 'uses are recorded per role and key')
})

t.test('EC2 across accounts: default keys, the KMS rollback, sharing, aws/ebs, copies, instances', async (t) => {
  const { dir, world, kms, ec2, clients } = await setup(t)
  const image = join(dir, 'root.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: MiB, length: 2 * MiB }])
  const cmk = kms.addKey({
    accountId: PROD, region: REGION,
    policy: { Statement: [...KmsStandIn.rootPolicy(PROD).Statement, { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${BACKUP}:root` }, Action: ['kms:DescribeKey', 'kms:CreateGrant', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKeyWithoutPlaintext'], Resource: '*' }] },
  })
  const instanceId = await ec2.addInstance({
    accountId: PROD, region: REGION, availabilityZone: 'eu-west-1b', instanceType: 'm6i.large',
    volumes: [{ device: '/dev/xvda', image, sizeGiB: 2, encrypted: true }, { device: '/dev/sdf', image, sizeGiB: 2, encrypted: true, kmsKeyId: cmk }],
  })
  const prod = clients('AKIAPRODADMIN')
  const backup = clients('AKIABACKUPADMIN')

  t.equal((await prod.ec2.send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId, `arn:aws:kms:${REGION}:${PROD}:alias/aws/ebs`, 'aws/ebs until changed')
  const d = await prod.ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }))
  const inst = d.Reservations![0]!.Instances![0]!
  t.same(inst.BlockDeviceMappings!.map((m) => m.DeviceName), ['/dev/xvda', '/dev/sdf'], 'device order')
  t.match(inst, { InstanceType: 'm6i.large', RootDeviceName: '/dev/xvda', Placement: { AvailabilityZone: 'eu-west-1b' } })
  await t.rejects(backup.ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] })), { name: 'InvalidInstanceID.NotFound' }, 'another account\'s instance')

  const snaps = (await prod.ec2.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: instanceId }, TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: 'k', Value: 'v' }] }] }))).Snapshots!
  t.equal(snaps.length, 2, 'one snapshot per volume')
  await waitUntilSnapshotCompleted({ client: prod.ec2, maxWaitTime: 10, minDelay: 1 }, { SnapshotIds: snaps.map((s) => s.SnapshotId!) })
  const [rootSnap, dataSnap] = snaps.map((s) => ec2.snapshots.get(s.SnapshotId!)!)
  t.equal(rootSnap!.kmsKeyId, KmsStandIn.arn(kms.awsEbsKey(PROD, REGION)), 'the root snapshot is under aws/ebs')
  t.equal(dataSnap!.kmsKeyId, cmk, 'the data snapshot keeps its key')
  const share = (SnapshotId: string, op: 'Add' | 'Remove' = 'Add') => prod.ec2.send(new ModifySnapshotAttributeCommand({
    SnapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { [op]: [{ UserId: BACKUP }] },
  }))
  await t.rejects(share(rootSnap!.snapshotId), { name: 'OperationNotPermitted' }, 'an aws/ebs snapshot cannot be shared')
  await share(dataSnap!.snapshotId)
  t.same((await backup.ec2.send(new DescribeSnapshotsCommand({ SnapshotIds: [dataSnap!.snapshotId] }))).Snapshots!.map((s) => s.OwnerId), [PROD], 'visible once shared')

  // From the shared snapshot, the backup account's volume takes its default key (aws/ebs there).
  const v = await backup.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', SnapshotId: dataSnap!.snapshotId, Encrypted: true }))
  await waitUntilVolumeAvailable({ client: backup.ec2, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  t.equal(ec2.volumes.get(v.VolumeId!)!.kmsKeyId, KmsStandIn.arn(kms.awsEbsKey(BACKUP, REGION)), 'under the backup account\'s default key')
  t.equal(await sha256File(ec2.volumes.get(v.VolumeId!)!.file, 8 * MiB), await sha256File(image), 'with the snapshot\'s data')
  await share(dataSnap!.snapshotId, 'Remove')
  await t.rejects(backup.ec2.send(new DescribeSnapshotsCommand({ SnapshotIds: [dataSnap!.snapshotId] })), { name: 'InvalidSnapshot.NotFound' }, 'unshared: gone for it')

  // A re-encrypted copy of the aws/ebs snapshot can be shared.
  const copy = await prod.ec2.send(new CopySnapshotCommand({ SourceSnapshotId: rootSnap!.snapshotId, SourceRegion: REGION, Encrypted: true, KmsKeyId: cmk }))
  await waitUntilSnapshotCompleted({ client: prod.ec2, maxWaitTime: 10, minDelay: 1 }, { SnapshotIds: [copy.SnapshotId!] })
  t.equal(ec2.snapshots.get(copy.SnapshotId!)!.kmsKeyId, cmk, 'the copy is under the customer managed key')
  await share(copy.SnapshotId!)

  // KMS refusing EBS: the call "succeeds", the volume is rolled back, and the agent says ACCESS_DENIED.
  const prodOnly = kms.addKey({ accountId: BACKUP, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${BACKUP}:user/someone-else` }, Action: 'kms:*', Resource: '*' }] } })
  const bad = await backup.ec2.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, Encrypted: true, KmsKeyId: prodOnly }))
  t.equal(bad.State, 'creating', 'CreateVolume answers creating')
  const volumes = new Volumes({ client: backup.ec2, identity: { ...WORKER, instanceType: 'c6i.large' }, stateTimeoutSeconds: 10 })
  await t.rejects(volumes.createEmpty('task-denied', 1, { kmsKeyId: prodOnly }), { code: 'ACCESS_DENIED', message: /rolled back.*KMS key/ }, 'the agent: ACCESS_DENIED')
  await t.rejects(backup.ec2.send(new DescribeVolumesCommand({ VolumeIds: [bad.VolumeId!] })), { name: 'InvalidVolume.NotFound' }, 'and the volume is gone')

  t.equal((await backup.ec2.send(new ModifyEbsDefaultKmsKeyIdCommand({ KmsKeyId: prodOnly }))).KmsKeyId, prodOnly, 'the default key can change')
  t.equal((await backup.ec2.send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId, prodOnly)

  // Instances to rebuild one: run, stop, see its root mapping.
  const run = await prod.ec2.send(new RunInstancesCommand({ ImageId: 'ami-0123456789abcdef0', InstanceType: 't3.micro', MinCount: 1, MaxCount: 1, Placement: { AvailabilityZone: 'eu-west-1c' } }))
  const newId = run.Instances![0]!.InstanceId!
  await waitUntilInstanceRunning({ client: prod.ec2, maxWaitTime: 10, minDelay: 1 }, { InstanceIds: [newId] })
  await prod.ec2.send(new StopInstancesCommand({ InstanceIds: [newId] }))
  await waitUntilInstanceStopped({ client: prod.ec2, maxWaitTime: 10, minDelay: 1 }, { InstanceIds: [newId] })
  t.same(ec2.attachedTo(newId).map((x) => x.attachment!.device), ['/dev/xvda'], 'launched with its image\'s root volume')

  // Identity policies are enforced and every call is recorded.
  const limited = world.addRole({ accountId: PROD, name: 'limited', trust: [PROD], policy: { Statement: [{ Effect: 'Allow', Action: 'ec2:Describe*', Resource: '*' }] } })
  const s = world.sessionFor(limited, 'x')
  const lim = clients(s.accessKeyId, s.sessionToken)
  await lim.ec2.send(new DescribeInstancesCommand({}))
  await t.rejects(lim.ec2.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: instanceId } })), { name: 'UnauthorizedOperation' })
  await t.rejects(lim.ec2.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: instanceId }, DryRun: true })), { name: 'UnauthorizedOperation' }, 'DryRun refused')
  await t.rejects(prod.ec2.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: instanceId }, DryRun: true })), { name: 'DryRunOperation' }, 'DryRun allowed')
  t.same(world.actionsOf(limited.arn), ['ec2:CreateSnapshots', 'ec2:DescribeInstances'], 'the calls of a role')
})

t.test('KMS refusing EBS with EC2\'s eventual consistency on: the agent waits until the volume is seen, then gone: ACCESS_DENIED', async (t) => {
  const { kms, ec2, clients } = await setup(t)
  ec2.visibilityLag = 3
  const backup = clients('AKIABACKUPADMIN')
  const someoneElses = kms.addKey({ accountId: BACKUP, region: REGION, policy: { Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${BACKUP}:user/someone-else` }, Action: 'kms:*', Resource: '*' }] } })
  const volumes = new Volumes({ client: backup.ec2, identity: { ...WORKER, instanceType: 'c6i.large' }, stateTimeoutSeconds: 30 })
  await t.rejects(volumes.createEmpty('task-denied-late', 1, { kmsKeyId: someoneElses }), { code: 'ACCESS_DENIED', message: /rolled back while being created.*KMS key/ }, 'ACCESS_DENIED')
  const made = [...ec2.volumes.values()].find((v) => v.tags['ebs-worker:task-id'] === 'task-denied-late')!
  t.equal(ec2.missed.get(made.volumeId), 3, 'after three answers "no such volume" that were only EC2 catching up')
  t.match(made, { state: 'deleted', stateReason: /KMS refused/ }, 'and the volume was rolled back')
})
