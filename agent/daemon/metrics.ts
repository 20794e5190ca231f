// CloudWatch metrics in Embedded Metric Format (EMF): one JSON object per line that CloudWatch
// Logs turns into metrics when the line reaches it (the CloudWatch agent ships the daemon's log
// file, packaging/cloudwatch-agent.json). Spec: "Specification: Embedded metric format" in the
// CloudWatch User Guide: a root object with `_aws: { Timestamp, CloudWatchMetrics: [MetricDirective] }`,
// each directive a Namespace, DimensionSets (arrays of member names whose values are strings) and
// Metrics ({ Name, Unit }) whose values are numeric members of the same root object. Members that
// are neither (the task id, the instance id) stay searchable in CloudWatch Logs Insights.
//
// Every metric carries the dimension Fleet (EBS_WORKER_FLEET, else "default"), so several fleets can
// share an account; task outcomes are also split by task type, outcome and error code. Prune and
// check tasks add their own figures (maintenanceMetrics), which the fleet's alarms watch.
import type { ReceivedMessage } from './queue.ts'
import type { TaskResult } from './task.ts'

export const NAMESPACE = 'EbsWorker'

export type EmfUnit = 'Seconds' | 'Bytes' | 'Bytes/Second' | 'Count'

export interface EmfDocument {
  _aws: {
    Timestamp: number
    CloudWatchMetrics: Array<{ Namespace: string; Dimensions: string[][]; Metrics: Array<{ Name: string; Unit: EmfUnit }> }>
  }
  [member: string]: unknown
}

/** One EMF document: `metrics` (name -> [value, unit]) under `dimensionSets` of the `dimensions`. */
export function emf(
  time: number,
  dimensions: Record<string, string>,
  dimensionSets: string[][],
  metrics: Record<string, [number, EmfUnit]>,
  properties: Record<string, unknown> = {},
): EmfDocument {
  for (const set of dimensionSets) {
    for (const d of set) if (!(d in dimensions)) throw new Error(`EMF dimension ${d} has no value`)
  }
  const values: Record<string, number> = {}
  for (const [name, [value]] of Object.entries(metrics)) values[name] = value
  return {
    ...properties,
    ...dimensions,
    ...values,
    _aws: {
      Timestamp: time,
      CloudWatchMetrics: [{
        Namespace: NAMESPACE,
        Dimensions: dimensionSets,
        Metrics: Object.entries(metrics).map(([Name, [, Unit]]) => ({ Name, Unit })),
      }],
    },
  }
}

/** The figures of a finished task, from its reply (or, for a transient failure, what is known). */
export interface TaskEnd {
  taskId: string
  type: string
  /** succeeded, failed, rejected; `retrying` for a transient failure left to SQS to redeliver. */
  status: TaskResult['status'] | 'retrying'
  startedAt: string
  finishedAt: string
  errorCode?: string | undefined
  result?: Record<string, unknown> | undefined
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0)

/** The EMF document for a finished task: count, duration, bytes, throughput. */
export function taskEndMetrics(fleet: string, instanceId: string, end: TaskEnd): EmfDocument {
  const finished = Date.parse(end.finishedAt)
  const seconds = Math.max(0, (finished - Date.parse(end.startedAt)) / 1000)
  const r = end.result ?? {}
  // A reused backup (a redelivered task finding its earlier backup) read nothing this time.
  const reused = r.reused === true
  const bytesRead = reused ? 0 : num(r.bytesRead)
  const bytesStored = reused ? 0 : num(r.bytesStored)
  const bytesWritten = num(r.bytesWritten)
  const moved = bytesRead + bytesWritten
  return emf(
    finished,
    { Fleet: fleet, TaskType: end.type, Outcome: end.status, ErrorCode: end.errorCode ?? 'none' },
    // Fleet+Outcome: the failure-rate alarm's metrics (alarms cannot use SEARCH), fleet.yaml.
    [['Fleet'], ['Fleet', 'Outcome'], ['Fleet', 'TaskType', 'Outcome'], ['Fleet', 'Outcome', 'ErrorCode']],
    {
      Tasks: [1, 'Count'],
      TaskDuration: [seconds, 'Seconds'],
      BytesRead: [bytesRead, 'Bytes'],
      BytesStored: [bytesStored, 'Bytes'],
      BytesWritten: [bytesWritten, 'Bytes'],
      Throughput: [seconds > 0 ? moved / seconds : 0, 'Bytes/Second'],
    },
    { event: 'metrics', taskId: end.taskId, instanceId },
  )
}

const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {})

/**
 * The maintenance figures of a finished task, from its reply: for a prune that changed the
 * repository (not a dry run), what it reclaimed, deleted and repacked and how long it took; for a
 * check, the damage it found (0 when healthy: the alarm on CheckProblems > 0 has a datapoint after
 * every check). Null for other tasks, failures and dry runs.
 */
export function maintenanceMetrics(fleet: string, instanceId: string, end: TaskEnd): EmfDocument | null {
  if (end.status !== 'succeeded' || !end.result) return null
  const r = end.result
  const time = Date.parse(end.finishedAt)
  const properties = { event: 'metrics', taskId: end.taskId, instanceId, repository: r.repository }
  if (end.type === 'prune' && r.dryRun !== true) {
    const packs = obj(r.packs)
    return emf(time, { Fleet: fleet }, [['Fleet']], {
      PruneBytesReclaimed: [Math.max(0, num(obj(r.bytes).reclaimed)), 'Bytes'],
      PrunePacksDeleted: [num(packs.deleted), 'Count'],
      PrunePacksRepacked: [num(packs.repacked), 'Count'],
      PruneBackupsForgotten: [num(obj(r.forget).forgotten), 'Count'],
      PruneDuration: [num(r.durationMs) / 1000, 'Seconds'],
    }, properties)
  }
  if (end.type === 'check') {
    return emf(time, { Fleet: fleet }, [['Fleet']], {
      CheckProblems: [num(r.damage), 'Count'],
      CheckDuration: [num(r.durationMs) / 1000, 'Seconds'],
    }, properties)
  }
  return null
}

