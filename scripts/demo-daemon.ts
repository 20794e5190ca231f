// `npm run demo:daemon` (as root: volumes become loop devices): the daemon path end to end on
// this machine. Starts a real SQS (fauxqs) and the IMDS, EC2 and KMS stand-ins, makes a snapshot
// of a sample disk, runs `ebs-worker daemon`, sends it a backup task and then a restore task,
// and prints what came back.
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { copyFile, mkdir, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CreateQueueCommand, DeleteMessageCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { Ec2StandIn } from '../test/standin/ec2.ts'
import { startImds } from '../test/standin/imds.ts'
import { KmsStandIn } from '../test/standin/kms.ts'
import { EbsStandIn } from '../test/standin/ebs.ts'

const MiB = 1024 * 1024
const root = new URL('..', import.meta.url).pathname
const work = process.env.EBS_WORKER_DEMO_DIR ?? join(tmpdir(), 'ebs-worker-daemon-demo')
const instance = { instanceId: 'i-0de30000000000001', accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1a' }

if (process.getuid?.() !== 0) {
  console.error('the daemon demo attaches volumes as loop devices: run it as root')
  process.exit(1)
}
await rm(work, { recursive: true, force: true })
await mkdir(work, { recursive: true })
const roots = { sysBlock: join(work, 'sys/block'), devDir: join(work, 'dev'), byIdDir: join(work, 'dev/disk/by-id') }

const fauxqs = await startFauxqs({ port: 0, logger: false })
const imds = await startImds(instance)
const kms = await new KmsStandIn([{ keyId: 'aws-ebs', accountId: instance.accountId, region: instance.region, keyManager: 'AWS', aliases: ['alias/aws/ebs'] }]).start()
const ec2 = await new Ec2StandIn({ instance, dir: join(work, 'volumes'), roots, bytesPerGiB: 16 * MiB, delayMs: 200, isAwsManagedKey: (r) => kms.resolve(r)?.keyManager === 'AWS' }).start()
const ebs = await new EbsStandIn({ ec2 }).start()
const sqs = new SQSClient({ endpoint: fauxqs.address, region: instance.region, credentials: { accessKeyId: 'demo', secretAccessKey: 'demo' } })
const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'ebs-worker-tasks' }))).QueueUrl!
const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'ebs-worker-results' }))).QueueUrl!

// A "production" snapshot: 8 GiB as the API sees it (128 MiB here), part random, part text.
const image = join(work, 'snapshot.img')
const h = await open(image, 'w')
await h.truncate(128 * MiB)
await h.write(randomBytes(24 * MiB), 0, 24 * MiB, 8 * MiB)
const text = Buffer.from('ebs-worker daemon demo\n'.repeat(500_000))
await h.write(text, 0, text.length, 64 * MiB)
await h.close()
const prodKey = `arn:aws:kms:${instance.region}:${instance.accountId}:key/prod`
const snapshotId = ec2.addSnapshot({ image, sizeGiB: 8, encrypted: true, kmsKeyId: prodKey, volumeId: 'vol-0d0d0d0d0d0d0d0d0' })
// The next day's snapshot of the same volume: 3 MiB rewritten.
const image2 = join(work, 'snapshot-2.img')
await copyFile(image, image2)
const h2 = await open(image2, 'r+')
await h2.write(randomBytes(3 * MiB), 0, 3 * MiB, 40 * MiB)
await h2.close()
const snapshot2 = ec2.addSnapshot({ image: image2, sizeGiB: 8, encrypted: true, kmsKeyId: prodKey, volumeId: 'vol-0d0d0d0d0d0d0d0d0' })

const repo = `file://${join(work, 'repo')}`
const run = (args: string[]) =>
  new Promise<void>((resolve, reject) =>
    spawn(process.execPath, [join(root, 'agent/bin/ebs-worker.ts'), ...args], { stdio: 'ignore' }).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`${args[0]} failed`)))))
