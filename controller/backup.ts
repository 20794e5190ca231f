// backup-instance: the seeds' two backup flows ("Creating Image-Level Backup in Same AWS Account"
// and "… in Another AWS Account"; DESIGN.md §2).
//   1. with the source role: the instance and its volumes; KMS DescribeKey of every volume key;
//      for a worker in another account, the aws/ebs rule before anything is created (a snapshot
//      under an AWS managed key cannot be shared: fail, naming the volumes, the key and the ways
//      out, unless --reencrypt-with names a customer managed key to copy those snapshots under);
//   2. CreateSnapshots of the instance; wait;
//   3. another account: CopySnapshot re-encrypted where asked, then share each snapshot with the
//      worker account (ModifySnapshotAttribute createVolumePermission add);
//   4. one `backup` task per volume (the worker creates a volume from the snapshot in its AZ,
//      under its Region's default key when the snapshot was shared, reads it into the repository,
//      deletes the volume); results collected;
//   5. the restore point (instance metadata, device order, one backup per volume) written to the
//      repository; 6. cleanup: unshare, delete copies and (unless kept) the snapshots.
// Every failure after step 2 undoes what was made and reports what could not be undone.
import {
  CopySnapshotCommand, CreateSnapshotsCommand, DeleteSnapshotCommand, DescribeSnapshotsCommand, ModifySnapshotAttributeCommand,
  type EC2Client,
} from '@aws-sdk/client-ec2'
import { assumeRole, ownSession, type Session } from './aws.ts'
import { Cleanup, failedAfterCleanup, type CleanupReport } from './cleanup.ts'
import { call, describeInstance, describeKey, describeVolumes, waitSnapshots, type Waits } from './ec2.ts'
import { backupUsesWorkerDefaultKey, backupWorkerNeeds, defaultEbsKey, tryNeeds } from './keys.ts'
import { settleAll } from '../agent/core/concurrency.ts'
import { provisionable } from '../agent/aws/volume-types.ts'
import { EbsWorkerError, ErrorCode } from '../agent/core/errors.ts'
import { newRestorePointId, RESTORE_POINT_VERSION, RestorePointStore, type RestorePoint } from './restore-point.ts'
import { succeeded, type TaskChannel } from './tasks.ts'

export const CONTROLLER_TAG = 'ebs-controller:restore-point'

export interface BackupOptions {
  instanceId: string
  sourceRole: string
  repo: string
  /** The instance's Region. */
  region: string
  /** The workers' account (default: the instance's). */
  workerAccount?: string
  /** Assumed to check, before anything is made, that the workers can use the keys they will need. */
  workerRole?: string
  reencryptWith?: string
  keepSnapshots?: boolean
  /** Back up every volume in full, even when an earlier restore point of the instance exists. */
  full?: boolean
  waits: Waits
  /** Told each step of the flow as it begins (the command line shows them on a terminal). */
  onStep?: (step: string) => void
}

export interface BackupOutcome {
  restorePoint: RestorePoint
  cleanup: CleanupReport
}

interface SourceVolume {
  deviceName: string
  volumeId: string
  sizeGiB: number
  volumeType: string
  iops?: number
  throughput?: number
  encrypted: boolean
  kmsKeyId?: string
  deleteOnTermination: boolean
  awsManaged: boolean
}

/** What DescribeKey of a volume key told the source role: its manager, or why it could not say. */
export type KeyLookup = { ok: true; manager: string } | { ok: false; error: unknown }

/**
 * The instance and its volumes, in block device order, as the source role sees them, with what
 * DescribeKey said of each volume key (a key it could not describe counts as customer managed).
 */
