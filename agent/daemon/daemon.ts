// `ebs-worker daemon`: takes tasks from SQS and answers on the reply queue. Each message ends in
// exactly one of: a result (succeeded, failed permanently, or rejected as not a valid task) and
// its deletion; or, for a transient failure, no deletion, so SQS redelivers it and the queue's
// redrive policy eventually parks it in the dead-letter queue.
import type { EBSClient } from '@aws-sdk/client-ebs'
import type { KMSClient } from '@aws-sdk/client-kms'
import { GetQueueAttributesCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs'
import { AwsClients } from '../aws/clients.ts'
import { openRepository } from '../app/repository.ts'
import { backup } from '../pipeline/backup.ts'
import { restore } from '../pipeline/restore.ts'
import type { DaemonSettings } from './config.ts'
import { assertVolumeDevice, waitForEbsDevice } from '../device/ebs-device.ts'
import { EbsWorkerError, ErrorCode, describe, isEbsWorkerError, toErrorJson, withContext } from '../core/errors.ts'
import { whoAmI, type WorkerIdentity } from '../aws/identity.ts'
import { MetricsEmitter } from './metrics.ts'
import { listBlocks, type BlockQuery } from '../aws/snapshot-blocks.ts'
import type { ByteRange } from '../core/geometry.ts'
import { assertShareableKey } from '../aws/kms.ts'
import { QueueConsumer, type ReceivedMessage } from './queue.ts'
import type { Repository } from '../repo/repository.ts'
import { parseTask, TASK_PROTOCOL_VERSION, type Task, type TaskResult } from './task.ts'
import { TASK_ID_TAG, Volumes } from '../aws/volumes.ts'

/** What a task's checkpoint and task record are saved under in the repository. */
const taskKey = (taskId: string): string => `task:${taskId}`

/** On a restored volume: the backup it holds, complete and synced (a redelivered task skips the restore). */
const RESTORED_TAG = 'ebs-worker:restored-backup'


export interface DaemonLog {
  info(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

/** One JSON object per line on stderr: what journald and the CloudWatch agent pick up. */
export const jsonLog: DaemonLog = {
  info: (msg, fields) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg, ...fields }) + '\n'),
  error: (msg, fields) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'error', msg, ...fields }) + '\n'),
}

/** What a read needs to know, from a `read` task or the read step of a `backup` task. */
interface ReadSpec {
  repository?: string | undefined
  parentBackupId?: string | undefined
  /** The snapshot the volume was made from, and the parent backup's: EBS lists the blocks to read. */
  snapshotId?: string | undefined
  parentSnapshotId?: string | undefined
  tags?: Record<string, string> | undefined
}

export class Daemon {
  readonly #config: DaemonSettings
  readonly #log: DaemonLog
  #aws: AwsClients | null = null
  #sqs: SQSClient | null = null
  #identity: WorkerIdentity | null = null
  #volumes: Volumes | null = null
  #kms: KMSClient | null = null
  #ebs: EBSClient | null = null
  #consumer: QueueConsumer | null = null
  #repos = new Map<string, Promise<Repository>>()
  /** The task queue's maxReceiveCount, when it has a dead-letter queue. */
  #maxReceiveCount: number | null = null
  readonly #metrics: MetricsEmitter

  constructor(settings: DaemonSettings, log: DaemonLog = jsonLog) {
    this.#config = settings
    this.#log = log
    this.#metrics = new MetricsEmitter(settings.metrics)
  }

