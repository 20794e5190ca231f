// The EC2 stand-in (test/standin/ec2.ts) driven by the real @aws-sdk/client-ec2: what the
// worker will rely on, and the AWS rules the seeds' flows depend on.
import t from 'tap'
import {
  AttachVolumeCommand, CreateSnapshotCommand, CreateVolumeCommand, DeleteVolumeCommand, DescribeVolumesCommand, DetachVolumeCommand, EC2Client,
  GetEbsDefaultKmsKeyIdCommand, ModifySnapshotAttributeCommand, waitUntilSnapshotCompleted, waitUntilVolumeAvailable, waitUntilVolumeInUse,
} from '@aws-sdk/client-ec2'
import { join } from 'node:path'
import { findEbsDevice, waitForEbsDevice } from '../agent/device/ebs-device.ts'
import { makeImage, MiB, sha256File, tempDir } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'

const instance = { instanceId: 'i-0123456789abcdef0', accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1a' }

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = await tempDir(t)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: 4 * MiB, delayMs: 50 }).start()
  t.teardown(() => ec2.close())
  const client = new EC2Client({ endpoint: ec2.endpoint, region: instance.region, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
  t.teardown(() => client.destroy())
  return { dir, roots, ec2, client }
}

t.test('volume from a snapshot: create, attach, see its device and data, detach, delete', async (t) => {
  const { dir, roots, ec2, client } = await setup(t)
  const image = join(dir, 'snap.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: MiB, length: 3 * MiB }])
  const snapshotId = ec2.addSnapshot({ image, sizeGiB: 2, encrypted: true, kmsKeyId: 'arn:aws:kms:eu-west-1:111122223333:key/source' })

  const create = () => client.send(new CreateVolumeCommand({
    AvailabilityZone: instance.availabilityZone, SnapshotId: snapshotId, VolumeType: 'gp3', ClientToken: 'task-1',
    TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'ebs-worker:task-id', Value: 'task-1' }] }],
  }))
  const v = await create()
  t.match(v, { State: 'creating', Size: 2, Encrypted: true, KmsKeyId: 'arn:aws:kms:eu-west-1:111122223333:key/source', VolumeType: 'gp3' })
  t.equal((await create()).VolumeId, v.VolumeId, 'the same ClientToken returns the same volume')
  await waitUntilVolumeAvailable({ client, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  const byTag = await client.send(new DescribeVolumesCommand({ Filters: [{ Name: 'tag:ebs-worker:task-id', Values: ['task-1'] }] }))
  t.same(byTag.Volumes?.map((x) => x.VolumeId), [v.VolumeId], 'found again by its task tag')

  const att = await client.send(new AttachVolumeCommand({ VolumeId: v.VolumeId!, InstanceId: instance.instanceId, Device: '/dev/sdf' }))
  t.equal(att.State, 'attaching')
  await waitUntilVolumeInUse({ client, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  const device = await waitForEbsDevice(v.VolumeId!, { roots, timeoutMs: 5000, intervalMs: 20 })
  t.equal(device.size, 8 * MiB, 'the device has the volume size')
  t.equal(await sha256File(device.path), await sha256File(image), 'the device holds the snapshot data')
  await t.rejects(client.send(new DeleteVolumeCommand({ VolumeId: v.VolumeId! })), { name: 'VolumeInUse' }, 'an attached volume cannot be deleted')
  await t.rejects(client.send(new AttachVolumeCommand({ VolumeId: v.VolumeId!, InstanceId: instance.instanceId, Device: '/dev/sdg' })), { name: 'VolumeInUse' })

  await client.send(new DetachVolumeCommand({ VolumeId: v.VolumeId! }))
  await waitUntilVolumeAvailable({ client, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [v.VolumeId!] })
  t.equal(await findEbsDevice(v.VolumeId!, roots), null, 'the device is gone')
  await client.send(new DeleteVolumeCommand({ VolumeId: v.VolumeId! }))
  await t.rejects(client.send(new DescribeVolumesCommand({ VolumeIds: [v.VolumeId!] })), { name: 'InvalidVolume.NotFound' })
})

t.test('the AWS rules the flows depend on', async (t) => {
  const { dir, ec2, client } = await setup(t)
  const image = join(dir, 'snap.img')
  await makeImage(image, 4 * MiB, [])
  const foreign = ec2.addSnapshot({ image, sizeGiB: 1, encrypted: true, kmsKeyId: 'arn:aws:kms:eu-west-1:444455556666:key/src', ownerId: '444455556666', sharedWith: ['111122223333'] })
  const unshared = ec2.addSnapshot({ image, sizeGiB: 1, encrypted: true, ownerId: '444455556666' })
  const shared = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', SnapshotId: foreign }))
  t.match(shared, { Encrypted: true, KmsKeyId: 'arn:aws:kms:eu-west-1:111122223333:alias/aws/ebs' }, 'from a shared snapshot: this Region\'s default key')
  await t.rejects(client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', SnapshotId: unshared })), { name: 'InvalidSnapshot.NotFound' }, 'an unshared snapshot is invisible')
  await t.rejects(client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, KmsKeyId: 'k' })), { name: 'InvalidParameterDependency' }, 'KmsKeyId needs Encrypted')
  const other = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1b', Size: 1 }))
  await waitUntilVolumeAvailable({ client, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [other.VolumeId!] })
  await t.rejects(client.send(new AttachVolumeCommand({ VolumeId: other.VolumeId!, InstanceId: instance.instanceId, Device: '/dev/sdf' })), { name: 'InvalidVolume.ZoneMismatch' }, 'another AZ cannot attach')
  await t.rejects(client.send(new CreateVolumeCommand({ AvailabilityZone: 'us-east-1a', Size: 1 })), { name: 'InvalidParameterValue' }, 'an AZ of another Region')

  // Snapshots keep the volume's key; only those under a customer managed key can be shared.
  t.equal((await client.send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId, 'arn:aws:kms:eu-west-1:111122223333:alias/aws/ebs')
  const share = (SnapshotId: string) => client.send(new ModifySnapshotAttributeCommand({
    SnapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: '444455556666' }] },
  }))
  const underDefault = await client.send(new CreateSnapshotCommand({ VolumeId: shared.VolumeId! }))
  t.match(underDefault, { State: 'pending', Encrypted: true, KmsKeyId: 'arn:aws:kms:eu-west-1:111122223333:alias/aws/ebs' })
  await waitUntilSnapshotCompleted({ client, maxWaitTime: 10, minDelay: 1 }, { SnapshotIds: [underDefault.SnapshotId!] })
  await t.rejects(share(underDefault.SnapshotId!), { name: 'OperationNotPermitted', message: /EBS default key cannot be shared/ }, 'aws/ebs: not shareable')
  const cmkVolume = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, Encrypted: true, KmsKeyId: 'arn:aws:kms:eu-west-1:111122223333:key/cmk' }))
  await waitUntilVolumeAvailable({ client, maxWaitTime: 10, minDelay: 1 }, { VolumeIds: [cmkVolume.VolumeId!] })
  const underCmk = await client.send(new CreateSnapshotCommand({ VolumeId: cmkVolume.VolumeId! }))
  await share(underCmk.SnapshotId!)
  t.same(ec2.snapshots.get(underCmk.SnapshotId!)!.sharedWith, ['444455556666'], 'a customer managed key: shared')
})

