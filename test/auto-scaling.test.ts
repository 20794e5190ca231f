// The worker in its Auto Scaling group (agent/daemon/auto-scaling.ts), against the Auto Scaling
// stand-in (test/standin/autoscaling.ts) with the fleet's own worker policy enforced, the IMDS
// stand-in and a real SQS (fauxqs): on scale-in (IMDS's target lifecycle state Terminated) the
// daemon drains, completes the termination lifecycle hook and exits; `ebs-worker health-check`
// reports the instance Unhealthy only when the daemon's health stamp is stale or missing.
import t from 'tap'
import { spawn } from 'node:child_process'
import { stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling'
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { checkHealth, touchHealthStamp } from '../agent/daemon/auto-scaling.ts'
import { cli, CLI, runCli, tempDir, type Teardown, until } from './helpers.ts'
import { BACKUP, FLEET_STACK, fleetWorkerPolicy, REGION } from './controller-world.ts'
import { AutoScalingStandIn } from './standin/autoscaling.ts'
import { AwsWorld } from './standin/iam.ts'
import { startImds } from './standin/imds.ts'

const INSTANCE = { instanceId: 'i-0fedcba9876543210', region: REGION, availabilityZone: `${REGION}a`, accountId: BACKUP }
const GROUP = `${FLEET_STACK}-workers`
const HOOK = 'drain'
const WORKER_KEY = 'AKIAWORKERINSTANCE01'

async function world(t: Teardown) {
  const dir = await tempDir(t, 'asg')
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: REGION, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const imds = await startImds(INSTANCE)
  t.teardown(() => imds.close())
  const aws = new AwsWorld(BACKUP)
  // The worker's credentials carry the fleet's worker-policy.json, as its instance profile does.
  aws.addCredentials(WORKER_KEY, { arn: `arn:aws:sts::${BACKUP}:assumed-role/worker/${INSTANCE.instanceId}`, accountId: BACKUP, policy: fleetWorkerPolicy([]) })
  const asg = await new AutoScalingStandIn(aws).start()
  t.teardown(() => asg.close())
  asg.addGroup({ name: GROUP, accountId: BACKUP, region: REGION, tags: { 'ebs-worker:fleet': FLEET_STACK }, terminatingHooks: [HOOK], instances: [INSTANCE.instanceId] })
  const healthFile = join(dir, 'state/healthy')
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({
    queueUrl, replyQueueUrl, repository: `file://${join(dir, 'repo')}`, waitTimeSeconds: 1, shutdownGraceSeconds: 5,
    imdsEndpoint: imds.endpoint, healthFile, autoScaling: { groupName: GROUP, lifecycleHookName: HOOK, lifecyclePollSeconds: 1 },
  }))
  const env = {
    AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_AUTO_SCALING: asg.endpoint, AWS_REGION: REGION,
    AWS_ACCESS_KEY_ID: WORKER_KEY, AWS_SECRET_ACCESS_KEY: 'secret', EBS_WORKER_METRICS: 'off',
  }
  return { dir, imds, asg, config, healthFile, env }
}

