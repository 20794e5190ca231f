// The daemon as a real child process, end to end: tasks on a real SQS (fauxqs), identity from
// the IMDS stand-in, a volume whose device is found by NVMe serial (a loop device in a device
// tree of the test's own), results on the reply queue.
import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { copyFile, mkdir, open, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { CreateVolumeCommand, EC2Client } from '@aws-sdk/client-ec2'
import { devNumber } from '../agent/device/block-device.ts'
import { checkpointObjectName } from '../agent/pipeline/checkpoint.ts'
import { PACKS } from '../agent/repo/layout.ts'
import { existsSync, statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { CreateQueueCommand, DeleteMessageCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { attachLoop, cli, CLI, fakeNvme, logLines, logWhere, makeImage, MiB, ROOT, sha256File, tempDir, type Teardown, until } from './helpers.ts'
import { VERSION } from '../agent/core/version.ts'
import { EbsStandIn } from './standin/ebs.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { KmsStandIn } from './standin/kms.ts'
import { startImds } from './standin/imds.ts'

const VOL = 'vol-0123456789abcdef0'

const INSTANCE = { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' }

/**
 * Everything around a daemon: fauxqs with a task and a reply queue, the IMDS and EC2 stand-ins,
 * a device tree, a file:// repository, and the daemon itself as a child process.
 */
interface WorldOptions {
  /** Give the task queue a dead-letter queue after this many receives. */
  maxReceiveCount?: number
  /** How attached volumes appear in the device tree (the EC2 stand-in's hook). */
  exposeDevice?: ConstructorParameters<typeof Ec2StandIn>[0]['exposeDevice']
  /** Extra environment for the daemon (undefined: not set). */
  env?: Record<string, string | undefined>
  /** Daemon configuration that differs from this world's. */
  config?: Record<string, unknown>
  /** Requests that miss an id just created (the EC2 stand-in's eventual consistency; default 2). */
  visibilityLag?: number
  /** Runs before the daemon starts (EC2's state as the daemon will find it). */
  beforeStart?: (ec2: Ec2StandIn) => Promise<void>
}

async function world(t: Teardown, options: WorldOptions = {}) {
  const dir = await tempDir(t)
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const imds = await startImds(INSTANCE)
  t.teardown(() => imds.close())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  let redrive: Record<string, string> = {}
  let dlqUrl = ''
  if (options.maxReceiveCount) {
    dlqUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks-dlq' }))).QueueUrl!
    const arn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: dlqUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!
    redrive = { RedrivePolicy: JSON.stringify({ deadLetterTargetArn: arn, maxReceiveCount: options.maxReceiveCount }) }
  }
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks', Attributes: redrive }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  await mkdir(roots.byIdDir, { recursive: true })
  // This Region's default EBS key is the AWS managed aws/ebs key; a customer key exists too.
  const kms = await new KmsStandIn([
    { keyId: 'aws-ebs-0000', accountId: INSTANCE.accountId, region: INSTANCE.region, keyManager: 'AWS', aliases: ['alias/aws/ebs'] },
    { keyId: 'cmk-restore-1', accountId: INSTANCE.accountId, region: INSTANCE.region, keyManager: 'CUSTOMER' },
  ]).start()
  t.teardown(() => kms.close())
  // EC2's eventual consistency is on: ids just created are missed by the next requests (standin/ec2.ts).
  const ec2 = await new Ec2StandIn({
    instance: INSTANCE, dir: join(dir, 'volumes'), roots, bytesPerGiB: 8 * MiB, delayMs: 50, visibilityLag: options.visibilityLag ?? 2,
    isAwsManagedKey: (ref) => kms.resolve(ref)?.keyManager === 'AWS',
    ...(options.exposeDevice ? { exposeDevice: options.exposeDevice } : {}),
  }).start()
  t.teardown(() => ec2.close())
  const ebsCalls: Array<{ api: string; params: Record<string, string> }> = []
  const ebs = await new EbsStandIn({ ec2, onCall: (api, params) => ebsCalls.push({ api, params }) }).start()
  t.teardown(() => ebs.close())

  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({
    queueUrl, replyQueueUrl, repository: repo, concurrency: 2, waitTimeSeconds: 1, visibilityTimeoutSeconds: 5,
    shutdownGraceSeconds: 5, deviceTimeoutSeconds: 15, deviceRoots: roots, imdsEndpoint: imds.endpoint, ...options.config,
  }))
  const state = { log: '', out: '' }
  /** Starts a daemon process on this world's config; killed when the test ends. */
  const spawnDaemon = () => {
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
      env: {
        ...process.env, AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_ENDPOINT_URL_KMS: kms.endpoint, AWS_ENDPOINT_URL_EBS: ebs.endpoint,
        AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', ...options.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    daemon.stderr.on('data', (d) => (state.log += d))
    daemon.stdout.on('data', (d) => (state.out += d)) // EMF metric lines
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => daemon.on('exit', (code, signal) => resolve({ code, signal })))
    t.teardown(() => {
      daemon.kill('SIGKILL')
    })
    return { daemon, exited }
  }
  await options.beforeStart?.(ec2)
  const { daemon, exited } = spawnDaemon()

  const replies = new Map<string, Record<string, any>>()
  const send = async (body: string): Promise<void> => {
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }))
  }
  /** Polls the reply queue until a reply satisfies `match`. */
  const replyWhere = async (what: string, match: (r: Record<string, any>) => boolean): Promise<Record<string, any>> => {
    const deadline = Date.now() + 30_000
    for (;;) {
      const found = [...replies.values()].find(match)
      if (found) return found
      if (Date.now() > deadline) throw new Error(`no reply for ${what}; daemon log:\n${state.log}`)
      const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: replyQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10 }))
      for (const m of out.Messages ?? []) {
        const r = JSON.parse(m.Body!)
        replies.set(r.taskId, r)
        await sqs.send(new DeleteMessageCommand({ QueueUrl: replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
      }
    }
  }
  const reply = (taskId: string) => replyWhere(taskId, (r) => r.taskId === taskId)
  return { dir, sqs, queueUrl, dlqUrl, roots, ec2, ebs, ebsCalls, repo, daemon, exited, spawnDaemon, state, replies, send, replyWhere, reply }
}

/** A loop device with an NVMe identity in the world's device tree: the "attached volume". */
async function attachedVolume(t: Teardown, w: Awaited<ReturnType<typeof world>>): Promise<string> {
  const image = join(w.dir, 'volume.img')
  await makeImage(image, 24 * MiB, [{ kind: 'random', offset: 2 * MiB, length: 5 * MiB }, { kind: 'text', offset: 12 * MiB, length: 3 * MiB }])
  const loop = attachLoop(t, image)
  await fakeNvme(w.roots, 'nvme1n1', loop, 'vol0123456789abcdef0', 'Amazon Elastic Block Store', 24 * MiB)
  // EC2 knows it as attached to this worker (a read checks that first).
  await w.ec2.occupyDevice('/dev/sdf', VOL)
  return loop
}

const READ_TASK = { version: 1, type: 'read', taskId: 'read-1', volumeId: VOL, tags: { instance: 'i-0abc' } }

