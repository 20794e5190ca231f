// The volume sweep (agent/aws/volume-sweep.ts) through `ebs-worker sweep-volumes`, a real child
// process, against the EC2 and IMDS stand-ins: task volumes left by a worker that was terminated
// are deleted; those of a live worker, kept ones, attached ones and young ones are not. (The
// daemon's own periodic sweep: test/daemon.test.ts; what IAM lets the worker delete:
// test/iam-policy.test.ts.)
import t from 'tap'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { AttachVolumeCommand, CreateVolumeCommand, EC2Client, TerminateInstancesCommand } from '@aws-sdk/client-ec2'
import { MiB, runCli, tempDir, type Teardown, until } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { startImds } from './standin/imds.ts'

const INSTANCE = { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' }
const HOURS = 3600_000

async function world(t: Teardown) {
  const dir = await tempDir(t)
  const imds = await startImds(INSTANCE)
  t.teardown(() => imds.close())
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance: INSTANCE, dir: join(dir, 'volumes'), roots, bytesPerGiB: MiB, delayMs: 20 }).start()
  t.teardown(() => ec2.close())
  const client = new EC2Client({ endpoint: ec2.endpoint, region: INSTANCE.region, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => client.destroy())
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({
    queueUrl: 'http://localhost:1/q', replyQueueUrl: 'http://localhost:1/r', repository: `file://${join(dir, 'repo')}`, imdsEndpoint: imds.endpoint,
  }))
  const other = () => ec2.addInstance({ accountId: INSTANCE.accountId, region: INSTANCE.region, availabilityZone: INSTANCE.availabilityZone, volumes: [] })
  /** A volume as a worker makes it, `ageMs` old, attached to `attachTo` if given. */
  const volume = async (tags: Record<string, string>, ageMs: number, attachTo?: string): Promise<string> => {
    const v = await client.send(new CreateVolumeCommand({
      AvailabilityZone: INSTANCE.availabilityZone, Size: 1,
      TagSpecifications: [{ ResourceType: 'volume', Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) }],
    }))
    const id = v.VolumeId!
    await until(() => ec2.volumes.get(id)?.state === 'available', 10_000, 'the volume is created')
    ec2.volumes.get(id)!.createTime = new Date(Date.now() - ageMs).toISOString()
    if (attachTo) {
      await client.send(new AttachVolumeCommand({ VolumeId: id, InstanceId: attachTo, Device: '/dev/sdf' }))
      await until(() => ec2.volumes.get(id)?.state === 'in-use', 10_000, 'the volume is attached')
    }
    return id
  }
  const sweep = async (...args: string[]) => {
    const r = await runCli(['sweep-volumes', '--config', config, '--json', ...args], {
      AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_REGION: INSTANCE.region, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test',
    })
    if (r.code !== 0 || !r.json) throw new Error(`sweep-volumes exited ${r.code}: ${r.stderr}`)
    return r.json
  }
  return { ec2, client, other, volume, sweep }
}

const task = (id: string, worker: string, transient: 'true' | 'false' = 'true') =>
  ({ 'ebs-worker:task-id': id, 'ebs-worker:worker': worker, 'ebs-worker:transient': transient })

t.test('sweep-volumes deletes the transient volumes of terminated workers, and nothing else', async (t) => {
  const w = await world(t)
  const gone = await w.other()
  const live = await w.other()
  // A backup's volume, attached to its worker when that worker was terminated (EC2 detaches it).
  const orphan = await w.volume(task('backup-1', gone), 2 * HOURS, gone)
  // A worker EC2 no longer knows at all (terminated long ago).
  const forgotten = await w.volume(task('backup-2', 'i-0fffffffffffffff0'), 2 * HOURS)
  const ofLiveWorker = await w.volume(task('backup-3', live), 2 * HOURS)
  const ofThisWorker = await w.volume(task('backup-4', INSTANCE.instanceId), 2 * HOURS)
  const keptRestore = await w.volume({ ...task('restore-1', gone, 'false'), 'ebs-worker:restored-backup': 'b-1' }, 2 * HOURS)
  const stillAttached = await w.volume(task('backup-5', gone), 2 * HOURS, live)
  const young = await w.volume(task('backup-6', gone), 10 * 60_000)
  const untagged = await w.volume({ 'ebs-worker:task-id': 'old-style' }, 2 * HOURS)
  await w.client.send(new TerminateInstancesCommand({ InstanceIds: [gone] }))
  await until(() => w.ec2.instances.get(gone)!.state === 'terminated' && w.ec2.volumes.get(orphan)!.state === 'available', 10_000, 'the worker is terminated')

  const dry = await w.sweep('--dry-run')
  t.same(dry.deleted.map((v: any) => v.volumeId).sort(), [orphan, forgotten].sort(), 'a dry run names the two orphans')
  t.equal(dry.dryRun, true)
  t.ok([orphan, forgotten].every((id) => w.ec2.volumes.get(id)!.state === 'available'), 'and deletes nothing')

  const out = await w.sweep()
  t.same(out.deleted.map((v: any) => v.volumeId).sort(), [orphan, forgotten].sort(), 'the sweep deletes the two orphans')
  t.match(out.deleted.find((v: any) => v.volumeId === orphan), { taskId: 'backup-1', worker: gone }, 'and says whose they were')
  t.ok([orphan, forgotten].every((id) => w.ec2.volumes.get(id)!.state === 'deleted'), 'they are gone')
  const why = Object.fromEntries(out.kept.map((v: any) => [v.volumeId, v.why]))
  t.match(why[ofLiveWorker], /is running/, 'a live worker\'s volume is kept')
  t.match(why[ofThisWorker], /is running/, 'so is this worker\'s own')
  t.match(why[stillAttached], /in-use/, 'and one still attached')
  t.match(why[young], /too recent/, 'and a young one')
  t.notOk(keptRestore in why || untagged in why, 'kept restore volumes and volumes without the transient tag are not even candidates')
  for (const id of [ofLiveWorker, ofThisWorker, keptRestore, stillAttached, young, untagged]) t.not(w.ec2.volumes.get(id)!.state, 'deleted', `${id} is still there`)

  t.same((await w.sweep()).deleted, [], 'a second sweep finds nothing more')
  // With a margin below the young volume's age (10 minutes, the least allowed), it goes too.
  t.same((await w.sweep('--older-than', '10')).deleted.map((v: any) => v.volumeId), [young], 'a shorter margin takes the young one')
  await t.rejects(w.sweep('--older-than', '5'), /at least 10/, 'a margin under 10 minutes is refused')
})
