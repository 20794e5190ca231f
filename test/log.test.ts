// The log (agent/core/log.ts): pino's JSON lines as the docs and the CloudWatch queries read
// them: level words, the version and bindings on every line, a child per task, level filtering,
// errors with their code, context, stack and the AWS request id (the real @aws-sdk/client-ebs
// against the EBS direct stand-in, which answers with x-amzn-RequestId), nothing secret.
import t from 'tap'
import { EBSClient, ListSnapshotBlocksCommand } from '@aws-sdk/client-ebs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { awsError } from '../agent/aws/errors.ts'
import { EbsWorkerError, ErrorCode } from '../agent/core/errors.ts'
import { createLog, logLevelFromEnv, type LogLevel } from '../agent/core/log.ts'
import { VERSION } from '../agent/core/version.ts'
import { loadDaemonSettings } from '../agent/daemon/config.ts'
import { logLines, MiB, tempDir } from './helpers.ts'
import { EbsStandIn } from './standin/ebs.ts'
import { Ec2StandIn } from './standin/ec2.ts'

/** A logger writing into a string, as the daemon writes to stderr. */
function capture(level?: LogLevel, bindings?: Record<string, unknown>) {
  const out = { text: '' }
  const log = createLog({ ...(level ? { level } : {}), ...(bindings ? { bindings } : {}), destination: { write: (s: string) => void (out.text += s) } })
  return { log, out }
}

t.test('lines: time, level as a word, msg, the version and the bindings; a child carries its own', async (t) => {
  const { log, out } = capture(undefined, { fleet: 'blue' })
  log.setBindings({ instanceId: 'i-0123' })
  log.info({ queueUrl: 'q' }, 'started')
  const task = log.child({ taskId: 'policy-42/i-0abc/xvdf', taskType: 'backup' })
  task.warn({ api: 'ListSnapshotBlocks' }, 'no block list from EBS; reading the whole volume')
  const lines = logLines(out.text)
  t.equal(out.text.split('\n').filter(Boolean).length, 2, 'one JSON object per line')
  t.match(lines[0], { level: 'info', msg: 'started', version: VERSION, fleet: 'blue', instanceId: 'i-0123', queueUrl: 'q' })
  t.ok(!Number.isNaN(Date.parse(lines[0]!.time)) && lines[0]!.time.endsWith('Z'), `time is ISO 8601 (${lines[0]!.time})`)
  t.match(lines[1], { level: 'warn', version: VERSION, fleet: 'blue', instanceId: 'i-0123', taskId: 'policy-42/i-0abc/xvdf', taskType: 'backup', api: 'ListSnapshotBlocks' })
  t.notOk('taskId' in lines[0]!, 'the parent has no task')
})

t.test('level filtering: debug shows all, the default info hides debug, warn hides info', async (t) => {
  const levels = (level?: LogLevel): string[] => {
    const { log, out } = capture(level)
    log.debug('d')
    log.info('i')
    log.warn('w')
    log.error('e')
    return logLines(out.text).map((l) => l.level)
  }
  t.same(levels('debug'), ['debug', 'info', 'warn', 'error'])
  t.same(levels(), ['info', 'warn', 'error'])
  t.same(levels('warn'), ['warn', 'error'])
  t.same(levels('error'), ['error'])
  t.equal(logLevelFromEnv({ EBS_WORKER_LOG_LEVEL: 'DEBUG' }), 'debug')
  t.equal(logLevelFromEnv({}), undefined)
  t.throws(() => logLevelFromEnv({ EBS_WORKER_LOG_LEVEL: 'verbose' }), { code: 'BAD_INPUT', message: /EBS_WORKER_LOG_LEVEL=verbose is not a log level: one of debug, info, warn, error/ })
})

t.test('the daemon\'s level: its configuration\'s logLevel, and EBS_WORKER_LOG_LEVEL over it', async (t) => {
  const dir = await tempDir(t)
  const config = join(dir, 'config.json')
  const base = { queueUrl: 'http://q/1/tasks', replyQueueUrl: 'http://q/1/replies', repository: 'file:///tmp/r' }
  await writeFile(config, JSON.stringify(base))
  t.equal((await loadDaemonSettings(config, {})).logLevel, 'info', 'info by default')
  await writeFile(config, JSON.stringify({ ...base, logLevel: 'warn' }))
  t.equal((await loadDaemonSettings(config, {})).logLevel, 'warn', 'the configuration says')
  t.equal((await loadDaemonSettings(config, { EBS_WORKER_LOG_LEVEL: 'debug' })).logLevel, 'debug', 'the environment wins')
  await writeFile(config, JSON.stringify({ ...base, logLevel: 'loud' }))
  await t.rejects(loadDaemonSettings(config, {}), { code: 'BAD_INPUT', message: /logLevel/ }, 'a level that is not one is refused')
})