t.test('a read task backs up the attached volume, found by its NVMe serial', async (t) => {
  const w = await world(t)
  const loop = await attachedVolume(t, w)
  await w.send(JSON.stringify(READ_TASK))
  const r1 = await w.reply('read-1')
  t.equal(r1.status, 'succeeded', 'read succeeded')
  t.equal(r1.worker, 'i-0123456789abcdef0', 'the reply names the worker, from IMDS')
  t.equal(r1.result.device, join(w.roots.devDir, 'nvme1n1'), 'the device was found by the volume id')
  const restored = join(w.dir, 'restored.img')
  await cli(['restore', '--repo', w.repo, '--backup', r1.result.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(loop), 'the backup holds the volume, byte for byte')
})

t.test('a redelivered read task reports the backup it made, and makes no other', async (t) => {
  const w = await world(t)
  await attachedVolume(t, w)
  await w.send(JSON.stringify(READ_TASK))
  const r1 = await w.reply('read-1')
  // The same task again, as SQS may redeliver it: the earlier backup is found, not repeated.
  w.replies.delete('read-1')
  await w.send(JSON.stringify(READ_TASK))
  const r2 = await w.reply('read-1')
  t.equal(r2.result.backupId, r1.result.backupId, 'a redelivered task reports the same backup')
  t.equal(r2.result.reused, true, 'and says it reused it')
  t.equal((await cli(['list', '--repo', w.repo])).backups.length, 1, 'one backup in the repository')
})

t.test('messages that are not valid tasks are rejected with a reply, and every message is settled', async (t) => {
  const { sqs, queueUrl, send, replyWhere, reply } = await world(t)
  await send('{ not json')
  await send(JSON.stringify({ version: 1, type: 'format-disk', taskId: 'bad-type' }))
  await send(JSON.stringify({ version: 1, type: 'read', taskId: 'bad-field', volumeId: VOL, force: true }))
  t.match(await reply('bad-type'), { status: 'rejected', error: { code: 'UNKNOWN_TYPE', retryable: false } }, 'unknown type rejected')
  t.match(await reply('bad-field'), { status: 'rejected', error: { code: 'INVALID_TASK', message: /force/ } }, 'extra field rejected')
  const junk = await replyWhere('the body that is not JSON', (r) => r.error?.code === 'INVALID_JSON')
  t.equal(junk.status, 'rejected', 'a body that is not JSON is rejected, with a reply')
  // The daemon replies first and deletes the task message after (a crash between the two only
  // repeats an idempotent reply), so the last deletion may trail the last reply a little.
  const inQueue = async (): Promise<number> => {
    const attrs = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['All'] }))).Attributes!
    return Number(attrs.ApproximateNumberOfMessages) + Number(attrs.ApproximateNumberOfMessagesNotVisible)
  }
  await until(async () => (await inQueue()) === 0, 10_000, 'the task queue to drain').catch(() => {})
  t.equal(await inQueue(), 0, 'every task message was settled and deleted')
})

t.test('a read task for a volume attached here whose device never appears fails clearly', async (t) => {
  // A short device timeout: the other cases keep a long one, so a loaded machine does not fail them.
  const { send, reply, ec2 } = await world(t, { config: { deviceTimeoutSeconds: 1 } })
  await ec2.occupyDevice('/dev/sdg', 'vol-0000000000000000f')
  await send(JSON.stringify({ version: 1, type: 'read', taskId: 'no-device', volumeId: 'vol-0000000000000000f' }))
  t.match(await reply('no-device'), { status: 'failed', error: { code: 'DEVICE_NOT_FOUND', retryable: false } }, 'a device that never appears fails clearly')
})

t.test('a read task for a volume that does not exist, or is not attached here, fails at once with VOLUME_NOT_FOUND', async (t) => {
  // The device timeout is long: failing at once means EC2 was asked, not the device tree waited on.
  const w = await world(t, { config: { deviceTimeoutSeconds: 3600 } })
  await makeImage(join(w.dir, 'other.img'), MiB, [])
  const elsewhere = await w.ec2.addInstance({ accountId: INSTANCE.accountId, region: INSTANCE.region, availabilityZone: INSTANCE.availabilityZone, instanceType: 'm6i.large', volumes: [
    { device: '/dev/xvda', image: join(w.dir, 'other.img'), sizeGiB: 1 }] })
  const theirs = w.ec2.attachedTo(elsewhere)[0]!.volumeId
  await w.send(JSON.stringify({ version: 1, type: 'read', taskId: 'missing', volumeId: 'vol-0000000000000000f' }))
  await w.send(JSON.stringify({ version: 1, type: 'read', taskId: 'not-here', volumeId: theirs }))
  t.match(await w.reply('missing'), { status: 'failed', error: { code: 'VOLUME_NOT_FOUND', retryable: false, message: /does not exist/ } }, 'a volume that does not exist')
  const r = await w.reply('not-here')
  t.match(r, { status: 'failed', error: { code: 'VOLUME_NOT_FOUND', retryable: false, message: /not attached to this worker/ } }, 'a volume attached to another instance')
  t.match(r.error.message, elsewhere, 'naming where it is')
})

t.test('a task may name only the repositories the configuration allows; a malformed one is refused at once', async (t) => {
  // With a dead-letter queue: a transient failure would go unanswered until its fifth attempt.
  const w = await world(t, { maxReceiveCount: 5 })
  const image = join(w.dir, 'snapshot.img')
  await makeImage(image, 4 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 1 })
  const elsewhere = `file://${join(w.dir, 'elsewhere')}`
  await cli(['init', '--repo', elsewhere])
  const cases: Array<[string, string, string, RegExp]> = [
    ['etc', 'file:///etc', 'REPOSITORY_NOT_ALLOWED', /file:\/\/\/etc is not one this worker's configuration allows/],
    ['other-repo', elsewhere, 'REPOSITORY_NOT_ALLOWED', /allowedRepositories/],
    ['dot-dot', `${w.repo}/../elsewhere`, 'REPOSITORY_NOT_ALLOWED', /not one/],
    ['bad-bucket', 's3://../x', 'BAD_INPUT', /not a bucket name/],
    ['upper-bucket', 's3://My_Bucket/x', 'BAD_INPUT', /not a bucket name/],
    ['other-bucket', 's3://some-bucket/backups', 'REPOSITORY_NOT_ALLOWED', /not one/],
  ]
  for (const [taskId, repository] of cases) await w.send(JSON.stringify({ version: 1, type: 'backup', taskId, snapshotId, repository }))
  for (const [taskId, repository, code, message] of cases) {
    t.match(await w.reply(taskId), { status: 'failed', error: { code, retryable: false, message, context: { repository } } }, `${repository}: ${code}, on its first attempt`)
  }
  t.equal(w.ec2.volumes.size, 0, 'before any volume was made')
  t.equal((await cli(['list', '--repo', elsewhere])).backups.length, 0, 'nothing was written to the other repository')
  // The configured repository, named: allowed.
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'named', snapshotId, repository: w.repo }))
  t.match(await w.reply('named'), { status: 'succeeded' }, 'the configured repository, named by the task, is allowed')
})

