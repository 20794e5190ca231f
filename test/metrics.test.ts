// CloudWatch metrics: the EMF documents the daemon writes, parsed back the way CloudWatch Logs
// does (the "Specification: Embedded metric format" rules), must claim exactly the figures of
// the tasks they describe. First the builders alone, then a real daemon (fauxqs, the IMDS
// stand-in, a loop device with an NVMe identity) whose stdout lines are checked against its replies.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateQueueCommand, DeleteMessageCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { attachLoop, cli, CLI, fakeNvme, makeImage, MiB, tempDir, until } from './helpers.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { startImds } from './standin/imds.ts'
import { heartbeatMetrics, maintenanceMetrics, NAMESPACE, taskEndMetrics, taskStartMetrics, volumeSweepMetrics } from '../agent/daemon/metrics.ts'

const UNITS = new Set(['Seconds', 'Microseconds', 'Milliseconds', 'Bytes', 'Kilobytes', 'Megabytes', 'Gigabytes', 'Terabytes', 'Bits',
  'Kilobits', 'Megabits', 'Gigabits', 'Terabits', 'Percent', 'Count', 'Bytes/Second', 'Kilobytes/Second', 'Megabytes/Second',
  'Gigabytes/Second', 'Terabytes/Second', 'Bits/Second', 'Kilobits/Second', 'Megabits/Second', 'Gigabits/Second',
  'Terabits/Second', 'Count/Second', 'None'])

interface Datum { namespace: string; dimensions: Record<string, string>; name: string; unit: string; value: number; timestamp: number }

/** CloudWatch Logs' reading of one log line: the metric data it would extract, or why it would not. */
function extract(line: string): Datum[] {
  const root = JSON.parse(line) as Record<string, any>
  if (typeof root !== 'object' || root === null || Array.isArray(root)) throw new Error('not a JSON object')
  const aws = root._aws
  if (typeof aws !== 'object' || !Number.isInteger(aws.Timestamp) || !Array.isArray(aws.CloudWatchMetrics)) throw new Error('_aws needs Timestamp and CloudWatchMetrics')
  const out: Datum[] = []
  for (const d of aws.CloudWatchMetrics) {
    if (typeof d.Namespace !== 'string' || d.Namespace.length < 1 || d.Namespace.length > 255) throw new Error('bad Namespace')
    if (!Array.isArray(d.Dimensions) || !Array.isArray(d.Metrics) || d.Metrics.length > 100) throw new Error('bad directive')
    for (const set of d.Dimensions) {
      if (!Array.isArray(set) || set.length > 30) throw new Error('bad DimensionSet')
      const dims: Record<string, string> = {}
      for (const key of set) {
        if (typeof root[key] !== 'string') throw new Error(`dimension ${key} must be a string member of the root`)
        dims[key] = root[key]
      }
      for (const m of d.Metrics) {
        if (typeof m.Name !== 'string' || m.Name.length < 1 || m.Name.length > 1024) throw new Error('bad metric Name')
        if (m.Unit !== undefined && !UNITS.has(m.Unit)) throw new Error(`unit ${m.Unit} is not a CloudWatch unit`)
        const v = root[m.Name]
        if (typeof v !== 'number') throw new Error(`metric ${m.Name} has no numeric member`)
        out.push({ namespace: d.Namespace, dimensions: dims, name: m.Name, unit: m.Unit ?? 'None', value: v, timestamp: aws.Timestamp })
      }
    }
  }
  return out
}

const pick = (data: Datum[], name: string, dims: string[]): Datum | undefined =>
  data.find((d) => d.name === name && Object.keys(d.dimensions).sort().join() === [...dims].sort().join())