t.test('scale-in: the daemon drains, completes the lifecycle hook and exits by itself', async (t) => {
  const w = await world(t)
  await cli(['init', '--repo', `file://${join(w.dir, 'repo')}`])
  const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', w.config], { env: { ...process.env, ...w.env }, stdio: ['ignore', 'ignore', 'pipe'] })
  t.teardown(() => void daemon.kill('SIGKILL'))
  let log = ''
  daemon.stderr.on('data', (d) => (log += d))
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', (code) => resolve(code)))
  await until(() => log.includes('"msg":"receiving tasks"'), 30_000, 'the daemon to receive')
  await until(() => stat(w.healthFile).then(() => true, () => false), 10_000, 'the health stamp')
  w.imds.setTargetLifecycleState('InService')
  await until(() => w.imds.requests.some((r) => r.path.endsWith('/autoscaling/target-lifecycle-state')), 10_000, 'the daemon to read its target lifecycle state')
  t.equal(w.asg.calls.length, 0, 'nothing done while InService')

  // The group picks this instance: it waits in Terminating:Wait, IMDS says Terminated.
  w.asg.scaleIn(GROUP, INSTANCE.instanceId)
  w.imds.setTargetLifecycleState('Terminated')
  const code = await Promise.race([exited, new Promise<string>((resolve) => setTimeout(() => resolve('still running'), 60_000))])
  t.equal(code, 0, `the daemon ended by itself, successfully (systemd does not restart it): ${log}`)
  t.match(log, /"msg":"scale-in: draining before termination"/)
  t.match(log, /"msg":"scale-in: lifecycle action completed"/)
  t.ok(log.indexOf('"msg":"stopping"') < log.indexOf('lifecycle action completed'), 'drained before completing the hook')
  t.same(w.asg.calls.map((c) => [c.action, c.ok, c.params.AutoScalingGroupName, c.params.LifecycleHookName, c.params.InstanceId, c.params.LifecycleActionResult]),
    [['CompleteLifecycleAction', true, GROUP, HOOK, INSTANCE.instanceId, 'CONTINUE']], 'the hook completed with CONTINUE, allowed by the worker policy')
  t.equal(w.asg.groups.get(GROUP)!.instances.get(INSTANCE.instanceId)!.lifecycleState, 'Terminating:Proceed', 'the instance goes on to terminate')
})

t.test('health-check: reported Unhealthy only when the daemon has not been healthy for --max-age', async (t) => {
  const w = await world(t)
  const env = w.env
  const instance = () => w.asg.groups.get(GROUP)!.instances.get(INSTANCE.instanceId)!

  const never = await runCli(['health-check', '--config', w.config, '--max-age', '300', '--json'], env)
  t.equal(never.code, 0, never.stderr)
  t.match(never.json, { healthy: false, reported: true, ageSeconds: null }, 'no stamp: the daemon never was healthy')
  t.equal(instance().health, 'Unhealthy')
  t.same(w.asg.calls.at(-1)!.params, { Action: 'SetInstanceHealth', Version: '2011-01-01', InstanceId: INSTANCE.instanceId, HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: 'true' },
    'respecting the grace period: a worker still booting is not replaced')

  instance().health = 'Healthy'
  const calls = w.asg.calls.length
  await touchHealthStamp(w.healthFile)
  const fresh = await runCli(['health-check', '--config', w.config, '--max-age', '300', '--json'], env)
  t.match(fresh.json, { healthy: true, reported: false })
  t.equal(w.asg.calls.length, calls, 'a fresh stamp: nothing reported')

  const old = new Date(Date.now() - 600_000)
  await utimes(w.healthFile, old, old)
  const stale = await runCli(['health-check', '--config', w.config, '--max-age', '300', '--json'], env)
  t.match(stale.json, { healthy: false, reported: true })
  t.ok(stale.json!.ageSeconds >= 600, `its age: ${stale.json!.ageSeconds} s`)
  t.equal(instance().health, 'Unhealthy', 'a stale stamp: reported')
})

t.test('the worker policy lets a worker report health only in its own fleet\'s group', async (t) => {
  const w = await world(t)
  const other = 'other-fleet-workers'
  w.asg.addGroup({ name: other, accountId: BACKUP, region: REGION, tags: { 'ebs-worker:fleet': 'other-fleet' }, instances: ['i-0aaaaaaaaaaaaaaaa'] })
  const client = new AutoScalingClient({ endpoint: w.asg.endpoint, region: REGION, credentials: { accessKeyId: WORKER_KEY, secretAccessKey: 'secret' } })
  t.teardown(() => client.destroy())
  await t.rejects(checkHealth({ client, instanceId: 'i-0aaaaaaaaaaaaaaaa', healthFile: join(w.dir, 'none'), maxAgeSeconds: 60 }), { name: 'AccessDenied' })
  t.equal(w.asg.groups.get(other)!.instances.get('i-0aaaaaaaaaaaaaaaa')!.health, 'Healthy', 'another fleet\'s worker is untouched')
  const v = await checkHealth({ client, instanceId: INSTANCE.instanceId, healthFile: join(w.dir, 'none'), maxAgeSeconds: 60 })
  t.equal(v.reported, true, 'its own group: allowed')
})