t.test('CreateVolume takes Iops only for io1, io2 and gp3, Throughput only for gp3, as EC2 does', async (t) => {
  const { client } = await setup(t)
  const create = (VolumeType: 'gp2' | 'gp3' | 'io2' | 'st1', more: { Iops?: number; Throughput?: number } = {}) =>
    client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 200, VolumeType, ...more }))
  await t.rejects(create('gp2', { Iops: 600 }), { name: 'InvalidParameterCombination', message: /iops is not supported for gp2/ }, 'Iops on gp2: refused')
  await t.rejects(create('st1', { Iops: 500 }), { name: 'InvalidParameterCombination' }, 'Iops on st1: refused')
  await t.rejects(create('io2', { Iops: 4000, Throughput: 250 }), { name: 'InvalidParameterCombination', message: /throughput can only be specified for volumeType gp3/ }, 'Throughput on io2: refused')
  await t.rejects(create('io2'), { name: 'InvalidParameterCombination', message: /iops must be specified for io2/ }, 'io2 without Iops: refused')
  await t.rejects(client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, VolumeType: 'gp2', Iops: 100, DryRun: true })),
    { name: 'InvalidParameterCombination' }, 'checked with DryRun too')
  t.match(await create('gp3', { Iops: 6000, Throughput: 500 }), { VolumeType: 'gp3', Iops: 6000, Throughput: 500 }, 'gp3 takes both')
  t.match(await create('io2', { Iops: 4000 }), { VolumeType: 'io2', Iops: 4000 }, 'io2 takes Iops')
})

t.test('DescribeVolumes reports gp2\'s baseline IOPS (3 per GiB, 100 to 16,000) and gp3\'s defaults', async (t) => {
  const { client } = await setup(t)
  const iopsOf = async (VolumeType: 'gp2' | 'gp3', Size: number) => {
    const v = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size, VolumeType }))
    const d = (await client.send(new DescribeVolumesCommand({ VolumeIds: [v.VolumeId!] }))).Volumes![0]!
    return { iops: d.Iops, throughput: d.Throughput }
  }
  t.same(await iopsOf('gp2', 2), { iops: 100, throughput: undefined }, 'a small gp2 volume: 100')
  t.same(await iopsOf('gp2', 1000), { iops: 3000, throughput: undefined }, '1,000 GiB: 3,000')
  t.same(await iopsOf('gp3', 2), { iops: 3000, throughput: 125 }, 'gp3: 3,000 IOPS and 125 MiB/s')
})

t.test('eventual consistency: the first requests after a create find no such id, then it is there', async (t) => {
  const { ec2, client } = await setup(t)
  ec2.visibilityLag = 2
  const v = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1 }))
  await t.rejects(client.send(new DescribeVolumesCommand({ VolumeIds: [v.VolumeId!] })), { name: 'InvalidVolume.NotFound' }, 'by id: not found')
  const listed = await client.send(new DescribeVolumesCommand({ Filters: [{ Name: 'volume-id', Values: [v.VolumeId!] }] }))
  t.same(listed.Volumes, [], 'by filter: not listed')
  t.equal((await client.send(new DescribeVolumesCommand({ VolumeIds: [v.VolumeId!] }))).Volumes![0]!.VolumeId, v.VolumeId, 'then there')
  t.equal(ec2.missed.get(v.VolumeId!), 2, 'missed by two requests')
})

t.test('DryRun checks the snapshot it names: one that does not exist is InvalidSnapshot.NotFound', async (t) => {
  const { dir, ec2, client } = await setup(t)
  const image = join(dir, 'snap.img')
  await makeImage(image, 4 * MiB, [])
  const known = ec2.addSnapshot({ image, sizeGiB: 1 })
  const share = (SnapshotId: string) => client.send(new ModifySnapshotAttributeCommand({
    SnapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: '444455556666' }] }, DryRun: true,
  }))
  await t.rejects(share('snap-00000000000000000'), { name: 'InvalidSnapshot.NotFound' }, 'an unknown snapshot')
  await t.rejects(share(known), { name: 'DryRunOperation' }, 'a known one: DryRunOperation')
})