await run(['init', '--repo', repo])
const config = join(work, 'config.json')
await writeFile(config, JSON.stringify({ queueUrl, replyQueueUrl, repository: repo, concurrency: 2, waitTimeSeconds: 1, deviceRoots: roots, imdsEndpoint: imds.endpoint }, null, 2))
const daemon = spawn(process.execPath, [join(root, 'agent/bin/ebs-worker.ts'), 'daemon', '--config', config], {
  env: { ...process.env, AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_ENDPOINT_URL_KMS: kms.endpoint, AWS_ENDPOINT_URL_EBS: ebs.endpoint, AWS_REGION: instance.region, AWS_ACCESS_KEY_ID: 'demo', AWS_SECRET_ACCESS_KEY: 'demo' },
  stdio: ['ignore', 'ignore', 'pipe'],
})
daemon.stderr.on('data', (d: Buffer) => {
  for (const line of d.toString().trim().split('\n')) {
    try {
      const j = JSON.parse(line)
      console.log(`  daemon: ${j.msg}${j.taskId ? ` (${j.taskId})` : ''}`)
    } catch {
      console.log(`  daemon: ${line}`)
    }
  }
})

async function task(body: Record<string, unknown>): Promise<Record<string, any>> {
  console.log(`\n-> ${JSON.stringify(body)}`)
  await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(body) }))
  for (;;) {
    const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: replyQueueUrl, WaitTimeSeconds: 1 }))
    for (const m of out.Messages ?? []) {
      await sqs.send(new DeleteMessageCommand({ QueueUrl: replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
      const r = JSON.parse(m.Body!)
      console.log(`<- ${r.status}: ${JSON.stringify(r.result ?? r.error)}`)
      if (r.taskId === body.taskId) return r
    }
  }
}

async function sha256(path: string, length: number): Promise<string> {
  const hash = createHash('sha256')
  for await (const c of createReadStream(path, { start: 0, end: length - 1 })) hash.update(c as Buffer)
  return hash.digest('hex')
}

let ok = false
try {
  const b = await task({ version: 1, type: 'backup', taskId: 'demo/backup-1', snapshotId })
  if (b.status !== 'succeeded') throw new Error('the backup task failed')
  // Incremental: EBS ListChangedBlocks between the two snapshots says what to read.
  const i = await task({ version: 1, type: 'backup', taskId: 'demo/backup-2', snapshotId: snapshot2, parentBackupId: b.result.backupId, parentSnapshotId: snapshotId })
  if (i.status !== 'succeeded') throw new Error('the incremental backup task failed')
  // sizeGiB as the API sees it (the stand-in's "GiB" is 16 MiB here).
  const r = await task({ version: 1, type: 'restore', taskId: 'demo/restore-1', backupId: b.result.backupId, sizeGiB: 8, volume: { volumeType: 'gp3' } })
  if (r.status !== 'succeeded') throw new Error('the restore task failed')
  const restored = ec2.volumes.get(r.result.volumeId)!
  ok = (await sha256(restored.file, 128 * MiB)) === (await sha256(image, 128 * MiB))
  console.log(`\nSummary
  backup   ${b.result.backupId}: volume ${b.result.volumeId} from ${snapshotId}, read ${(b.result.bytesRead / MiB).toFixed(0)} of 128 MiB (${b.result.blockListing}), stored ${(b.result.bytesStored / MiB).toFixed(1)} MiB; volume ${ec2.volumes.get(b.result.volumeId)!.state}
  backup   ${i.result.backupId}: incremental from ${snapshot2}, read ${(i.result.bytesRead / MiB).toFixed(0)} MiB (${i.result.blockListing}: ${i.result.blocksListed} blocks), stored ${(i.result.bytesStored / MiB).toFixed(1)} MiB
  restore  new volume ${r.result.volumeId} (${restored.state}, encrypted with ${restored.kmsKeyId})
  check    restored volume ${ok ? 'identical to the snapshot' : 'DIFFERS FROM THE SNAPSHOT'}
  files    ${work}`)
} catch (err) {
  console.error(`\n${(err as Error).message}`)
} finally {
  daemon.kill('SIGTERM')
  await new Promise((resolve) => daemon.on('exit', resolve))
  await ec2.close()
  await Promise.all([kms.close(), ebs.close(), imds.close(), fauxqs.stop()])
  sqs.destroy()
}
process.exit(ok ? 0 : 1)