t.test('an AWS error: code, retryable, context, the request id and HTTP status, the stack and its cause', async (t) => {
  const dir = await tempDir(t)
  const instance = { instanceId: 'i-0123456789abcdef0', accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1a' }
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: 8 * MiB, delayMs: 10 }).start()
  t.teardown(() => ec2.close())
  const ebs = await new EbsStandIn({ ec2 }).start()
  t.teardown(() => ebs.close())
  const client = new EBSClient({ endpoint: ebs.endpoint, region: instance.region, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, maxAttempts: 1 })
  t.teardown(() => client.destroy())
  const sdkError = await client.send(new ListSnapshotBlocksCommand({ SnapshotId: 'snap-00000000000000000' })).then(() => null, (err: unknown) => err)
  t.ok(sdkError, 'EBS refused')
  const requestId = ebs.requestIds.at(-1)!

  const { log, out } = capture()
  // As the SDK threw it, and as ours (aws/errors.ts) with what the task adds on the way up.
  log.warn({ error: sdkError }, 'raw')
  log.error({ error: awsError(sdkError, { service: 'EBS', operation: 'ListSnapshotBlocks' }).with({ taskId: 't-1', snapshotId: 'snap-00000000000000000' }) }, 'ours')
  const [raw, ours] = logLines(out.text)
  t.match(raw, { level: 'warn', error: { type: 'ResourceNotFoundException', requestId, httpStatus: 404, message: /does not exist/, stack: /ResourceNotFoundException/ } })
  t.match(ours, {
    level: 'error',
    error: {
      type: 'EbsWorkerError', code: ErrorCode.SnapshotNotFound, retryable: false, requestId, httpStatus: 404,
      context: { service: 'EBS', operation: 'ListSnapshotBlocks', taskId: 't-1', snapshotId: 'snap-00000000000000000', requestId },
      stack: /^EbsWorkerError: [^\n]*\n\s+at /,
      cause: { type: 'ResourceNotFoundException', stack: String },
    },
  }, 'ours: code, retryable, context, request id, stack, and the SDK error beneath')
  t.notMatch(out.text, /\$response|\$metadata/, 'no SDK internals')
})

t.test('errors that are not ours, and values that are not errors', async (t) => {
  const { log, out } = capture()
  log.error({ error: new TypeError('x is not a function') }, 'a bug')
  log.error({ error: 'a string' }, 'odd')
  log.error(new EbsWorkerError(ErrorCode.RepoLocked, 'another prune holds the lock'), 'as the first argument')
  const [bug, odd, first] = logLines(out.text)
  t.match(bug, { error: { type: 'TypeError', message: 'x is not a function', stack: /TypeError: x is not a function\n\s+at / } })
  t.notOk('code' in bug!.error, 'no code made up')
  t.match(odd, { error: { message: 'a string' } })
  t.match(first, { msg: 'as the first argument', error: { code: 'REPO_LOCKED', retryable: true, message: 'another prune holds the lock' } })
})

t.test('nothing secret: credentials and signatures are redacted', async (t) => {
  const { log, out } = capture()
  log.info({ credentials: { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI', sessionToken: 'FwoGZXIvYXdz' } }, 'creds')
  log.info({ aws: { secretAccessKey: 'wJalrXUtnFEMI', sessionToken: 'FwoGZXIvYXdz' }, request: { headers: { authorization: 'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/…, Signature=abc' } } }, 'nested')
  log.error({ error: new Error('GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEXAMPLE%2F2026&X-Amz-Signature=deadbeef&X-Amz-Security-Token=FwoGZXIvYXdz failed') }, 'presigned')
  t.notMatch(out.text, /wJalrXUtnFEMI|FwoGZXIvYXdz|deadbeef|AKIAEXAMPLE|Signature=abc/, `no secret in ${out.text}`)
  t.match(logLines(out.text)[0], { credentials: '[redacted]' })
  t.match(logLines(out.text)[2], { error: { message: /X-Amz-Signature=\[redacted\]/ } })
})
