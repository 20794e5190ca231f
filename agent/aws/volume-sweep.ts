// The volume sweep: deleting the task volumes a worker left behind when it went away mid-task
// (terminated, scaled in, its instance lost). A worker tags each volume it makes with its task,
// itself (ebs-worker:worker) and `ebs-worker:transient=true`; a volume it keeps (a restored volume
// for its instance, one a `detach` task kept) is retagged `transient=false`. A volume is an
// orphan, and deleted, only when all of these hold:
//   - it is transient (`ebs-worker:transient=true`): never a kept volume;
//   - it is `available`: attached to nothing (a terminated instance's volumes are detached by EC2);
//   - it was created at least `olderThanMs` ago: a worker that made it moments ago, or an instance
//     DescribeInstances does not show yet (EC2's eventual consistency), is not mistaken for gone;
//   - its worker is terminated: DescribeInstances says so, or no longer knows the instance.
// Just before deleting, the volume is read again: a task that took it over meanwhile (its worker
// tag, volumes.ts) or attached it keeps it. Whatever is not deleted is reported with why.
import { DeleteVolumeCommand, DescribeInstancesCommand, DescribeVolumesCommand, type EC2Client, type Volume } from '@aws-sdk/client-ec2'
import { describe, EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall } from './errors.ts'
import { TASK_ID_TAG, TRANSIENT_TAG, WORKER_TAG } from './volumes.ts'

export interface VolumeSweepOptions {
  client: EC2Client
  /** Only volumes created at least this long ago are orphans. */
  olderThanMs: number
  /** Say what would be deleted; delete nothing. */
  dryRun?: boolean
}

export interface SweptVolume {
  volumeId: string
  taskId: string
  worker: string
  createdAt: string
}

export interface VolumeSweepOutcome {
  /** Deleted (or, in a dry run, to be deleted). */
  deleted: SweptVolume[]
  kept: Array<SweptVolume & { why: string }>
  failed: Array<SweptVolume & { error: string }>
}

const tagOf = (v: Volume, key: string): string => v.Tags?.find((t) => t.Key === key)?.Value ?? ''

const ec2 = <T>(operation: string, call: () => Promise<T>): Promise<T> => awsCall({ service: 'EC2', operation }, call)

/** The state of each instance named (absent: EC2 no longer knows it). */
async function instanceStates(client: EC2Client, ids: string[]): Promise<Map<string, string>> {
  const states = new Map<string, string>()
  // A filter, not InstanceIds: one unknown id would fail the whole call (InvalidInstanceID.NotFound).
  for (let i = 0; i < ids.length; i += 100) {
    let token: string | undefined
    do {
      const out = await ec2('DescribeInstances', () => client.send(new DescribeInstancesCommand({
        Filters: [{ Name: 'instance-id', Values: ids.slice(i, i + 100) }], ...(token ? { NextToken: token } : {}),
      })))
      for (const r of out.Reservations ?? []) for (const inst of r.Instances ?? []) states.set(inst.InstanceId!, inst.State?.Name ?? 'unknown')
      token = out.NextToken
    } while (token)
  }
  return states
}

export async function sweepVolumes(o: VolumeSweepOptions): Promise<VolumeSweepOutcome> {
  const volumes: Volume[] = []
  let token: string | undefined
  do {
    const out = await ec2('DescribeVolumes', () => o.client.send(new DescribeVolumesCommand({
      Filters: [{ Name: `tag:${TRANSIENT_TAG}`, Values: ['true'] }], ...(token ? { NextToken: token } : {}),
    })))
    volumes.push(...(out.Volumes ?? []))
    token = out.NextToken
  } while (token)
  const now = Date.now()
  const outcome: VolumeSweepOutcome = { deleted: [], kept: [], failed: [] }
  const candidates: Array<{ v: Volume; s: SweptVolume }> = []
  for (const v of volumes) {
    const s: SweptVolume = { volumeId: v.VolumeId!, taskId: tagOf(v, TASK_ID_TAG), worker: tagOf(v, WORKER_TAG), createdAt: v.CreateTime?.toISOString() ?? '' }
    if (!s.taskId || !s.worker) outcome.kept.push({ ...s, why: `not tagged with ${s.taskId ? WORKER_TAG : TASK_ID_TAG}` })
    else if (v.State !== 'available') outcome.kept.push({ ...s, why: `it is ${v.State}${v.Attachments?.length ? ` (attached to ${v.Attachments.map((a) => a.InstanceId).join(', ')})` : ''}` })
    else if (!v.CreateTime || now - v.CreateTime.getTime() < o.olderThanMs) outcome.kept.push({ ...s, why: 'too recent: its task may have only just made it' })
    else candidates.push({ v, s })
  }
  const states = await instanceStates(o.client, [...new Set(candidates.map((c) => c.s.worker))])
  for (const { s } of candidates) {
    const state = states.get(s.worker)
    if (state !== undefined && state !== 'terminated') {
      outcome.kept.push({ ...s, why: `its worker ${s.worker} is ${state}` })
      continue
    }
    try {
      // Read again just before: a task may have taken it over (its worker tag) or attached it meanwhile.
      const now = await ec2('DescribeVolumes', () => o.client.send(new DescribeVolumesCommand({ VolumeIds: [s.volumeId] })))
      const v = now.Volumes?.[0]
      if (!v) throw new EbsWorkerError(ErrorCode.VolumeNotFound, `volume ${s.volumeId} does not exist`)
      if (v.State !== 'available' || tagOf(v, WORKER_TAG) !== s.worker || tagOf(v, TRANSIENT_TAG) !== 'true') {
        outcome.kept.push({ ...s, why: `changed meanwhile: ${v.State}, worker ${tagOf(v, WORKER_TAG)}, transient ${tagOf(v, TRANSIENT_TAG) || 'absent'}` })
        continue
      }
      if (!o.dryRun) await ec2('DeleteVolume', () => o.client.send(new DeleteVolumeCommand({ VolumeId: s.volumeId })))
      outcome.deleted.push(s)
    } catch (err) {
      // Gone already: another worker's sweep deleted it first.
      if (err instanceof EbsWorkerError && err.code === ErrorCode.VolumeNotFound) continue
      outcome.failed.push({ ...s, error: describe(err) })
    }
  }
  return outcome
}