export async function surveyInstance(source: Session, region: string, instanceId: string) {
  const who = `source role ${source.role}`
  const ec2 = source.ec2(region)
  const instance = await describeInstance(ec2, who, instanceId)
  const mappings = (instance.BlockDeviceMappings ?? []).filter((m) => m.Ebs?.VolumeId)
  const described = new Map((await describeVolumes(ec2, who, mappings.map((m) => m.Ebs!.VolumeId!))).map((v) => [v.VolumeId!, v]))
  const keys = new Map<string, KeyLookup>()
  const volumes: SourceVolume[] = []
  for (const m of mappings) {
    const v = described.get(m.Ebs!.VolumeId!)
    if (!v) throw new EbsWorkerError(ErrorCode.AwsError, `${who}: volume ${m.Ebs!.VolumeId} of ${instanceId} is not visible`)
    if (v.KmsKeyId && !keys.has(v.KmsKeyId)) {
      keys.set(v.KmsKeyId, await describeKey(source.kms(region), who, v.KmsKeyId).then(
        (meta): KeyLookup => ({ ok: true, manager: meta.KeyManager ?? 'CUSTOMER' }), (error: unknown): KeyLookup => ({ ok: false, error })))
    }
    const key = v.KmsKeyId ? keys.get(v.KmsKeyId) : undefined
    volumes.push({
      deviceName: m.DeviceName!, volumeId: v.VolumeId!, sizeGiB: v.Size!, volumeType: v.VolumeType ?? 'gp3',
      // What the type was provisioned with: gp2's Iops is only its baseline, which CreateVolume refuses.
      ...provisionable(v.VolumeType ?? 'gp3', { iops: v.Iops, throughput: v.Throughput }),
      encrypted: Boolean(v.Encrypted), ...(v.KmsKeyId ? { kmsKeyId: v.KmsKeyId } : {}), deleteOnTermination: Boolean(m.Ebs!.DeleteOnTermination),
      awsManaged: Boolean(key?.ok && key.manager === 'AWS'),
    })
  }
  if (!volumes.length) throw new EbsWorkerError(ErrorCode.BadInput, `instance ${instanceId} has no EBS volumes to back up`)
  return { instance, volumes, keys }
}

/** surveyInstance, for a flow: a volume key the source role cannot describe fails it. */
export async function inspectInstance(source: Session, region: string, instanceId: string) {
  const survey = await surveyInstance(source, region, instanceId)
  for (const k of survey.keys.values()) if (!k.ok) throw k.error
  return survey
}

/** The aws/ebs rule of a cross-account backup, before anything is created. */
export function awsManagedRefusal(volumes: SourceVolume[], sourceAccount: string, workerAccount: string, instanceId: string): EbsWorkerError | null {
  const managed = volumes.filter((v) => v.awsManaged)
  if (!managed.length) return null
  const keys = [...new Set(managed.map((v) => v.kmsKeyId!))]
  return new EbsWorkerError(ErrorCode.DefaultKeyNotShareable,
    `cannot back up ${instanceId} with a worker in account ${workerAccount}: volume${managed.length > 1 ? 's' : ''} ` +
    `${managed.map((v) => `${v.volumeId} (${v.deviceName})`).join(', ')} ${managed.length > 1 ? 'are' : 'is'} encrypted with the AWS managed key aws/ebs ` +
    `(${keys.join(', ')}), and snapshots encrypted with it cannot be shared with another account. Nothing was created. Either run the worker in the ` +
    `production account ${sourceAccount} (--worker-account ${sourceAccount}), or pass --reencrypt-with <customer managed key ARN> to copy those ` +
    `snapshots re-encrypted with a key the worker account may use, and share the copies.`)
}

/** Volume id → its backup (and the snapshot it was read from) in the instance's latest restore point, if any. */
async function parentBackups(store: RestorePointStore, instanceId: string): Promise<Map<string, { backupId: string; snapshotId: string }>> {
  const latest = await store.latestOf(instanceId)
  return new Map((latest?.volumes ?? []).map((v) => [v.volumeId, { backupId: v.backupId, snapshotId: v.snapshotId }]))
}

/**
 * Parents whose snapshot still exists (kept with --keep-snapshots), by volume: the worker can ask
 * EBS ListChangedBlocks between it and the new snapshot and read only the changed blocks.
 */
async function keptParentSnapshots(ec2: EC2Client, who: string, parents: Map<string, { snapshotId: string }>): Promise<Map<string, string>> {
  const ids = [...parents.values()].map((p) => p.snapshotId)
  if (!ids.length) return new Map()
  const out = await call(who, 'DescribeSnapshots of the parent backups', () => ec2.send(new DescribeSnapshotsCommand({
    OwnerIds: ['self'], Filters: [{ Name: 'snapshot-id', Values: ids }, { Name: 'status', Values: ['completed'] }],
  })))
  const kept = new Set((out.Snapshots ?? []).map((s) => s.SnapshotId!))
  return new Map([...parents].filter(([, p]) => kept.has(p.snapshotId)).map(([volumeId, p]) => [volumeId, p.snapshotId]))
}

