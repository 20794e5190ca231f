// The EC2 stand-in's rules for launching an instance in a real account (test/standin/ec2.ts),
// driven by the real @aws-sdk/client-ec2: tags EC2 refuses.
import t from 'tap'
import { CreateTagsCommand, CreateVolumeCommand, EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2'
import { join } from 'node:path'
import { MiB, tempDir } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'

const ACCOUNT = '111122223333'
const REGION = 'eu-west-1'
const instance = { instanceId: 'i-0123456789abcdef0', accountId: ACCOUNT, region: REGION, availabilityZone: 'eu-west-1a' }

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = await tempDir(t)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: MiB, delayMs: 20 }).start()
  t.teardown(() => ec2.close())
  const client = new EC2Client({ endpoint: ec2.endpoint, region: REGION, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
  t.teardown(() => client.destroy())
  return { ec2, client }
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
