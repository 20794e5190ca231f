// restore-instance: the seeds' two restore flows ("Restore to Same AWS Account", "Restore to
// Another AWS Account"; DESIGN.md §2). The worker account is the controller's own.
//   Same account: `restore` tasks make empty volumes encrypted with the target key in the worker's
//   AZ and restore into them; the restore role then launches an instance in that AZ, swaps its
//   launch root volume for the restored ones, in the original device order, and starts it. The
//   workers keep those volumes (ebs-worker:transient=false: no worker may delete them), so a
//   failed restore has the restore role delete them.
//   Another account, all seed steps: before anything is created, the worker account's default EBS
//   key in the target Region must not be aws/ebs (its snapshots could not be shared); `restore`
//   tasks make empty volumes under that default key, restore, snapshot and share the snapshots
//   with the target account; the restore role launches the instance, creates volumes from the
//   shared snapshots encrypted with the target key, attaches them in the original order; the
//   intermediate snapshots (unshared, deleted) and worker volumes (a `detach` task) are removed.
// Before anything is created, the restore role also checks where the instance will launch: the image
// (visible to the target account in the target Region) and the network (the subnet, or a default
// VPC the account may not have); the instance takes the original's tags EC2 lets callers set.
// Any failure undoes what this run made (instance, volumes, snapshots) and says what it could not.
import {
  AttachVolumeCommand, CreateVolumeCommand, DeleteSnapshotCommand, DeleteVolumeCommand, DescribeAccountAttributesCommand, DescribeImagesCommand,
  DescribeSecurityGroupsCommand, DescribeSubnetsCommand, DetachVolumeCommand, ModifySnapshotAttributeCommand, RunInstancesCommand, StartInstancesCommand,
  StopInstancesCommand, TerminateInstancesCommand, type EC2Client, type VolumeType, type _InstanceType,
} from '@aws-sdk/client-ec2'
import { timestampedId } from '../agent/core/ids.ts'
import { assumeRole, ownSession } from './aws.ts'
import { Cleanup, failedAfterCleanup, type CleanupReport } from './cleanup.ts'
import { call, describeKey, describeVolumes, statePoll, waitInstanceState, type Waits } from './ec2.ts'
import { defaultEbsKey, restoreWorkerNeed, tryNeeds } from './keys.ts'
import { settleAll } from '../agent/core/concurrency.ts'
import { EbsWorkerError, ErrorCode } from '../agent/core/errors.ts'
import { createVolumePerformance, provisionable } from '../agent/aws/volume-types.ts'
import { waitVolumeCreated, waitVolumeState } from '../agent/aws/waits.ts'
import { RestorePointStore, type RestorePoint } from './restore-point.ts'
import { succeeded, type TaskChannel } from './tasks.ts'

export const RESTORE_TAG = 'ebs-controller:restore'

/** EC2's limit of tags per resource; tags with the reserved `aws:` prefix do not count, and no caller may set them. */
const MAX_TAGS = 50
const RESERVED_TAG = /^aws:/i

/**
 * The tags the new instance is launched with: the original's, without the keys reserved for AWS
 * (`aws:cloudformation:…`, `aws:autoscaling:…`, `aws:ec2launchtemplate:…`: RunInstances refuses
 * them), and within EC2's 50 with ours (`tag`), which always stays: `Name` first, then the others
 * by key. EC2 User Guide, "Tag your Amazon EC2 resources", Tag restrictions. `dropped` names what
 * was left out.
 */
export function launchTags(original: Record<string, string>, tag: { Key: string; Value: string }): { tags: Array<{ Key: string; Value: string }>; dropped: string[] } {
  const reserved = Object.keys(original).filter((k) => RESERVED_TAG.test(k))
  const keys = Object.keys(original).filter((k) => !RESERVED_TAG.test(k) && k !== tag.Key)
    .sort((a, b) => (a === 'Name' ? -1 : b === 'Name' ? 1 : a < b ? -1 : a > b ? 1 : 0))
  const kept = keys.slice(0, MAX_TAGS - 1)
  return {
    tags: [...kept.map((Key) => ({ Key, Value: original[Key]! })), tag],
    dropped: [...reserved, ...keys.slice(MAX_TAGS - 1)],
  }
}

