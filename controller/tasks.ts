// The controller's only way to the worker fleet: tasks on the task queue, results on the reply
// queue (docs/TASKS.md, the schema in agent/daemon/task.ts, the one module the two programs share).
// Replies for tasks this run did not send are left on the queue for whoever sent them.
import { ChangeMessageVisibilityCommand, DeleteMessageCommand, ReceiveMessageCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs'
import type { AwsClients } from '../agent/aws/clients.ts'
import { ownClients } from './aws.ts'
import { task as taskSchema, taskResult, type Task, type TaskResult } from '../agent/daemon/task.ts'
import { EbsWorkerError, ErrorCode, describe, isKnownCode, type ErrorContext } from '../agent/core/errors.ts'

export interface TaskChannelOptions {
  queueUrl: string
  replyQueueUrl: string
  /** How long a task may take before the controller gives up on it. */
  timeoutMs: number
}

export class TaskChannel {
  readonly #o: TaskChannelOptions
  readonly #aws: AwsClients
  readonly #sqs: SQSClient
  readonly #pending = new Map<string, (r: TaskResult) => void>()
  #polling: Promise<void> | null = null
  #closed = false

  constructor(options: TaskChannelOptions) {
    this.#o = options
    this.#aws = ownClients()
    this.#sqs = this.#aws.sqs()
  }

  /** Sends a task and resolves with its result (succeeded, failed or rejected); times out as configured. */
  async run(task: Task): Promise<TaskResult> {
    const checked = taskSchema.safeParse(task)
    if (!checked.success) throw new EbsWorkerError(ErrorCode.BadInput, `the controller built an invalid task ${task.taskId}: ${checked.error.message}`)
    const result = new Promise<TaskResult>((resolve) => this.#pending.set(task.taskId, resolve))
    await this.#sqs.send(new SendMessageCommand({ QueueUrl: this.#o.queueUrl, MessageBody: JSON.stringify(task) }))
    this.#polling ??= this.#poll()
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new EbsWorkerError(ErrorCode.TaskTimeout,
        `no worker answered task ${task.taskId} (${task.type}) within ${Math.round(this.#o.timeoutMs / 1000)} s: are workers running on ${this.#o.queueUrl}?`)), this.#o.timeoutMs)
    })
    try {
      return await Promise.race([result, timeout])
    } finally {
      clearTimeout(timer)
      this.#pending.delete(task.taskId)
    }
  }

  async #poll(): Promise<void> {
    while (!this.#closed) {
      if (!this.#pending.size) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        continue
      }
      let messages
      try {
        messages = (await this.#sqs.send(new ReceiveMessageCommand({
          QueueUrl: this.#o.replyQueueUrl, WaitTimeSeconds: 5, MaxNumberOfMessages: 10,
        }))).Messages ?? []
      } catch (err) {
        if (this.#closed) return
        process.stderr.write(`ebs-controller: receiving replies failed, retrying: ${describe(err)}\n`)
        await new Promise((resolve) => setTimeout(resolve, 1000))
        continue
      }
      for (const m of messages) {
        let parsed: TaskResult | null = null
        try {
          const r = taskResult.safeParse(JSON.parse(m.Body ?? ''))
          parsed = r.success ? r.data : null
        } catch {
          parsed = null
        }
        const waiting = parsed ? this.#pending.get(parsed.taskId) : undefined
        if (parsed && waiting) {
          await this.#sqs.send(new DeleteMessageCommand({ QueueUrl: this.#o.replyQueueUrl, ReceiptHandle: m.ReceiptHandle! }))
          waiting(parsed)
        } else {
          // Someone else's reply: visible again at once for its owner.
          await this.#sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: this.#o.replyQueueUrl, ReceiptHandle: m.ReceiptHandle!, VisibilityTimeout: 0 })).catch(() => {})
        }
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    await this.#polling?.catch(() => {})
    this.#aws.destroy()
  }
}

/**
 * The result's figures, or the worker's failure as ours: the same code (one error type for agent
 * and controller, agent/core/errors.ts), its context, and the task, the worker and `what` failed.
 */
export function succeeded(r: TaskResult, what: string): Record<string, unknown> {
  if (r.status === 'succeeded') return r.result ?? {}
  const code = r.error && isKnownCode(r.error.code) ? r.error.code : ErrorCode.TaskFailed
  // An access problem of the worker: whose policies to look at.
  const whose = code === ErrorCode.AccessDenied ? ' (the worker role: its policy and the key policy, packaging/iam/worker-ebs-statements.json and key-policy-*.json)' : ''
  throw new EbsWorkerError(code,
    `${what}: worker ${r.worker} ${r.status === 'rejected' ? 'rejected' : 'failed'} task ${r.taskId}: ${r.error?.code ?? 'UNKNOWN'}: ${r.error?.message ?? ''}${whose}`,
    { context: { ...(r.error?.context as ErrorContext | undefined), taskId: r.taskId, taskType: r.type, worker: r.worker } })
}
