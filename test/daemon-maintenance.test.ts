// The repository's maintenance through a real daemon (a child process): prune and check tasks on a
// real SQS (fauxqs), with the IMDS stand-in, on a file:// repository and on the S3 test bed. A prune
// task forgets by its policy and reclaims the space, and the kept backups still restore byte for
// byte; a check task reports a deleted pack as damage; the metrics (EMF lines on the daemon's
// stdout, read back as CloudWatch Logs reads them) carry the figures of the replies; another prune
// at work makes a prune task fail at once with REPO_LOCKED, changing nothing; a malformed prune
// task is rejected for good; a prune that waits for a running backup keeps its message (heartbeats).
import t from 'tap'
import { spawn } from 'node:child_process'
import { readdir, rm, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateQueueCommand, DeleteMessageCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { NAMESPACE } from '../agent/daemon/metrics.ts'
import { LOCKS, PACKS, packObject } from '../agent/repo/layout.ts'
import { takeBackupLease, takePruneLock } from '../agent/repo/locks.ts'
import { Repository } from '../agent/repo/repository.ts'
import { cli, CLI, logWhere, makeImage, MiB, s3Available, s3RepoUrl, sha256File, storageAt, tempDir, type Teardown, until } from './helpers.ts'
import { startImds } from './standin/imds.ts'

const INSTANCE = { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' }

/** A daemon on fauxqs and the IMDS stand-in, its configured repository `repo`; its stdout (EMF) and stderr (log) kept. */
async function world(t: Teardown, repo: string, config: Record<string, unknown> = {}) {
  const dir = await tempDir(t)
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const imds = await startImds(INSTANCE)
  t.teardown(() => imds.close())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const file = join(dir, 'config.json')
  await writeFile(file, JSON.stringify({
    queueUrl, replyQueueUrl, repository: repo, concurrency: 2, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30, shutdownGraceSeconds: 5,
    imdsEndpoint: imds.endpoint, ...config,
  }))
  const state = { log: '', out: '' }
  // The test bed's S3 settings (AWS_ENDPOINT_URL_S3, its keys) come from the environment; fauxqs takes any keys.
  const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', file], {
    env: { ...process.env, AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_REGION: 'us-east-1', EBS_WORKER_FLEET: 'maint-fleet' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  daemon.stdout.on('data', (d) => (state.out += d))
  daemon.stderr.on('data', (d) => (state.log += d))
  t.teardown(() => {
    daemon.kill('SIGKILL')
  })
  const replies = new Map<string, Record<string, any>>()
  const send = async (body: unknown): Promise<void> => {
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(body) }))
  }
  const reply = async (taskId: string): Promise<Record<string, any>> => {
    const deadline = Date.now() + 120_000
    for (;;) {
      const found = replies.get(taskId)
      if (found) return found
      if (Date.now() > deadline) throw new Error(`no reply for ${taskId}; daemon log:\n${state.log}`)
      const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: replyQueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10 }))
      for (const m of out.Messages ?? []) {
        const r = JSON.parse(m.Body!)
        replies.set(r.taskId, r)
        await sqs.send(new DeleteMessageCommand({ QueueUrl: replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
      }
    }
  }
  /** Messages in the task queue, visible or not. */
  const inQueue = async (): Promise<number> => {
    const a = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['All'] }))).Attributes!
    return Number(a.ApproximateNumberOfMessages) + Number(a.ApproximateNumberOfMessagesNotVisible)
  }
  /** The metrics of the EMF line about `taskId` that has `metric`, as CloudWatch would read them (name -> value, unit, dimensions). */
  const metricsOf = (taskId: string, metric: string): Map<string, { value: number; unit: string; dimensions: string[][] }> | null => {
    // Whole lines only: the last one may still be arriving.
    for (const line of state.out.split('\n').slice(0, -1).filter(Boolean)) {
      const doc = JSON.parse(line) as Record<string, any>
      if (doc.taskId !== taskId) continue
      const directive = doc._aws.CloudWatchMetrics[0]
      if (directive.Namespace !== NAMESPACE || !directive.Metrics.some((m: { Name: string }) => m.Name === metric)) continue
      return new Map(directive.Metrics.map((m: { Name: string; Unit: string }) => [m.Name, { value: doc[m.Name], unit: m.Unit, dimensions: directive.Dimensions }]))
    }
    return null
  }
  return { dir, send, reply, replies, inQueue, metricsOf, state }
}