export interface RestoreOptions {
  restorePointId: string
  repo: string
  targetAccount: string
  targetRegion: string
  targetKmsKey: string
  restoreRole: string
  /** Assumed to check, before anything is made, that the workers can use the key their volumes will be under. */
  workerRole?: string
  instanceType?: string
  imageId?: string
  availabilityZone?: string
  /** The subnet to launch into (an account without a default VPC in the Region needs one); its AZ is the instance's. */
  subnetId?: string
  /** Security groups of the instance (of the subnet's VPC, or of the default VPC). */
  securityGroupIds?: string[]
  /** Leave the instance stopped. */
  noStart?: boolean
  waits: Waits
  /** Told each step of the flow as it begins (the command line shows them on a terminal). */
  onStep?: (step: string) => void
}

export interface RestoreOutcome {
  instanceId: string
  volumes: Array<{ deviceName: string; volumeId: string; kmsKeyId: string }>
  /** The original's tags the new instance could not take (reserved `aws:` keys; beyond EC2's 50). */
  droppedTags: string[]
  cleanup: CleanupReport
}

/** What RunInstances needs to be told where the instance goes, as checkImage and checkNetwork found it. */
export interface Launch {
  imageId: string
  /** The subnet's AZ when a subnet was given. */
  availabilityZone?: string
  vpcId: string
}

type LaunchOptions = Pick<RestoreOptions, 'targetAccount' | 'targetRegion' | 'imageId' | 'subnetId' | 'securityGroupIds'>

/**
 * The image the instance launches from, as the restore role sees it in the target account and
 * Region: an AMI exists in one Region and only its owner, the accounts it is shared with, or
 * everyone when it is public may launch it (EC2 User Guide, "Find an AMI", "Share an AMI"); any
 * other is InvalidAMIID.NotFound. Of the original's architecture, when both are known.
 */
export async function checkImage(ec2: EC2Client, who: string, o: LaunchOptions, rp: RestorePoint): Promise<string> {
  const imageId = o.imageId ?? rp.instance.imageId
  const which = o.imageId ? `the image ${imageId}` : `the original's image ${imageId}`
  const missing = (detail: string): EbsWorkerError => new EbsWorkerError(ErrorCode.ImageNotFound,
    `${which} is not available to account ${o.targetAccount} in ${o.targetRegion} (${detail}): an AMI exists in one Region and only its owner, the accounts ` +
    `it is shared with, or everyone when public may launch it. Copy it to ${o.targetRegion} (ec2 copy-image) and share it with ${o.targetAccount}, ` +
    'or pass --image-id with an image there. Nothing was created.')
  const out = await call(who, `DescribeImages ${imageId}`, () => ec2.send(new DescribeImagesCommand({ ImageIds: [imageId] }))).catch((err: unknown) => {
    throw err instanceof EbsWorkerError && err.code === ErrorCode.ImageNotFound ? missing(err.message) : err
  })
  const image = out.Images?.find((i) => i.ImageId === imageId)
  if (!image || (image.State && image.State !== 'available')) throw missing(image ? `it is ${image.State}` : 'DescribeImages did not list it')
  if (rp.instance.architecture && image.Architecture && image.Architecture !== rp.instance.architecture) {
    throw new EbsWorkerError(ErrorCode.BadInput, `${which} is ${image.Architecture}, the original instance was ${rp.instance.architecture}: pass --image-id with a ${rp.instance.architecture} image. Nothing was created.`)
  }
  return imageId
}

