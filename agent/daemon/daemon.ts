// `ebs-worker daemon`: takes tasks from SQS and answers on the reply queue. Each message ends in
// exactly one of: a result (succeeded, failed permanently, or rejected as not a valid task) and
// its deletion; or, for a transient failure, no deletion, so SQS redelivers it and the queue's
// redrive policy eventually parks it in the dead-letter queue. This is the service loop:
// receive, parse, run the task's handler (handlers/), reply, count; and the service's health:
// ready, watchdog pings and heartbeats only while it can receive from its queue.
import { GetQueueAttributesCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs'
import { AwsClients } from '../aws/clients.ts'
import { whoAmI, type WorkerIdentity } from '../aws/identity.ts'
import { Volumes } from '../aws/volumes.ts'
import { sweepVolumes } from '../aws/volume-sweep.ts'
import { EbsWorkerError, ErrorCode, toErrorJson, withContext } from '../core/errors.ts'
import { withDefaults } from '../core/tuning.ts'
import { openRepository } from '../app/repository.ts'
import type { Repository } from '../repo/repository.ts'
import { repositoryAllowed } from '../storage/open.ts'
import type { DaemonSettings } from './config.ts'
import { ReplyNow, runTask, type TaskContext } from './handlers/index.ts'
import { configureLog, log as rootLog, type Log } from '../core/log.ts'
import { completeLifecycleAction, LifecycleWatch, lifecycleStateReader, touchHealthStamp } from './auto-scaling.ts'
import { MetricsEmitter } from './metrics.ts'
import { QueueConsumer, type ReceivedMessage } from './queue.ts'
import { systemdNotifier, type SystemdNotifier } from './systemd.ts'
import { parseTask, TASK_PROTOCOL_VERSION, type TaskResult } from './task.ts'

/** Throws unless a task may name the repository `url` (REPOSITORY_NOT_ALLOWED; BAD_INPUT when malformed). */
function checkRepository(url: string, allowed: readonly string[]): void {
  let ok: boolean
  try {
    ok = repositoryAllowed(url, allowed)
  } catch (err) {
    throw withContext(err, { repository: url })
  }
  if (!ok) {
    throw new EbsWorkerError(ErrorCode.RepositoryNotAllowed,
      `the task's repository ${url} is not one this worker's configuration allows (allowedRepositories: ${allowed.join(', ')})`, { context: { repository: url } })
  }
}

/** How often a queue that keeps failing is logged again (its first failure is logged at once). */
const RECEIVE_FAILURE_LOG_MS = 60_000
/** How often the health stamp is marked while the daemon is healthy (`ebs-worker health-check` reads it). */
const HEALTH_STAMP_MS = 15_000

export class Daemon {
  readonly #settings: DaemonSettings
  readonly #log: Log
  readonly #metrics: MetricsEmitter
  readonly #systemd: SystemdNotifier
  #identity: WorkerIdentity | null = null
  #aws: AwsClients | null = null
  #sqs: SQSClient | null = null
  #consumer: QueueConsumer | null = null
  /** The task queue's maxReceiveCount, when it has a dead-letter queue. */
  #maxReceiveCount: number | null = null
  /** The receive failures since the last success, and when the last one was logged. */
  #failing: { since: number; count: number; loggedAt: number } | null = null
  #ready = false
  #lifecycle: LifecycleWatch | null = null
  #healthTimer: NodeJS.Timeout | null = null
  #sweepTimer: NodeJS.Timeout | null = null
  #stopping: Promise<void> | null = null
  /** Resolves when the daemon has ended by itself: drained for scale-in, its lifecycle hook completed. */
  readonly finished: Promise<void>
  #finish!: () => void

  /** `log`: where its lines go (default: the process's root logger, given the settings' level and fleet). */
  constructor(settings: DaemonSettings, log: Log = rootLog) {
    this.#settings = settings
    if (log === rootLog) configureLog({ level: settings.logLevel, bindings: { fleet: settings.metrics.fleet ?? 'default' } })
    this.#log = log
    this.#metrics = new MetricsEmitter(settings.metrics)
    this.finished = new Promise((resolve) => (this.#finish = resolve))
    // Does nothing outside a Type=notify unit; the watchdog is pinged only while the daemon is healthy.
    this.#systemd = systemdNotifier({
      env: settings.systemd, alive: () => this.healthy, onError: (err) => log.error({ error: err }, 'systemd-notify failed'),
    })
  }

  /** Whether it can take tasks: its last receive from the task queue succeeded, recently. */
  get healthy(): boolean {
    return this.#consumer?.receiving ?? false
  }

  /**
   * Learns who and where it is (IMDS), then builds its AWS clients (the Region: AWS_REGION, else
   * this instance's) and starts receiving. Readiness comes with the first successful receive.
   */
  async start(): Promise<void> {
    const s = this.#settings
    const imdsEndpoint = s.imdsEndpoint ?? s.aws.imdsEndpoint
    const identity = await whoAmI(imdsEndpoint ? { endpoint: imdsEndpoint } : {})
    this.#identity = identity
    // Every line from here on (the tasks' children included) says which worker wrote it.
    this.#log.setBindings({ instanceId: identity.instanceId })
    const region = s.aws.region ?? identity.region
    this.#aws = new AwsClients({ ...s.aws, region })
    this.#sqs = this.#aws.sqs()
    const tuning = withDefaults(s.tuning)
    const repos = new Map<string, Promise<Repository>>()
    // Each entry was checked when the configuration was read (config.ts).
    const allowed = [s.repository, ...(s.allowedRepositories ?? [])]
    const aws = this.#aws
    // Volumes, snapshots and their keys are this instance's Region's, whatever AWS_REGION says.
    const context: TaskContext = {
      config: s,
      tuning,
      volumes: new Volumes({
        client: aws.ec2(identity.region), identity, roots: s.deviceRoots, deviceTimeoutMs: s.deviceTimeoutSeconds * 1000, deviceNameWaitSeconds: s.deviceNameWaitSeconds,
      }),
      kms: aws.kms(identity.region),
      ebs: aws.ebs(identity.region),
      log: this.#log,
      checkRepository: (url) => checkRepository(url, allowed),
      repository: (url) => {
        if (url === undefined) url = s.repository
        else checkRepository(url, allowed)
        let repo = repos.get(url)
        if (!repo) {
          repo = openRepository(url, { aws, keyFile: s.keyFile, tuning })
          repo.catch(() => repos.delete(url))
          repos.set(url, repo)
        }
        return repo
      },
    }
    this.#maxReceiveCount = await this.#readMaxReceiveCount()
    this.#consumer = new QueueConsumer({
      client: this.#sqs,
      queueUrl: s.queueUrl,
      concurrency: s.concurrency,
      waitTimeSeconds: s.waitTimeSeconds,
      visibilityTimeout: s.visibilityTimeoutSeconds,
      maxVisibilitySeconds: s.maxVisibilitySeconds,
      handler: (m, signal) => this.#handle(m, context, signal),
      onReceived: () => this.#received(),
      onError: (err, what) => (what === 'receive' ? this.#receiveFailed(err) : this.#log.error({ error: err }, what)),
    })
    this.#metrics.start(identity.instanceId, () => this.#consumer?.active ?? 0, () => this.healthy)
    this.#consumer.start()
    this.#healthTimer = setInterval(() => void this.#stampHealth(), HEALTH_STAMP_MS)
    this.#healthTimer.unref()
    if (s.volumeSweep.enabled) {
      void this.#sweepVolumes()
      this.#sweepTimer = setInterval(() => void this.#sweepVolumes(), s.volumeSweep.intervalMinutes * 60_000)
      this.#sweepTimer.unref()
    }
    if (s.autoScaling) {
      this.#lifecycle = new LifecycleWatch({
        read: lifecycleStateReader(imdsEndpoint),
        pollMs: s.autoScaling.lifecyclePollSeconds * 1000,
        onTerminating: () => void this.#scaleIn(),
        // Read again at the next poll: a warning until it works.
        onError: (err) => this.#log.warn({ error: err }, 'cannot read the target lifecycle state from IMDS; trying again'),
      })
      this.#lifecycle.start()
    }
    this.#log.info({
      region, regionFrom: s.aws.region ? 'environment' : 'IMDS', queueUrl: s.queueUrl, maxReceiveCount: this.#maxReceiveCount, logLevel: this.#log.level,
    }, 'started')
  }

  /** Stops taking tasks; running ones get the configured grace, then are handed back. */
  async stop(): Promise<void> {
    this.#stopping ??= this.#drain().then(() => this.#teardown())
    await this.#stopping
  }

  async #drain(): Promise<void> {
    this.#systemd.stopping()
    this.#lifecycle?.stop()
    if (this.#healthTimer) clearInterval(this.#healthTimer)
    if (this.#sweepTimer) clearInterval(this.#sweepTimer)
    this.#log.info({ running: this.#consumer?.active ?? 0 }, 'stopping')
    await this.#consumer?.stop(this.#settings.shutdownGraceSeconds * 1000)
  }

  #teardown(): void {
    this.#metrics.stop()
    this.#aws?.destroy()
    this.#systemd.close()
    this.#log.info('stopped')
  }

  /**
   * The group is scaling this instance in (its target lifecycle state is Terminated): drain as on
   * SIGTERM, then complete the termination hook so the instance goes now, and end.
   */
  async #scaleIn(): Promise<void> {
    const as = this.#settings.autoScaling!
    this.#log.info({ groupName: as.groupName, running: this.#consumer?.active ?? 0 }, 'scale-in: draining before termination')
    this.#stopping ??= this.#drain().then(async () => {
      if (as.lifecycleHookName) {
        try {
          await completeLifecycleAction(this.#aws!.autoScaling(this.#identity!.region), {
            groupName: as.groupName, hookName: as.lifecycleHookName, instanceId: this.#identity!.instanceId,
          })
          this.#log.info({ groupName: as.groupName, lifecycleHookName: as.lifecycleHookName }, 'scale-in: lifecycle action completed')
        } catch (err) {
          // The hook's timeout and default result (CONTINUE) end it anyway, only later: a warning.
          this.#log.warn({ error: err }, 'scale-in: cannot complete the lifecycle action; the hook\'s timeout ends it')
        }
      }
      this.#teardown()
    })
    await this.#stopping
    this.#finish()
  }

  /** One volume sweep (aws/volume-sweep.ts): a log line with what it deleted and kept, and its metric. */
  async #sweepVolumes(): Promise<void> {
    const olderThanMinutes = this.#settings.volumeSweep.olderThanMinutes
    try {
      const out = await sweepVolumes({ client: this.#aws!.ec2(this.#identity!.region), olderThanMs: olderThanMinutes * 60_000 })
      const fields = { deleted: out.deleted, failed: out.failed, kept: out.kept.length, olderThanMinutes }
      if (out.failed.length) this.#log.error(fields, 'volume sweep: some orphaned task volumes could not be deleted')
      else this.#log.info(fields, 'volume sweep')
      this.#metrics.volumeSweep({ deleted: out.deleted.length, failed: out.failed.length, kept: out.kept.length })
    } catch (err) {
      this.#log.error({ error: err }, 'volume sweep failed')
    }
  }

  async #stampHealth(): Promise<void> {
    if (!this.healthy) return
    try {
      await touchHealthStamp(this.#settings.healthFile)
    } catch (err) {
      this.#log.error({ healthFile: this.#settings.healthFile, error: err }, 'cannot mark the health stamp')
    }
  }

  /** A receive succeeded: the first makes the service ready; one after failures says so. */
  #received(): void {
    if (!this.#ready || this.#failing) void this.#stampHealth()
    if (!this.#ready) {
      this.#ready = true
      this.#systemd.ready('polling for tasks')
      this.#metrics.beat()
      this.#log.info({ queueUrl: this.#settings.queueUrl }, 'receiving tasks')
    } else if (this.#failing) {
      this.#metrics.beat()
      this.#log.info({
        queueUrl: this.#settings.queueUrl, failures: this.#failing.count, seconds: Math.round((Date.now() - this.#failing.since) / 1000),
      }, 'receiving tasks again')
    }
    this.#failing = null
  }

  /** A receive failed: logged at once, then once a minute while it goes on (no readiness, pings or heartbeats meanwhile). */
  #receiveFailed(err: unknown): void {
    const now = Date.now()
    const first = this.#failing === null
    this.#failing ??= { since: now, count: 0, loggedAt: 0 }
    this.#failing.count++
    if (!first && now - this.#failing.loggedAt < RECEIVE_FAILURE_LOG_MS) return
    this.#failing.loggedAt = now
    this.#log.error({
      queueUrl: this.#settings.queueUrl, error: err, failures: this.#failing.count, seconds: Math.round((now - this.#failing.since) / 1000),
    }, first ? 'cannot receive from the task queue' : 'still cannot receive from the task queue')
  }

  async #handle(message: ReceivedMessage, context: TaskContext, signal: AbortSignal): Promise<void> {
    const startedAt = new Date().toISOString()
    this.#metrics.taskStarted(message)
    const parsed = parseTask(message.body)
    this.#log.debug({ messageId: message.messageId, receiveCount: message.receiveCount, bytes: message.body.length, valid: parsed.ok }, 'message received')
    if (!parsed.ok) {
      this.#log.error({ messageId: message.messageId, ...(parsed.taskId ? { taskId: parsed.taskId } : {}), error: { code: parsed.code, message: parsed.reason, retryable: false } }, 'task rejected')
      await this.#reply({
        taskId: parsed.taskId ?? `message:${message.messageId}`, type: 'unknown', status: 'rejected', startedAt,
        error: { code: parsed.code, message: parsed.reason, retryable: false },
      })
      return
    }
    const task = parsed.task
    // The task's own logger: every line of it, its handler's included, names the task.
    const log = this.#log.child({ taskId: task.taskId, taskType: task.type })
    log.info({ messageId: message.messageId, receiveCount: message.receiveCount, continuation: message.continuation }, 'task started')
    try {
      const moved = (bytes: number): void => this.#metrics.taskProgress(task.type, bytes)
      const result = await runTask(task, { ...context, log, moved }, signal)
      await this.#reply({ taskId: task.taskId, type: task.type, status: 'succeeded', startedAt, result })
      log.info({ result }, 'task succeeded')
    } catch (caught) {
      const now = caught instanceof ReplyNow
      const err = withContext(now ? caught.error : caught, { taskId: task.taskId, taskType: task.type, messageId: message.messageId })
      if ((err.retryable || signal.aborted) && !now) {
        // Transient: SQS redelivers the message, and parks it in the DLQ after maxReceiveCount
        // receives. The last attempt tells the controller, which would otherwise wait for ever.
        const last = !signal.aborted && this.#maxReceiveCount !== null && message.receiveCount >= this.#maxReceiveCount
        // An attempt SQS delivers again is a warning; the last one, an error.
        log[last ? 'error' : 'warn']({ error: err, receiveCount: message.receiveCount }, last ? 'task failed on its last attempt' : 'task failed, will be retried')
        if (last) {
          err.message += ` (attempt ${message.receiveCount} of ${this.#maxReceiveCount}; the task goes to the dead-letter queue)`
          await this.#reply({ taskId: task.taskId, type: task.type, status: 'failed', startedAt, error: toErrorJson(err) })
        } else {
          this.#metrics.taskEnded({ taskId: task.taskId, type: task.type, status: 'retrying', startedAt, finishedAt: new Date().toISOString(), errorCode: err.code })
        }
        throw err
      }
      log.error({ error: err }, 'task failed')
      await this.#reply({ taskId: task.taskId, type: task.type, status: 'failed', startedAt, error: toErrorJson(err) })
    }
  }

  /** The redrive policy's maxReceiveCount (null without a DLQ, or when it cannot be read). */
  async #readMaxReceiveCount(): Promise<number | null> {
    try {
      const out = await this.#sqs!.send(new GetQueueAttributesCommand({ QueueUrl: this.#settings.queueUrl, AttributeNames: ['RedrivePolicy'] }))
      const policy = out.Attributes?.RedrivePolicy
      const max = policy ? Number((JSON.parse(policy) as { maxReceiveCount?: unknown }).maxReceiveCount) : NaN
      return Number.isInteger(max) && max > 0 ? max : null
    } catch (err) {
      // The daemon works without it: a warning.
      this.#log.warn({ error: err }, 'cannot read the task queue\'s redrive policy: the last attempt of a failing task will not be reported')
      return null
    }
  }

  async #reply(r: Omit<TaskResult, 'version' | 'worker' | 'finishedAt'>): Promise<void> {
    const result: TaskResult = {
      version: TASK_PROTOCOL_VERSION, worker: this.#identity?.instanceId ?? 'unknown', finishedAt: new Date().toISOString(), ...r,
    }
    await this.#sqs!.send(new SendMessageCommand({ QueueUrl: this.#settings.replyQueueUrl, MessageBody: JSON.stringify(result) }))
    this.#metrics.taskEnded({ ...result, errorCode: result.error?.code })
  }
}