export async function backupInstance(o: BackupOptions, tasks: TaskChannel): Promise<BackupOutcome> {
  const step = o.onStep ?? (() => {})
  step(`inspecting ${o.instanceId} with the source role`)
  const source = await assumeRole(o.sourceRole, o.region, 'ebs-controller-backup')
  const who = `source role ${o.sourceRole}`
  const sourceAccount = source.accountId
  const workerAccount = o.workerAccount ?? sourceAccount
  const cross = workerAccount !== sourceAccount
  const ec2 = source.ec2(o.region)
  const { instance, volumes } = await inspectInstance(source, o.region, o.instanceId)

  // Before anything is created: the aws/ebs rule, the re-encryption key, and the worker's keys.
  let reencryptArn: string | undefined
  if (cross) {
    const refusal = awsManagedRefusal(volumes, sourceAccount, workerAccount, o.instanceId)
    if (refusal && !o.reencryptWith) throw refusal
    if (refusal && o.reencryptWith) {
      const meta = await describeKey(source.kms(o.region), who, o.reencryptWith)
      if (meta.KeyManager === 'AWS') throw new EbsWorkerError(ErrorCode.BadInput, `--reencrypt-with ${o.reencryptWith} is an AWS managed key: it must be a customer managed key`)
      reencryptArn = meta.Arn!
    }
  }

  if (o.workerRole) {
    // The workers' keys (keys.ts), checked as the worker role before anything is created.
    const whoW = `worker role ${o.workerRole}`
    step(`checking the keys the ${whoW} will use`)
    const worker = await assumeRole(o.workerRole, o.region, 'ebs-controller-check')
    const defaultKey = backupUsesWorkerDefaultKey(volumes, cross) ? await defaultEbsKey(worker, o.region, whoW) : undefined
    // Its grants as EBS makes them: simulated by the controller, with the key policies read in the keys' accounts.
    const me = await ownSession(o.region)
    const refused = (await tryNeeds(worker, o.region, backupWorkerNeeds(volumes, cross, reencryptArn, defaultKey), { simulator: me, readers: [me, source] })).filter((r) => !r.ok)
    if (refused.length) {
      throw new EbsWorkerError(ErrorCode.AccessDenied, `the ${whoW} cannot use the keys the backup needs: ${refused.map((r) => `kms:${r.action} on ${r.need.label}${r.detail ? ` (${r.detail})` : ''}`).join('; ')}. ` +
        'The key policies must allow the worker account (packaging/iam/key-policy-*.json) and the worker role\'s policy must allow the actions. Nothing was created.')
    }
  }

  // Incremental: each volume's backup in the instance's latest restore point is its parent (the
  // worker then stores only the chunks that changed).
  const store = new RestorePointStore(o.repo)
  const parents = o.full ? new Map<string, { backupId: string; snapshotId: string }>() : await parentBackups(store, o.instanceId)
  // A re-encrypted copy is not of the parent's lineage as the worker saw it: those read everything.
  const parentSnapshots = await keptParentSnapshots(ec2, who, new Map([...parents].filter(([volumeId]) => !(cross && volumes.find((v) => v.volumeId === volumeId)?.awsManaged))))

  const id = newRestorePointId()
  const cleanup = new Cleanup()
  try {
    step(`snapshotting ${volumes.length} volume${volumes.length === 1 ? '' : 's'} of ${o.instanceId} (restore point ${id})`)
    const created = await call(who, `CreateSnapshots ${o.instanceId}`, () => ec2.send(new CreateSnapshotsCommand({
      InstanceSpecification: { InstanceId: o.instanceId },
      Description: `ebs-controller ${id}`,
      CopyTagsFromSource: 'volume',
      TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: CONTROLLER_TAG, Value: id }] }],
    })))
    const snapshotOf = new Map<string, string>()
    for (const s of created.Snapshots ?? []) {
      snapshotOf.set(s.VolumeId!, s.SnapshotId!)
      if (!o.keepSnapshots) cleanup.add(`delete snapshot ${s.SnapshotId}`, () => ec2.send(new DeleteSnapshotCommand({ SnapshotId: s.SnapshotId! })))
    }
    step(`waiting for the snapshots to complete: ${[...snapshotOf.values()].join(', ')}`)
    await waitSnapshots(ec2, who, [...snapshotOf.values()], o.waits)

    // What the worker reads: the snapshot, or its re-encrypted copy; shared when the worker is elsewhere.
    const readFrom = new Map<string, string>()
    for (const v of volumes) {
      let snapshotId = snapshotOf.get(v.volumeId)
      if (!snapshotId) throw new EbsWorkerError(ErrorCode.SnapshotFailed, `CreateSnapshots made no snapshot of ${v.volumeId} (${v.deviceName})`)
      if (cross && v.awsManaged) {
        const copy = await call(who, `CopySnapshot ${snapshotId} under ${reencryptArn}`, () => ec2.send(new CopySnapshotCommand({
          SourceSnapshotId: snapshotId, SourceRegion: o.region, Encrypted: true, KmsKeyId: reencryptArn!, Description: `ebs-controller ${id} ${v.volumeId} re-encrypted`,
          TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: CONTROLLER_TAG, Value: id }] }],
        })))
        snapshotId = copy.SnapshotId!
        const copyId = snapshotId
        cleanup.add(`delete re-encrypted copy ${copyId}`, () => ec2.send(new DeleteSnapshotCommand({ SnapshotId: copyId })))
      }
      readFrom.set(v.volumeId, snapshotId)
    }
    const copies = volumes.filter((v) => cross && v.awsManaged).map((v) => readFrom.get(v.volumeId)!)
    if (copies.length) step(`waiting for the re-encrypted copies: ${copies.join(', ')}`)
    await waitSnapshots(ec2, who, copies, o.waits)
    if (cross) {
      step(`sharing the snapshots with the worker account ${workerAccount}`)
      // The worker account needs the kept parent snapshots too, for ListChangedBlocks.
      for (const snapshotId of [...readFrom.values(), ...parentSnapshots.values()]) {
        await call(who, `share ${snapshotId} with ${workerAccount}`, () => ec2.send(new ModifySnapshotAttributeCommand({
          SnapshotId: snapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: workerAccount }] },
        })))
        cleanup.add(`unshare ${snapshotId} from ${workerAccount}`, () => ec2.send(new ModifySnapshotAttributeCommand({
          SnapshotId: snapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Remove: [{ UserId: workerAccount }] },
        })))
      }
    }

    // Every task is waited for, even after one failed: cleanup must not pull a snapshot from under
    // a worker still reading it, and no reply is left unread.
    step(`workers backing up ${volumes.length} volume${volumes.length === 1 ? '' : 's'}${parents.size ? ` (${parents.size} incremental)` : ''}`)
    let done = 0
    const results = await settleAll(volumes.map(async (v) => {
      const r = await tasks.run({
        version: 1, type: 'backup', taskId: `${id}/${v.volumeId}`, snapshotId: readFrom.get(v.volumeId)!,
        ...(cross ? { sharedFromAccount: sourceAccount } : {}), repository: o.repo,
        ...(parents.has(v.volumeId) ? { parentBackupId: parents.get(v.volumeId)!.backupId } : {}),
        ...(parentSnapshots.has(v.volumeId) ? { parentSnapshotId: parentSnapshots.get(v.volumeId)! } : {}),
        tags: { instance: o.instanceId, device: v.deviceName, 'restore-point': id },
      })
      const figures = succeeded(r, `backup of ${v.volumeId} (${v.deviceName})`)
      step(`backed up ${v.deviceName} ${v.volumeId} (${++done}/${volumes.length}): backup ${String(figures.backupId)}`)
      return { v, figures }
    }))

    const restorePoint: RestorePoint = {
      format: 'ebs-worker-restore-point', version: RESTORE_POINT_VERSION, id, createdAt: new Date().toISOString(),
      instance: {
        instanceId: o.instanceId, accountId: sourceAccount, region: o.region, availabilityZone: instance.Placement?.AvailabilityZone ?? `${o.region}a`,
        instanceType: instance.InstanceType ?? 'unknown', imageId: instance.ImageId ?? 'unknown', ...(instance.Architecture ? { architecture: instance.Architecture } : {}),
        rootDeviceName: instance.RootDeviceName ?? volumes[0]!.deviceName,
        tags: Object.fromEntries((instance.Tags ?? []).map((t) => [t.Key!, t.Value ?? ''])),
      },
      volumes: results.map(({ v, figures }) => ({
        deviceName: v.deviceName, volumeId: v.volumeId, sizeGiB: v.sizeGiB, volumeType: v.volumeType,
        ...(v.iops ? { iops: v.iops } : {}), ...(v.throughput ? { throughput: v.throughput } : {}),
        encrypted: v.encrypted, ...(v.kmsKeyId ? { kmsKeyId: v.kmsKeyId } : {}), deleteOnTermination: v.deleteOnTermination,
        snapshotId: snapshotOf.get(v.volumeId)!, backupId: String(figures.backupId),
      })),
      worker: { accountId: workerAccount, ...(reencryptArn ? { reencryptedWith: reencryptArn } : {}) },
    }
    step(`recording restore point ${id}`)
    await store.save(restorePoint)
    if (!o.keepSnapshots || cross) step('cleaning up')
    return { restorePoint, cleanup: await cleanup.run() }
  } catch (err) {
    throw failedAfterCleanup(err, (await cleanup.run()).failed)
  }
}