t.test('allowedRepositories: a list of repositories, or of places under which any repository is allowed', async (t) => {
  const dir = await tempDir(t)
  const under = `file://${join(dir, 'repos')}`
  const w = await world(t, { config: { allowedRepositories: [`${under}/*`] } })
  await cli(['init', '--repo', `${under}/team-a`])
  const image = join(w.dir, 'snapshot.img')
  await makeImage(image, 4 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 1 })
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'team-a', snapshotId, repository: `${under}/team-a` }))
  t.match(await w.reply('team-a'), { status: 'succeeded' }, 'a repository under an allowed place')
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'sibling', snapshotId, repository: `${under}-evil/x` }))
  t.match(await w.reply('sibling'), { status: 'failed', error: { code: 'REPOSITORY_NOT_ALLOWED' } }, 'a directory whose name only begins the same is not under it')
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'configured', snapshotId, repository: w.repo }))
  t.match(await w.reply('configured'), { status: 'succeeded' }, 'the configured repository is always allowed')
})

t.test('SIGTERM stops the daemon cleanly, and it ends at once when nothing runs', async (t) => {
  // A grace longer than tap's timeout: were the grace timer left running once the (no) handlers
  // finished, the process would live on for it and the test would time out.
  const { daemon, exited, state, send, reply } = await world(t, { config: { shutdownGraceSeconds: 900 } })
  await send(JSON.stringify({ version: 1, type: 'format-disk', taskId: 'up' }))
  await reply('up') // the daemon is up and polling
  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0, 'SIGTERM: the daemon stops cleanly')
  t.match(state.log, /"msg":"stopped"/, 'and says so')
  t.match(logWhere(state.log, { msg: 'started' })[0], { level: 'info', logLevel: 'info' }, 'at the default level, info')
  t.same(logWhere(state.log, { level: 'debug' }), [], 'which leaves debug lines out')
})

/** A Logs Insights query of docs/OPERATIONS.md, as far as the test reads it: its filters and the fields it names. */
interface InsightsQuery {
  text: string
  filters: Array<(line: Record<string, unknown>) => boolean>
  fields: string[]
}

/** A field of a log line as CloudWatch Logs flattens JSON: `error.context.service`. */
const flat = (line: Record<string, unknown>, path: string): unknown =>
  path.split('.').reduce<unknown>((v, k) => (v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), line)

/**
 * The documented queries (the code block after "CloudWatch Logs Insights" in docs/OPERATIONS.md),
 * read minimally: `filter` clauses of `a = "v"`, `a like /re/`, `ispresent(a)` joined by `and`; the
 * fields of `fields` (less `as` names), `stats … by`, and the filters. Anything else is refused,
 * so a query the test cannot read fails rather than passes.
 */
async function documentedQueries(): Promise<InsightsQuery[]> {
  const doc = await readFile(join(ROOT, 'docs/OPERATIONS.md'), 'utf8')
  const block = /\*\*CloudWatch Logs Insights\*\*[\s\S]*?```\n([\s\S]*?)```/.exec(doc)
  if (!block) throw new Error('no Logs Insights block in docs/OPERATIONS.md')
  return block[1]!.split('\n').filter((l) => l.trim()).map((text) => {
    const q: InsightsQuery = { text, filters: [], fields: [] }
    for (const command of text.split(' | ').map((c) => c.trim())) {
      const [verb, ...rest] = command.split(' ')
      const args = rest.join(' ')
      if (verb === 'fields') q.fields.push(...args.split(',').map((f) => f.trim().split(' as ')[0]!.trim()))
      else if (verb === 'stats') q.fields.push(...(/ by (.*)$/.exec(args)?.[1] ?? '').split(',').map((f) => f.trim()).filter(Boolean))
      else if (verb === 'filter') {
        for (const clause of args.split(' and ')) {
          let m
          if ((m = /^([\w.@]+) = ["'](.*)["']$/.exec(clause))) {
            const [, field, value] = m
            q.fields.push(field!)
            q.filters.push((l) => flat(l, field!) === value)
          } else if ((m = /^([\w.@]+) like \/(.*)\/$/.exec(clause))) {
            const [, field, re] = m
            q.fields.push(field!)
            q.filters.push((l) => new RegExp(re!).test(String(flat(l, field!) ?? '')))
          } else if ((m = /^ispresent\(([\w.@]+)\)$/.exec(clause))) {
            const [, field] = m
            q.fields.push(field!)
            q.filters.push((l) => flat(l, field!) !== undefined)
          } else throw new Error(`a filter the test cannot read: ${clause} (in ${text})`)
        }
      } else if (verb !== 'sort' && verb !== 'limit') throw new Error(`a command the test cannot read: ${command}`)
    }
    q.fields = [...new Set(q.fields.filter((f) => !f.startsWith('@') && !f.includes('(')))]
    return q
  })
}

t.test('the log: version, fleet, instance on every line, a child per task; a fallback is a warning, a failure an error with its AWS request id; the documented queries find them', async (t) => {
  const w = await world(t, { env: { EBS_WORKER_FLEET: 'blue', EBS_WORKER_LOG_LEVEL: 'debug' } })
  const image = join(w.dir, 'v.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 2 * MiB }])
  const s1 = w.ec2.addSnapshot({ image, sizeGiB: 2, volumeId: 'vol-0feedfeedfeedfeed' })
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'full', snapshotId: s1 }))
  const full = await w.reply('full')
  t.equal(full.status, 'succeeded', `a full backup ${JSON.stringify(full.error ?? '')}`)
  // A snapshot of another lineage, with the first as its parent: EBS refuses to compare them (400,
  // with its x-amzn-RequestId), and the backup reads the whole volume instead.
  const s2 = w.ec2.addSnapshot({ image, sizeGiB: 2 })
  const fallbackTask = 'policy-42/i-0abc/xvdf' // the id docs/OPERATIONS.md's first query follows
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: fallbackTask, snapshotId: s2, parentBackupId: full.result.backupId, parentSnapshotId: s1 }))
  t.match(await w.reply(fallbackTask), { status: 'succeeded', result: { blockListing: 'none' } }, 'the backup EBS could not help with succeeds')
  await w.send(JSON.stringify({ version: 1, type: 'attach', taskId: 'att-missing', snapshotId: 'snap-00000000000000000' }))
  t.match(await w.reply('att-missing'), { status: 'failed', error: { code: 'SNAPSHOT_NOT_FOUND' } })
  w.daemon.kill('SIGTERM')
  t.equal((await w.exited).code, 0)

  const lines = logLines(w.state.log)
  t.ok(lines.length > 10, `the daemon logged (${lines.length} lines)`)
  t.same(lines.filter((l) => l.version !== VERSION || l.fleet !== 'blue' || l.instanceId !== INSTANCE.instanceId), [], 'every line has the version, the fleet and the instance')
  t.same(lines.filter((l) => typeof l.time !== 'string' || !['debug', 'info', 'warn', 'error'].includes(l.level) || typeof l.msg !== 'string'), [], 'a time, a level word and a msg')
  t.ok(logWhere(w.state.log, { level: 'debug', msg: 'message received' }).length >= 3, 'EBS_WORKER_LOG_LEVEL=debug: the debug lines too')
  t.match(logWhere(w.state.log, { msg: 'started' })[0], { logLevel: 'debug' })
  for (const taskId of ['full', fallbackTask, 'att-missing']) {
    const own = lines.filter((l) => l.taskId === taskId)
    t.ok(own.length >= 2 && own.every((l) => typeof l.taskType === 'string'), `${taskId}: its lines (${own.length}) carry taskId and taskType`)
  }

  const fallback = logWhere(w.state.log, { msg: 'no block list from EBS; reading the whole volume' })
  t.equal(fallback.length, 1, 'the fallback is logged once')
  t.match(fallback[0], {
    level: 'warn', taskId: fallbackTask, taskType: 'backup', api: 'ListChangedBlocks',
    error: { code: 'BAD_INPUT', httpStatus: 400, requestId: String, context: { service: 'EBS', operation: 'ListChangedBlocks' }, stack: /UNRELATED_SNAPSHOTS|ValidationException/, cause: { type: 'ValidationException' } },
  }, 'a fallback that worked is a warning, with the error it worked around')
  t.ok(w.ebs.requestIds.includes(fallback[0]!.error.requestId), 'the request id is the one EBS answered with')
  t.same(lines.filter((l) => l.taskId === fallbackTask && l.level === 'error'), [], 'and no error for that task')

  const failed = logWhere(w.state.log, { msg: 'task failed', taskId: 'att-missing' })
  t.match(failed, [{
    level: 'error', taskType: 'attach',
    error: { code: 'SNAPSHOT_NOT_FOUND', retryable: false, requestId: /^[0-9a-f-]{36}$/, httpStatus: 400, context: { service: 'EC2', taskId: 'att-missing' }, stack: /^EbsWorkerError: .*\n\s+at / },
  }], 'a failure is an error with its code, context, AWS request id and stack')

  for (const q of await documentedQueries()) {
    const matched = lines.filter((l) => q.filters.every((f) => f(l)))
    t.ok(matched.length > 0, `${q.text}: finds lines`)
    const missing = q.fields.filter((f) => !matched.some((l) => flat(l, f) !== undefined))
    t.same(missing, [], `${q.text}: every field it names is on the lines it finds`)
  }
})

