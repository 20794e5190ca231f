// The task queue consumer, in the manner of bbc's sqs-consumer: long-poll SQS, run up to N
// messages at once, keep each message invisible while its handler runs (a heartbeat extends the
// visibility), delete it only once the handler says its outcome is durable, and on stop hand
// unfinished messages back at once (visibility 0) instead of making them wait out their timeout.
// A handler that throws leaves its message to reappear: SQS redelivers it, and the queue's
// redrive policy moves it to the dead-letter queue after maxReceiveCount attempts.
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe } from '../core/errors.ts'

/** The abort reason when a message nears SQS's 12-hour visibility cap. */
export class VisibilityCapReached extends Error {
  constructor(messageId: string) {
    super(`message ${messageId} is near SQS's 12-hour visibility limit: the task carries on under a new message`)
    this.name = 'VisibilityCapReached'
  }
}

export interface ReceivedMessage {
  messageId: string
  body: string
  /** 1 on first delivery; SQS's ApproximateReceiveCount. */
  receiveCount: number
  /** 0, or how many times the task was carried over to a new message at the visibility cap. */
  continuation: number
  /** When it was sent (ms since the epoch; SQS's SentTimestamp), for the queue wait metric. */
  sentAt?: number
}

/** Message attribute counting carry-overs at the visibility cap. */
export const CONTINUATION_ATTRIBUTE = 'ebs-worker-continuation'

export interface QueueConsumerOptions {
  client: SQSClient
  queueUrl: string
  /** Messages handled at once. */
  concurrency: number
  /** Runs one message. Resolving means its outcome is durable: the message is then deleted. */
  handler: (message: ReceivedMessage, signal: AbortSignal) => Promise<void>
  /** Long-poll wait, 0–20 s. */
  waitTimeSeconds?: number
  /** Visibility set on receipt and on each heartbeat, seconds. */
  visibilityTimeout?: number
  /** How often the visibility is extended, seconds (default: a third of the timeout). */
  heartbeatSeconds?: number
  /**
   * SQS's cap on a message's total invisibility from its receipt: 12 hours. A handler still
   * running when less than two heartbeats are left is aborted with a VisibilityCapReached reason
   * (a backup then checkpoints), and the task carries on under a new message: the same body is
   * sent again and the old message deleted, so the carry-over does not count as a failed receive
   * towards the dead-letter queue. Lower only in tests.
   */
  maxVisibilitySeconds?: number
  /** Problems the loop survives (a failed receive, a failed heartbeat). */
  onError?: (err: unknown, context: string) => void
  /** After each ReceiveMessage that succeeded (with or without messages). */
  onReceived?: () => void
  /**
   * How long after its last successful receive the consumer stops counting as `receiving`
   * (default: two long polls and 10 s, so one poll in flight is not a gap).
   */
  receiveStaleSeconds?: number
}

export class QueueConsumer {
  readonly #options: Required<Omit<QueueConsumerOptions, 'onError' | 'onReceived'>> & Pick<QueueConsumerOptions, 'onError' | 'onReceived'>
  readonly #running = new Map<string, { abort: AbortController; done: Promise<void> }>()
  #polling: AbortController | null = null
  #loop: Promise<void> | null = null
  /** When the last receive succeeded (ms); null before the first and after one failed. */
  #lastReceived: number | null = null
  /** Every slot is busy: no receive is due until one frees. */
  #full = false