/**
 * Where the instance can go: the subnet given (its AZ and VPC), else the default VPC, which an
 * account may not have in a Region (RunInstances would be VPCIdNotSpecified; "Default VPCs":
 * DescribeAccountAttributes default-vpc is "none"); the security groups must be of that VPC.
 */
export async function checkNetwork(ec2: EC2Client, who: string, o: LaunchOptions): Promise<Omit<Launch, 'imageId'>> {
  let vpcId: string
  let availabilityZone: string | undefined
  if (o.subnetId) {
    const subnet = (await call(who, `DescribeSubnets ${o.subnetId}`, () => ec2.send(new DescribeSubnetsCommand({ SubnetIds: [o.subnetId!] })))).Subnets?.[0]
    if (!subnet?.VpcId || !subnet.AvailabilityZone) throw new EbsWorkerError(ErrorCode.BadInput, `${who}: the subnet ${o.subnetId} is not in account ${o.targetAccount}, ${o.targetRegion}`)
    vpcId = subnet.VpcId
    availabilityZone = subnet.AvailabilityZone
  } else {
    const out = await call(who, 'DescribeAccountAttributes default-vpc', () => ec2.send(new DescribeAccountAttributesCommand({ AttributeNames: ['default-vpc'] })))
    const value = out.AccountAttributes?.find((a) => a.AttributeName === 'default-vpc')?.AttributeValues?.[0]?.AttributeValue
    if (!value || value === 'none') {
      throw new EbsWorkerError(ErrorCode.BadInput, `account ${o.targetAccount} has no default VPC in ${o.targetRegion}, so the instance needs a subnet: ` +
        'pass --subnet-id (and --security-group-ids of its VPC). Nothing was created.')
    }
    vpcId = value
  }
  if (o.securityGroupIds?.length) {
    const groups = (await call(who, `DescribeSecurityGroups ${o.securityGroupIds.join(' ')}`, () => ec2.send(new DescribeSecurityGroupsCommand({ GroupIds: o.securityGroupIds! })))).SecurityGroups ?? []
    const stray = o.securityGroupIds.filter((id) => groups.find((g) => g.GroupId === id)?.VpcId !== vpcId)
    if (stray.length) {
      throw new EbsWorkerError(ErrorCode.BadInput, `the security group${stray.length > 1 ? 's' : ''} ${stray.join(', ')} ${stray.length > 1 ? 'are' : 'is'} not of ` +
        `${o.subnetId ? `the VPC of ${o.subnetId}` : 'the default VPC'} (${vpcId}). Nothing was created.`)
    }
  }
  return { vpcId, ...(availabilityZone ? { availabilityZone } : {}) }
}

/** The aws/ebs rule of a cross-account restore, before anything is created. */
function defaultKeyRefusal(rp: RestorePoint, key: string, workerAccount: string, o: RestoreOptions): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.DefaultKeyNotShareable,
    `cannot restore ${rp.id} into account ${o.targetAccount}: the worker account ${workerAccount}'s default EBS key in ${o.targetRegion} is the AWS managed ` +
    `key aws/ebs (${key}); the volumes ${rp.volumes.map((v) => `${v.deviceName} (from ${v.volumeId})`).join(', ')} would be restored under it, and ` +
    'snapshots encrypted with it cannot be shared with another account. Nothing was created. Either make a customer managed key the default EBS key of ' +
    `${o.targetRegion} in ${workerAccount} (ec2 modify-ebs-default-kms-key-id) whose key policy lets ${o.targetAccount} use it, or run a worker in the target account ${o.targetAccount}.`)
}

