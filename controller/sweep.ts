// Sweeping up after a controller that died mid-backup: its instance snapshots (and re-encrypted
// copies) carry the tag ebs-controller:restore-point=<id>, and a backup that finished wrote the
// restore point <id> to the repository last. A tagged snapshot whose restore point does not exist,
// older than a grace period (a backup may still be running), is an orphan: it is deleted, which
// also ends any sharing. Snapshots of restore points that exist were kept on purpose
// (--keep-snapshots) and are left alone.
import { DeleteSnapshotCommand, DescribeSnapshotsCommand } from '@aws-sdk/client-ec2'
import { assumeRole } from './aws.ts'
import { CONTROLLER_TAG } from './backup.ts'
import { call } from './ec2.ts'
import { describe } from '../agent/core/errors.ts'
import { RestorePointStore } from './restore-point.ts'

export interface SweepOptions {
  sourceRole: string
  region: string
  repo: string
  /** Only snapshots started at least this long ago are orphans (a backup may still be running). */
  olderThanMs: number
  dryRun?: boolean
}

export interface SweepOutcome {
  deleted: Array<{ snapshotId: string; restorePoint: string }>
  kept: Array<{ snapshotId: string; restorePoint: string; why: string }>
  failed: string[]
}

export async function sweepSnapshots(o: SweepOptions): Promise<SweepOutcome> {
  const source = await assumeRole(o.sourceRole, o.region, 'ebs-controller-sweep')
  const who = `source role ${o.sourceRole}`
  const ec2 = source.ec2(o.region)
  const existing = new Set(await new RestorePointStore(o.repo).list())
  const out = await call(who, 'DescribeSnapshots tagged by ebs-controller', () => ec2.send(new DescribeSnapshotsCommand({
    OwnerIds: ['self'], Filters: [{ Name: 'tag-key', Values: [CONTROLLER_TAG] }],
  })))
  const now = Date.now()
  const outcome: SweepOutcome = { deleted: [], kept: [], failed: [] }
  for (const s of out.Snapshots ?? []) {
    const restorePoint = s.Tags?.find((t) => t.Key === CONTROLLER_TAG)?.Value ?? ''
    const snapshotId = s.SnapshotId!
    if (existing.has(restorePoint)) {
      outcome.kept.push({ snapshotId, restorePoint, why: 'its restore point exists (kept with --keep-snapshots)' })
      continue
    }
    if (now - (s.StartTime?.getTime() ?? now) < o.olderThanMs) {
      outcome.kept.push({ snapshotId, restorePoint, why: 'too recent: its backup may still be running' })
      continue
    }
    if (o.dryRun) {
      outcome.deleted.push({ snapshotId, restorePoint })
      continue
    }
    try {
      await call(who, `DeleteSnapshot ${snapshotId}`, () => ec2.send(new DeleteSnapshotCommand({ SnapshotId: snapshotId })))
      outcome.deleted.push({ snapshotId, restorePoint })
    } catch (err) {
      outcome.failed.push(`${snapshotId}: ${describe(err)}`)
    }
  }
  return outcome
}
