// The worker's own EBS volumes: create one from a snapshot in this instance's Availability Zone,
// attach it here and find its device, detach and delete it. Every volume is tagged with the task
// that made it, which is what makes a redelivered task find it again instead of making another,
// and what limits detaching and deleting to volumes this agent created; with the worker instance
// that made it (or took it over), and whether it is transient: a volume the worker deletes (a
// copy of a snapshot to back up, a restore under way or staged for a cross-account snapshot), as
// opposed to a restored volume kept for its instance. The volume sweep (volume-sweep.ts) deletes
// only transient volumes of workers that are gone; the worker role may delete no other volume.
import { setTimeout as sleep } from 'node:timers/promises'
import {
  AttachVolumeCommand,
  CreateSnapshotCommand,
  CreateTagsCommand,
  CreateVolumeCommand,
  DescribeSnapshotsCommand,
  GetEbsDefaultKmsKeyIdCommand,
  ModifySnapshotAttributeCommand,
  DeleteVolumeCommand,
  DescribeVolumesCommand,
  DetachVolumeCommand,
  type EC2Client,
  type Volume,
  type VolumeType,
} from '@aws-sdk/client-ec2'
import { waitForEbsDevice, type DeviceRoots, type EbsDevice } from '../device/ebs-device.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall } from './errors.ts'
import { createVolumePerformance } from './volume-types.ts'
import { VISIBILITY_MS, waitSnapshotsCompleted, waitVolumeCreated, waitVolumeState } from './waits.ts'
import type { WorkerIdentity } from './identity.ts'

export const TASK_ID_TAG = 'ebs-worker:task-id'
/** The worker instance that made the volume, or took it over from a worker that is gone. */
export const WORKER_TAG = 'ebs-worker:worker'
/** `true`: the worker deletes the volume when done with it (and the sweep once its worker is gone); `false`: kept. */
export const TRANSIENT_TAG = 'ebs-worker:transient'

/** The tags a worker's new volume carries from its creation (the fleet's policy requires them). */
export function newVolumeTags(taskId: string, workerId: string): Array<{ Key: string; Value: string }> {
  return [{ Key: TASK_ID_TAG, Value: taskId }, { Key: WORKER_TAG, Value: workerId }, { Key: TRANSIENT_TAG, Value: 'true' }]
}

export interface VolumeSpec {
  volumeType?: string
  /** Sent only where the type takes it (io1, io2, gp3), and throughput only for gp3 (volume-types.ts). */
  iops?: number
  throughput?: number
  /** Encrypt with this key; otherwise the snapshot's key, or the Region's default EBS key. */
  kmsKeyId?: string
}

export interface VolumesOptions {
  client: EC2Client
  identity: WorkerIdentity
  roots?: DeviceRoots
  deviceTimeoutMs?: number
  /** Longest wait for a volume state change. */
  stateTimeoutSeconds?: number
  /** How long a volume or snapshot just created may be unknown to DescribeVolumes/DescribeSnapshots (default: waits.ts VISIBILITY_MS). */
  visibleWithinSeconds?: number
  /** How long an attach waits for a free device name before the task is handed back (default 900). */
  deviceNameWaitSeconds?: number
}

/** A task's volume, new or found again; `tags` are those an earlier attempt left. */
export interface CreatedVolume {
  volumeId: string
  created: boolean
  tags: Record<string, string>
}

// Device names this agent may use for attachments; the kernel's NVMe name is what counts.
const DEVICE_NAMES = 'fghijklmnop'.split('').map((c) => `/dev/sd${c}`)

export class Volumes {
  readonly #o: VolumesOptions
  #attachLock: Promise<unknown> = Promise.resolve()
  /** Device names this agent attached a volume under, and when: DescribeVolumes may not show them yet. */
  readonly #claims = new Map<string, { volumeId: string; at: number }>()
  /** Tasks waiting for a device name, woken when a volume is detached. */
  readonly #onRelease = new Set<() => void>()
  /** Volumes this agent took over from a worker that is gone: the sweep may delete one just before (attachHere). */
  readonly #takenOver = new Set<string>()

