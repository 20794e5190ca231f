// packaging/user-data.sh run as cloud-init would, but against a temporary root, the IMDS stand-in
// (serving instance tags) and a systemctl that records what it is asked: the config it writes
// must pass the daemon's own schema (agent/daemon/config.ts), and a bad setting must stop it before
// anything is written or started.
import t from 'tap'
import { execFile } from 'node:child_process'
import { access, chmod, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { loadConfig } from '../agent/daemon/config.ts'
import { CLI, ROOT, tempDir, type Teardown } from './helpers.ts'
import { startImds } from './standin/imds.ts'

const run = promisify(execFile)
const SCRIPT = join(ROOT, 'packaging/user-data.sh')
const INSTANCE = { instanceId: 'i-0123456789abcdef0', region: 'eu-west-1', availabilityZone: 'eu-west-1b', accountId: '111122223333' }
const Q = 'https://sqs.eu-west-1.amazonaws.com/111122223333'

async function userData(t: Teardown, tags: Record<string, string> | undefined, params: Record<string, string> = {}) {
  const imds = await startImds(INSTANCE, tags ? { tags } : {})
  t.teardown(() => imds.close())
  const dir = await tempDir(t, 'user-data')
  const root = join(dir, 'root')
  // The ebs-worker command from this checkout, and a systemctl that only records.
  const bin = join(dir, 'ebs-worker')
  await writeFile(bin, `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`)
  const systemctl = join(dir, 'systemctl')
  await writeFile(systemctl, `#!/bin/sh\necho "$@" >> "${join(dir, 'systemctl.log')}"\n`)
  // And an aws command that records its arguments (the CloudFormation signal).
  const aws = join(dir, 'aws')
  await writeFile(aws, `#!/bin/sh\necho "$@" >> "${join(dir, 'aws.log')}"\n`)
  await chmod(bin, 0o755)
  await chmod(systemctl, 0o755)
  await chmod(aws, 0o755)
  const env = { PATH: process.env.PATH, EBS_WORKER_ROOT: root, IMDS_ENDPOINT: imds.endpoint, EBS_WORKER_BIN: bin, SYSTEMCTL: systemctl, AWS_CLI: aws, ...params }
  let code = 0
  let stderr = ''
  try {
    ;({ stderr } = await run('bash', [SCRIPT], { env }))
  } catch (err) {
    code = (err as { code: number }).code
    stderr = (err as { stderr: string }).stderr
  }
  const calls = await readFile(join(dir, 'systemctl.log'), 'utf8').catch(() => '')
  const awsCalls = await readFile(join(dir, 'aws.log'), 'utf8').catch(() => '')
  const exists = (p: string) => access(join(root, p)).then(() => true, () => false)
  return { code, stderr, root, calls, awsCalls, exists, imds }
}

const TAGS = {
  'ebs-worker:queue-url': `${Q}/ebs-worker-tasks`,
  'ebs-worker:reply-queue-url': `${Q}/ebs-worker-results`,
  'ebs-worker:repository': 's3://backups-bucket/prod',
  'ebs-worker:concurrency': '4',
  'ebs-worker:fleet': 'prod',
  Name: 'ebs-worker',
}

t.test('from instance tags: a config the daemon accepts, its environment, the service started', async (t) => {
  const r = await userData(t, TAGS)
  t.equal(r.code, 0, r.stderr)
  const config = await loadConfig(join(r.root, 'etc/ebs-worker/config.json'))
  t.match(config, {
    queueUrl: `${Q}/ebs-worker-tasks`, replyQueueUrl: `${Q}/ebs-worker-results`, repository: 's3://backups-bucket/prod',
    concurrency: 4, visibilityTimeoutSeconds: 300, shutdownGraceSeconds: 60,
  }, 'the daemon\'s own schema reads it, with the tag values')
  t.equal(config.keyFile, undefined)
  t.equal(await readFile(join(r.root, 'etc/ebs-worker/environment'), 'utf8'), 'AWS_REGION=eu-west-1\nEBS_WORKER_FLEET=prod\n', 'Region from IMDS, fleet from the tag')
  t.equal(await readFile(join(r.root, 'etc/systemd/system/ebs-worker.service.d/stop-timeout.conf'), 'utf8'), '[Service]\nTimeoutStopSec=90\n', 'stop timeout = grace + 30 s')
  t.equal(r.calls, 'daemon-reload\nenable --now ebs-worker.service\n', 'the service enabled and started')
  t.ok(r.imds.requests.filter((q) => q.method === 'GET').every((q) => q.token), 'IMDSv2: every read with a token')
})

t.test('launch-template parameters win over tags and fill what tags lack', async (t) => {
  const r = await userData(t, { 'ebs-worker:queue-url': `${Q}/from-tag`, 'ebs-worker:concurrency': '9' }, {
    EBS_WORKER_QUEUE_URL: `${Q}/from-parameter`,
    EBS_WORKER_REPLY_QUEUE_URL: `${Q}/replies`,
    EBS_WORKER_REPOSITORY: 's3://bucket/prefix',
    EBS_WORKER_KEY_FILE: '/etc/ebs-worker/repo.key',
    EBS_WORKER_SHUTDOWN_GRACE: '300',
  })
  t.equal(r.code, 0, r.stderr)
  const config = await loadConfig(join(r.root, 'etc/ebs-worker/config.json'))
  t.match(config, { queueUrl: `${Q}/from-parameter`, concurrency: 9, keyFile: '/etc/ebs-worker/repo.key', shutdownGraceSeconds: 300 })
  t.match(await readFile(join(r.root, 'etc/systemd/system/ebs-worker.service.d/stop-timeout.conf'), 'utf8'), /TimeoutStopSec=330/)
  t.match(await readFile(join(r.root, 'etc/ebs-worker/environment'), 'utf8'), /EBS_WORKER_FLEET=default/)
})

t.test('instance metadata tags off and no parameters: refused, nothing written or started', async (t) => {
  const r = await userData(t, undefined)
  t.not(r.code, 0)
  t.match(r.stderr, /queue-url "" is missing or malformed/)
  t.notOk(await r.exists('etc/ebs-worker/config.json'))
  t.equal(r.calls, '')
})

t.test('a value that could break the JSON is refused by the shape check', async (t) => {
  const r = await userData(t, { ...TAGS, 'ebs-worker:repository': 's3://bucket/x", "keyFile": "/tmp/k' })
  t.not(r.code, 0)
  t.match(r.stderr, /repository .* is missing or malformed/)
  t.notOk(await r.exists('etc/ebs-worker/config.json'))
})

t.test('a value the daemon\'s schema refuses stops it too (doctor --only config)', async (t) => {
  const r = await userData(t, { ...TAGS, 'ebs-worker:concurrency': '100' })
  t.not(r.code, 0)
  t.match(r.stderr, /concurrency/)
  t.match(r.stderr, /the configuration is not valid/)
  t.notOk(await r.exists('etc/ebs-worker/config.json'), 'no config left behind')
  t.equal(r.calls, '', 'nothing started')
})

t.test('in an Auto Scaling group: drain and health settings, the health timer, and the stack signalled', async (t) => {
  const stack = { EBS_WORKER_ASG_NAME: 'prod-workers', EBS_WORKER_LIFECYCLE_HOOK: 'drain', EBS_WORKER_CFN_STACK: 'prod', EBS_WORKER_CFN_RESOURCE: 'WorkerGroup' }
  const r = await userData(t, TAGS, stack)
  t.equal(r.code, 0, r.stderr)
  const config = await loadConfig(join(r.root, 'etc/ebs-worker/config.json'))
  t.same(config.autoScaling, { groupName: 'prod-workers', lifecycleHookName: 'drain', lifecyclePollSeconds: 5 }, 'the daemon drains and completes the hook on scale-in')
  t.equal(r.calls, 'daemon-reload\nenable --now ebs-worker.service\nenable --now ebs-worker-health.timer\n', 'the service, then the health report')
  t.equal(r.awsCalls, `cloudformation signal-resource --region eu-west-1 --stack-name prod --logical-resource-id WorkerGroup --unique-id ${INSTANCE.instanceId} --status SUCCESS\n`,
    'SUCCESS, once the service has started (Type=notify: ready)')

  const bad = await userData(t, { ...TAGS, 'ebs-worker:concurrency': 'many' }, stack)
  t.not(bad.code, 0)
  t.equal(bad.calls, '', 'nothing started')
  t.equal(bad.awsCalls, `cloudformation signal-resource --region eu-west-1 --stack-name prod --logical-resource-id WorkerGroup --unique-id ${INSTANCE.instanceId} --status FAILURE\n`,
    'FAILURE: the rollout stops at this worker')

  const hookOnly = await userData(t, TAGS, { EBS_WORKER_LIFECYCLE_HOOK: 'drain' })
  t.not(hookOnly.code, 0)
  t.match(hookOnly.stderr, /lifecycle-hook "drain" needs asg-name too/)
  t.equal(hookOnly.awsCalls, '', 'no stack to signal')
})
