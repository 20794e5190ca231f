// The daemon as a real child process, end to end: tasks on a real SQS (fauxqs), identity from
// the IMDS stand-in, a volume whose device is found by NVMe serial (a loop device in a device
// tree of the test's own), results on the reply queue.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateQueueCommand, DeleteMessageCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { attachLoop, cli, CLI, fakeNvme, makeImage, MiB, sha256File, tempDir } from './helpers.ts'
import { startImds } from './standin/imds.ts'

const VOL = 'vol-0123456789abcdef0'

t.test('the daemon runs read tasks, rejects bad ones, and stops on SIGTERM', async (t) => {
  const dir = await tempDir(t)
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const imds = await startImds({ instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' })
  t.teardown(() => imds.close())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!

  // The "attached volume": a loop device with an NVMe identity in the test's device tree.
  const image = join(dir, 'volume.img')
  await makeImage(image, 24 * MiB, [{ kind: 'random', offset: 2 * MiB, length: 5 * MiB }, { kind: 'text', offset: 12 * MiB, length: 3 * MiB }])
  const loop = attachLoop(t, image)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  await mkdir(roots.byIdDir, { recursive: true })
  await fakeNvme(roots, 'nvme1n1', loop, 'vol0123456789abcdef0', 'Amazon Elastic Block Store', 24 * MiB)

  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({
    queueUrl, replyQueueUrl, repository: repo, concurrency: 2, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30,
    shutdownGraceSeconds: 5, deviceTimeoutSeconds: 1, deviceRoots: roots, imdsEndpoint: imds.endpoint,
  }))
  const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
    env: { ...process.env, AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let log = ''
  daemon.stderr.on('data', (d) => (log += d))
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', (code) => resolve(code)))
  t.teardown(() => {
    daemon.kill('SIGKILL')
  })

  const replies = new Map<string, Record<string, any>>()
  async function send(body: string): Promise<void> {
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }))
  }
  /** Polls the reply queue until a reply satisfies `match`. */
  async function replyWhere(what: string, match: (r: Record<string, any>) => boolean): Promise<Record<string, any>> {
    const deadline = Date.now() + 30_000
    for (;;) {
      const found = [...replies.values()].find(match)
      if (found) return found
      if (Date.now() > deadline) throw new Error(`no reply for ${what}; daemon log:\n${log}`)
      const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: replyQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10 }))
      for (const m of out.Messages ?? []) {
        const r = JSON.parse(m.Body!)
        replies.set(r.taskId, r)
        await sqs.send(new DeleteMessageCommand({ QueueUrl: replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
      }
    }
  }
  const reply = (taskId: string) => replyWhere(taskId, (r) => r.taskId === taskId)

  const read = { version: 1, type: 'read', taskId: 'read-1', volumeId: VOL, tags: { instance: 'i-0abc' } }
  await send(JSON.stringify(read))
  const r1 = await reply('read-1')
  t.equal(r1.status, 'succeeded', 'read succeeded')
  t.equal(r1.worker, 'i-0123456789abcdef0', 'the reply names the worker, from IMDS')
  t.equal(r1.result.device, join(roots.devDir, 'nvme1n1'), 'the device was found by the volume id')
  const restored = join(dir, 'restored.img')
  await cli(['restore', '--repo', repo, '--backup', r1.result.backupId, '--device', restored])
  t.equal(await sha256File(restored), await sha256File(loop), 'the backup holds the volume, byte for byte')

  // The same task again, as SQS may redeliver it: the earlier backup is found, not repeated.
  replies.delete('read-1')
  await send(JSON.stringify(read))
  const r2 = await reply('read-1')
  t.equal(r2.result.backupId, r1.result.backupId, 'a redelivered task reports the same backup')
  t.equal(r2.result.reused, true, 'and says it reused it')
  t.equal((await cli(['list', '--repo', repo])).backups.length, 1, 'one backup in the repository')

  await send('{ not json')
  await send(JSON.stringify({ version: 1, type: 'format-disk', taskId: 'bad-type' }))
  await send(JSON.stringify({ version: 1, type: 'read', taskId: 'bad-field', volumeId: VOL, force: true }))
  await send(JSON.stringify({ version: 1, type: 'read', taskId: 'no-device', volumeId: 'vol-0000000000000000f' }))
  t.match(await reply('bad-type'), { status: 'rejected', error: { code: 'UNKNOWN_TYPE', retryable: false } }, 'unknown type rejected')
  t.match(await reply('bad-field'), { status: 'rejected', error: { code: 'INVALID_TASK', message: /force/ } }, 'extra field rejected')
  t.match(await reply('no-device'), { status: 'failed', error: { code: 'DEVICE_NOT_FOUND', retryable: false } }, 'a volume that never appears fails clearly')
  const junk = await replyWhere('the body that is not JSON', (r) => r.error?.code === 'INVALID_JSON')
  t.equal(junk.status, 'rejected', 'a body that is not JSON is rejected, with a reply')
  const attrs = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['All'] }))).Attributes!
  t.equal(Number(attrs.ApproximateNumberOfMessages) + Number(attrs.ApproximateNumberOfMessagesNotVisible), 0, 'every task message was settled and deleted')

  daemon.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM: the daemon stops cleanly')
  t.match(log, /"msg":"stopped"/, 'and says so')
})
