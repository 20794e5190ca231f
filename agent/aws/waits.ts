// Waiting for AWS resources to reach a state, for the agent and the controller. The SDK's own
// waiters only time out on what these notice at once: a snapshot in "error", or a volume that
// EBS rolled back because KMS refused it the key; and they retry every error alike (access
// denied included) until their time is up.
//
// Eventual consistency (EC2 Developer Guide, "Eventual consistency in the Amazon EC2 API",
// https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): a resource just
// created may not be visible yet to the next call ("its ID might not have propagated throughout
// the system, and you will get an error responding that the resource does not exist"; the guide
// names InvalidInstanceID.NotFound after RunInstances); the remedy is to Describe again with
// exponential backoff, "up to a few minutes". So every wait here takes "no such id" before it has
// seen the resource as "not visible yet", for at most `visibleWithinMs`; once seen, "gone".
import { DescribeSnapshotsCommand, DescribeVolumesCommand, type EC2Client, type Snapshot, type Volume } from '@aws-sdk/client-ec2'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall, awsErrorName } from './errors.ts'

/** How long a resource just created may stay unknown to EC2's Describe calls before a wait gives up on it. */
export const VISIBILITY_MS = 120_000

export interface PollOptions {
  /** Longest wait. */
  timeoutMs: number
  /** First interval between polls; it doubles up to 5 s. */
  pollMs?: number
  signal?: AbortSignal
  /** How long "no such id" before the resource was first seen means "not visible yet" (default VISIBILITY_MS, at most timeoutMs). */
  visibleWithinMs?: number
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

/** What a missing resource means to a wait: not visible yet, gone after it was seen, or never seen in time. */
export type Missing = 'not-yet' | 'gone' | 'never'

/**
 * Whether a wait has seen a resource, and so what "no such id" means: before it was seen,
 * "not visible yet" for `visibleWithinMs` (eventual consistency), then "never"; after, "gone".
 */
export class Sighting {
  readonly #until: number
  #seen = false
  readonly withinMs: number

  constructor(o: PollOptions) {
    this.withinMs = Math.min(o.visibleWithinMs ?? VISIBILITY_MS, o.timeoutMs)
    this.#until = Date.now() + this.withinMs
  }

  seen(): void {
    this.#seen = true
  }