export async function restoreInstance(o: RestoreOptions, tasks: TaskChannel): Promise<RestoreOutcome> {
  const step = o.onStep ?? (() => {})
  step(`reading restore point ${o.restorePointId}`)
  const rp = await new RestorePointStore(o.repo).load(o.restorePointId)
  const me = await ownSession(o.targetRegion)
  const restore = await assumeRole(o.restoreRole, o.targetRegion, 'ebs-controller-restore')
  const who = `restore role ${o.restoreRole}`
  if (restore.accountId !== o.targetAccount) {
    throw new EbsWorkerError(ErrorCode.BadInput, `the restore role ${o.restoreRole} is in account ${restore.accountId}, not the target account ${o.targetAccount}`)
  }
  const targetKey = await describeKey(restore.kms(o.targetRegion), who, o.targetKmsKey).catch((err: unknown) => {
    if (err instanceof EbsWorkerError && err.code === ErrorCode.KeyNotFound) {
      err.message = `the target KMS key ${o.targetKmsKey} does not exist in account ${o.targetAccount}, Region ${o.targetRegion} (${err.message}). Nothing was created.`
    }
    throw err
  })
  const targetKeyArn = targetKey.Arn!
  const cross = me.accountId !== o.targetAccount
  const mine = me.ec2(o.targetRegion)
  // The key the workers' volumes will be under: the target key, or across accounts their default key.
  let workerDefault: string | undefined
  if (cross) {
    const def = await defaultEbsKey(me, o.targetRegion, 'controller')
    if (def.awsManaged) throw defaultKeyRefusal(rp, def.arn, me.accountId, o)
    workerDefault = def.arn
  }
  if (o.workerRole) {
    const worker = await assumeRole(o.workerRole, o.targetRegion, 'ebs-controller-check')
    const need = restoreWorkerNeed(targetKeyArn, workerDefault)
    // Its grant as EBS makes it: simulated by the controller; the key is in the controller's account or the target's.
    const refused = (await tryNeeds(worker, o.targetRegion, [need], { simulator: me, readers: [me, restore] })).filter((r) => !r.ok)
    if (refused.length) {
      throw new EbsWorkerError(ErrorCode.AccessDenied, `the worker role ${o.workerRole} cannot use ${need.key}, the key its volumes would be under: ` +
        `${refused.map((r) => `kms:${r.action}`).join(', ')} refused (${refused.map((r) => `kms:${r.action}: ${r.detail ?? 'refused'}`).join('; ')}). ` +
        'The worker role\'s policy and the key policy must allow them (packaging/iam/). Nothing was created.')
    }
  }

  // Where the instance launches: the image and the network, as the restore role sees them.
  const ec2 = restore.ec2(o.targetRegion)
  const launch: Launch = { imageId: await checkImage(ec2, who, o, rp), ...(await checkNetwork(ec2, who, o)) }
  if (cross && launch.availabilityZone && o.availabilityZone && o.availabilityZone !== launch.availabilityZone) {
    throw new EbsWorkerError(ErrorCode.BadInput, `--availability-zone ${o.availabilityZone} and --subnet-id ${o.subnetId} (in ${launch.availabilityZone}) disagree. Nothing was created.`)
  }

  const runId = timestampedId('restore')
  const temporary = new Cleanup() // undone whatever happens
  const undo = new Cleanup() // undone only if the restore fails
  try {
    // 1. The workers: volumes holding the backups (and, across accounts, shared snapshots of them).
    step(`workers restoring ${rp.volumes.length} volume${rp.volumes.length === 1 ? '' : 's'} of ${rp.instance.instanceId}`)
    let done = 0
    const restored = await settleAll(rp.volumes.map(async (v, i) => {
      const r = await tasks.run({
        version: 1, type: 'restore', taskId: `${runId}/${i}`, backupId: v.backupId, repository: o.repo, sizeGiB: v.sizeGiB,
        volume: {
          volumeType: v.volumeType as 'gp3', ...provisionable(v.volumeType, v),
          ...(cross ? {} : { kmsKeyId: targetKeyArn }),
        },
        ...(cross ? { snapshot: { shareWithAccount: o.targetAccount } } : {}),
      })
      const figures = succeeded(r, `restore of ${v.deviceName} from ${v.backupId}`)
      const volumeId = String(figures.volumeId)
      step(`restored ${v.deviceName} (${++done}/${rp.volumes.length}) onto ${volumeId}`)
      const release = `delete worker volume ${volumeId} (detach task)`
      const releaseRun = async (): Promise<void> => {
        succeeded(await tasks.run({ version: 1, type: 'detach', taskId: `${runId}/${i}/detach`, volumeId, delete: true }), `deleting worker volume ${volumeId}`)
      }
      if (cross) {
        temporary.add(release, releaseRun)
        const snapshotId = String(figures.snapshotId)
        temporary.add(`delete snapshot ${snapshotId}`, () => mine.send(new DeleteSnapshotCommand({ SnapshotId: snapshotId })))
        temporary.add(`unshare ${snapshotId} from ${o.targetAccount}`, () => mine.send(new ModifySnapshotAttributeCommand({
          SnapshotId: snapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Remove: [{ UserId: o.targetAccount }] },
        })))
        return { v, volumeId, snapshotId }
      }
      // Same account: the restored volume is the workers' no more (kept, ebs-worker:transient=false,
      // which the worker role may not delete): should the restore fail, the restore role deletes it.
      undo.add(`delete restored volume ${volumeId}`, async () => {
        await ec2.send(new DetachVolumeCommand({ VolumeId: volumeId })).catch(() => {})
        await waitVolumeState(ec2, volumeId, 'available', { ...statePoll(o.waits), visibleWithinMs: 0, who }).catch(() => {})
        await ec2.send(new DeleteVolumeCommand({ VolumeId: volumeId }))
      })
      return { v, volumeId, snapshotId: undefined }
    }))

    // 2. The instance, in the AZ its volumes can attach in.
    let az: string
    if (cross) {
      az = launch.availabilityZone ?? o.availabilityZone ?? (rp.instance.region === o.targetRegion ? rp.instance.availabilityZone : `${o.targetRegion}a`)
    } else {
      // The workers made the volumes in their own AZs: one instance can attach them only if that is one AZ.
      const zones = [...new Set((await describeVolumes(ec2, who, restored.map((r) => r.volumeId))).map((v) => v.AvailabilityZone!))]
      if (zones.length !== 1) {
        throw new EbsWorkerError(ErrorCode.TaskFailed, `the workers restored the volumes in several Availability Zones (${zones.join(', ')}), ` +
          'and one instance can only attach volumes of its own AZ: run the restore with workers of one AZ (a queue per AZ)')
      }
      az = zones[0]!
      if (launch.availabilityZone && launch.availabilityZone !== az) {
        throw new EbsWorkerError(ErrorCode.BadInput, `the workers restored the volumes in ${az}, and the subnet ${o.subnetId} is in ${launch.availabilityZone}: ` +
          `an instance attaches only volumes of its own AZ. Pass a subnet of ${az}, or run the restore with workers of ${launch.availabilityZone}`)
      }
    }
    step(`launching a ${o.instanceType ?? rp.instance.instanceType} instance in ${az}`)
    const { tags, dropped: droppedTags } = launchTags(rp.instance.tags, { Key: RESTORE_TAG, Value: `${rp.id} ${runId}` })
    const run = await call(who, 'RunInstances', () => ec2.send(new RunInstancesCommand({
      ImageId: launch.imageId, InstanceType: (o.instanceType ?? rp.instance.instanceType) as _InstanceType, MinCount: 1, MaxCount: 1,
      Placement: { AvailabilityZone: az }, ClientToken: runId,
      ...(o.subnetId ? { SubnetId: o.subnetId } : {}), ...(o.securityGroupIds?.length ? { SecurityGroupIds: o.securityGroupIds } : {}),
      TagSpecifications: [{ ResourceType: 'instance', Tags: tags }],
    })))
    const instanceId = run.Instances![0]!.InstanceId!
    undo.add(`terminate instance ${instanceId}`, () => ec2.send(new TerminateInstancesCommand({ InstanceIds: [instanceId] })))
    await waitInstanceState(ec2, who, instanceId, 'running', o.waits)
    await call(who, `StopInstances ${instanceId}`, () => ec2.send(new StopInstancesCommand({ InstanceIds: [instanceId] })))
    step(`stopping ${instanceId} to swap its volumes`)
    const stopped = await waitInstanceState(ec2, who, instanceId, 'stopped', o.waits)
    // The launch's own volumes make way for the restored ones.
    for (const m of stopped.BlockDeviceMappings ?? []) {
      const id = m.Ebs?.VolumeId
      if (!id) continue
      await call(who, `DetachVolume ${id}`, () => ec2.send(new DetachVolumeCommand({ VolumeId: id })))
      await waitVolumeState(ec2, id, 'available', { ...statePoll(o.waits), who })
      await call(who, `DeleteVolume ${id}`, () => ec2.send(new DeleteVolumeCommand({ VolumeId: id })))
    }

    // 3. Across accounts: the target account's volumes, from the shared snapshots, under the target key.
    const volumes: RestoreOutcome['volumes'] = []
    for (const r of restored) {
      let volumeId = r.volumeId
      if (cross) {
        step(`creating ${r.v.deviceName} in ${o.targetAccount} from ${r.snapshotId}`)
        const created = await call(who, `CreateVolume from ${r.snapshotId}`, () => ec2.send(new CreateVolumeCommand({
          AvailabilityZone: az, SnapshotId: r.snapshotId!, Encrypted: true, KmsKeyId: targetKeyArn, VolumeType: r.v.volumeType as VolumeType,
          ...createVolumePerformance(r.v.volumeType, r.v),
          TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: RESTORE_TAG, Value: `${rp.id} ${runId}` }] }],
        })))
        volumeId = created.VolumeId!
        const id = volumeId
        undo.add(`delete volume ${id}`, async () => {
          await ec2.send(new DetachVolumeCommand({ VolumeId: id })).catch(() => {})
          // By now it was seen, or EBS rolled it back: "no such volume" means gone.
          await waitVolumeState(ec2, id, 'available', { ...statePoll(o.waits), visibleWithinMs: 0, who }).catch(() => {})
          await ec2.send(new DeleteVolumeCommand({ VolumeId: id }))
        })
        // EBS checks the key only now: a volume it rolls back means the restore role may not use it.
        await waitVolumeCreated(ec2, volumeId, {
          ...statePoll(o.waits), key: targetKeyArn, who,
          advice: `${who} needs kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt* on it, in its identity policy and in the key policy (packaging/iam/)`,
        })
      }
      volumes.push({ deviceName: r.v.deviceName, volumeId, kmsKeyId: targetKeyArn })
    }

    // 4. Attached in the original device order; the original root goes where the instance boots from.
    step(`attaching ${volumes.length} volume${volumes.length === 1 ? '' : 's'} to ${instanceId}`)
    for (const v of volumes) {
      const device = v.deviceName === rp.instance.rootDeviceName ? (stopped.RootDeviceName ?? v.deviceName) : v.deviceName
      await call(who, `AttachVolume ${v.volumeId} ${device}`, () => ec2.send(new AttachVolumeCommand({ InstanceId: instanceId, VolumeId: v.volumeId, Device: device })))
      await waitVolumeState(ec2, v.volumeId, 'in-use', { ...statePoll(o.waits), who })
      v.deviceName = device
    }
    if (!o.noStart) {
      step(`starting ${instanceId}`)
      await call(who, `StartInstances ${instanceId}`, () => ec2.send(new StartInstancesCommand({ InstanceIds: [instanceId] })))
      await waitInstanceState(ec2, who, instanceId, 'running', o.waits)
    }
    return { instanceId, volumes, droppedTags, cleanup: await temporary.run() }
  } catch (err) {
    const a = await undo.run()
    const b = await temporary.run()
    throw failedAfterCleanup(err, [...a.failed, ...b.failed])
  }
}
