// The queue consumer against a real SQS implementation (fauxqs, in-process) through the real
// SDK client: concurrency, deletion after success, visibility heartbeats, redelivery and the
// dead-letter queue, and handing messages back on stop.
import t from 'tap'
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { setTimeout as sleep } from 'node:timers/promises'
import { QueueConsumer, VisibilityCapReached, type ReceivedMessage } from '../agent/daemon/queue.ts'
import { until } from './helpers.ts'

const server = await startFauxqs({ port: 0, logger: false })
t.teardown(() => server.stop())
const client = new SQSClient({ endpoint: server.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
t.teardown(() => client.destroy())
let n = 0

async function queue(attributes: Record<string, string> = {}): Promise<string> {
  const out = await client.send(new CreateQueueCommand({ QueueName: `q${n++}-${Date.now()}`, Attributes: attributes }))
  return out.QueueUrl!
}

async function depth(url: string): Promise<{ visible: number; inFlight: number }> {
  const a = (await client.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['All'] }))).Attributes ?? {}
  return { visible: Number(a.ApproximateNumberOfMessages), inFlight: Number(a.ApproximateNumberOfMessagesNotVisible) }
}


t.test('runs up to N at once and deletes each message when its handler succeeds', async (t) => {
  const url = await queue()
  for (let i = 0; i < 7; i++) await client.send(new SendMessageCommand({ QueueUrl: url, MessageBody: `m${i}` }))
  let active = 0
  let peak = 0
  const seen: string[] = []
  const consumer = new QueueConsumer({
    client, queueUrl: url, concurrency: 3, waitTimeSeconds: 1,
    handler: async (m) => {
      active++
      peak = Math.max(peak, active)
      await sleep(100)
      seen.push(m.body)
      active--
    },
  })
  consumer.start()
  await until(() => seen.length === 7)
  await consumer.stop(1000)
  t.equal(peak, 3, 'never more than 3 at once, and 3 when there is work')
  t.same(seen.sort(), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6'], 'each message once')
  t.same(await depth(url), { visible: 0, inFlight: 0 }, 'all deleted')
})

t.test('a long task keeps its message invisible: no second worker gets it', async (t) => {
  const url = await queue()
  await client.send(new SendMessageCommand({ QueueUrl: url, MessageBody: 'long' }))
  const runs: string[] = []
  const make = (name: string) => new QueueConsumer({
    client, queueUrl: url, concurrency: 1, waitTimeSeconds: 1, visibilityTimeout: 1, heartbeatSeconds: 0.3,
    handler: async () => {
      runs.push(name)
      await sleep(3000)
    },
  })
  const a = make('a')
  const b = make('b')
  a.start()
  await until(() => runs.length === 1)
  b.start()
  await until(async () => (await depth(url)).inFlight === 0 && (await depth(url)).visible === 0, 10_000)
  await Promise.all([a.stop(1000), b.stop(1000)])
  t.same(runs, ['a'], 'ran once, three visibility timeouts long')
})

t.test('a handler that keeps failing: redelivered, then moved to the dead-letter queue', async (t) => {
  const dlq = await queue()
  const dlqArn = (await client.send(new GetQueueAttributesCommand({ QueueUrl: dlq, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!
  const url = await queue({ RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: '2' }) })
  await client.send(new SendMessageCommand({ QueueUrl: url, MessageBody: 'poison' }))
  const counts: number[] = []
  const errors: string[] = []
  const consumer = new QueueConsumer({
    client, queueUrl: url, concurrency: 1, waitTimeSeconds: 1, visibilityTimeout: 1,
    handler: async (m: ReceivedMessage) => {
      counts.push(m.receiveCount)
      throw new Error('always fails')
    },
    onError: (_err, context) => errors.push(context),
  })
  consumer.start()
  await until(async () => (await depth(dlq)).visible === 1, 15_000)
  await consumer.stop(1000)
  t.same(counts, [1, 2], 'delivered maxReceiveCount times, with its receive count')
  t.ok(errors.every((e) => e.includes('always fails')), 'failures reported, the loop survived')
  const moved = await client.send(new ReceiveMessageCommand({ QueueUrl: dlq }))
  t.equal(moved.Messages?.[0]?.Body, 'poison', 'the poison message is in the DLQ')
})

t.test('stop hands an unfinished message back at once', async (t) => {
  const url = await queue()
  await client.send(new SendMessageCommand({ QueueUrl: url, MessageBody: 'interrupted' }))
  let aborted = false
  const consumer = new QueueConsumer({
    client, queueUrl: url, concurrency: 1, waitTimeSeconds: 1, visibilityTimeout: 600,
    handler: (_m, signal) => new Promise((_resolve, reject) => {
      signal.addEventListener('abort', () => {
        aborted = true
        reject(signal.reason)
      })
    }),
  })
  consumer.start()
  await until(async () => (await depth(url)).inFlight === 1)
  const started = Date.now()
  await consumer.stop(200)
  t.ok(aborted, 'the handler was told to stop after the grace period')
  t.ok(Date.now() - started < 5000, 'stop returned promptly (the long poll was cancelled)')
  const again = await client.send(new ReceiveMessageCommand({ QueueUrl: url, WaitTimeSeconds: 1 }))
  t.equal(again.Messages?.[0]?.Body, 'interrupted', 'visible again right away, not after 600 s')
})

t.test('a task that reaches the visibility cap is stopped and carries on under a new message', async (t) => {
  const dlq = await queue()
  const dlqArn = (await client.send(new GetQueueAttributesCommand({ QueueUrl: dlq, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!
  // maxReceiveCount 1: a second receive of the same message would send it to the DLQ.
  const url = await queue({ RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 1 }) })
  await client.send(new SendMessageCommand({ QueueUrl: url, MessageBody: 'very long' }))
  const reasons: unknown[] = []
  const deliveries: Array<{ body: string; receiveCount: number; continuation: number }> = []
  const consumer = new QueueConsumer({
    client, queueUrl: url, concurrency: 1, waitTimeSeconds: 1, visibilityTimeout: 3, heartbeatSeconds: 0.2, maxVisibilitySeconds: 2.5,
    handler: (m, signal) => new Promise((resolve, reject) => {
      deliveries.push({ body: m.body, receiveCount: m.receiveCount, continuation: m.continuation })
      if (m.continuation === 2) return resolve() // the third run finishes
      signal.addEventListener('abort', () => {
        reasons.push(signal.reason)
        reject(signal.reason)
      })
    }),
  })
  consumer.start()
  await until(() => deliveries.length === 3, 20_000)
  await until(async () => (await depth(url)).visible + (await depth(url)).inFlight === 0)
  await consumer.stop(1000)
  t.ok(reasons.length === 2 && reasons.every((r) => r instanceof VisibilityCapReached), 'each run was stopped at the cap')
  t.same(deliveries, [
    { body: 'very long', receiveCount: 1, continuation: 0 },
    { body: 'very long', receiveCount: 1, continuation: 1 },
    { body: 'very long', receiveCount: 1, continuation: 2 },
  ], 'and the task went on twice, each time as a new message received for the first time')
  t.same(await depth(dlq), { visible: 0, inFlight: 0 }, 'so nothing counted towards the dead-letter queue')
})

t.test('receiving: only once a receive succeeded, no longer once they fail, and still while every slot is busy', async (t) => {
  // A queue service of its own, to stop under the consumer.
  const own = await startFauxqs({ port: 0, logger: false })
  let stopped = false
  t.teardown(() => (stopped ? undefined : own.stop()))
  const ownClient = new SQSClient({ endpoint: own.address, region: 'us-east-1', maxAttempts: 1, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => ownClient.destroy())
  const url = (await ownClient.send(new CreateQueueCommand({ QueueName: 'receiving' }))).QueueUrl!
  let received = 0
  const errors: string[] = []
  let release = (): void => {}
  const busy = new Promise<void>((resolve) => (release = resolve))
  const consumer = new QueueConsumer({
    client: ownClient, queueUrl: url, concurrency: 1, waitTimeSeconds: 1, receiveStaleSeconds: 3,
    handler: () => busy,
    onReceived: () => received++,
    onError: (_err, context) => errors.push(context),
  })
  t.notOk(consumer.receiving, 'not before it polls')
  consumer.start()
  await until(() => received > 0)
  t.ok(consumer.receiving, 'receiving once a receive succeeded')

  // Its one slot taken by a long task: no receive is due, and it still counts as receiving.
  await ownClient.send(new SendMessageCommand({ QueueUrl: url, MessageBody: 'long' }))
  await until(() => consumer.active === 1)
  await sleep(4000)
  t.ok(consumer.receiving, 'still receiving while every slot is busy, past the stale time')
  release()

  await own.stop()
  stopped = true
  await until(() => errors.includes('receive'), 10_000, 'a failed receive')
  t.notOk(consumer.receiving, 'not receiving once a receive failed')
  await consumer.stop(1000)
  t.notOk(consumer.receiving, 'nor once stopped')
})