/** The EMF document when a task starts: how long it waited in the queue. */
export function taskStartMetrics(fleet: string, instanceId: string, message: ReceivedMessage, now: number): EmfDocument {
  // Without SQS's SentTimestamp the wait is unknown: no QueueWait rather than a made-up 0.
  const wait: Record<string, [number, EmfUnit]> = message.sentAt !== undefined ? { QueueWait: [Math.max(0, (now - message.sentAt) / 1000), 'Seconds'] } : {}
  return emf(now, { Fleet: fleet }, [['Fleet']], { TasksStarted: [1, 'Count'], ...wait }, {
    event: 'metrics', messageId: message.messageId, receiveCount: message.receiveCount, instanceId,
  })
}

/** The periodic heartbeat: this worker is alive, and how many tasks it runs. */
export function heartbeatMetrics(fleet: string, instanceId: string, running: number, now: number): EmfDocument {
  return emf(now, { Fleet: fleet, InstanceId: instanceId }, [['Fleet'], ['Fleet', 'InstanceId']], {
    Heartbeat: [1, 'Count'],
    TasksRunning: [running, 'Count'],
  }, { event: 'metrics' })
}

/** A volume sweep's figures (aws/volume-sweep.ts): orphaned task volumes deleted, and deletions that failed. */
export function volumeSweepMetrics(fleet: string, instanceId: string, figures: { deleted: number; failed: number; kept: number }, now: number): EmfDocument {
  return emf(now, { Fleet: fleet }, [['Fleet']], {
    OrphanVolumesDeleted: [figures.deleted, 'Count'],
    OrphanVolumeDeletesFailed: [figures.failed, 'Count'],
  }, { event: 'metrics', instanceId, volumesKept: figures.kept })
}

export const HEARTBEAT_SECONDS = 60

/**
 * Bytes a running task moved (read from its volume or written to it) since its last report: sent
 * every progressLogSeconds while the task runs, so a long task shows on the fleet's graphs as it
 * goes rather than as one spike when it ends. Summed over time it is what the tasks moved (the end
 * metrics' BytesRead/BytesWritten count whole tasks and are not part of this sum).
 */
export function progressMetrics(fleet: string, instanceId: string, taskType: string, bytes: number, now: number): EmfDocument {
  return emf(now, { Fleet: fleet, TaskType: taskType }, [['Fleet'], ['Fleet', 'TaskType']], {
    BytesMoved: [bytes, 'Bytes'],
  }, { event: 'metrics', instanceId })
}

/** What the environment says about metrics: EBS_WORKER_METRICS=off, EBS_WORKER_FLEET. */
export interface MetricsSettings {
  enabled?: boolean
  /** The Fleet dimension (default "default"). */
  fleet?: string
}

/** Writes EMF lines (stdout by default: the unit appends it to the log file the agent ships). */
export class MetricsEmitter {
  readonly #write: (line: string) => void
  readonly #fleet: string
  #instanceId = 'unknown'
  #heartbeat: NodeJS.Timeout | null = null
  #beat: () => void = () => {}

  /** `enabled: false`: no metric lines (EBS_WORKER_METRICS=off, a daemon run by hand on a terminal, say). */
  constructor(options: MetricsSettings & { write?: (line: string) => void } = {}) {
    this.#write = options.enabled === false ? () => {} : (options.write ?? ((line) => process.stdout.write(line)))
    this.#fleet = options.fleet ?? 'default'
  }

  #emit(doc: EmfDocument): void {
    this.#write(JSON.stringify(doc) + '\n')
  }

  /**
   * Starts the heartbeat: every HEARTBEAT_SECONDS while `alive` says the worker works (one that
   * cannot receive tasks sends none, and the missing beats raise the alarm). beat() sends one at
   * once, when the worker becomes able to work.
   */
  start(instanceId: string, running: () => number, alive: () => boolean = () => true, everyMs = HEARTBEAT_SECONDS * 1000): void {
    this.#instanceId = instanceId
    this.#beat = () => {
      if (alive()) this.#emit(heartbeatMetrics(this.#fleet, instanceId, running(), Date.now()))
    }
    this.#heartbeat = setInterval(this.#beat, everyMs)
    this.#heartbeat.unref()
  }

  /** A heartbeat now (if the worker is alive). */
  beat(): void {
    this.#beat()
  }

  stop(): void {
    if (this.#heartbeat) clearInterval(this.#heartbeat)
    this.#heartbeat = null
    this.#beat = () => {}
  }

  /** A running task moved `bytes` since its last report (progressMetrics). */
  taskProgress(taskType: string, bytes: number): void {
    this.#emit(progressMetrics(this.#fleet, this.#instanceId, taskType, bytes, Date.now()))
  }

  taskStarted(message: ReceivedMessage): void {
    this.#emit(taskStartMetrics(this.#fleet, this.#instanceId, message, Date.now()))
  }

  volumeSweep(figures: { deleted: number; failed: number; kept: number }): void {
    this.#emit(volumeSweepMetrics(this.#fleet, this.#instanceId, figures, Date.now()))
  }

  taskEnded(end: TaskEnd): void {
    this.#emit(taskEndMetrics(this.#fleet, this.#instanceId, end))
    const maintenance = maintenanceMetrics(this.#fleet, this.#instanceId, end)
    if (maintenance) this.#emit(maintenance)
  }
}