/** Backs up `image` at `time` as volume `volume`: a full backup of its own. */
async function backupAt(repo: string, image: string, volume: string, time: string): Promise<string> {
  return (await cli(['backup', '--repo', repo, '--device', image, '--volume-id', volume, '--time', time])).backupId
}

/** Every pack file of a file:// repository. */
async function packFiles(root: string): Promise<string[]> {
  const out: string[] = []
  for (const d of await readdir(join(root, PACKS))) for (const f of await readdir(join(root, PACKS, d))) out.push(join(root, PACKS, d, f))
  return out
}

t.test('a prune task forgets by its policy, reclaims the space, and the kept backups still restore', async (t) => {
  const dir = await tempDir(t)
  const root = join(dir, 'repo')
  const repo = `file://${root}`
  await cli(['init', '--repo', repo])
  // Volume a on three days, each time different data (no parent: no chunk shared); volume c once.
  const images: string[] = []
  for (const n of [1, 2, 3, 4]) {
    images.push(join(dir, `img-${n}.img`))
    await makeImage(images[n - 1]!, 4 * MiB, [{ kind: 'random', offset: 0, length: 3 * MiB }])
  }
  const a1 = await backupAt(repo, images[0]!, 'vol-0000000000000000a', '2026-11-20T05:00:00Z')
  const a2 = await backupAt(repo, images[1]!, 'vol-0000000000000000a', '2026-11-21T05:00:00Z')
  const a3 = await backupAt(repo, images[2]!, 'vol-0000000000000000a', '2026-11-22T05:00:00Z')
  const c1 = await backupAt(repo, images[3]!, 'vol-0000000000000000c', '2026-11-20T06:00:00Z')
  // Prune leaves unreferenced packs younger than an hour (a backup may be writing them): these are older.
  const past = new Date(Date.now() - 3 * 3600_000)
  for (const p of await packFiles(root)) await utimes(p, past, past)
  const packsBefore = (await packFiles(root)).length

  const w = await world(t, repo, { progressLogSeconds: 1 })
  // A dry run first: it says what the real one will do, and changes nothing.
  await w.send({ version: 1, type: 'prune', taskId: 'prune-dry', forget: { keepLast: 1 }, dryRun: true })
  const dry = await w.reply('prune-dry')
  t.equal(dry.status, 'succeeded', `the dry run succeeds ${JSON.stringify(dry.error ?? '')}`)
  t.match(dry.result, { dryRun: true, forget: { forgotten: 2, ids: [a2, a1] } }, 'it would forget the two older backups of volume a')
  t.ok(dry.result.packs.deleted > 0, `and delete packs (${dry.result.packs.deleted})`)
  t.same((await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id).sort(), [a1, a2, a3, c1].sort(), 'the dry run forgot nothing')
  t.equal((await packFiles(root)).length, packsBefore, 'and deleted nothing')
  t.equal(w.metricsOf('prune-dry', 'PruneBytesReclaimed'), null, 'and a dry run sends no prune metrics')

  await w.send({ version: 1, type: 'prune', taskId: 'maintenance/prune/2026-11-23T05:00:00Z', forget: { keepLast: 1 }, maxUnusedPercent: 0 })
  const r = await w.reply('maintenance/prune/2026-11-23T05:00:00Z')
  t.equal(r.status, 'succeeded', `the prune task succeeds ${JSON.stringify(r.error ?? '')}`)
  t.match(r.result, {
    repository: repo, dryRun: false, backups: 2, deferred: null,
    forget: { policy: { last: 1 }, groupBy: 'volume', groups: 2, kept: 2, forgotten: 2, ids: [a2, a1], ofRestorePoints: 0 },
  }, 'it forgot the two older backups of volume a, kept one per volume, and pruned')
  t.equal(r.result.packs.deleted, dry.result.packs.deleted, 'deleting the packs the dry run named')
  t.ok(r.result.bytes.reclaimed >= 4 * MiB, `reclaiming at least the two forgotten backups' data (${r.result.bytes.reclaimed} bytes)`)
  t.same((await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id).sort(), [a3, c1].sort(), 'the repository lists the kept backups')
  t.ok((await packFiles(root)).length < packsBefore, 'fewer packs than before')
  for (const [id, image] of [[a3, images[2]!], [c1, images[3]!]] as const) {
    const out = join(dir, `restored-${id}.img`)
    await cli(['restore', '--repo', repo, '--backup', id, '--device', out])
    t.equal(await sha256File(out), await sha256File(image), `kept backup ${id} restores byte for byte`)
  }
  t.equal((await cli(['check', '--repo', repo, '--read-data'])).healthy, true, 'and the repository checks clean, data included')

  // Its metrics: as replied, per fleet.
  await until(() => w.metricsOf('maintenance/prune/2026-11-23T05:00:00Z', 'PruneBytesReclaimed') !== null, 10_000, 'the prune\'s metrics')
  const m = w.metricsOf('maintenance/prune/2026-11-23T05:00:00Z', 'PruneBytesReclaimed')!
  t.ok(m, 'the prune task sent its metrics')
  t.match(m.get('PruneBytesReclaimed'), { value: r.result.bytes.reclaimed, unit: 'Bytes', dimensions: [['Fleet']] })
  t.match(m.get('PrunePacksDeleted'), { value: r.result.packs.deleted, unit: 'Count' })
  t.match(m.get('PrunePacksRepacked'), { value: r.result.packs.repacked, unit: 'Count' })
  t.match(m.get('PruneBackupsForgotten'), { value: 2, unit: 'Count' })
  t.match(m.get('PruneDuration'), { value: r.result.durationMs / 1000, unit: 'Seconds' })
  const line = w.state.out.split('\n').find((l) => l.includes('"PruneBytesReclaimed"'))!
  t.equal(JSON.parse(line).Fleet, 'maint-fleet', 'under the fleet\'s name')

  // A policy that keeps none of a volume's backups is refused, and nothing is forgotten.
  await w.send({ version: 1, type: 'prune', taskId: 'prune-tag-typo', forget: { keepTag: ['env=prdo'] } })
  t.match(await w.reply('prune-tag-typo'), { status: 'failed', error: { code: 'BAD_INPUT', message: /refusing to forget every one/, retryable: false } },
    'a policy that would empty a volume fails for good')
  t.equal((await cli(['list', '--repo', repo])).backups.length, 2, 'and forgets nothing')
  await until(async () => (await w.inQueue()) === 0, 10_000, 'the task queue to drain').catch(() => {})
  t.equal(await w.inQueue(), 0, 'every message was settled')
})

