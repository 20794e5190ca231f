// The EC2 stand-in's rules for launching an instance in a real account (test/standin/ec2.ts),
// driven by the real @aws-sdk/client-ec2: tags EC2 refuses; images per Region and account; the
// default VPC, subnets and security groups.
import t from 'tap'
import {
  CreateTagsCommand, CreateVolumeCommand, DescribeAccountAttributesCommand, DescribeImagesCommand, DescribeSecurityGroupsCommand, DescribeSubnetsCommand,
  EC2Client, RunInstancesCommand,
} from '@aws-sdk/client-ec2'
import { join } from 'node:path'
import { MiB, tempDir } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'

const ACCOUNT = '111122223333'
const OTHER = '444455556666'
const REGION = 'eu-west-1'
const instance = { instanceId: 'i-0123456789abcdef0', accountId: ACCOUNT, region: REGION, availabilityZone: 'eu-west-1a' }

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = await tempDir(t)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: MiB, delayMs: 20 }).start()
  t.teardown(() => ec2.close())
  const client = new EC2Client({ endpoint: ec2.endpoint, region: REGION, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
  t.teardown(() => client.destroy())
  const imageId = ec2.addImage({ imageId: 'ami-0123456789abcdef0', ownerId: ACCOUNT, region: REGION })
  const inRegion = (region: string) => {
    const c = new EC2Client({ endpoint: ec2.endpoint, region, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
    t.teardown(() => c.destroy())
    return c
  }
  return { ec2, client, imageId, inRegion }
}

const tags = (n: number, prefix = 'k') => Array.from({ length: n }, (_, i) => ({ Key: `${prefix}${String(i).padStart(2, '0')}`, Value: `v${i}` }))
const run = (client: EC2Client, extra: Partial<ConstructorParameters<typeof RunInstancesCommand>[0]> = {}) =>
  client.send(new RunInstancesCommand({ ImageId: 'ami-0123456789abcdef0', InstanceType: 't3.micro', MinCount: 1, MaxCount: 1, ...extra }))

t.test('tags: a key starting with aws: is refused with InvalidParameterValue, and nothing is launched', async (t) => {
  const { ec2, client } = await setup(t)
  const before = ec2.instances.size
  await t.rejects(run(client, { TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: 'Name', Value: 'x' }, { Key: 'aws:cloudformation:stack-name', Value: 'app' }] }] }),
    { name: 'InvalidParameterValue', message: /reserved/ })
  await t.rejects(run(client, { TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: 'AWS:Thing', Value: 'x' }] }] }), { name: 'InvalidParameterValue' }, 'in any case')
  t.equal(ec2.instances.size, before, 'no instance')
})

t.test('tags: more than 50 on one resource is TagLimitExceeded; 50 are fine', async (t) => {
  const { client } = await setup(t)
  await t.rejects(run(client, { TagSpecifications: [{ ResourceType: 'instance', Tags: tags(51) }] }), { name: 'TagLimitExceeded' })
  const ok = await run(client, { TagSpecifications: [{ ResourceType: 'instance', Tags: tags(50) }] })
  t.equal(ok.Instances![0]!.Tags?.length, 50, '50 tags')
})

t.test('tags: CreateTags counts the tags a resource has already, without the reserved ones', async (t) => {
  const { ec2, client } = await setup(t)
  const v = await client.send(new CreateVolumeCommand({ AvailabilityZone: 'eu-west-1a', Size: 1, TagSpecifications: [{ ResourceType: 'volume', Tags: tags(40) }] }))
  ec2.volumes.get(v.VolumeId!)!.tags['aws:backup:source-resource'] = 'set by AWS'
  await client.send(new CreateTagsCommand({ Resources: [v.VolumeId!], Tags: tags(10, 'm') }))
  t.equal(Object.keys(ec2.volumes.get(v.VolumeId!)!.tags).length, 51, '50 tags and AWS\'s own')
  await t.rejects(client.send(new CreateTagsCommand({ Resources: [v.VolumeId!], Tags: [{ Key: 'one-more', Value: '' }] })), { name: 'TagLimitExceeded' })
  await t.rejects(client.send(new CreateTagsCommand({ Resources: [v.VolumeId!], Tags: [{ Key: 'aws:mine', Value: '' }] })), { name: 'InvalidParameterValue' }, 'nor an aws: key')
})

