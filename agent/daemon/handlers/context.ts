// What a task handler works with: the daemon's settings and tuning, this worker's volumes, its
// AWS clients, the repositories, the log. One handler per task type (handlers/index.ts).
import type { EBSClient } from '@aws-sdk/client-ebs'
import type { KMSClient } from '@aws-sdk/client-kms'
import type { EbsWorkerError } from '../../core/errors.ts'
import type { Tuning } from '../../core/tuning.ts'
import type { Volumes } from '../../aws/volumes.ts'
import type { Repository } from '../../repo/repository.ts'
import type { DaemonConfig } from '../config.ts'
import type { Log } from '../../core/log.ts'
import type { Task } from '../task.ts'

export interface TaskContext {
  config: DaemonConfig
  tuning: Tuning
  volumes: Volumes
  kms: KMSClient
  ebs: EBSClient
  /** The task's logger: its lines carry taskId and taskType. */
  log: Log
  /** Reports bytes a running task moved since its last report (the BytesMoved metric, every progressLogSeconds). */
  moved?: (bytes: number) => void
  /**
   * A repository (the configured one when `url` is undefined), opened once. A `url` the
   * configuration does not allow is REPOSITORY_NOT_ALLOWED, a malformed one BAD_INPUT.
   */
  repository(url: string | undefined): Promise<Repository>
  /** Throws unless the configuration allows a task to name `url` (see `repository`). */
  checkRepository(url: string): void
}

/** Runs one task of type T; resolves to the figures of its `succeeded` reply. */
export type Handler<T extends Task['type']> = (task: Extract<Task, { type: T }>, ctx: TaskContext, signal: AbortSignal) => Promise<Record<string, unknown>>

/** A progress callback that logs a line every progressLogSeconds: long tasks show they move. */
export function progressLog(ctx: TaskContext): (p: { bytesDone: number; bytesTotal: number }) => void {
  const started = Date.now()
  let last = started
  let first: number | null = null
  let reported: number | null = null
  return (p) => {
    first ??= p.bytesDone // a resumed task starts part-way
    reported ??= p.bytesDone
    const now = Date.now()
    if (now - last < ctx.config.progressLogSeconds * 1000) return
    last = now
    const rate = (p.bytesDone - first) / ((now - started) / 1000)
    ctx.log.info({
      bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, percent: Math.floor((p.bytesDone / p.bytesTotal) * 1000) / 10,
      bytesPerSecond: Math.round(rate), secondsLeft: rate > 0 ? Math.round((p.bytesTotal - p.bytesDone) / rate) : null,
    }, 'task progress')
    // The fleet's throughput while long tasks run, not only when they end (the dashboard's "Bytes moved").
    if (p.bytesDone > reported) ctx.moved?.(p.bytesDone - reported)
    reported = Math.max(reported, p.bytesDone)
  }
}

/**
 * Thrown by a handler whose error is retryable for the sender but not worth SQS's redelivery: the
 * task fails at once with a reply (`retryable: true`) and its message is deleted. A prune that
 * finds another prune at work (REPO_LOCKED): that prune does the job, and the next scheduled one
 * comes anyway; redeliveries would only wait for it and end in the dead-letter queue.
 */
export class ReplyNow extends Error {
  readonly error: EbsWorkerError
  constructor(error: EbsWorkerError) {
    super(error.message)
    this.name = 'ReplyNow'
    this.error = error
  }
}

/** A progress callback for maintenance (phase, done, total) that logs a line every progressLogSeconds. */
export function phaseLog(ctx: TaskContext): (p: { phase: string; done: number; total: number }) => void {
  let last = Date.now()
  return (p) => {
    const now = Date.now()
    if (now - last < ctx.config.progressLogSeconds * 1000) return
    last = now
    ctx.log.info({ phase: p.phase, done: p.done, total: p.total }, 'task progress')
  }
}
