// The EC2 and KMS calls the flows share, with their errors turned into ours (agent/aws/errors.ts)
// and waits that notice what AWS's own waiters would only time out on (a snapshot in "error"; a
// volume rolled back because KMS refused EBS the key) and wait out what EC2's eventual
// consistency says of a resource just created ("no such id"; agent/aws/waits.ts).
import {
  DescribeInstancesCommand, DescribeVolumesCommand, type EC2Client, type Instance, type Volume,
} from '@aws-sdk/client-ec2'
import { CreateGrantCommand, DecryptCommand, DescribeKeyCommand, GenerateDataKeyWithoutPlaintextCommand, type KMSClient, type KeyMetadata } from '@aws-sdk/client-kms'
import type { Session } from './aws.ts'
import { EbsWorkerError, ErrorCode, describe } from '../agent/core/errors.ts'
import { awsCall, awsErrorName } from '../agent/aws/errors.ts'
import { poll, Sighting, waitSnapshotsCompleted, type PollOptions } from '../agent/aws/waits.ts'

export interface Waits {
  /** Longest wait for a snapshot to complete. */
  snapshotTimeoutMs: number
  /** Longest wait for a volume or an instance state change. */
  stateTimeoutMs: number
  /** First poll interval (doubles up to 5 s). */
  pollMs?: number
}

/** How to poll for a volume or instance state change (agent/aws/waits.ts). */
export function statePoll(waits: Waits): PollOptions {
  return { timeoutMs: waits.stateTimeoutMs, ...(waits.pollMs ? { pollMs: waits.pollMs } : {}) }
}

/** Runs an EC2 call as `who`; its failure becomes ours (agent/aws/errors.ts), saying who did what. */
export function call<T>(who: string, what: string, fn: () => Promise<T>): Promise<T> {
  return awsCall({ service: 'EC2', operation: what, who }, fn)
}

export async function describeInstance(ec2: EC2Client, who: string, instanceId: string): Promise<Instance> {
  const out = await call(who, `DescribeInstances ${instanceId}`, () => ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] })))
  const instance = out.Reservations?.[0]?.Instances?.[0]
  if (!instance) throw new EbsWorkerError(ErrorCode.InstanceNotFound, `${who}: instance ${instanceId} does not exist`)
  return instance
}

export async function describeVolumes(ec2: EC2Client, who: string, volumeIds: string[]): Promise<Volume[]> {
  if (!volumeIds.length) return []
  const out = await call(who, 'DescribeVolumes', () => ec2.send(new DescribeVolumesCommand({ VolumeIds: volumeIds })))
  return out.Volumes ?? []
}

/** Waits until every snapshot is completed; one in "error" (or gone) fails at once; one not visible yet is waited for (agent/aws/waits.ts). */
export async function waitSnapshots(ec2: EC2Client, who: string, snapshotIds: string[], waits: Waits): Promise<void> {
  await waitSnapshotsCompleted(ec2, snapshotIds, { timeoutMs: waits.snapshotTimeoutMs, ...(waits.pollMs ? { pollMs: waits.pollMs } : {}), who })
}

/**
 * Waits until an instance is in `wanted` state. Just launched, it may be unknown to
 * DescribeInstances for a while (InvalidInstanceID.NotFound after RunInstances is the EC2
 * Developer Guide's own example of eventual consistency): that is waited out (Sighting).
 */
export async function waitInstanceState(ec2: EC2Client, who: string, instanceId: string, wanted: string, waits: Waits): Promise<Instance> {
  const o = statePoll(waits)
  const sighting = new Sighting(o)
  return poll(o, async () => {
    let i: Instance
    try {
      i = await describeInstance(ec2, who, instanceId)
    } catch (err) {
      if (!(err instanceof EbsWorkerError && err.code === ErrorCode.InstanceNotFound) || sighting.missing() !== 'not-yet') throw err
      return undefined
    }
    sighting.seen()
    return i.State?.Name === wanted ? i : undefined
  }, () => new EbsWorkerError(ErrorCode.StateTimeout, `${who}: instance ${instanceId} did not become ${wanted} within ${Math.round(waits.stateTimeoutMs / 1000)} s`, { context: { instanceId } }))
}

/** KMS DescribeKey: the key's metadata (KeyManager says AWS managed or customer managed). */
export async function describeKey(kms: KMSClient, who: string, keyRef: string): Promise<KeyMetadata> {
  const out = await awsCall({ service: 'KMS', operation: `DescribeKey ${keyRef}`, who }, () => kms.send(new DescribeKeyCommand({ KeyId: keyRef })), { kmsKeyId: keyRef })
  return out.KeyMetadata!
}

/** Whether a permission is there: ok, or not with AWS's reason. */
export interface Outcome {
  ok: boolean
  detail?: string
  /** The AWS error name of a refusal (UnauthorizedOperation, AccessDeniedException, InvalidSnapshot.NotFound…). */
  awsError?: string
}

/**
 * A call made with DryRun: allowed when AWS answers DryRunOperation (EC2) or
 * DryRunOperationException (KMS), or when the call goes through; else refused, with AWS's reason.
 */
export async function dryRun(send: () => Promise<unknown>): Promise<Outcome> {
  try {
    await send()
    return { ok: true }
  } catch (err) {
    const name = awsErrorName(err)
    if (name === 'DryRunOperation' || name === 'DryRunOperationException') return { ok: true }
    return { ok: false, detail: `${name}: ${describe(err)}`, awsError: name }
  }
}

export type KmsAction = 'CreateGrant' | 'Decrypt' | 'GenerateDataKeyWithoutPlaintext'

/** KMS DryRun of a grant or cryptographic action on a key, as `session`. */
export function kmsDryRun(s: Session, region: string, key: string, action: KmsAction): Promise<Outcome> {
  const kms = s.kms(region)
  return dryRun(() => {
    if (action === 'CreateGrant') return kms.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: s.role.startsWith('arn:') ? s.role : `arn:aws:iam::${s.accountId}:root`, Operations: ['Decrypt'], DryRun: true }))
    if (action === 'Decrypt') return kms.send(new DecryptCommand({ KeyId: key, CiphertextBlob: new Uint8Array(32), DryRun: true }))
    return kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: key, KeySpec: 'AES_256', DryRun: true }))
  })
}
