// The EC2 and KMS calls the flows share, with their errors turned into the controller's codes and
// waits that notice what AWS's own waiters would only time out on (a snapshot in "error", a volume
// rolled back because KMS refused EBS the key).
import {
  DescribeInstancesCommand, DescribeSnapshotsCommand, DescribeVolumesCommand, type EC2Client, type Instance, type Volume,
} from '@aws-sdk/client-ec2'
import { CreateGrantCommand, DecryptCommand, DescribeKeyCommand, GenerateDataKeyWithoutPlaintextCommand, type KMSClient, type KeyMetadata } from '@aws-sdk/client-kms'
import type { Session } from './aws.ts'
import { EbsWorkerError, ErrorCode, describe } from '../agent/core/errors.ts'
import { awsCall, awsErrorName } from '../agent/aws/errors.ts'

export interface Waits {
  /** Longest wait for a snapshot to complete. */
  snapshotTimeoutMs: number
  /** Longest wait for a volume or an instance state change. */
  stateTimeoutMs: number
  /** First poll interval (doubles up to 5 s). */
  pollMs?: number
}

/** Runs an EC2 call as `who`; its failure becomes ours (agent/aws/errors.ts), saying who did what. */
export function call<T>(who: string, what: string, fn: () => Promise<T>): Promise<T> {
  return awsCall({ service: 'EC2', operation: what, who }, fn)
}

async function poll<T>(waits: Waits, timeoutMs: number, step: () => Promise<T | undefined>, onTimeout: () => EbsWorkerError): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (let delay = waits.pollMs ?? 500; ; delay = Math.min(delay * 2, 5000)) {
    const done = await step()
    if (done !== undefined) return done
    if (Date.now() > deadline) throw onTimeout()
    await new Promise((resolve) => setTimeout(resolve, delay))
  }
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

/** Waits until every snapshot is completed; one in "error" (or gone) fails at once. */
export async function waitSnapshots(ec2: EC2Client, who: string, snapshotIds: string[], waits: Waits): Promise<void> {
  if (!snapshotIds.length) return
  await poll(waits, waits.snapshotTimeoutMs, async () => {
    const out = await call(who, 'DescribeSnapshots', () => ec2.send(new DescribeSnapshotsCommand({ SnapshotIds: snapshotIds })))
    const failed = (out.Snapshots ?? []).filter((s) => s.State === 'error')
    if (failed.length) {
      throw new EbsWorkerError(ErrorCode.SnapshotFailed, `${who}: snapshot ${failed.map((s) => `${s.SnapshotId} (${s.StateMessage ?? 'error'})`).join(', ')} failed`)
    }
    return (out.Snapshots ?? []).length === snapshotIds.length && out.Snapshots!.every((s) => s.State === 'completed') ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.SnapshotTimeout, `${who}: snapshots ${snapshotIds.join(', ')} did not complete within ${Math.round(waits.snapshotTimeoutMs / 1000)} s`))
}

/** Waits for a new volume; one that disappears was rolled back because KMS refused EBS its key. */
export async function waitVolumeAvailable(ec2: EC2Client, who: string, volumeId: string, key: string, waits: Waits): Promise<void> {
  await poll(waits, waits.stateTimeoutMs, async () => {
    let state: string | undefined
    try {
      state = (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))).Volumes?.[0]?.State
    } catch (err) {
      if (awsErrorName(err) !== 'InvalidVolume.NotFound') return call(who, 'DescribeVolumes', () => Promise.reject(err))
      state = 'deleted'
    }
    if (state === 'deleted' || state === 'error') {
      throw new EbsWorkerError(ErrorCode.AccessDenied,
        `${who}: volume ${volumeId} was rolled back while being created: EBS could not use the KMS key ${key}. ` +
        `${who} needs kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt* on it, in its identity policy and in the key policy (packaging/iam/)`)
    }
    return state === 'available' ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.AwsError, `${who}: volume ${volumeId} did not become available within ${Math.round(waits.stateTimeoutMs / 1000)} s`))
}

export async function waitVolumeState(ec2: EC2Client, who: string, volumeId: string, wanted: string, waits: Waits): Promise<void> {
  await poll(waits, waits.stateTimeoutMs, async () => {
    const v = (await call(who, 'DescribeVolumes', () => ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] })))).Volumes?.[0]
    return v?.State === wanted ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.AwsError, `${who}: volume ${volumeId} did not become ${wanted} within ${Math.round(waits.stateTimeoutMs / 1000)} s`))
}

export async function waitInstanceState(ec2: EC2Client, who: string, instanceId: string, wanted: string, waits: Waits): Promise<Instance> {
  return poll(waits, waits.stateTimeoutMs, async () => {
    const i = await describeInstance(ec2, who, instanceId)
    return i.State?.Name === wanted ? i : undefined
  }, () => new EbsWorkerError(ErrorCode.AwsError, `${who}: instance ${instanceId} did not become ${wanted} within ${Math.round(waits.stateTimeoutMs / 1000)} s`))
}

/** KMS DescribeKey: the key's metadata (KeyManager says AWS managed or customer managed). */
export async function describeKey(kms: KMSClient, who: string, keyRef: string): Promise<KeyMetadata> {
  const out = await awsCall({ service: 'KMS', operation: `DescribeKey ${keyRef}`, who }, () => kms.send(new DescribeKeyCommand({ KeyId: keyRef })), { kmsKeyId: keyRef })
  return out.KeyMetadata!
}

/** KMS DryRun of a grant or cryptographic action on a key, as `session`. */
export async function kmsDryRun(s: Session, region: string, key: string, action: 'CreateGrant' | 'Decrypt' | 'GenerateDataKeyWithoutPlaintext'): Promise<{ ok: boolean; detail?: string }> {
  const kms = s.kms(region)
  try {
    if (action === 'CreateGrant') await kms.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: s.role.startsWith('arn:') ? s.role : `arn:aws:iam::${s.accountId}:root`, Operations: ['Decrypt'], DryRun: true }))
    else if (action === 'Decrypt') await kms.send(new DecryptCommand({ KeyId: key, CiphertextBlob: new Uint8Array(32), DryRun: true }))
    else await kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: key, KeySpec: 'AES_256', DryRun: true }))
    return { ok: true }
  } catch (err) {
    const name = awsErrorName(err)
    if (name === 'DryRunOperationException') return { ok: true }
    return { ok: false, detail: `${name}: ${describe(err)}` }
  }
}
