// `ebs-worker doctor` as a child process against the stand-ins (fauxqs for SQS, the IMDS, EC2
// and KMS stand-ins, a file:// repository, a device tree of the test's own): a healthy worker
// gets ok on every line; each way of being broken gets its problem line with a fix.
import t from 'tap'
import { createServer } from 'node:net'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { cli, fakeNvme, makeImage, MiB, runCli, tempDir, type Teardown } from './helpers.ts'
import { startImds } from './standin/imds.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { KmsStandIn } from './standin/kms.ts'
import { doctor, memoryBase, memoryPerTask, type Check } from '../agent/daemon/doctor.ts'
import { DEFAULT_TUNING } from '../agent/core/tuning.ts'
import { withDefaults } from '../agent/core/tuning.ts'

const INSTANCE = { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' }

async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function world(t: Teardown, options: { defaultKey: 'customer' | 'aws' }) {
  const dir = await tempDir(t, 'doctor')
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const dlq = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks-dlq' }))).QueueUrl!
  const queueUrl = (await sqs.send(new CreateQueueCommand({
    QueueName: 'tasks',
    Attributes: { RedrivePolicy: JSON.stringify({ deadLetterTargetArn: 'arn:aws:sqs:us-east-1:000000000000:tasks-dlq', maxReceiveCount: 5 }) },
  }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const imds = await startImds(INSTANCE)
  t.teardown(() => imds.close())
  const kms = await new KmsStandIn([
    { keyId: 'aws-ebs-0000', accountId: INSTANCE.accountId, region: INSTANCE.region, keyManager: 'AWS', aliases: ['alias/aws/ebs'] },
    { keyId: 'cmk-default-1', accountId: INSTANCE.accountId, region: INSTANCE.region, keyManager: 'CUSTOMER' },
    { keyId: 'cmk-restore-1', accountId: INSTANCE.accountId, region: INSTANCE.region, keyManager: 'CUSTOMER' },
  ]).start()
  t.teardown(() => kms.close())
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({
    instance: INSTANCE, dir: join(dir, 'volumes'), roots,
    defaultKmsKeyId: options.defaultKey === 'aws' ? `arn:aws:kms:us-east-1:${INSTANCE.accountId}:alias/aws/ebs` : `arn:aws:kms:us-east-1:${INSTANCE.accountId}:key/cmk-default-1`,
  }).start()
  t.teardown(() => ec2.close())
  // An attached EBS volume (its node a plain image file: only its access is checked).
  const image = join(dir, 'vol.img')
  await makeImage(image, 4 * MiB, [])
  await fakeNvme(roots, 'nvme1n1', image, 'vol0123456789abcdef0', 'Amazon Elastic Block Store', 4 * MiB)
  const repo = `file://${join(dir, 'repo')}`
  const keyFile = join(dir, 'repo.key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', keyFile])
  const env = {
    AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_ENDPOINT_URL_KMS: kms.endpoint,
    AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test',
  }
  const config = { queueUrl, replyQueueUrl, repository: repo, keyFile, concurrency: 2, deviceRoots: roots, imdsEndpoint: imds.endpoint }
  const run = async (overrides: Record<string, unknown>, args: string[] = [], envOverrides: NodeJS.ProcessEnv = {}) => {
    const path = join(dir, `config-${Math.random().toString(36).slice(2)}.json`)
    await writeFile(path, JSON.stringify({ ...config, ...overrides }))
    const r = await runCli(['doctor', '--config', path, '--json', ...args], { ...env, ...envOverrides })
    const byName = (name: string): Check[] => (r.json?.checks as Check[] ?? []).filter((c) => c.name === name)
    return { ...r, byName, path }
  }
  return { dir, run, dlq, roots, config }
}

t.test('a healthy worker: every check ok, exit 0', async (t) => {
  const { run } = await world(t, { defaultKey: 'customer' })
  const r = await run({}, ['--kms-key', 'cmk-restore-1'])
  t.equal(r.code, 0, r.stdout + r.stderr)
  const checks = r.json!.checks as Check[]
  t.same(checks.filter((c) => c.status !== 'ok'), [], 'nothing but ok')
  for (const name of ['config', 'imds', 'identity', 'queue', 'reply-queue', 'repository', 'devices', 'memory', 'disk']) {
    t.equal(r.byName(name).length, 1, `one ${name} line`)
  }
  t.match(r.byName('identity')[0]!.detail, /i-0123456789abcdef0 in account 111122223333, us-east-1a/)
  t.match(r.byName('repository')[0]!.detail, /encrypted, 0 backup/)
  t.match(r.byName('devices')[0]!.detail, /1 NVMe device\(s\), 1 EBS volume/)
  t.equal(r.byName('kms').length, 2, 'the default EBS key and the named key')
  t.ok(r.byName('kms').every((c) => /customer managed/.test(c.detail)))
  const kmsOnly = await run({}, ['--only', 'kms'])
  t.equal(kmsOnly.code, 0, kmsOnly.stdout)
  t.same((kmsOnly.json!.checks as Check[]).map((c) => `${c.name} ${c.status}`), ['kms ok'], '--only kms: just that line (the Region still from IMDS)')
})

t.test('without AWS_REGION the checks take the Region from IMDS, as the daemon does', async (t) => {
  const { run } = await world(t, { defaultKey: 'customer' })
  const r = await run({}, ['--only', 'queue', 'reply-queue', 'kms'], { AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined, AWS_CONFIG_FILE: '/nonexistent/aws-config' })
  t.equal(r.code, 0, r.stdout + r.stderr)
  t.same((r.json!.checks as Check[]).map((c) => `${c.name} ${c.status}`), ['queue ok', 'reply-queue ok', 'kms ok'], 'the queues and keys answer in IMDS\'s Region')
})

t.test('each problem, with its fix', async (t) => {
  const { run, dir } = await world(t, { defaultKey: 'aws' })
  const badIdentity = await startImds({ ...INSTANCE, instanceId: 'not-an-instance' })
  t.teardown(() => badIdentity.close())
  await mkdir(join(dir, 'empty'))
  const r = await run({
    queueUrl: 'http://sqs.us-east-1.localhost/000000000000/no-such-queue',
    replyQueueUrl: 'http://sqs.us-east-1.localhost/000000000000/no-such-replies',
    repository: `file://${join(dir, 'empty')}`,
    deviceRoots: { sysBlock: join(dir, 'no-sys'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev') },
    imdsEndpoint: badIdentity.endpoint,
  }, ['--kms-key', 'no-such-key'])
  t.equal(r.code, 1, 'problems: exit 1')
  const problem = (name: string, detail: RegExp, fix: RegExp): void => {
    t.match(r.byName(name).find((c) => c.status === 'problem'), { detail, fix }, `${name}: problem and fix`)
  }
  t.match(r.byName('imds')[0], { status: 'ok' }, 'IMDS itself answers')
  problem('identity', /instanceId/, /identity document/)
  problem('queue', /no-such-queue: .*NonExistentQueue|QueueDoesNotExist/, /correct queueUrl/)
  problem('reply-queue', /no-such-replies/, /correct replyQueueUrl/)
  problem('repository', /REPO_NOT_FOUND/, /ebs-worker init --repo file:\/\/.* --encrypt --key-file/)
  problem('kms', /key no-such-key: NotFoundException/, /no such key/)
  problem('devices', /cannot list .*no-sys/, /sysfs/)
  t.match(r.byName('kms').find((c) => c.status === 'warn'), { detail: /default EBS key .*aws\/ebs.*DEFAULT_KEY_NOT_SHAREABLE/, fix: /customer managed key/ },
    'an aws/ebs default key is a warning: same-account work is fine')
})

t.test('IMDS unreachable; a queue without a dead-letter queue; a wrong key', async (t) => {
  const { run, dir, config } = await world(t, { defaultKey: 'customer' })
  const wrongKey = join(dir, 'other.key')
  await cli(['init', '--repo', join(dir, 'other-repo'), '--encrypt', '--key-file', wrongKey])
  const r = await run({ imdsEndpoint: `http://127.0.0.1:${await closedPort()}`, queueUrl: config.replyQueueUrl, keyFile: wrongKey })
  t.equal(r.code, 1)
  t.match(r.byName('imds')[0], { status: 'problem', fix: /HttpTokens required/ })
  t.match(r.byName('identity')[0], { status: 'skipped' })
  t.match(r.byName('queue')[0], { status: 'warn', detail: /no dead-letter queue/, fix: /redrive policy/ })
  t.match(r.byName('repository')[0], { status: 'problem', detail: /WRONG_KEY|BAD_INPUT/, fix: /keyFile/ })
})

t.test('an invalid configuration: one problem, the rest skipped', async (t) => {
  const { run } = await world(t, { defaultKey: 'customer' })
  const r = await run({ concurrency: 0, queueUrl: 'not a url' })
  t.equal(r.code, 1)
  t.match(r.byName('config')[0], { status: 'problem', detail: /queueUrl[\s\S]*concurrency|concurrency[\s\S]*queueUrl/ })
  t.ok((r.json!.checks as Check[]).filter((c) => c.name !== 'config').every((c) => c.status === 'skipped'))
  const human = await runCli(['doctor', '--config', r.path])
  t.match(human.stdout, /^PROBLEM config +.* -> fix: correct /m, 'one human line per check, the fix on it')
  t.match(human.stdout, /^skipped queue +needs a valid configuration$/m)
  const badAllowed = await run({ allowedRepositories: ['s3://backups-bucket/teams/*', 's3://../x'] }, ['--only', 'config'])
  t.match(badAllowed.byName('config')[0], { status: 'problem', detail: /not a well-formed repository URL[\s\S]*allowedRepositories\[1\]/ }, 'a malformed allowedRepositories entry is a configuration problem')
  const only = await run({ allowedRepositories: ['s3://backups-bucket/teams/*'] }, ['--only', 'config'])
  t.equal(only.code, 0, 'a valid configuration passes --only config (what the user-data runs)')
  t.same((only.json!.checks as Check[]).map((c) => c.name), ['config'])
})

t.test('memory and disk for the configured concurrency', async (t) => {
  const dir = await tempDir(t, 'doctor-res')
  const path = join(dir, 'config.json')
  await writeFile(path, JSON.stringify({ queueUrl: 'https://sqs.us-east-1.amazonaws.com/1/q', replyQueueUrl: 'https://sqs.us-east-1.amazonaws.com/1/r', repository: 's3://b/p', concurrency: 8 }))
  const facts = (mem: number, disk: number) => ({ memAvailable: async () => mem, freeDisk: async () => disk })
  const need = memoryBase() + 8 * memoryPerTask(DEFAULT_TUNING)
  const ok = await doctor({ configPath: path, only: ['memory', 'disk'], logDir: dir, system: facts(need, 2 * 1024 * MiB) })
  t.same(ok.map((c) => c.status), ['ok', 'ok'])
  const low = await doctor({ configPath: path, only: ['memory', 'disk'], logDir: join(dir, 'not/yet/there'), system: facts(need - 1, 100 * MiB) })
  t.match(low[0], { status: 'problem', fix: /lower concurrency to 7/ })
  t.match(low[1], { status: 'problem', detail: new RegExp(`free at ${dir}`), fix: /grow the root volume/ })
})

t.test('memory for the configured tuning: larger packs need more', async (t) => {
  const dir = await tempDir(t, 'doctor-tuning')
  const path = join(dir, 'config.json')
  const tuning = { packSize: 64 * MiB, uploadConcurrency: 4 }
  await writeFile(path, JSON.stringify({ queueUrl: 'https://sqs.us-east-1.amazonaws.com/1/q', replyQueueUrl: 'https://sqs.us-east-1.amazonaws.com/1/r', repository: 's3://b/p', concurrency: 2, tuning }))
  const perTask = memoryPerTask(withDefaults(tuning))
  t.equal(memoryPerTask(withDefaults(tuning), MiB, 2), 16 * MiB + 5 * 64 * MiB + 2 * 2 * MiB + 32 * MiB,
    'reads, five packs of 64 MiB (four uploading, one filling), two chunks per codec thread, and the buffers')
  t.equal(memoryPerTask(DEFAULT_TUNING, MiB, 2), 100 * MiB, 'the defaults on 2 vCPUs: a restore\'s 8 GETs of 8 MiB, 4 chunks, 32 MiB')
  t.equal(memoryBase(2), 256 * MiB, 'the process, 2 codec threads')
  t.equal(memoryBase(8), 256 * MiB + 4 * 20 * MiB, 'each codec thread beyond 4 adds 20 MiB')
  const facts = (mem: number) => ({ memAvailable: async () => mem, freeDisk: async () => 0 })
  t.match(await doctor({ configPath: path, only: ['memory'], system: facts(memoryBase() + 2 * perTask) }), [{ status: 'ok' }])
  t.match(await doctor({ configPath: path, only: ['memory'], system: facts(memoryBase() + 2 * memoryPerTask(DEFAULT_TUNING)) }), [{ status: 'problem', fix: /lower concurrency to 0/ }],
    'what the defaults need is not enough')
  await writeFile(path, JSON.stringify({ queueUrl: 'https://sqs.us-east-1.amazonaws.com/1/q', replyQueueUrl: 'https://sqs.us-east-1.amazonaws.com/1/r', repository: 's3://b/p', tuning: { packSize: 12 } }))
  t.match(await doctor({ configPath: path, only: ['config'] }), [{ status: 'problem', detail: /tuning\.packSize/ }], 'a tuning knob out of its bounds is a configuration problem')
})