t.test('without AWS_REGION the daemon takes its Region from IMDS, then builds its clients and works', async (t) => {
  // No Region anywhere but IMDS: not in the environment, not in a profile.
  const { dir, ec2, send, reply, daemon, exited, state } = await world(t, {
    env: { AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined, AWS_PROFILE: undefined, AWS_CONFIG_FILE: '/nonexistent/aws-config' },
  })
  const image = join(dir, 'snapshot.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: MiB, length: 2 * MiB }])
  const snapshotId = ec2.addSnapshot({ image, sizeGiB: 1 })
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'no-region-1', snapshotId }))
  const r = await reply('no-region-1')
  t.equal(r.status, 'succeeded', `a backup task succeeds ${JSON.stringify(r.error ?? '')}`)
  t.equal(logWhere(state.log, { msg: 'started', region: 'us-east-1', regionFrom: 'IMDS' }).length, 1, 'the Region came from IMDS')
  t.notMatch(state.log, /Region is missing/, 'no client went without one')
  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0, 'stops cleanly')
})

t.test('the configuration\'s tuning reaches the backups: packs of the configured size', async (t) => {
  const { dir, ec2, repo, send, reply, daemon, exited } = await world(t, { config: { tuning: { packSize: MiB, readConcurrency: 2 } } })
  const image = join(dir, 'snapshot.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: 0, length: 6 * MiB }])
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'tuned-1', snapshotId: ec2.addSnapshot({ image, sizeGiB: 1 }) }))
  const r = await reply('tuned-1')
  t.equal(r.status, 'succeeded', `the backup succeeds ${JSON.stringify(r.error ?? '')}`)
  // Data packs (the chunk list's nodes are in a pack of a few hundred bytes of their own).
  const packs = (await readdir(join(repo.slice('file://'.length), PACKS), { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile() && statSync(join(e.parentPath, e.name)).size > 64 * 1024)
  t.equal(packs.length, 6, 'six random chunks, one 1 MiB pack each (16 MiB packs would hold them all)')
  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0, 'stops cleanly')
})

/** A snapshot in the EC2 stand-in, backed up by a backup task: what restore cases start from. */
async function backedUpSnapshot(w: Awaited<ReturnType<typeof world>>) {
  const image = join(w.dir, 'snapshot.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 4 * MiB }, { kind: 'text', offset: 9 * MiB, length: 2 * MiB }])
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 2, encrypted: true, kmsKeyId: 'arn:aws:kms:us-east-1:111122223333:key/src' })
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'policy-1/i-0abc/xvdf', snapshotId }))
  const b = await w.reply('policy-1/i-0abc/xvdf')
  return { image, snapshotId, b }
}