t.test('images: an AMI of another Region is InvalidAMIID.NotFound, to RunInstances and DescribeImages', async (t) => {
  const { ec2, inRegion } = await setup(t)
  const elsewhere = ec2.addImage({ ownerId: ACCOUNT, region: 'us-east-1' })
  const client = inRegion(REGION)
  await t.rejects(run(client, { ImageId: elsewhere }), { name: 'InvalidAMIID.NotFound' }, 'not in this Region')
  await t.rejects(client.send(new DescribeImagesCommand({ ImageIds: [elsewhere] })), { name: 'InvalidAMIID.NotFound' })
  t.equal((await inRegion('us-east-1').send(new DescribeImagesCommand({ ImageIds: [elsewhere] }))).Images?.[0]?.ImageId, elsewhere, 'but there')
})

t.test('images: another account\'s private AMI is InvalidAMIID.NotFound until it is shared or public', async (t) => {
  const { ec2, client } = await setup(t)
  const theirs = ec2.addImage({ ownerId: OTHER, region: REGION, architecture: 'arm64', rootDeviceName: '/dev/sda1' })
  await t.rejects(client.send(new DescribeImagesCommand({ ImageIds: [theirs] })), { name: 'InvalidAMIID.NotFound' }, 'private')
  ec2.images.get(theirs)!.launchPermissions.push(ACCOUNT)
  t.match((await client.send(new DescribeImagesCommand({ ImageIds: [theirs] }))).Images, [{ ImageId: theirs, OwnerId: OTHER, Architecture: 'arm64', RootDeviceName: '/dev/sda1', State: 'available' }], 'shared')
  const out = await run(client, { ImageId: theirs })
  t.equal(ec2.instances.get(out.Instances![0]!.InstanceId!)!.rootDeviceName, '/dev/sda1', 'launched with the image\'s root device')
})

t.test('network: without a default VPC, RunInstances needs a subnet (VPCIdNotSpecified), and the instance is in the subnet\'s AZ', async (t) => {
  const { ec2, client } = await setup(t)
  t.match((await client.send(new DescribeAccountAttributesCommand({ AttributeNames: ['default-vpc'] }))).AccountAttributes,
    [{ AttributeName: 'default-vpc', AttributeValues: [{ AttributeValue: /^vpc-/ }] }], 'a default VPC at first')
  ec2.withoutDefaultVpc.add(`${ACCOUNT}/${REGION}`)
  t.match((await client.send(new DescribeAccountAttributesCommand({ AttributeNames: ['default-vpc'] }))).AccountAttributes,
    [{ AttributeName: 'default-vpc', AttributeValues: [{ AttributeValue: 'none' }] }], 'then none')
  await t.rejects(run(client), { name: 'VPCIdNotSpecified', message: 'No default VPC for this user' })
  const subnetId = ec2.addSubnet({ ownerId: ACCOUNT, region: REGION, availabilityZone: 'eu-west-1c' })
  t.match((await client.send(new DescribeSubnetsCommand({ SubnetIds: [subnetId] }))).Subnets, [{ SubnetId: subnetId, AvailabilityZone: 'eu-west-1c', VpcId: /^vpc-/ }])
  const out = await run(client, { SubnetId: subnetId })
  t.match(ec2.instances.get(out.Instances![0]!.InstanceId!), { subnetId, availabilityZone: 'eu-west-1c' }, 'in the subnet, in its AZ')
  await t.rejects(run(client, { SubnetId: 'subnet-0123456789abcdef0' }), { name: 'InvalidSubnetID.NotFound' }, 'an unknown subnet')
})

t.test('network: security groups must exist and be of the instance\'s VPC', async (t) => {
  const { ec2, client } = await setup(t)
  const subnetId = ec2.addSubnet({ ownerId: ACCOUNT, region: REGION, availabilityZone: 'eu-west-1b' })
  const vpcId = ec2.subnets.get(subnetId)!.vpcId
  const mine = ec2.addSecurityGroup({ ownerId: ACCOUNT, region: REGION, vpcId })
  const elsewhere = ec2.addSecurityGroup({ ownerId: ACCOUNT, region: REGION, vpcId: 'vpc-0aaaaaaaaaaaaaaaa' })
  t.match((await client.send(new DescribeSecurityGroupsCommand({ GroupIds: [mine] }))).SecurityGroups, [{ GroupId: mine, VpcId: vpcId }])
  await t.rejects(run(client, { SubnetId: subnetId, SecurityGroupIds: ['sg-0123456789abcdef0'] }), { name: 'InvalidGroup.NotFound' }, 'an unknown group')
  await t.rejects(run(client, { SubnetId: subnetId, SecurityGroupIds: [elsewhere] }), { name: 'InvalidParameter' }, 'a group of another VPC')
  const out = await run(client, { SubnetId: subnetId, SecurityGroupIds: [mine] })
  t.same(ec2.instances.get(out.Instances![0]!.InstanceId!)!.securityGroupIds, [mine], 'launched with it')
})
