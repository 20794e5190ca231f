// Waiting for AWS resources to reach a state, for the agent and the controller. The SDK's own
// waiters only time out on what these notice at once: a snapshot in "error", or a volume that
// EBS rolled back because KMS refused it the key.
import { DescribeVolumesCommand, type EC2Client } from '@aws-sdk/client-ec2'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall, awsErrorName } from './errors.ts'

export interface PollOptions {
  /** Longest wait. */
  timeoutMs: number
  /** First interval between polls; it doubles up to 5 s. */
  pollMs?: number
  signal?: AbortSignal
}

/** Calls `step` until it returns a value; throws what `onTimeout` makes once the time is up. */
export async function poll<T>(o: PollOptions, step: () => Promise<T | undefined>, onTimeout: () => Error): Promise<T> {
  const deadline = Date.now() + o.timeoutMs
  for (let delay = o.pollMs ?? 250; ; delay = Math.min(delay * 2, 5000)) {
    o.signal?.throwIfAborted()
    const done = await step()
    if (done !== undefined) return done
    if (Date.now() > deadline) throw onTimeout()
    await new Promise((resolve) => setTimeout(resolve, delay))
  }
}

export interface VolumeCreatedOptions extends PollOptions {
  /** The key EBS was to use, as the message should name it. */
  key: string
  /** Who created the volume (a role, for the controller); the worker when absent. */
  who?: string
  /** Whose permissions to check, said after "rolled back…". */
  advice: string
}

/**
 * Waits for a new volume to be available. EBS checks the KMS key only after CreateVolume has
 * answered: when KMS refuses it, the volume is rolled back and DescribeVolumes no longer knows it
 * (CreateVolume, KmsKeyId: "the action can appear to complete, but eventually fails"), which the
 * SDK's waiter would retry until its timeout. That is access denied, said at once.
 */
export async function waitVolumeCreated(ec2: EC2Client, volumeId: string, o: VolumeCreatedOptions): Promise<void> {
  const who = o.who ? `${o.who}: ` : ''
  await poll(o, async () => {
    let state: string | undefined
    try {
      state = (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))).Volumes?.[0]?.State ?? 'deleted'
    } catch (err) {
      if (awsErrorName(err) !== 'InvalidVolume.NotFound') return awsCall({ service: 'EC2', operation: 'DescribeVolumes', ...(o.who ? { who: o.who } : {}) }, () => Promise.reject(err), { volumeId })
      state = 'deleted'
    }
    if (state === 'deleted' || state === 'error') {
      throw new EbsWorkerError(ErrorCode.AccessDenied,
        `${who}volume ${volumeId} was rolled back while being created: EBS could not use the KMS key ${o.key}. ${o.advice}`,
        { context: { volumeId, kmsKeyId: o.key } })
    }
    return state === 'available' || state === 'in-use' ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.StateTimeout, `${who}volume ${volumeId} did not become available within ${Math.round(o.timeoutMs / 1000)} s`, { context: { volumeId } }))
}

/** Waits until a volume is in `wanted` state. */
export async function waitVolumeState(ec2: EC2Client, volumeId: string, wanted: string, o: PollOptions & { who?: string }): Promise<void> {
  const call = { service: 'EC2' as const, operation: 'DescribeVolumes', ...(o.who ? { who: o.who } : {}) }
  await poll(o, async () => {
    const v = (await awsCall(call, () => ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] })), { volumeId })).Volumes?.[0]
    return v?.State === wanted ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.StateTimeout, `${o.who ? `${o.who}: ` : ''}volume ${volumeId} did not become ${wanted} within ${Math.round(o.timeoutMs / 1000)} s`, { context: { volumeId } }))
}