  async start(): Promise<void> {
    const imdsEndpoint = this.#config.imdsEndpoint ?? this.#config.aws.imdsEndpoint
    this.#identity = await whoAmI(imdsEndpoint ? { endpoint: imdsEndpoint } : {})
    // The SDK clients only now: without AWS_REGION the Region is this instance's, from IMDS.
    // Volumes, snapshots and keys are always this instance's Region's.
    this.#aws = new AwsClients({ ...this.#config.aws, region: this.#config.aws.region ?? this.#identity.region })
    this.#sqs = this.#aws.sqs()
    this.#kms = this.#aws.kms(this.#identity.region)
    this.#ebs = this.#aws.ebs(this.#identity.region)
    this.#volumes = new Volumes({
      client: this.#aws.ec2(this.#identity.region),
      identity: this.#identity,
      roots: this.#config.deviceRoots,
      deviceTimeoutMs: this.#config.deviceTimeoutSeconds * 1000,
    })
    this.#maxReceiveCount = await this.#readMaxReceiveCount()
    this.#consumer = new QueueConsumer({
      client: this.#sqs,
      queueUrl: this.#config.queueUrl,
      concurrency: this.#config.concurrency,
      waitTimeSeconds: this.#config.waitTimeSeconds,
      visibilityTimeout: this.#config.visibilityTimeoutSeconds,
      maxVisibilitySeconds: this.#config.maxVisibilitySeconds,
      handler: (m, signal) => this.#handle(m, signal),
      onError: (err, context) => this.#log.error(context, { error: describe(err) }),
    })
    this.#consumer.start()
    this.#metrics.start(this.#identity.instanceId, () => this.#consumer?.active ?? 0)
    this.#log.info('started', {
      instanceId: this.#identity.instanceId, region: this.#identity.region, queueUrl: this.#config.queueUrl, maxReceiveCount: this.#maxReceiveCount,
    })
  }

  /** Stops taking tasks; running ones get the configured grace, then are handed back. */
  async stop(): Promise<void> {
    this.#log.info('stopping', { running: this.#consumer?.active ?? 0 })
    await this.#consumer?.stop(this.#config.shutdownGraceSeconds * 1000)
    this.#metrics.stop()
    this.#aws?.destroy()
    this.#log.info('stopped')
  }

  async #handle(message: ReceivedMessage, signal: AbortSignal): Promise<void> {
    const startedAt = new Date().toISOString()
    this.#metrics.taskStarted(message)
    const parsed = parseTask(message.body)
    if (!parsed.ok) {
      this.#log.error('task rejected', { messageId: message.messageId, code: parsed.code, reason: parsed.reason })
      await this.#reply({
        taskId: parsed.taskId ?? `message:${message.messageId}`, type: 'unknown', status: 'rejected', startedAt,
        error: { code: parsed.code, message: parsed.reason, retryable: false },
      })
      return
    }
    const task = parsed.task
    this.#log.info('task started', { taskId: task.taskId, type: task.type, receiveCount: message.receiveCount, continuation: message.continuation })
    try {
      const result = await this.#run(task, signal)
      await this.#reply({ taskId: task.taskId, type: task.type, status: 'succeeded', startedAt, result })
      this.#log.info('task succeeded', { taskId: task.taskId, type: task.type, ...result })
    } catch (caught) {
      const err = withContext(caught, { taskId: task.taskId, taskType: task.type, messageId: message.messageId })
      if (err.retryable || signal.aborted) {
        // Transient: SQS redelivers the message, and parks it in the DLQ after maxReceiveCount
        // receives. The last attempt tells the controller, which would otherwise wait for ever.
        const last = !signal.aborted && this.#maxReceiveCount !== null && message.receiveCount >= this.#maxReceiveCount
        this.#log.error(last ? 'task failed on its last attempt' : 'task failed, will be retried', {
          taskId: task.taskId, code: err.code, error: describe(err), receiveCount: message.receiveCount, context: err.context,
        })
        if (last) {
          err.message += ` (attempt ${message.receiveCount} of ${this.#maxReceiveCount}; the task goes to the dead-letter queue)`
          await this.#reply({ taskId: task.taskId, type: task.type, status: 'failed', startedAt, error: toErrorJson(err) })
        } else {
          this.#metrics.taskEnded({ taskId: task.taskId, type: task.type, status: 'retrying', startedAt, finishedAt: new Date().toISOString(), errorCode: err.code })
        }
        throw err
      }
      this.#log.error('task failed', { taskId: task.taskId, code: err.code, error: describe(err), context: err.context })
      await this.#reply({ taskId: task.taskId, type: task.type, status: 'failed', startedAt, error: toErrorJson(err) })
    }
  }

  /** The redrive policy's maxReceiveCount (null without a DLQ, or when it cannot be read). */
  async #readMaxReceiveCount(): Promise<number | null> {
    try {
      const out = await this.#sqs!.send(new GetQueueAttributesCommand({ QueueUrl: this.#config.queueUrl, AttributeNames: ['RedrivePolicy'] }))
      const policy = out.Attributes?.RedrivePolicy
      const max = policy ? Number((JSON.parse(policy) as { maxReceiveCount?: unknown }).maxReceiveCount) : NaN
      return Number.isInteger(max) && max > 0 ? max : null
    } catch (err) {
      this.#log.error('cannot read the task queue\'s redrive policy: the last attempt of a failing task will not be reported', { error: describe(err) })
      return null
    }
  }

  async #run(task: Task, signal: AbortSignal): Promise<Record<string, unknown>> {
    const volumes = this.#volumes!
    switch (task.type) {
      case 'read': {
        const made = await this.#madeBackup(task)
        if (made) return { ...made, volumeId: task.volumeId }
        await this.#checkParent(task)
        return this.#read(task.taskId, task.volumeId, task, signal)
      }
      case 'attach': {
        const { volumeId } = await volumes.createFromSnapshot(task.taskId, task.snapshotId, task.volume ?? {}, Boolean(task.sharedFromAccount))
        const device = await volumes.attachHere(volumeId, signal)
        return { volumeId, device: device.path, size: device.size }
      }
      case 'detach':
        return { volumeId: task.volumeId, ...(await volumes.release(task.volumeId, { delete: task.delete })) }
      case 'backup': {
        // attach + read + detach; the volume is released whatever the read's outcome. Redelivered
        // after the backup was made, the task reports it and removes a volume left behind;
        // before, it finds its volume (by tag) and its checkpoint again.
        const made = await this.#madeBackup(task)
        if (made) {
          const leftover = await volumes.findByTask(task.taskId)
          if (leftover) await volumes.release(leftover.VolumeId!, { delete: true })
          return { ...made, ...(leftover ? { volumeId: leftover.VolumeId } : {}) }
        }
        await this.#checkParent(task)
        const { volumeId } = await volumes.createFromSnapshot(task.taskId, task.snapshotId, task.volume ?? {}, Boolean(task.sharedFromAccount))
        try {
          await volumes.attachHere(volumeId, signal)
          return await this.#read(task.taskId, volumeId, task, signal)
        } finally {
          await volumes.release(volumeId, { delete: true }).catch((err: unknown) =>
            this.#log.error('could not release volume', { taskId: task.taskId, volumeId, error: describe(err) }))
        }
      }
      case 'restore':
        return this.#restore(task, signal)
    }
  }

  /** A new encrypted volume holding a backup, detached and ready for the controller. */
  async #restore(task: Extract<Task, { type: 'restore' }>, signal: AbortSignal): Promise<Record<string, unknown>> {
    const volumes = this.#volumes!
    const shareWith = task.snapshot?.shareWithAccount
    if (shareWith) {
      // Checked before anything is created: a snapshot under aws/ebs could never be shared.
      await assertShareableKey(this.#kms!, task.volume?.kmsKeyId ?? (await volumes.defaultKmsKeyId()))
    }
    const repo = await this.#repository(task.repository ?? this.#config.repository)
    const manifest = await repo.loadManifest(task.backupId)
    const sizeGiB = task.sizeGiB ?? Math.ceil(manifest.size / 1024 ** 3)
    if (sizeGiB * 1024 ** 3 < manifest.size) {
      throw new EbsWorkerError(ErrorCode.TargetTooSmall, `a ${sizeGiB} GiB volume cannot hold backup ${task.backupId} (${manifest.size} bytes)`)
    }
    const { volumeId, created, tags } = await volumes.createEmpty(task.taskId, sizeGiB, task.volume ?? {})
    let done = false
    let permanent = false
    try {
      let figures: Record<string, unknown>
      if (tags[RESTORED_TAG] === task.backupId) {
        // Redelivered after an earlier attempt restored the volume: only what came after is left.
        figures = { volumeId, backupId: task.backupId, sizeGiB, reused: true }
      } else {
        const device = await volumes.attachHere(volumeId, signal)
        // Before anything is opened for writing: the device must be this volume (its NVMe serial).
        await assertVolumeDevice(device.path, volumeId, this.#config.deviceRoots)
        // Zero chunks are skipped only on a volume this attempt created: one left by an earlier
        // attempt may hold part of the data already (its checkpoint says which).
        const result = await restore(repo, {
          backupId: task.backupId, device: device.path, freshTarget: created, signal,
          // Cut short (the visibility cap, SIGTERM, a crash), the next attempt goes on from here on the same volume.
          checkpoint: { key: taskKey(task.taskId), target: volumeId, intervalMs: this.#config.checkpointIntervalSeconds * 1000 },
          onProgress: this.#progressLog(task.taskId),
        })
        await volumes.tag(volumeId, { [RESTORED_TAG]: task.backupId })
        figures = {
          volumeId, backupId: task.backupId, sizeGiB, bytesWritten: result.bytesWritten, chunksVerified: result.chunksVerified, durationMs: result.durationMs,
          ...(result.resumedFrom ? { resumedFrom: result.resumedFrom } : {}),
        }
      }
      await volumes.release(volumeId, { delete: false })
      done = true
      if (!task.snapshot) return figures
      // The cross-account path: the controller builds the instance from this shared snapshot.
      const snapshotId = await volumes.snapshot(task.taskId, volumeId)
      if (shareWith) await volumes.share(snapshotId, shareWith)
      return { ...figures, snapshotId, ...(shareWith ? { sharedWith: shareWith } : {}) }
    } catch (err) {
      permanent = isEbsWorkerError(err) && !err.retryable && !signal.aborted
      throw err
    } finally {
      // A failed restore leaves no half-written volume attached. After a transient failure it is
      // kept (detached) for the retry, which finds it by its tag; after a permanent one no retry
      // comes, so it is deleted.
      if (!done) await volumes.release(volumeId, { delete: permanent }).catch((err: unknown) =>
        this.#log.error('could not release volume', { taskId: task.taskId, volumeId, error: describe(err) }))
    }
  }

  /** The backup an earlier attempt of this task made (its task record), as a reused result. */
  async #madeBackup(task: { taskId: string } & ReadSpec): Promise<Record<string, unknown> | null> {
    const repo = await this.#repository(task.repository ?? this.#config.repository)
    const made = await repo.findTaskBackup(taskKey(task.taskId))
    return made ? { backupId: made.id, reused: true, ...made.stats } : null
  }

  /** Backs up an attached volume (a task whose backup exists never gets here: #madeBackup). */
  async #read(
    taskId: string,
    volumeId: string,
    task: ReadSpec,
    signal: AbortSignal,
  ): Promise<Record<string, unknown>> {
    const repo = await this.#repository(task.repository ?? this.#config.repository)
    const device = await waitForEbsDevice(volumeId, {
      roots: this.#config.deviceRoots,
      timeoutMs: this.#config.deviceTimeoutSeconds * 1000,
      signal,
    })
    const listing = await this.#blockListing(taskId, task, device.size, signal)
    const result = await backup(repo, {
      device: device.path,
      ...(task.parentBackupId ? { parent: task.parentBackupId } : {}),
      ...listing.ranges,
      source: { volumeId, ...(task.snapshotId ? { snapshotId: task.snapshotId } : {}) },
      tags: { ...task.tags, [TASK_ID_TAG]: taskId },
      // A task cut short (the visibility cap, SIGTERM, a crash) goes on from here next time.
      checkpoint: { key: taskKey(taskId), intervalMs: this.#config.checkpointIntervalSeconds * 1000 },
      onProgress: this.#progressLog(taskId),
      signal,
    })
    return {
      backupId: result.id, volumeId, device: device.path, ...listing.figures, ...result.stats,
      ...(result.resumedFrom ? { resumedFrom: result.resumedFrom } : {}),
    }
  }

  /** A parent snapshot must be the one the parent backup was taken from; checked before any work. */
  async #checkParent(task: ReadSpec): Promise<void> {
    if (!task.parentSnapshotId) return
    if (!task.parentBackupId || !task.snapshotId) {
      throw new EbsWorkerError(ErrorCode.BadInput, 'parentSnapshotId needs parentBackupId (its backup) and snapshotId (the snapshot this volume holds)')
    }
    // Changed blocks are only as good as the claim that the parent backup holds that snapshot.
    const repo = await this.#repository(task.repository ?? this.#config.repository)
    const parent = await repo.loadManifest(task.parentBackupId)
    if (parent.source.snapshotId !== task.parentSnapshotId) {
      throw new EbsWorkerError(ErrorCode.BadInput,
        `parent backup ${parent.id} was taken from ${parent.source.snapshotId ?? 'no snapshot'}, not ${task.parentSnapshotId}: its changed blocks would not apply`)
    }
  }

  /**
   * Which blocks to read, from EBS: those changed since the parent snapshot, or those the
   * snapshot holds at all. Without a snapshot id, or when EBS cannot say (no permission, another
   * lineage…), every block is read: slower, never wrong.
   */
  async #blockListing(taskId: string, task: ReadSpec, deviceSize: number, signal: AbortSignal): Promise<{
    ranges: { changedRanges?: Iterable<ByteRange>; writtenRanges?: Iterable<ByteRange> }
    figures: Record<string, unknown>
  }> {
    if (!task.snapshotId) return { ranges: {}, figures: { blockListing: 'none' } }
    const query: BlockQuery = task.parentSnapshotId
      ? { kind: 'changed', firstSnapshotId: task.parentSnapshotId, secondSnapshotId: task.snapshotId }
      : { kind: 'written', snapshotId: task.snapshotId }
    const api = query.kind === 'changed' ? 'ListChangedBlocks' : 'ListSnapshotBlocks'
    try {
      const blocks = await listBlocks(this.#ebs!, query, deviceSize, signal)
      const figures = { blockListing: api, blocksListed: blocks.count, blockSize: blocks.blockSize }
      return { ranges: query.kind === 'changed' ? { changedRanges: blocks.ranges() } : { writtenRanges: blocks.ranges() }, figures }
    } catch (err) {
      if (signal.aborted) throw err
      this.#log.error('no block list from EBS; reading the whole volume', { taskId, api, error: describe(err) })
      return { ranges: {}, figures: { blockListing: 'none', blockListingError: `${api}: ${describe(err)}` } }
    }
  }

  /** A progress callback that logs a line every progressLogSeconds: long tasks show they move. */
  #progressLog(taskId: string): (p: { bytesDone: number; bytesTotal: number }) => void {
    const started = Date.now()
    let last = started
    let first: number | null = null
    return (p) => {
      first ??= p.bytesDone // a resumed task starts part-way
      const now = Date.now()
      if (now - last < this.#config.progressLogSeconds * 1000) return
      last = now
      const rate = (p.bytesDone - first) / ((now - started) / 1000)
      this.#log.info('task progress', {
        taskId, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, percent: Math.floor((p.bytesDone / p.bytesTotal) * 1000) / 10,
        bytesPerSecond: Math.round(rate), secondsLeft: rate > 0 ? Math.round((p.bytesTotal - p.bytesDone) / rate) : null,
      })
    }
  }

  #repository(url: string): Promise<Repository> {
    let repo = this.#repos.get(url)
    if (!repo) {
      repo = openRepository(url, { aws: this.#aws!, keyFile: this.#config.keyFile, tuning: this.#config.tuning })
      repo.catch(() => this.#repos.delete(url))
      this.#repos.set(url, repo)
    }
    return repo
  }

  async #reply(r: Omit<TaskResult, 'version' | 'worker' | 'finishedAt'>): Promise<void> {
    const result: TaskResult = {
      version: TASK_PROTOCOL_VERSION, worker: this.#identity?.instanceId ?? 'unknown', finishedAt: new Date().toISOString(), ...r,
    }
    await this.#sqs!.send(new SendMessageCommand({ QueueUrl: this.#config.replyQueueUrl, MessageBody: JSON.stringify(result) }))
    this.#metrics.taskEnded({ ...result, errorCode: result.error?.code })
  }
}