  constructor(options: VolumesOptions) {
    this.#o = options
  }

  /** The volume a task made, if any (not deleted). */
  async findByTask(taskId: string): Promise<Volume | null> {
    const out = await this.#ec2('DescribeVolumes', () =>
      this.#o.client.send(new DescribeVolumesCommand({ Filters: [{ Name: `tag:${TASK_ID_TAG}`, Values: [taskId] }] })))
    return out.Volumes?.find((v) => v.State !== 'deleting' && v.State !== 'deleted') ?? null
  }

  /** Creates (or finds again) the task's volume from a snapshot and waits until it is available. */
  async createFromSnapshot(taskId: string, snapshotId: string, spec: VolumeSpec = {}, shared = false): Promise<CreatedVolume> {
    // A shared encrypted snapshot must become a volume under a key of this account: the given
    // one, or (Encrypted without a key) the Region's default EBS key.
    return this.#create(taskId, { SnapshotId: snapshotId, ...(spec.kmsKeyId || shared ? { Encrypted: true } : {}) }, spec)
  }

  /** Creates (or finds again) the task's empty, encrypted volume for a restore. */
  async createEmpty(taskId: string, sizeGiB: number, spec: VolumeSpec = {}): Promise<CreatedVolume> {
    return this.#create(taskId, { Size: sizeGiB, Encrypted: true }, spec)
  }