t.test('a backup task: a volume from the snapshot in the worker\'s zone, read, then deleted', async (t) => {
  const w = await world(t)
  const { image, snapshotId, b } = await backedUpSnapshot(w)
  t.equal(b.status, 'succeeded', `backup succeeded ${JSON.stringify(b.error ?? '')}`)
  const volume = w.ec2.volumes.get(b.result.volumeId)!
  t.match(volume, { snapshotId, encrypted: true, kmsKeyId: 'arn:aws:kms:us-east-1:111122223333:key/src', availabilityZone: 'us-east-1a' }, 'the volume came from the snapshot, in the worker\'s AZ, with its key')
  t.equal(volume.tags['ebs-worker:task-id'], 'policy-1/i-0abc/xvdf', 'tagged with the task')
  t.match(volume.tags, { 'ebs-worker:worker': INSTANCE.instanceId, 'ebs-worker:transient': 'true' }, 'with the worker, as transient')
  t.equal(volume.state, 'deleted', 'and deleted after the backup')
  const restored = join(w.dir, 'restored.img')
  await cli(['restore', '--repo', w.repo, '--backup', b.result.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'the backup holds the snapshot, byte for byte')
})

t.test('a restore task: a new encrypted volume holding the backup, detached; redelivered, reported and not redone', async (t) => {
  const w = await world(t)
  const { image, b } = await backedUpSnapshot(w)
  // Restore: a new, empty, encrypted volume in the worker's AZ receives the backup, detached after.
  const task = JSON.stringify({ version: 1, type: 'restore', taskId: 'rst-1', backupId: b.result.backupId, sizeGiB: 2, volume: { volumeType: 'gp3' } })
  await w.send(task)
  const r = await w.reply('rst-1')
  t.equal(r.status, 'succeeded', `restore succeeded ${JSON.stringify(r.error ?? '')}`)
  const target = w.ec2.volumes.get(r.result.volumeId)!
  t.match(target, { state: 'available', encrypted: true, snapshotId: null, attachment: null }, 'a new encrypted volume, detached after')
  t.equal(await sha256File(target.file, 16 * MiB), await sha256File(image), 'the new volume holds the backup, byte for byte')
  t.equal(target.tags['ebs-worker:restored-backup'], b.result.backupId, 'and is tagged with the backup it holds')
  t.equal(target.tags['ebs-worker:transient'], 'false', 'and as kept: no sweep deletes it')
  // Delivered again: the tag says the work is done; the same volume is reported, not written again.
  w.replies.delete('rst-1')
  await w.send(task)
  t.match(await w.reply('rst-1'), { status: 'succeeded', result: { volumeId: r.result.volumeId, reused: true } }, 'a redelivered restore reports the same volume')
  t.equal([...w.ec2.volumes.values()].filter((v) => v.tags['ebs-worker:task-id'] === 'rst-1').length, 1, 'and makes no other')
})

t.test('a cross-account restore: refused under aws/ebs before any volume is made; under a customer key, a shared snapshot', async (t) => {
  const w = await world(t)
  const { b } = await backedUpSnapshot(w)
  await w.send(JSON.stringify({ version: 1, type: 'restore', taskId: 'rst-2', backupId: b.result.backupId, sizeGiB: 2, snapshot: { shareWithAccount: '444455556666' } }))
  t.match(await w.reply('rst-2'), { status: 'failed', error: { code: 'DEFAULT_KEY_NOT_SHAREABLE', message: /aws\/ebs.*customer managed key/, retryable: false } },
    'under the AWS managed default key it fails, saying why and what to do')
  t.notOk([...w.ec2.volumes.values()].some((v) => v.tags['ebs-worker:task-id'] === 'rst-2'), 'and before any volume was made')
  const cmk = 'arn:aws:kms:us-east-1:111122223333:key/cmk-restore-1'
  await w.send(JSON.stringify({ version: 1, type: 'restore', taskId: 'rst-3', backupId: b.result.backupId, sizeGiB: 2, volume: { kmsKeyId: cmk }, snapshot: { shareWithAccount: '444455556666' } }))
  const r3 = await w.reply('rst-3')
  t.equal(r3.status, 'succeeded', `with a customer managed key it succeeds ${JSON.stringify(r3.error ?? '')}`)
  t.match(w.ec2.snapshots.get(r3.result.snapshotId), { encrypted: true, kmsKeyId: cmk, sharedWith: ['444455556666'], state: 'completed' }, 'a completed snapshot under that key, shared with the target account')
  t.equal(w.ec2.volumes.get(r3.result.volumeId)!.tags['ebs-worker:transient'], 'true', 'its volume, staging for the snapshot, stays transient (the controller has it deleted)')
})

t.test('attach and detach tasks: a shared snapshot under this Region\'s default key; a missing snapshot fails for good', async (t) => {
  const w = await world(t)
  const image = join(w.dir, 'shared.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 4 * MiB }])
  const shared = w.ec2.addSnapshot({ image, sizeGiB: 2, encrypted: true, ownerId: '444455556666', sharedWith: ['111122223333'] })
  await w.send(JSON.stringify({ version: 1, type: 'attach', taskId: 'att-1', snapshotId: shared, sharedFromAccount: '444455556666' }))
  const a = await w.reply('att-1')
  t.equal(a.status, 'succeeded', `attach succeeded ${JSON.stringify(a.error ?? '')}`)
  t.match(w.ec2.volumes.get(a.result.volumeId), { state: 'in-use', kmsKeyId: 'arn:aws:kms:us-east-1:111122223333:alias/aws/ebs' }, 'a shared snapshot becomes a volume under this Region\'s default key')
  t.equal(await sha256File(a.result.device), await sha256File(image), 'its device holds the snapshot')
  await w.send(JSON.stringify({ version: 1, type: 'detach', taskId: 'det-1', volumeId: a.result.volumeId }))
  t.match(await w.reply('det-1'), { status: 'succeeded', result: { deleted: true } }, 'detach deletes it')
  t.equal(w.ec2.volumes.get(a.result.volumeId)!.state, 'deleted')
  await w.send(JSON.stringify({ version: 1, type: 'attach', taskId: 'att-3', snapshotId: shared, sharedFromAccount: '444455556666' }))
  const kept = await w.reply('att-3')
  await w.send(JSON.stringify({ version: 1, type: 'detach', taskId: 'det-3', volumeId: kept.result.volumeId, delete: false }))
  t.match(await w.reply('det-3'), { status: 'succeeded', result: { deleted: false } }, 'detach with delete: false keeps it')
  t.match(w.ec2.volumes.get(kept.result.volumeId), { state: 'available', tags: { 'ebs-worker:transient': 'false' } }, 'detached, marked as kept: no sweep deletes it')
  await w.send(JSON.stringify({ version: 1, type: 'attach', taskId: 'att-2', snapshotId: 'snap-00000000000000000' }))
  t.match(await w.reply('att-2'), { status: 'failed', error: { code: 'SNAPSHOT_NOT_FOUND', retryable: false } }, 'a missing snapshot fails for good')
})

t.test('the daemon sweeps at start: the transient volumes of a terminated worker go, nothing else', async (t) => {
  const made: Record<string, string> = {}
  const w = await world(t, {
    beforeStart: async (ec2) => {
      const gone = await ec2.addInstance({ accountId: INSTANCE.accountId, region: INSTANCE.region, availabilityZone: INSTANCE.availabilityZone, volumes: [] })
      ec2.instances.get(gone)!.state = 'terminated'
      const client = new EC2Client({ endpoint: ec2.endpoint, region: INSTANCE.region, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
      t.teardown(() => client.destroy())
      const volume = async (name: string, tags: Record<string, string>) => {
        const v = await client.send(new CreateVolumeCommand({
          AvailabilityZone: INSTANCE.availabilityZone, Size: 1, TagSpecifications: [{ ResourceType: 'volume', Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) }],
        }))
        const volume = ec2.volumes.get(v.VolumeId!)!
        await until(() => volume.state === 'available', 10_000, 'the volume is created')
        volume.createTime = new Date(Date.now() - 2 * 3600_000).toISOString()
        ec2.settle(v.VolumeId!) // made two hours ago: visible by now
        made[name] = v.VolumeId!
      }
      await volume('orphan', { 'ebs-worker:task-id': 'b-1', 'ebs-worker:worker': gone, 'ebs-worker:transient': 'true' })
      await volume('kept', { 'ebs-worker:task-id': 'r-1', 'ebs-worker:worker': gone, 'ebs-worker:transient': 'false' })
      await volume('mine', { 'ebs-worker:task-id': 'b-2', 'ebs-worker:worker': INSTANCE.instanceId, 'ebs-worker:transient': 'true' })
    },
  })
  await until(() => w.state.log.includes('"msg":"volume sweep"'), 30_000, 'the start-up sweep')
  const line = JSON.parse(w.state.log.split('\n').find((l) => l.includes('"msg":"volume sweep"'))!)
  t.match(line, { deleted: [{ volumeId: made.orphan, taskId: 'b-1' }], failed: [], kept: 1 }, 'it logs what it deleted and how many it kept')
  t.equal(w.ec2.volumes.get(made.orphan!)!.state, 'deleted', 'the orphan is gone')
  t.equal(w.ec2.volumes.get(made.kept!)!.state, 'available', 'a kept volume of the same worker is not')
  t.equal(w.ec2.volumes.get(made.mine!)!.state, 'available', 'nor a volume of this (live) worker')
})

t.test('a daemon killed mid-backup: the redelivered task finishes once, nothing duplicated or leaked', async (t) => {
  const { dir, ec2, repo, send, reply, daemon, exited, spawnDaemon, state } = await world(t)
  const image = join(dir, 'big.img')
  await makeImage(image, 160 * MiB, [{ kind: 'random', offset: 0, length: 160 * MiB }])
  const snapshotId = ec2.addSnapshot({ image, sizeGiB: 20 })
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'crash-1', snapshotId }))
  // Kill it once its volume is attached and being read.
  const deadline = Date.now() + 30_000
  while (![...ec2.volumes.values()].some((v) => v.attachment?.state === 'attached') || !state.log.includes('task started')) {
    if (Date.now() > deadline) throw new Error(`the backup never started:\n${state.log}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  daemon.kill('SIGKILL')
  t.equal((await exited).signal, 'SIGKILL', 'killed mid-task')
  t.notMatch(state.log, /task succeeded/, 'before the task had finished')

  const second = spawnDaemon()
  const r = await reply('crash-1')
  t.equal(r.status, 'succeeded', `the redelivered task succeeded ${JSON.stringify(r.error ?? '')}`)
  const made = [...ec2.volumes.values()].filter((v) => v.tags['ebs-worker:task-id'] === 'crash-1')
  t.equal(made.length, 1, 'one volume for the task: the second attempt found the first one')
  t.equal(made[0]!.state, 'deleted', 'and deleted it at the end')
  const backups = (await cli(['list', '--repo', repo])).backups
  t.equal(backups.length, 1, 'one backup')
  const restored = join(dir, 'restored.img')
  await cli(['restore', '--repo', repo, '--backup', r.result.backupId, '--device', restored])
  t.equal(await sha256File(restored, 160 * MiB), await sha256File(image), 'which holds the snapshot')
  second.daemon.kill('SIGTERM')
  t.equal((await second.exited).code, 0)
  t.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(join(dir, 'volumes')), false, 'no loop device left behind')
})

t.test('backups read only the blocks EBS lists: those written for a full one, those changed for an incremental one', async (t) => {
  const { dir, ec2, ebsCalls, repo, send, reply, replies, daemon, exited } = await world(t)
  const size = 48 * MiB // 6 "GiB" of 8 MiB
  const v1 = join(dir, 'v1.img')
  await makeImage(v1, size, [{ kind: 'random', offset: 4 * MiB, length: 2 * MiB }, { kind: 'text', offset: 30 * MiB, length: MiB }])
  // The same volume a day later: one chunk rewritten, one written for the first time.
  const v2 = join(dir, 'v2.img')
  await copyFile(v1, v2)
  const h = await open(v2, 'r+')
  await h.write(randomBytes(1000), 0, 1000, 5 * MiB + 100)
  await h.write(randomBytes(MiB), 0, MiB, 40 * MiB)
  await h.close()
  const lineage = 'vol-0feedfeedfeedfeed'
  const s1 = ec2.addSnapshot({ image: v1, sizeGiB: 6, volumeId: lineage })
  const s2 = ec2.addSnapshot({ image: v2, sizeGiB: 6, volumeId: lineage })
  const restoredEquals = async (backupId: string, image: string): Promise<boolean> => {
    const out = join(dir, `restored-${backupId}.img`)
    await cli(['restore', '--repo', repo, '--backup', backupId, '--device', out])
    return (await sha256File(out)) === (await sha256File(image))
  }

  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'full', snapshotId: s1 }))
  const full = await reply('full')
  t.equal(full.status, 'succeeded', `full backup ${JSON.stringify(full.error ?? '')}`)
  t.match(full.result, { blockListing: 'ListSnapshotBlocks', bytesRead: 3 * MiB, chunksZero: 45 }, 'a full backup reads the 3 chunks that hold data, not 48')
  t.ok(await restoredEquals(full.result.backupId, v1), 'and holds the snapshot, byte for byte')
  // SQS may deliver the task again: its task record in the repository answers, no volume is made.
  const volumesMade = ec2.volumes.size
  replies.delete('full')
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'full', snapshotId: s1 }))
  t.match(await reply('full'), { status: 'succeeded', result: { backupId: full.result.backupId, reused: true } }, 'a redelivered backup task reports its backup')
  t.equal(ec2.volumes.size, volumesMade, 'without making a volume')

  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'incr', snapshotId: s2, parentBackupId: full.result.backupId, parentSnapshotId: s1 }))
  const incr = await reply('incr')
  t.equal(incr.status, 'succeeded', `incremental backup ${JSON.stringify(incr.error ?? '')}`)
  t.match(incr.result, { blockListing: 'ListChangedBlocks', blocksListed: 3, bytesRead: 2 * MiB, chunksFromParent: 46 }, 'an incremental one reads the 2 changed chunks')
  t.ok(ebsCalls.some((c) => c.api === 'ListChangedBlocks' && c.params.snapshotId === s2 && c.params.firstSnapshotId === s1), 'asking EBS for the changes from the parent snapshot')
  t.ok(await restoredEquals(incr.result.backupId, v2), 'and holds the new snapshot, byte for byte')

  // The parent backup is not of the parent snapshot: changed blocks would be applied to the wrong data.
  const volumesBefore = ec2.volumes.size
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'wrong-parent', snapshotId: s2, parentBackupId: incr.result.backupId, parentSnapshotId: s1 }))
  t.match(await reply('wrong-parent'), { status: 'failed', error: { code: 'BAD_INPUT', message: /taken from snap-.*not snap-/, retryable: false } }, 'a parent backup of another snapshot is refused')
  t.equal(ec2.volumes.size, volumesBefore, 'before any volume was made')

  // Snapshots of two lineages: EBS refuses to compare them, so the whole volume is read.
  const s3 = ec2.addSnapshot({ image: v2, sizeGiB: 6 })
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'unrelated', snapshotId: s3, parentBackupId: full.result.backupId, parentSnapshotId: s1 }))
  const unrelated = await reply('unrelated')
  t.equal(unrelated.status, 'succeeded', `a backup EBS cannot help with still succeeds ${JSON.stringify(unrelated.error ?? '')}`)
  t.match(unrelated.result, { blockListing: 'none', blockListingError: /UNRELATED_SNAPSHOTS/, bytesRead: size }, 'reading everything, and saying why')
  t.ok(await restoredEquals(unrelated.result.backupId, v2), 'and holds its snapshot, byte for byte')

  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0)
})

t.test('a task that fails every time is reported once, on its last attempt, and goes to the dead-letter queue', async (t) => {
  // A port nothing listens on: the poison task's S3 repository is unreachable, every time.
  const dead = createServer()
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve))
  const deadPort = (dead.address() as { port: number }).port
  await new Promise((resolve) => dead.close(resolve))
  const { sqs, dlqUrl, send, reply, state } = await world(t, {
    maxReceiveCount: 2, env: { AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${deadPort}`, AWS_MAX_ATTEMPTS: '2' }, config: { allowedRepositories: ['s3://nowhere/repo'] },
  })
  await send(JSON.stringify({ version: 1, type: 'restore', taskId: 'poison', backupId: '20261123T000000Z-00000000', repository: 's3://nowhere/repo' }))
  const poison = await reply('poison')
  // retryable comes from the code: a storage failure may pass, so the sender may try again later
  // (SQS will not: the message goes to the dead-letter queue).
  t.match(poison, { status: 'failed', error: { code: 'STORAGE_ERROR', message: /attempt 2 of 2; the task goes to the dead-letter queue/, retryable: true } },
    'a task failing every time is reported once, on its last attempt')
  t.equal(logWhere(state.log, { msg: 'task failed, will be retried', taskId: 'poison', level: 'warn' }).length, 1, 'after one retry (a warning)')
  t.equal(logWhere(state.log, { msg: 'task failed on its last attempt', taskId: 'poison', level: 'error' }).length, 1, 'the last attempt an error')
  const inDlq = async (): Promise<number> =>
    Number((await sqs.send(new GetQueueAttributesCommand({ QueueUrl: dlqUrl, AttributeNames: ['ApproximateNumberOfMessages'] }))).Attributes!.ApproximateNumberOfMessages)
  await until(async () => (await inDlq()) === 1, 30_000, 'the poison message in the DLQ')
  t.pass('and the message ends in the dead-letter queue')
})