  missing(): Missing {
    return this.#seen ? 'gone' : Date.now() < this.#until ? 'not-yet' : 'never'
  }
}

/** DescribeVolumes of one volume: it, or null when EC2 does not know it (not visible yet, or gone). */
async function volumeOrNull(ec2: EC2Client, volumeId: string, who?: string): Promise<Volume | null> {
  try {
    return (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))).Volumes?.[0] ?? null
  } catch (err) {
    if (awsErrorName(err) === 'InvalidVolume.NotFound') return null
    return awsCall({ service: 'EC2', operation: 'DescribeVolumes', ...(who ? { who } : {}) }, () => Promise.reject(err), { volumeId })
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
 * SDK's waiter would retry until its timeout. That is access denied, said as soon as it is
 * known: the volume was seen and then vanished, or it never became visible within
 * `visibleWithinMs`. Before it was first seen, "no such volume" is only EC2's eventual
 * consistency (a rollback concluded then would be wrong, and the volume would be left behind).
 */
export async function waitVolumeCreated(ec2: EC2Client, volumeId: string, o: VolumeCreatedOptions): Promise<void> {
  const who = o.who ? `${o.who}: ` : ''
  const sighting = new Sighting(o)
  const rolledBack = (how: string) => new EbsWorkerError(ErrorCode.AccessDenied,
    `${who}volume ${volumeId} ${how}: EBS could not use the KMS key ${o.key}. ${o.advice}`, { context: { volumeId, kmsKeyId: o.key } })
  await poll(o, async () => {
    const v = await volumeOrNull(ec2, volumeId, o.who)
    if (v?.State === 'deleted' || v?.State === 'error') throw rolledBack('was rolled back while being created')
    if (!v) {
      const missing = sighting.missing()
      if (missing === 'not-yet') return undefined
      throw rolledBack(missing === 'gone' ? 'was rolled back while being created'
        : `never became visible within ${Math.round(sighting.withinMs / 1000)} s of its creation (rolled back)`)
    }
    sighting.seen()
    return v.State === 'available' || v.State === 'in-use' ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.StateTimeout, `${who}volume ${volumeId} did not become available within ${Math.round(o.timeoutMs / 1000)} s`, { context: { volumeId } }))
}

/** Waits until a volume is in `wanted` state; one that vanishes (or never shows, see Sighting) is VOLUME_NOT_FOUND. */
export async function waitVolumeState(ec2: EC2Client, volumeId: string, wanted: string, o: PollOptions & { who?: string }): Promise<void> {
  const who = o.who ? `${o.who}: ` : ''
  const sighting = new Sighting(o)
  await poll(o, async () => {
    const v = await volumeOrNull(ec2, volumeId, o.who)
    if (!v) {
      const missing = sighting.missing()
      if (missing === 'not-yet') return undefined
      throw new EbsWorkerError(ErrorCode.VolumeNotFound, `${who}volume ${volumeId} ${missing === 'gone' ? 'no longer exists' : `does not exist (not visible within ${Math.round(sighting.withinMs / 1000)} s)`} while waiting for it to be ${wanted}`, { context: { volumeId } })
    }
    sighting.seen()
    return v.State === wanted ? true : undefined
  }, () => new EbsWorkerError(ErrorCode.StateTimeout, `${who}volume ${volumeId} did not become ${wanted} within ${Math.round(o.timeoutMs / 1000)} s`, { context: { volumeId } }))
}

/**
 * Waits until every snapshot is completed (CreateSnapshot, CreateSnapshots, CopySnapshot); one in
 * "error" fails at once (SNAPSHOT_FAILED, with EC2's StateMessage), one that vanishes or never
 * shows (see Sighting) is SNAPSHOT_NOT_FOUND. The snapshots are the caller's own, described
 * through a snapshot-id filter: it lists those EC2 shows, where asking by id would fail the whole
 * call for the one not visible yet.
 */
export async function waitSnapshotsCompleted(ec2: EC2Client, snapshotIds: string[], o: PollOptions & { who?: string }): Promise<void> {
  if (!snapshotIds.length) return
  const who = o.who ? `${o.who}: ` : ''
  const sightings = new Map(snapshotIds.map((id) => [id, new Sighting(o)]))
  await poll(o, async () => {
    const out = await awsCall({ service: 'EC2', operation: 'DescribeSnapshots', ...(o.who ? { who: o.who } : {}) }, () => ec2.send(new DescribeSnapshotsCommand({
      OwnerIds: ['self'], Filters: [{ Name: 'snapshot-id', Values: snapshotIds }],
    })))
    const found = new Map((out.Snapshots ?? []).map((s): [string, Snapshot] => [s.SnapshotId!, s]))
    const failed = [...found.values()].filter((s) => s.State === 'error')
    if (failed.length) {
      throw new EbsWorkerError(ErrorCode.SnapshotFailed, `${who}snapshot ${failed.map((s) => `${s.SnapshotId} (${s.StateMessage ?? 'error'})`).join(', ')} failed`,
        { context: { snapshotId: failed[0]!.SnapshotId! } })
    }
    let pending = false
    for (const [id, sighting] of sightings) {
      if (found.has(id)) {
        sighting.seen()
        if (found.get(id)!.State !== 'completed') pending = true
        continue
      }
      const missing = sighting.missing()
      if (missing === 'not-yet') {
        pending = true
        continue
      }
      throw new EbsWorkerError(ErrorCode.SnapshotNotFound, `${who}snapshot ${id} ${missing === 'gone' ? 'no longer exists' : `does not exist (not visible within ${Math.round(sighting.withinMs / 1000)} s)`} while waiting for it to complete`, { context: { snapshotId: id } })
    }
    return pending ? undefined : true
  }, () => new EbsWorkerError(ErrorCode.SnapshotTimeout, `${who}snapshots ${snapshotIds.join(', ')} did not complete within ${Math.round(o.timeoutMs / 1000)} s`))
}