  async #create(taskId: string, source: { SnapshotId?: string; Size?: number; Encrypted?: boolean }, spec: VolumeSpec): Promise<CreatedVolume> {
    // The tag, set atomically at creation, is what finds the volume again after a crash or a
    // redelivery. ClientToken is an idempotency token in the EC2 model, and the SDK fills it with a
    // new UUID for each command sent, the same for the SDK's own retries of it: a retry after a lost
    // answer gets the volume that request made, a new attempt of the task makes a new request. A
    // token of ours (the task id) would make EC2 answer a later attempt with the volume it made
    // then, even once deleted. The tag lookup itself is eventually consistent: a task redelivered
    // moments after its CreateVolume may not see that volume yet and make another (tagged too).
    let existing = await this.findByTask(taskId)
    if (existing && existing.AvailabilityZone !== this.#o.identity.availabilityZone) {
      // An earlier attempt ran on a worker in another zone, and a volume attaches only in its own.
      // Detached, it is a leftover of ours: delete it and start here. Otherwise it may still be
      // in use over there: try again later (SQS redelivers).
      if (existing.Tags?.some((t) => t.Key === TRANSIENT_TAG && t.Value === 'false')) {
        throw new EbsWorkerError(ErrorCode.DeviceUnusable,
          `volume ${existing.VolumeId} of task ${taskId} in ${existing.AvailabilityZone} is kept (${TRANSIENT_TAG}=false), and this worker is in ${this.#o.identity.availabilityZone}: not deleting it`)
      }
      if (existing.State !== 'available') {
        throw new EbsWorkerError(ErrorCode.VolumeBusy,
          `volume ${existing.VolumeId} of task ${taskId} is ${existing.State} in ${existing.AvailabilityZone}, not this worker's ${this.#o.identity.availabilityZone}: retrying later`)
      }
      await this.#ec2('DeleteVolume', () => this.#o.client.send(new DeleteVolumeCommand({ VolumeId: existing!.VolumeId! })))
      existing = null
    }
    const volumeId = existing?.VolumeId ?? (await this.#ec2('CreateVolume', () =>
      this.#o.client.send(new CreateVolumeCommand({
        AvailabilityZone: this.#o.identity.availabilityZone,
        ...source,
        VolumeType: (spec.volumeType ?? 'gp3') as VolumeType,
        ...createVolumePerformance(spec.volumeType ?? 'gp3', spec),
        ...(spec.kmsKeyId ? { Encrypted: true, KmsKeyId: spec.kmsKeyId } : {}),
        TagSpecifications: [{ ResourceType: 'volume', Tags: newVolumeTags(taskId, this.#o.identity.instanceId) }],
      })))).VolumeId!
    if (existing?.State === 'available') await this.#takeOver(existing)
    if (existing?.State !== 'in-use') {
      await waitVolumeCreated(this.#o.client, volumeId, {
        timeoutMs: (this.#o.stateTimeoutSeconds ?? 300) * 1000, ...this.#visibility(),
        key: spec.kmsKeyId ?? (source.SnapshotId ? `of ${source.SnapshotId}${source.Encrypted ? " and this Region's default EBS key" : ''}` : "(this Region's default EBS key)"),
        advice: 'The worker role, the key policy or a grant must allow kms:CreateGrant, kms:Decrypt, kms:DescribeKey and kms:GenerateDataKeyWithoutPlaintext on it',
      })
    }
    return { volumeId, created: !existing, tags: Object.fromEntries((existing?.Tags ?? []).map((t) => [t.Key!, t.Value ?? ''])) }
  }

  /**
   * A volume an earlier attempt of the task made on another worker, found by its tag: it is this
   * worker's now (its worker tag), so that the volume sweep, which deletes the transient volumes
   * of workers that are gone, leaves it alone from here on (the sweep reads the tag again just
   * before it deletes).
   */
  async #takeOver(volume: Volume): Promise<void> {
    const worker = volume.Tags?.find((t) => t.Key === WORKER_TAG)?.Value
    if (worker === this.#o.identity.instanceId) return
    await this.tag(volume.VolumeId!, { [WORKER_TAG]: this.#o.identity.instanceId })
    this.#takenOver.add(volume.VolumeId!)
  }

  /** Tags one of this agent's volumes (a restore marks the backup it now holds). */
  async tag(volumeId: string, tags: Record<string, string>): Promise<void> {
    await this.#ec2('CreateTags', () => this.#o.client.send(new CreateTagsCommand({
      Resources: [volumeId], Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })),
    })))
  }

  /**
   * A volume a task names as attached here (a `read`): it must exist and be attached to this
   * instance, else VOLUME_NOT_FOUND at once rather than a wait for a device that cannot appear.
   */
  async assertAttachedHere(volumeId: string): Promise<void> {
    const volume = await this.#describe(volumeId)
    const here = volume.Attachments?.some((a) => a.InstanceId === this.#o.identity.instanceId && a.State !== 'detaching' && a.State !== 'detached')
    if (!here) {
      const where = volume.Attachments?.length ? `attached to ${volume.Attachments.map((a) => a.InstanceId).join(', ')}` : 'not attached'
      throw new EbsWorkerError(ErrorCode.VolumeNotFound, `volume ${volumeId} is not attached to this worker (${this.#o.identity.instanceId}): it is ${where}`, { context: { volumeId } })
    }
  }

  /** Attaches the volume to this instance (unless it already is) and finds its device. */
  async attachHere(volumeId: string, signal?: AbortSignal): Promise<EbsDevice> {
    let volume: Volume
    try {
      volume = await this.#describe(volumeId)
    } catch (err) {
      // Taken over from a worker that is gone, and deleted meanwhile by a sweep that had read it
      // just before: the next attempt of the task makes a new one.
      if (this.#takenOver.has(volumeId) && err instanceof EbsWorkerError && err.code === ErrorCode.VolumeNotFound) {
        throw new EbsWorkerError(ErrorCode.VolumeBusy, `volume ${volumeId}, left by a worker that is gone, was deleted by a volume sweep as this task took it over: retrying`, { context: { volumeId } })
      }
      throw err
    }
    const mine = volume.Attachments?.find((a) => a.InstanceId === this.#o.identity.instanceId)
    if (!mine) {
      if (volume.Attachments?.length) {
        throw new EbsWorkerError(ErrorCode.DeviceUnusable, `volume ${volumeId} is attached to ${volume.Attachments[0]!.InstanceId}`)
      }
      await this.#attachUnderFreeName(volumeId, signal)
      await waitVolumeState(this.#o.client, volumeId, 'in-use', { timeoutMs: (this.#o.stateTimeoutSeconds ?? 300) * 1000, ...this.#visibility() })
    }
    return waitForEbsDevice(volumeId, {
      ...(this.#o.roots ? { roots: this.#o.roots } : {}),
      timeoutMs: this.#o.deviceTimeoutMs ?? 120_000,
      ...(signal ? { signal } : {}),
    })
  }

  /**
   * Attaches the volume under a free device name. When every name is taken (by the volumes of
   * other tasks or the instance's own), it waits for one: woken when this agent releases a volume,
   * looking again every few seconds, for at most deviceNameWaitSeconds and while the task is not
   * stopped; then NO_FREE_DEVICE_NAME, a transient code: the task goes back to the queue, for this
   * or another worker.
   */
  async #attachUnderFreeName(volumeId: string, signal?: AbortSignal): Promise<void> {
    const waitSeconds = this.#o.deviceNameWaitSeconds ?? 900
    const deadline = Date.now() + waitSeconds * 1000
    for (;;) {
      signal?.throwIfAborted()
      const released = new Promise<void>((resolve) => this.#onRelease.add(resolve))
      // Choosing a free device name and attaching is one step per process: two tasks attaching at
      // once would otherwise pick the same name, and EC2 refuses the second ("already in use").
      const attached = this.#attachLock.then(() => this.#attachIfFree(volumeId))
      this.#attachLock = attached.then(() => {}, () => {})
      if (await attached) return
      const left = deadline - Date.now()
      if (left <= 0) {
        throw new EbsWorkerError(ErrorCode.NoFreeDeviceName, `no free device name on this instance (${DEVICE_NAMES[0]} to ${DEVICE_NAMES.at(-1)} are all in use) ` +
          `after waiting ${waitSeconds} s for one: the task goes back to the queue`, { context: { volumeId } })
      }
      const stop = new AbortController()
      const nap = sleep(Math.min(left, 5000), undefined, { signal: signal ? AbortSignal.any([signal, stop.signal]) : stop.signal }).catch(() => {})
      await Promise.race([released, nap])
      stop.abort()
    }
  }

  /** Attaches the volume under the first device name free here; false when there is none. */
  async #attachIfFree(volumeId: string): Promise<boolean> {
    const used = await this.#usedDeviceNames()
    // What this agent attached moments ago may not show in DescribeVolumes yet (eventual consistency).
    for (const [device, claim] of this.#claims) {
      if (Date.now() - claim.at < VISIBILITY_MS) used.add(device)
      else this.#claims.delete(device)
    }
    const device = DEVICE_NAMES.find((d) => !used.has(d))
    if (!device) return false
    await this.#ec2('AttachVolume', () =>
      this.#o.client.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: this.#o.identity.instanceId, Device: device })))
    this.#claims.set(device, { volumeId, at: Date.now() })
    return true
  }

  /**
   * Detaches (and deletes) a volume this agent created; refuses any other volume. One detached and
   * kept is marked so (`ebs-worker:transient=false`): no sweep deletes it, nor may the worker role.
   */
  async release(volumeId: string, options: { delete: boolean; keep?: boolean }): Promise<{ deleted: boolean }> {
    let volume: Volume
    try {
      volume = await this.#describe(volumeId)
    } catch (err) {
      // Already gone: a redelivered detach that had finished.
      if (options.delete && err instanceof EbsWorkerError && err.code === ErrorCode.VolumeNotFound) return { deleted: true }
      throw err
    }
    if (!volume.Tags?.some((t) => t.Key === TASK_ID_TAG)) {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `volume ${volumeId} was not created by ebs-worker: refusing to detach or delete it`)
    }
    if (volume.Attachments?.length) {
      await this.#ec2('DetachVolume', () => this.#o.client.send(new DetachVolumeCommand({ VolumeId: volumeId })))
      await this.#waitAvailable(volumeId)
      // Its device name is free again: a task waiting for one can have it.
      for (const [device, claim] of this.#claims) if (claim.volumeId === volumeId) this.#claims.delete(device)
      for (const wake of this.#onRelease) wake()
      this.#onRelease.clear()
    }
    if (!options.delete) {
      if (options.keep) await this.keep(volumeId)
      return { deleted: false }
    }
    await this.#ec2('DeleteVolume', () => this.#o.client.send(new DeleteVolumeCommand({ VolumeId: volumeId })))
    return { deleted: true }
  }

  /** Marks one of this agent's volumes as kept (`ebs-worker:transient=false`), with more tags if given. */
  async keep(volumeId: string, tags: Record<string, string> = {}): Promise<void> {
    await this.tag(volumeId, { ...tags, [TRANSIENT_TAG]: 'false' })
  }

  /** The key EBS uses in this Region when a volume is encrypted without a key being named. */
  async defaultKmsKeyId(): Promise<string> {
    const out = await this.#ec2('GetEbsDefaultKmsKeyId', () => this.#o.client.send(new GetEbsDefaultKmsKeyIdCommand({})))
    return out.KmsKeyId!
  }

  /** Snapshots the task's volume (or finds the snapshot an earlier attempt made) and waits for it. */
  async snapshot(taskId: string, volumeId: string): Promise<string> {
    const found = await this.#ec2('DescribeSnapshots', () => this.#o.client.send(new DescribeSnapshotsCommand({
      OwnerIds: ['self'], Filters: [{ Name: `tag:${TASK_ID_TAG}`, Values: [taskId] }],
    })))
    const snapshotId = found.Snapshots?.[0]?.SnapshotId ?? (await this.#ec2('CreateSnapshot', () => this.#o.client.send(new CreateSnapshotCommand({
      VolumeId: volumeId,
      Description: `ebs-worker restore ${taskId}`,
      TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: TASK_ID_TAG, Value: taskId }] }],
    })))).SnapshotId!
    // Just created, it may not be visible yet (EC2's eventual consistency): the wait allows for that.
    await waitSnapshotsCompleted(this.#o.client, [snapshotId], { timeoutMs: (this.#o.stateTimeoutSeconds ?? 3600) * 1000, ...this.#visibility() })
    return snapshotId
  }

  /** Lets another account create volumes from the snapshot (createVolumePermission). */
  async share(snapshotId: string, accountId: string): Promise<void> {
    await this.#ec2('ModifySnapshotAttribute', () => this.#o.client.send(new ModifySnapshotAttributeCommand({
      SnapshotId: snapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: accountId }] },
    })))
  }

  async #describe(volumeId: string): Promise<Volume> {
    const out = await this.#ec2('DescribeVolumes', () => this.#o.client.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] })))
    const v = out.Volumes?.[0]
    if (!v) throw new EbsWorkerError(ErrorCode.VolumeNotFound, `volume ${volumeId} does not exist`, { context: { volumeId } })
    return v
  }

  async #usedDeviceNames(): Promise<Set<string>> {
    const out = await this.#ec2('DescribeVolumes', () => this.#o.client.send(new DescribeVolumesCommand({
      Filters: [{ Name: 'attachment.instance-id', Values: [this.#o.identity.instanceId] }],
    })))
    return new Set((out.Volumes ?? []).flatMap((v) => (v.Attachments ?? []).map((a) => a.Device!)))
  }

  async #waitAvailable(volumeId: string): Promise<void> {
    await waitVolumeState(this.#o.client, volumeId, 'available', { timeoutMs: (this.#o.stateTimeoutSeconds ?? 300) * 1000, ...this.#visibility() })
  }

  /** How long a volume or snapshot just created may be unknown to EC2 before a wait gives up on it (waits.ts). */
  #visibility(): { visibleWithinMs?: number } {
    return this.#o.visibleWithinSeconds === undefined ? {} : { visibleWithinMs: this.#o.visibleWithinSeconds * 1000 }
  }

  /** EC2 errors as stable codes (aws/errors.ts): what is permanent (not found, denied, invalid) says so. */
  #ec2<T>(operation: string, call: () => Promise<T>): Promise<T> {
    return awsCall({ service: 'EC2', operation }, call)
  }
}