/**
 * A snapshot of the test image and a volume made from it, as an earlier attempt of a task would
 * have left it (tagged as given), made long before the task: available and visible by now.
 */
async function leftVolume(t: Teardown, w: Awaited<ReturnType<typeof world>>, zone: string, tags: Record<string, string>): Promise<{ snapshotId: string; volumeId: string }> {
  const image = join(w.dir, 'snap.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: 3 * MiB, length: 4 * MiB }])
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 2 })
  const ec2Client = new EC2Client({ endpoint: w.ec2.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => ec2Client.destroy())
  const made = await ec2Client.send(new CreateVolumeCommand({
    AvailabilityZone: zone, SnapshotId: snapshotId,
    TagSpecifications: [{ ResourceType: 'volume', Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) }],
  }))
  const volumeId = made.VolumeId!
  await until(() => w.ec2.volumes.get(volumeId)?.state === 'available', 10_000, 'the volume left behind')
  w.ec2.settle(volumeId)
  return { snapshotId, volumeId }
}

t.test('a task whose earlier attempt left its volume in another zone: that volume is deleted and the work done here', async (t) => {
  const w = await world(t)
  const { ec2, send, reply } = w
  const { snapshotId, volumeId: strayId } = await leftVolume(t, w, 'us-east-1b', { 'ebs-worker:task-id': 'az-1' })
  const stray = { VolumeId: strayId }
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'az-1', snapshotId }))
  const az = await reply('az-1')
  t.equal(az.status, 'succeeded', `the task succeeds here ${JSON.stringify(az.error ?? '')}`)
  t.equal(ec2.volumes.get(stray.VolumeId!)!.state, 'deleted', 'the leftover in the other zone was deleted')
  t.match(ec2.volumes.get(az.result.volumeId), { availabilityZone: 'us-east-1a', state: 'deleted' }, 'and the work done with a volume of this zone')
})

