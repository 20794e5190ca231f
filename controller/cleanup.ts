// What a run created, undone in reverse order when it fails (and, for what is temporary, when it
// succeeds). A step that fails is reported, never hidden: the caller says what could not be cleaned.
import { describe, EbsWorkerError, ErrorCode, withContext } from '../agent/core/errors.ts'
import { awsError } from '../agent/aws/errors.ts'

/** What a step found already gone (a volume EBS rolled back, a snapshot deleted by hand): nothing left to undo. */
const GONE: ReadonlySet<ErrorCode> = new Set([ErrorCode.VolumeNotFound, ErrorCode.SnapshotNotFound, ErrorCode.InstanceNotFound])

export interface CleanupReport {
  done: string[]
  failed: string[]
}

export class Cleanup {
  readonly #steps: Array<{ what: string; run: () => Promise<unknown> }> = []

  /** Registers an undo step, an EC2 call or a worker task; `what` names it in the report ("unshare snap-… from 222…"). */
  add(what: string, run: () => Promise<unknown>): void {
    this.#steps.push({ what, run })
  }

  /** Runs every step, last registered first; each failure is reported with its reason. */
  async run(): Promise<CleanupReport> {
    const report: CleanupReport = { done: [], failed: [] }
    while (this.#steps.length) {
      const step = this.#steps.pop()!
      try {
        await step.run()
        report.done.push(step.what)
      } catch (err) {
        // As ours (agent/aws/errors.ts): a worker task's failure already is, an EC2 call's becomes so.
        const e = awsError(err, { service: 'EC2', operation: step.what })
        if (GONE.has(e.code)) report.done.push(`${step.what} (already gone)`)
        else report.failed.push(`${step.what}: ${e.context.awsError ? `${e.context.awsError}: ` : ''}${describe(err)}`)
      }
    }
    return report
  }
}

/**
 * A run's failure once its cleanup ran: the error says what could not be undone (context
 * notCleaned, and in its message), and that a task no worker answered may still run later.
 */
export function failedAfterCleanup(err: unknown, failed: string[]): EbsWorkerError {
  const e = withContext(err, { notCleaned: failed })
  if (e.code === ErrorCode.TaskTimeout) {
    // A task message cannot be taken back from SQS: a worker may still run it later.
    e.message += '. The unanswered task stays on the queue until a worker runs it or it reaches the dead-letter queue'
  }
  if (failed.length) e.message += `. Could not clean up: ${failed.join('; ')}`
  return e
}
