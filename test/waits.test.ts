// The waits of agent/aws/waits.ts (used by the worker's Volumes and the controller) against the
// EC2 stand-in with its eventual consistency on: "no such id" right after a create is waited out,
// and only a resource seen and then gone, or never seen in time, ends a wait.
import t from 'tap'
import { CreateVolumeCommand, DeleteVolumeCommand, EC2Client } from '@aws-sdk/client-ec2'
import { join } from 'node:path'
import { Volumes } from '../agent/aws/volumes.ts'
import { waitVolumeState } from '../agent/aws/waits.ts'
import { MiB, tempDir, until } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'

const instance = { instanceId: 'i-0123456789abcdef0', accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1a' }

async function standIn(t: { teardown(fn: () => unknown): void }, visibilityLag: number) {
  const dir = await tempDir(t)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: 4 * MiB, delayMs: 30, visibilityLag }).start()
  t.teardown(() => ec2.close())
  const client = new EC2Client({ endpoint: ec2.endpoint, region: instance.region, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
  t.teardown(() => client.destroy())
  return { ec2, client }
}

t.test('a volume that never becomes visible is taken as rolled back once the bound is over: ACCESS_DENIED', async (t) => {
  const { ec2, client } = await standIn(t, 1000)
  const volumes = new Volumes({ client, identity: { ...instance, instanceType: 'c6i.large' }, stateTimeoutSeconds: 30, visibleWithinSeconds: 1 })
  const started = Date.now()
  await t.rejects(volumes.createEmpty('never-seen', 1), { code: 'ACCESS_DENIED', message: /never became visible within 1 s.*KMS key/ })
  t.ok(Date.now() - started < 10_000, 'said after the bound, not the state timeout')
  t.ok((ec2.missed.values().next().value ?? 0) > 1, 'after asking more than once')
})

t.test('a volume seen and then gone while waited for is VOLUME_NOT_FOUND, at once', async (t) => {
  const { ec2, client } = await standIn(t, 0)
  const v = await client.send(new CreateVolumeCommand({ AvailabilityZone: instance.availabilityZone, Size: 1 }))
  await until(() => ec2.volumes.get(v.VolumeId!)?.state === 'available', 5000, 'the volume')
  // Waiting for in-use (nobody attaches it), then it is deleted.
  const waiting = waitVolumeState(client, v.VolumeId!, 'in-use', { timeoutMs: 60_000, pollMs: 50 })
  await new Promise((r) => setTimeout(r, 200))
  await client.send(new DeleteVolumeCommand({ VolumeId: v.VolumeId! }))
  const started = Date.now()
  await t.rejects(waiting, { code: 'VOLUME_NOT_FOUND', message: /no longer exists/ })
  t.ok(Date.now() - started < 10_000, 'at once, not after the visibility bound')
})