t.test('a malformed prune task is rejected for good, with a reply that says why', async (t) => {
  const dir = await tempDir(t)
  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const image = join(dir, 'a.img')
  await makeImage(image, 2 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const id = await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-20T05:00:00Z')
  const w = await world(t, repo)
  await w.send({ version: 1, type: 'prune', taskId: 'bad-prune-1', forget: {} })
  await w.send({ version: 1, type: 'prune', taskId: 'bad-prune-2', forget: { 'keep-daily': 7 } })
  await w.send({ version: 1, type: 'prune', taskId: 'bad-prune-3', maxUnusedPercent: '5%' })
  t.match(await w.reply('bad-prune-1'), { status: 'rejected', error: { code: 'INVALID_TASK', message: /policy that keeps something/, retryable: false } }, 'an empty policy')
  t.match(await w.reply('bad-prune-2'), { status: 'rejected', error: { code: 'INVALID_TASK', message: /keep-daily/, retryable: false } }, 'an option spelt as on the command line')
  t.match(await w.reply('bad-prune-3'), { status: 'rejected', error: { code: 'INVALID_TASK', message: /maxUnusedPercent/, retryable: false } }, 'a percentage as text')
  t.same((await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id), [id], 'nothing was forgotten')
  await until(async () => (await w.inQueue()) === 0, 10_000, 'the task queue to drain').catch(() => {})
  t.equal(await w.inQueue(), 0, 'and no message is left for another attempt')
})

t.test('another prune at work: the task fails at once with REPO_LOCKED, changing nothing, and is not redelivered', async (t) => {
  const dir = await tempDir(t)
  const root = join(dir, 'repo')
  const repo = `file://${root}`
  await cli(['init', '--repo', repo])
  const image = join(dir, 'a.img')
  await makeImage(image, 2 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  const ids = [
    await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-20T05:00:00Z'),
    await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-21T05:00:00Z'),
  ]
  const other = await takePruneLock(await Repository.open(storageAt(repo)))
  t.teardown(() => other.release())
  const w = await world(t, repo)
  await w.send({ version: 1, type: 'prune', taskId: 'locked-1', forget: { keepLast: 1 } })
  const r = await w.reply('locked-1')
  t.match(r, { status: 'failed', error: { code: 'REPO_LOCKED', message: /another prune/, retryable: true } }, 'REPO_LOCKED, retryable for the sender')
  t.same((await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id).sort(), ids.sort(), 'nothing was forgotten')
  await until(async () => (await w.inQueue()) === 0, 10_000, 'the task queue to drain').catch(() => {})
  t.equal(await w.inQueue(), 0, 'the message was deleted: no redelivery only to find the lock again')
  t.equal(logWhere(w.state.log, { msg: 'task failed', taskId: 'locked-1', level: 'error' }).length, 1, 'logged as failed, not as retried')
  t.notMatch(w.state.log, /task failed, will be retried/)
  // The other prune ends: the next task runs.
  await other.release()
  await w.send({ version: 1, type: 'prune', taskId: 'locked-2', forget: { keepLast: 1 } })
  t.match(await w.reply('locked-2'), { status: 'succeeded', result: { forget: { forgotten: 1 } } }, 'once it is free, a prune task runs')
  t.same(await readdir(join(root, LOCKS)), [], 'and leaves no lock behind')
})

t.test('a prune waiting for a running backup keeps its message invisible (heartbeats) and runs once', async (t) => {
  const dir = await tempDir(t)
  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const image = join(dir, 'a.img')
  await makeImage(image, 2 * MiB, [{ kind: 'random', offset: 0, length: MiB }])
  await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-20T05:00:00Z')
  // A backup "running" (its lease): prune condemns, then waits for it before deleting anything.
  const lease = await takeBackupLease(await Repository.open(storageAt(repo)), '20261120T050000Z-00000000')
  t.teardown(() => lease.release())
  // A 5 s visibility: without its heartbeat the message would reappear, and the second slot would take it.
  const w = await world(t, repo, { visibilityTimeoutSeconds: 5, progressLogSeconds: 1 })
  await w.send({ version: 1, type: 'prune', taskId: 'waits-1' })
  await until(() => logWhere(w.state.log, { msg: 'task progress', taskId: 'waits-1', phase: 'wait' }).length > 0, 60_000, 'the prune to wait for the backup')
  // Three visibility timeouts pass while it waits.
  await new Promise((resolve) => setTimeout(resolve, 15_000))
  await lease.release()
  const r = await w.reply('waits-1')
  t.equal(r.status, 'succeeded', `the prune succeeds once the backup ended ${JSON.stringify(r.error ?? '')}`)
  t.equal(r.result.deferred, null, 'having waited for it, not deferred')
  t.equal(logWhere(w.state.log, { msg: 'task started', taskId: 'waits-1' }).length, 1, 'the message was received once: its visibility was extended')
  t.equal(w.replies.size, 1, 'one reply')
})

t.test('a check task reports a deleted pack as damage, on the S3 test bed; CheckProblems carries the count', { skip: !s3Available && 'no S3 test bed (npm test starts one)' }, async (t) => {
  const dir = await tempDir(t)
  const repo = await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const image = join(dir, 'a.img')
  await makeImage(image, 6 * MiB, [{ kind: 'random', offset: 0, length: 5 * MiB }])
  const id = await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-20T05:00:00Z')
  const w = await world(t, repo)
  await w.send({ version: 1, type: 'check', taskId: 'check-healthy', readData: true })
  const ok = await w.reply('check-healthy')
  t.match(ok, { status: 'succeeded', result: { repository: repo, healthy: true, damage: 0, backups: 1, readData: 'all' } }, 'a healthy repository')
  // The metric line follows the reply (the task's end is counted once it is settled).
  await until(() => w.metricsOf('check-healthy', 'CheckProblems') !== null, 10_000, 'the check\'s metrics')
  t.match(w.metricsOf('check-healthy', 'CheckProblems')?.get('CheckProblems'), { value: 0, unit: 'Count', dimensions: [['Fleet']] }, 'CheckProblems 0: the alarm has its datapoint')

  // A data pack the backup needs goes missing.
  const r = await Repository.open(storageAt(repo))
  const packs = await r.listObjects(PACKS)
  let victim: string | null = null
  for (const p of packs) {
    const pack = p.name.split('/').pop()!
    if (!(await r.readPackTrailer(pack, p.size)).tree) victim = pack
  }
  t.ok(victim, 'the backup has a data pack')
  await storageAt(repo).delete(packObject(victim!))
  await w.send({ version: 1, type: 'check', taskId: 'check-damaged', readDataSubset: 'daily/1' })
  const bad = await w.reply('check-damaged')
  t.equal(bad.status, 'succeeded', `the check ran ${JSON.stringify(bad.error ?? '')}`)
  t.match(bad.result, { healthy: false, readData: '1/1' }, 'and found the repository damaged (daily/1: every pack)')
  t.ok(bad.result.damage >= 1, `damage counted (${bad.result.damage})`)
  t.match(bad.result.problems.find((p: { pack?: string }) => p.pack === victim), { severity: 'damage', kind: 'pack', backups: [id] }, 'the missing pack is named, with its backup')
  await until(() => w.metricsOf('check-damaged', 'CheckProblems') !== null, 10_000, 'the check\'s metrics')
  t.match(w.metricsOf('check-damaged', 'CheckProblems')?.get('CheckProblems'), { value: bad.result.damage, unit: 'Count' }, 'CheckProblems carries the damage count')
  t.equal(logWhere(w.state.log, { msg: 'task succeeded', taskId: 'check-damaged', taskType: 'check' }).length, 1, 'its log says so')
})

t.test('a check task on a file:// repository with a deleted pack, through the worker\'s configured repository', async (t) => {
  const dir = await tempDir(t)
  const root = join(dir, 'repo')
  const repo = `file://${root}`
  await cli(['init', '--repo', repo])
  const image = join(dir, 'a.img')
  await makeImage(image, 4 * MiB, [{ kind: 'random', offset: 0, length: 3 * MiB }])
  await backupAt(repo, image, 'vol-0000000000000000a', '2026-11-20T05:00:00Z')
  for (const p of await packFiles(root)) await rm(p)
  const w = await world(t, repo)
  await w.send({ version: 1, type: 'check', taskId: 'check-file' })
  const r = await w.reply('check-file')
  t.match(r, { status: 'succeeded', result: { healthy: false, readData: 'none' } }, 'damage is a result')
  t.ok(r.result.problems.length <= 50 && r.result.problems[0].severity === 'damage', 'problems listed, damage first')
})