t.test('a finished backup task: every figure, under each dimension set', async (t) => {
  const doc = taskEndMetrics('prod', 'i-0123456789abcdef0', {
    taskId: 'b-1', type: 'backup', status: 'succeeded', startedAt: '2026-11-23T04:51:20.000Z', finishedAt: '2026-11-23T04:51:30.000Z',
    result: { bytesRead: 1073741824, bytesStored: 383674437 },
  })
  const data = extract(JSON.stringify(doc))
  t.equal(data[0]!.namespace, NAMESPACE)
  t.equal(data[0]!.timestamp, Date.parse('2026-11-23T04:51:30.000Z'), 'timestamped when it finished')
  for (const dims of [['Fleet'], ['Fleet', 'Outcome'], ['Fleet', 'TaskType', 'Outcome'], ['Fleet', 'Outcome', 'ErrorCode']]) {
    t.match(pick(data, 'BytesRead', dims), { value: 1073741824, unit: 'Bytes' }, `BytesRead by ${dims}`)
    t.match(pick(data, 'BytesStored', dims), { value: 383674437, unit: 'Bytes' })
    t.match(pick(data, 'TaskDuration', dims), { value: 10, unit: 'Seconds' })
    t.match(pick(data, 'Throughput', dims), { value: 107374182.4, unit: 'Bytes/Second' })
    t.match(pick(data, 'Tasks', dims), { value: 1, unit: 'Count' })
  }
  t.same(pick(data, 'Tasks', ['Fleet', 'TaskType', 'Outcome'])!.dimensions, { Fleet: 'prod', TaskType: 'backup', Outcome: 'succeeded' })
  t.same(pick(data, 'Tasks', ['Fleet', 'Outcome', 'ErrorCode'])!.dimensions, { Fleet: 'prod', Outcome: 'succeeded', ErrorCode: 'none' })
  t.same(pick(data, 'Tasks', ['Fleet', 'Outcome'])!.dimensions, { Fleet: 'prod', Outcome: 'succeeded' }, 'by outcome alone: the failure-rate alarm')
  t.equal(doc.taskId, 'b-1', 'the task id rides along for Logs Insights, not as a dimension')
})

t.test('failures by error code; a reused backup moved nothing; restores count bytes written', async (t) => {
  const failed = extract(JSON.stringify(taskEndMetrics('default', 'i-1', {
    taskId: 'x', type: 'read', status: 'failed', errorCode: 'DEVICE_NOT_FOUND', startedAt: '2026-11-23T00:00:00.000Z', finishedAt: '2026-11-23T00:02:00.000Z',
  })))
  t.same(pick(failed, 'Tasks', ['Fleet', 'Outcome', 'ErrorCode'])!.dimensions, { Fleet: 'default', Outcome: 'failed', ErrorCode: 'DEVICE_NOT_FOUND' })
  t.equal(pick(failed, 'BytesRead', ['Fleet'])!.value, 0)
  const reused = extract(JSON.stringify(taskEndMetrics('default', 'i-1', {
    taskId: 'x', type: 'read', status: 'succeeded', startedAt: '2026-11-23T00:00:00.000Z', finishedAt: '2026-11-23T00:00:01.000Z',
    result: { reused: true, bytesRead: 5000, bytesStored: 4000 },
  })))
  t.equal(pick(reused, 'BytesRead', ['Fleet'])!.value, 0, 'the earlier attempt already counted its bytes')
  const restore = extract(JSON.stringify(taskEndMetrics('default', 'i-1', {
    taskId: 'r', type: 'restore', status: 'succeeded', startedAt: '2026-11-23T00:00:00.000Z', finishedAt: '2026-11-23T00:00:04.000Z',
    result: { bytesWritten: 4000 },
  })))
  t.equal(pick(restore, 'BytesWritten', ['Fleet'])!.value, 4000)
  t.equal(pick(restore, 'Throughput', ['Fleet'])!.value, 1000)
})

t.test('queue wait and heartbeat', async (t) => {
  const start = extract(JSON.stringify(taskStartMetrics('f', 'i-1', { messageId: 'm', body: '', receiveCount: 2, continuation: 0, sentAt: 1_000_000 }, 1_030_500)))
  t.match(pick(start, 'QueueWait', ['Fleet']), { value: 30.5, unit: 'Seconds', timestamp: 1_030_500 })
  t.match(pick(start, 'TasksStarted', ['Fleet']), { value: 1, unit: 'Count' })
  const unknown = extract(JSON.stringify(taskStartMetrics('f', 'i-1', { messageId: 'm', body: '', receiveCount: 1, continuation: 0 }, 1_030_500)))
  t.equal(pick(unknown, 'QueueWait', ['Fleet']), undefined, 'no SentTimestamp, no QueueWait')
  const beat = extract(JSON.stringify(heartbeatMetrics('f', 'i-1', 3, 5000)))
  t.match(pick(beat, 'Heartbeat', ['Fleet', 'InstanceId']), { value: 1, dimensions: { Fleet: 'f', InstanceId: 'i-1' } })
  t.match(pick(beat, 'TasksRunning', ['Fleet']), { value: 3, unit: 'Count' })
  t.throws(() => extract('{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["D"]],"Metrics":[{"Name":"M"}]}]},"M":1}'),
    /dimension D/, 'the parser can fail: a dimension without a value')
})

t.test('a volume sweep: the orphans it deleted and the deletions that failed', async (t) => {
  const data = extract(JSON.stringify(volumeSweepMetrics('f', 'i-1', { deleted: 2, failed: 1, kept: 5 }, 7000)))
  t.match(pick(data, 'OrphanVolumesDeleted', ['Fleet']), { value: 2, unit: 'Count', dimensions: { Fleet: 'f' }, timestamp: 7000 })
  t.match(pick(data, 'OrphanVolumeDeletesFailed', ['Fleet']), { value: 1, unit: 'Count' })
  t.equal(data.length, 2, 'nothing else (the volumes kept are a property, not a metric)')
})