t.test('a task whose earlier attempt on another worker left its volume here: this worker takes it over (its worker tag) and uses it', async (t) => {
  const w = await world(t)
  const { ec2, send, reply } = w
  const { snapshotId, volumeId } = await leftVolume(t, w, INSTANCE.availabilityZone,
    { 'ebs-worker:task-id': 'took-1', 'ebs-worker:worker': 'i-0dddddddddddddddd', 'ebs-worker:transient': 'true' })
  const left = { VolumeId: volumeId }
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'took-1', snapshotId }))
  const r = await reply('took-1')
  t.equal(r.status, 'succeeded', `the task succeeds ${JSON.stringify(r.error ?? '')}`)
  t.equal(r.result.volumeId, left.VolumeId, 'with the volume the earlier attempt made')
  t.equal(ec2.volumes.get(left.VolumeId!)!.tags['ebs-worker:worker'], INSTANCE.instanceId, 'which it took over first: a sweep leaves it alone')
})

t.test('a restore onto a volume too small for the backup fails for good, and leaves no volume behind', async (t) => {
  const w = await world(t)
  const { b } = await backedUpSnapshot(w)
  // 1 "GiB" here is 8 MiB: too small for the 16 MiB backup, which only the device can tell.
  await w.send(JSON.stringify({ version: 1, type: 'restore', taskId: 'small', backupId: b.result.backupId, sizeGiB: 1 }))
  t.match(await w.reply('small'), { status: 'failed', error: { code: 'TARGET_TOO_SMALL', retryable: false } }, 'a target too small fails for good')
  t.match([...w.ec2.volumes.values()].filter((v) => v.tags['ebs-worker:task-id'] === 'small').map((v) => v.state), ['deleted'], 'and its volume is not left behind')
})

t.test('safety: a restore whose device node is not the volume it attached is refused, and the device is untouched', async (t) => {
  const victimDir = await tempDir(t)
  const victimImage = join(victimDir, 'victim.img')
  await makeImage(victimImage, 16 * MiB, [{ kind: 'text', offset: 0, length: 16 * MiB }])
  const victim = attachLoop(t, victimImage)
  const before = await sha256File(victimImage)
  // The device tree lies for new empty volumes: sysfs names the volume's own loop device, but
  // the node the agent would open is another disk.
  const { dir, ec2, repo, send, reply, daemon, exited } = await world(t, {
    exposeDevice: async (v, name, loop) => {
      const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
      if (v.snapshotId) return fakeNvme(roots, name, loop, v.volumeId.replace('-', ''), 'Amazon Elastic Block Store', v.sizeGiB * 8 * MiB)
      await fakeNvme(roots, name, victim, v.volumeId.replace('-', ''), 'Amazon Elastic Block Store', v.sizeGiB * 8 * MiB)
      await writeFile(join(roots.sysBlock, name, 'dev'), `${devNumber((await stat(loop)).rdev)}\n`)
    },
  })
  const image = join(dir, 'source.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: 0, length: 16 * MiB }])
  const backupId = (await cli(['backup', '--repo', repo, '--device', image])).backupId
  await send(JSON.stringify({ version: 1, type: 'restore', taskId: 'liar', backupId, sizeGiB: 2 }))
  t.match(await reply('liar'), { status: 'failed', error: { code: 'DEVICE_UNUSABLE', message: /refusing to use it/, retryable: false } }, 'refused with a clear code')
  t.equal(await sha256File(victimImage), before, 'the other disk was not written')
  t.match([...ec2.volumes.values()].filter((v) => v.tags['ebs-worker:task-id'] === 'liar').map((v) => v.state), ['deleted'], 'the volume made for it is gone')
  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0, 'stops cleanly')
})