  constructor(options: QueueConsumerOptions) {
    const visibilityTimeout = options.visibilityTimeout ?? 300
    const waitTimeSeconds = options.waitTimeSeconds ?? 20
    this.#options = {
      heartbeatSeconds: Math.max(1, Math.floor(visibilityTimeout / 3)),
      maxVisibilitySeconds: 12 * 60 * 60,
      receiveStaleSeconds: 2 * waitTimeSeconds + 10,
      ...options,
      waitTimeSeconds,
      visibilityTimeout,
    }
  }

  get active(): number {
    return this.#running.size
  }

  /**
   * Whether this consumer can take tasks from its queue: it is polling, its last receive
   * succeeded, and recently (or every slot has been busy since, when none is due).
   */
  get receiving(): boolean {
    if (!this.#loop || this.#lastReceived === null) return false
    return this.#full || Date.now() - this.#lastReceived <= this.#options.receiveStaleSeconds * 1000
  }

  start(): void {
    if (this.#loop) return
    this.#polling = new AbortController()
    this.#loop = this.#poll(this.#polling.signal)
  }

  /**
   * Stops receiving; running handlers get `graceMs` to finish, then are aborted, and every
   * message not finished is made visible again at once for another worker.
   */
  async stop(graceMs: number): Promise<void> {
    this.#polling?.abort()
    await this.#loop
    this.#loop = null
    const all = Promise.allSettled([...this.#running.values()].map((r) => r.done))
    // The grace timer is cancelled once the handlers are done: left running, it would keep the
    // process alive for the rest of the grace after everything had stopped.
    const cancel = new AbortController()
    const timer = sleep(graceMs, 'timeout' as const, { signal: cancel.signal }).catch(() => 'done' as const)
    try {
      if ((await Promise.race([all.then(() => 'done' as const), timer])) === 'timeout') {
        for (const r of this.#running.values()) r.abort.abort(new Error('worker stopping'))
      }
    } finally {
      cancel.abort()
    }
    await Promise.allSettled([...this.#running.values()].map((r) => r.done))
  }

  async #poll(signal: AbortSignal): Promise<void> {
    const o = this.#options
    while (!signal.aborted) {
      const free = o.concurrency - this.#running.size
      if (free <= 0) {
        // Wait for a slot, or for stop(): it must not wait on handlers that wait on it.
        let onAbort = (): void => {}
        const stopped = new Promise<void>((resolve) => {
          onAbort = resolve
          signal.addEventListener('abort', onAbort, { once: true })
        })
        this.#full = true
        await Promise.race([stopped, ...[...this.#running.values()].map((r) => r.done)])
        this.#full = false
        // The time spent busy does not age the last receive: the next one is due only now.
        if (this.#lastReceived !== null) this.#lastReceived = Date.now()
        signal.removeEventListener('abort', onAbort)
        continue
      }
      let messages: Message[] = []
      try {
        const out = await o.client.send(
          new ReceiveMessageCommand({
            QueueUrl: o.queueUrl,
            MaxNumberOfMessages: Math.min(free, 10),
            WaitTimeSeconds: o.waitTimeSeconds,
            VisibilityTimeout: o.visibilityTimeout,
            MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
            MessageAttributeNames: [CONTINUATION_ATTRIBUTE],
          }),
          { abortSignal: signal },
        )
        messages = out.Messages ?? []
        this.#lastReceived = Date.now()
        o.onReceived?.()
      } catch (err) {
        if (signal.aborted) break
        this.#lastReceived = null
        o.onError?.(err, 'receive')
        await sleep(1000, undefined, { signal }).catch(() => {})
        continue
      }
      for (const m of messages) this.#run(m)
    }
  }

  /** The task goes on under a new message; the old one goes only once the new one is queued. */
  async #carryOver(message: ReceivedMessage, receipt: string): Promise<void> {
    const o = this.#options
    await o.client.send(new SendMessageCommand({
      QueueUrl: o.queueUrl,
      MessageBody: message.body,
      MessageAttributes: { [CONTINUATION_ATTRIBUTE]: { DataType: 'Number', StringValue: String(message.continuation + 1) } },
    }))
    await o.client.send(new DeleteMessageCommand({ QueueUrl: o.queueUrl, ReceiptHandle: receipt }))
  }

  #run(m: Message): void {
    const o = this.#options
    const id = m.MessageId!
    const receipt = m.ReceiptHandle!
    const abort = new AbortController()
    const message: ReceivedMessage = {
      messageId: id,
      body: m.Body ?? '',
      receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 1),
      continuation: Number(m.MessageAttributes?.[CONTINUATION_ATTRIBUTE]?.StringValue ?? 0) || 0,
      ...(m.Attributes?.SentTimestamp ? { sentAt: Number(m.Attributes.SentTimestamp) } : {}),
    }
    const setVisibility = (seconds: number): Promise<unknown> =>
      o.client.send(new ChangeMessageVisibilityCommand({ QueueUrl: o.queueUrl, ReceiptHandle: receipt, VisibilityTimeout: seconds }))
    const received = Date.now()
    const heartbeat = setInterval(() => {
      const left = o.maxVisibilitySeconds - (Date.now() - received) / 1000
      // Whole seconds only: with under 2 s left the next extension could only be 0 s, which
      // would hand the message back behind the task's back.
      if (left < Math.max(2 * o.heartbeatSeconds, 2)) {
        // Asking for more than the cap fails; hand the message back while it is still ours.
        clearInterval(heartbeat)
        abort.abort(new VisibilityCapReached(id))
        return
      }
      setVisibility(Math.min(o.visibilityTimeout, Math.floor(left))).catch((err: unknown) => o.onError?.(err, `heartbeat of ${id}`))
    }, o.heartbeatSeconds * 1000)
    const done = (async () => {
      let succeeded = false
      try {
        await o.handler(message, abort.signal)
        succeeded = true
      } catch (err) {
        o.onError?.(err, `handler of ${id}: ${describe(err)}`)
      } finally {
        clearInterval(heartbeat)
      }
      try {
        if (succeeded) await o.client.send(new DeleteMessageCommand({ QueueUrl: o.queueUrl, ReceiptHandle: receipt }))
        else if (abort.signal.reason instanceof VisibilityCapReached) await this.#carryOver(message, receipt).catch(() => setVisibility(0))
        else if (abort.signal.aborted) await setVisibility(0) // stopping: let another worker have it now
      } catch (err) {
        o.onError?.(err, `settling ${id}`)
      }
    })().finally(() => this.#running.delete(id))
    this.#running.set(id, { abort, done })
  }
}