t.test('maintenance: a prune\'s reclaimed bytes, packs and duration; a check\'s problems; nothing for dry runs and failures', async (t) => {
  const times = { startedAt: '2026-11-23T05:00:00.000Z', finishedAt: '2026-11-23T05:20:00.000Z' }
  const pruned = {
    repository: 's3://bucket/backups', dryRun: false, forget: { forgotten: 12 },
    packs: { total: 900, kept: 800, deleted: 100, repacked: 7, left: 0 }, bytes: { total: 1e10, live: 8e9, reclaimed: 1_600_000_000, repacked: 5e7, written: 5e7 }, durationMs: 1_150_500,
  }
  const doc = maintenanceMetrics('prod', 'i-1', { taskId: 'p', type: 'prune', status: 'succeeded', ...times, result: pruned })!
  const data = extract(JSON.stringify(doc))
  t.match(pick(data, 'PruneBytesReclaimed', ['Fleet']), { value: 1_600_000_000, unit: 'Bytes', dimensions: { Fleet: 'prod' }, timestamp: Date.parse(times.finishedAt) })
  t.match(pick(data, 'PrunePacksDeleted', ['Fleet']), { value: 100, unit: 'Count' })
  t.match(pick(data, 'PrunePacksRepacked', ['Fleet']), { value: 7, unit: 'Count' })
  t.match(pick(data, 'PruneBackupsForgotten', ['Fleet']), { value: 12, unit: 'Count' })
  t.match(pick(data, 'PruneDuration', ['Fleet']), { value: 1150.5, unit: 'Seconds' }, 'prune\'s own duration')
  t.equal(doc.repository, 's3://bucket/backups', 'the repository rides along')
  const noForget = extract(JSON.stringify(maintenanceMetrics('prod', 'i-1', { taskId: 'p', type: 'prune', status: 'succeeded', ...times, result: { ...pruned, forget: undefined } })))
  t.equal(pick(noForget, 'PruneBackupsForgotten', ['Fleet'])!.value, 0, 'no policy, none forgotten')
  const negative = extract(JSON.stringify(maintenanceMetrics('prod', 'i-1', { taskId: 'p', type: 'prune', status: 'succeeded', ...times, result: { ...pruned, bytes: { reclaimed: -5 } } })))
  t.equal(pick(negative, 'PruneBytesReclaimed', ['Fleet'])!.value, 0, 'repacking that wrote more than it freed reclaims 0, not less')
  t.equal(maintenanceMetrics('prod', 'i-1', { taskId: 'p', type: 'prune', status: 'succeeded', ...times, result: { ...pruned, dryRun: true } }), null, 'a dry run reclaims nothing: no metrics')
  t.equal(maintenanceMetrics('prod', 'i-1', { taskId: 'p', type: 'prune', status: 'failed', errorCode: 'REPO_LOCKED', ...times }), null, 'a failure: Tasks counts it')
  const damaged = extract(JSON.stringify(maintenanceMetrics('prod', 'i-1', { taskId: 'c', type: 'check', status: 'succeeded', ...times, result: { healthy: false, damage: 3, info: 9, durationMs: 2000 } })))
  t.match(pick(damaged, 'CheckProblems', ['Fleet']), { value: 3, unit: 'Count' }, 'CheckProblems counts damage, not information')
  t.match(pick(damaged, 'CheckDuration', ['Fleet']), { value: 2, unit: 'Seconds' })
  const healthy = extract(JSON.stringify(maintenanceMetrics('prod', 'i-1', { taskId: 'c', type: 'check', status: 'succeeded', ...times, result: { healthy: true, damage: 0, info: 2 } })))
  t.equal(pick(healthy, 'CheckProblems', ['Fleet'])!.value, 0, 'a healthy check sends 0: the alarm gets a datapoint')
  t.equal(maintenanceMetrics('prod', 'i-1', { taskId: 'r', type: 'read', status: 'succeeded', ...times, result: { bytesRead: 1 } }), null, 'other tasks: none')
})