t.test('a backup cut short by SIGTERM is checkpointed, and the next worker goes on from there', async (t) => {
  const { dir, ec2, repo, send, reply, daemon, exited, spawnDaemon, state } = await world(t, { config: { shutdownGraceSeconds: 0, checkpointIntervalSeconds: 1, progressLogSeconds: 1 } })
  const image = join(dir, 'big.img')
  // Large enough that the backup outlasts the 1 s checkpoint interval (320 MiB took 0.7 s).
  const size = 1024 * MiB
  await makeImage(image, size, [{ kind: 'random', offset: 0, length: size }])
  const snapshotId = ec2.addSnapshot({ image, sizeGiB: 128 })
  await send(JSON.stringify({ version: 1, type: 'backup', taskId: 'long-1', snapshotId }))
  // Stop the worker once the backup has saved a checkpoint of its own.
  const checkpoint = join(dir, 'repo', checkpointObjectName('task:long-1'))
  await until(() => existsSync(checkpoint) || state.log.includes('task succeeded'), 60_000, 'a checkpoint')
  daemon.kill('SIGTERM')
  t.equal((await exited).code, 0, 'the worker stops at once (no grace)')
  t.match(logWhere(state.log, { msg: 'task failed, will be retried', taskId: 'long-1' })[0], { level: 'warn', error: { code: 'INTERRUPTED', message: /checkpointed/ } }, 'saying the backup was checkpointed')

  const second = spawnDaemon()
  const r = await reply('long-1')
  t.equal(r.status, 'succeeded', `the task succeeds on the next worker ${JSON.stringify(r.error ?? '')}`)
  t.ok(r.result.resumedFrom, `going on from the checkpoint of ${r.result.resumedFrom}`)
  t.equal((await cli(['list', '--repo', repo])).backups.length, 1, 'one backup')
  const restored = join(dir, 'restored.img')
  await cli(['restore', '--repo', repo, '--backup', r.result.backupId, '--device', restored])
  t.equal(await sha256File(restored, size), await sha256File(image), 'which holds the snapshot, byte for byte')
  t.notOk(existsSync(checkpoint), 'and the checkpoint is gone')
  const progress = logWhere(state.log, { msg: 'task progress' })
  t.ok(progress.length > 0, `the long task logged its progress (${progress.length} lines)`)
  t.match(progress[0], { taskId: 'long-1', bytesTotal: size, percent: Number, bytesPerSecond: Number }, 'with bytes, percent and rate')
  // And the fleet's metrics saw the bytes move while the task ran, not only at its end.
  const moved = state.out.split('\n').filter((l) => l.includes('"BytesMoved"')).map((l) => JSON.parse(l))
  t.ok(moved.length > 0, `BytesMoved metric lines while it ran (${moved.length})`)
  t.ok(moved.every((m) => m.TaskType === 'backup' && m.BytesMoved > 0 && m.Fleet), 'each of a backup, with the bytes moved since the one before')
  t.ok(moved.reduce((sum, m) => sum + m.BytesMoved, 0) <= 2 * size, 'at most what two workers read (the second went on from a checkpoint)')
  second.daemon.kill('SIGTERM')
  t.equal((await second.exited).code, 0)
})

t.test('a new volume EC2 does not show yet is waited for, not taken for one KMS rolled back', async (t) => {
  // EC2's eventual consistency: the first requests after CreateVolume answer InvalidVolume.NotFound.
  const w = await world(t, { visibilityLag: 4 })
  const { image, b } = await backedUpSnapshot(w)
  t.equal(b.status, 'succeeded', `the backup succeeds ${JSON.stringify(b.error ?? '')}`)
  t.equal(w.ec2.missed.get(b.result.volumeId), 4, 'after EC2 said "no such volume" four times')
  t.equal(w.ec2.volumes.get(b.result.volumeId)!.state, 'deleted', 'its volume was used and deleted, not left behind')
  const restored = join(w.dir, 'restored.img')
  await cli(['restore', '--repo', w.repo, '--backup', b.result.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(image), 'and the backup holds the snapshot')
})

t.test('a cross-account restore waits out its new snapshot not visible yet, then shares it', async (t) => {
  const w = await world(t, { visibilityLag: 3 })
  const { b } = await backedUpSnapshot(w)
  const cmk = 'arn:aws:kms:us-east-1:111122223333:key/cmk-restore-1'
  await w.send(JSON.stringify({ version: 1, type: 'restore', taskId: 'rst-lag', backupId: b.result.backupId, sizeGiB: 2, volume: { kmsKeyId: cmk }, snapshot: { shareWithAccount: '444455556666' } }))
  const r = await w.reply('rst-lag')
  t.equal(r.status, 'succeeded', `the restore succeeds ${JSON.stringify(r.error ?? '')}`)
  t.equal(w.ec2.missed.get(r.result.snapshotId), 3, 'after EC2 said "no such snapshot" three times')
  t.match(w.ec2.snapshots.get(r.result.snapshotId), { state: 'completed', sharedWith: ['444455556666'] }, 'a completed snapshot, shared')
})

t.test('a restore task for a gp2 volume with its recorded IOPS and throughput: made without them', async (t) => {
  const w = await world(t)
  const { image, b } = await backedUpSnapshot(w)
  // What DescribeVolumes says of a gp2 volume (its baseline IOPS) cannot be asked of CreateVolume.
  await w.send(JSON.stringify({ version: 1, type: 'restore', taskId: 'rst-gp2', backupId: b.result.backupId, sizeGiB: 2, volume: { volumeType: 'gp2', iops: 100, throughput: 125 } }))
  const r = await w.reply('rst-gp2')
  t.equal(r.status, 'succeeded', `the restore succeeds ${JSON.stringify(r.error ?? '')}`)
  const target = w.ec2.volumes.get(r.result.volumeId)!
  t.match(target, { volumeType: 'gp2', iops: 100, throughput: null }, 'a gp2 volume, at its baseline IOPS')
  t.equal(await sha256File(target.file, 16 * MiB), await sha256File(image), 'holding the backup')
})

/** The worker instance's device names /dev/sd[f-p], all but the last `free` taken by volumes of its own. */
async function occupyDeviceNames(w: Awaited<ReturnType<typeof world>>, free: number): Promise<string[]> {
  const names = 'fghijklmnop'.split('').map((c) => `/dev/sd${c}`)
  return Promise.all(names.slice(0, names.length - free).map((d) => w.ec2.occupyDevice(d)))
}

t.test('more tasks than free device names: the others wait for a name, and all succeed', async (t) => {
  const w = await world(t, { config: { concurrency: 3 } })
  await occupyDeviceNames(w, 1)
  const image = join(w.dir, 'snapshot.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 4 * MiB }])
  const snapshotId = w.ec2.addSnapshot({ image, sizeGiB: 2 })
  for (const i of [1, 2, 3]) await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: `names-${i}`, snapshotId }))
  for (const i of [1, 2, 3]) {
    const r = await w.reply(`names-${i}`)
    t.equal(r.status, 'succeeded', `task ${i} succeeds ${JSON.stringify(r.error ?? '')}`)
  }
  const lines = w.state.log.split('\n')
  const firstDone = lines.findIndex((l) => l.includes('"msg":"task succeeded"'))
  t.equal(lines.slice(0, firstDone).filter((l) => l.includes('"msg":"task started"')).length, 3, 'the three ran at once, on one free name')
  t.notMatch(w.state.log, /NO_FREE_DEVICE_NAME|DEVICE_UNUSABLE/, 'none failed for want of a name')
})

t.test('no device name free for longer than deviceNameWaitSeconds: the task is handed back, and done once one is free', async (t) => {
  const w = await world(t, { config: { deviceNameWaitSeconds: 1 } })
  const occupied = await occupyDeviceNames(w, 0)
  const image = join(w.dir, 'snapshot.img')
  await makeImage(image, 16 * MiB, [{ kind: 'random', offset: MiB, length: 4 * MiB }])
  await w.send(JSON.stringify({ version: 1, type: 'backup', taskId: 'no-name', snapshotId: w.ec2.addSnapshot({ image, sizeGiB: 2 }) }))
  await until(() => logWhere(w.state.log, { msg: 'task failed, will be retried', taskId: 'no-name' }).some((l) => l.error?.code === 'NO_FREE_DEVICE_NAME'), 30_000, 'the task handed back')
  w.ec2.freeDevice(occupied[4]!)
  const r = await w.reply('no-name')
  // The first reply of the task is this one: the attempt without a name sent none.
  t.equal(r.status, 'succeeded', `once a name is free, the task delivered again succeeds ${JSON.stringify(r.error ?? '')}`)
  t.same(logWhere(w.state.log, { msg: 'task failed' }), [], 'it never failed for good')
})