t.test('a real daemon writes EMF lines that match its replies', async (t) => {
  const dir = await tempDir(t)
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const instance = { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' }
  const imds = await startImds(instance)
  t.teardown(() => imds.close())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  await mkdir(roots.byIdDir, { recursive: true })
  const image = join(dir, 'volume.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 4 * MiB }, { kind: 'text', offset: 9 * MiB, length: 2 * MiB }])
  await fakeNvme(roots, 'nvme1n1', attachLoop(t, image), 'vol0123456789abcdef0', 'Amazon Elastic Block Store', 16 * MiB)
  // EC2 knows the volume as attached here (a read checks that first); its device is the loop device above.
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots }).start()
  t.teardown(() => ec2.close())
  await ec2.occupyDevice('/dev/sdf', 'vol-0123456789abcdef0')
  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({
    queueUrl, replyQueueUrl, repository: repo, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30, shutdownGraceSeconds: 5,
    deviceTimeoutSeconds: 1, deviceRoots: roots, imdsEndpoint: imds.endpoint,
  }))
  const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
    env: { ...process.env, AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', EBS_WORKER_FLEET: 'test-fleet' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  daemon.stdout.on('data', (d) => (stdout += d))
  daemon.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => daemon.on('exit', resolve))
  t.teardown(() => {
    daemon.kill('SIGKILL')
  })

  for (const body of [
    { version: 1, type: 'read', taskId: 'read-ok', volumeId: 'vol-0123456789abcdef0' },
    { version: 1, type: 'read', taskId: 'read-missing', volumeId: 'vol-0000000000000000f' },
    { version: 1, type: 'format-disk', taskId: 'bad-type' },
  ]) await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(body) }))

  const replies = new Map<string, Record<string, any>>()
  await until(async () => {
    const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: replyQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10 }))
    for (const m of out.Messages ?? []) {
      const r = JSON.parse(m.Body!)
      replies.set(r.taskId, r)
      await sqs.send(new DeleteMessageCommand({ QueueUrl: replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
    }
    return replies.size === 3
  }, 60_000, `three replies (daemon log: ${stderr})`)
  daemon.kill('SIGTERM')
  await exited

  const lines = stdout.trim().split('\n')
  const docs = lines.map((l) => ({ raw: JSON.parse(l) as Record<string, any>, data: extract(l) }))
  t.ok(docs.length >= 7, `every stdout line is an EMF document (${docs.length})`)
  const ended = (taskId: string) => docs.find((d) => d.raw.taskId === taskId)!
  const ok = replies.get('read-ok')!
  t.equal(ok.status, 'succeeded', stderr)
  const okData = ended('read-ok').data
  const dims = ['Fleet', 'TaskType', 'Outcome']
  t.match(pick(okData, 'BytesRead', dims), { value: ok.result.bytesRead, dimensions: { Fleet: 'test-fleet', TaskType: 'read', Outcome: 'succeeded' } }, 'bytes read as replied')
  t.equal(pick(okData, 'BytesStored', dims)!.value, ok.result.bytesStored, 'bytes stored as replied')
  t.ok(ok.result.bytesStored > 0, 'something was stored')
  const seconds = (Date.parse(ok.finishedAt) - Date.parse(ok.startedAt)) / 1000
  t.equal(pick(okData, 'TaskDuration', dims)!.value, seconds, 'duration from the reply\'s own times')
  t.equal(pick(okData, 'Throughput', dims)!.value, seconds > 0 ? ok.result.bytesRead / seconds : 0)
  t.equal(ended('read-ok').raw.instanceId, instance.instanceId, 'the worker is named')

  const missing = replies.get('read-missing')!
  t.match(missing, { status: 'failed', error: { code: 'VOLUME_NOT_FOUND' } })
  t.same(pick(ended('read-missing').data, 'Tasks', ['Fleet', 'Outcome', 'ErrorCode'])!.dimensions,
    { Fleet: 'test-fleet', Outcome: 'failed', ErrorCode: 'VOLUME_NOT_FOUND' }, 'failures counted by error code')
  t.same(pick(ended('bad-type').data, 'Tasks', ['Fleet', 'Outcome', 'ErrorCode'])!.dimensions,
    { Fleet: 'test-fleet', Outcome: 'rejected', ErrorCode: 'UNKNOWN_TYPE' }, 'rejections too')

  const starts = docs.filter((d) => pick(d.data, 'TasksStarted', ['Fleet']))
  t.equal(starts.length, 3, 'one start per message')
  t.ok(starts.every((d) => (pick(d.data, 'QueueWait', ['Fleet'])?.value ?? -1) >= 0), 'queue wait from SQS SentTimestamp')
  const beat = docs.find((d) => pick(d.data, 'Heartbeat', ['Fleet', 'InstanceId']))
  t.same(beat && pick(beat.data, 'Heartbeat', ['Fleet', 'InstanceId'])!.dimensions, { Fleet: 'test-fleet', InstanceId: instance.instanceId }, 'a heartbeat at start')
})
