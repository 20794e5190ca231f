// Forgetting backups by a retention policy (core/retention.ts, restic's semantics), per group:
// what `ebs-worker forget` and the daemon's `prune` task do before prune. A forgotten backup's
// manifest goes; its data goes at the next prune, if no other backup needs it.
import { forEachConcurrent } from '../core/concurrency.ts'
import { groupItems, planRetention, type GroupDecision, type Policy } from '../core/retention.ts'
import type { BackupSummary } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'

export const GROUP_BY = ['volume', 'device', 'tags', 'none'] as const
export type GroupBy = (typeof GROUP_BY)[number]

/** The tag the controller puts on the backups of its restore points (controller/backup.ts). */
export const RESTORE_POINT_TAG = 'restore-point'

export type Dated = BackupSummary & { time: number }

/** The key of a backup's group. */
export function groupKey(by: GroupBy, b: BackupSummary): string {
  switch (by) {
    case 'volume': return b.source.volumeId ?? b.source.device
    case 'device': return b.source.device
    case 'tags': return Object.entries(b.tags).map(([k, v]) => `${k}=${v}`).sort().join(',')
    case 'none': return ''
  }
}

export interface PolicyForget {
  groups: GroupDecision<Dated>[]
  /** Newest first within each group, groups in key order. */
  forgotten: Dated[]
  /** How many of them belong to restore points of ebs-controller (which then cannot be restored whole). */
  ofRestorePoints: number
}

/**
 * Applies `policy` to the repository's backups grouped `by`, and forgets (unless `dryRun`) those it
 * does not keep. Refuses (BAD_INPUT, nothing forgotten) an empty policy, or one that keeps none of a
 * group (planRetention).
 */
export async function forgetByPolicy(repo: Repository, policy: Policy, by: GroupBy, o: { dryRun?: boolean; now?: number } = {}): Promise<PolicyForget> {
  const backups = (await repo.listBackups()).map((b) => ({ ...b, time: Date.parse(b.createdAt) }))
  const groups = planRetention(groupItems(backups, (b) => groupKey(by, b)), policy, o.now ?? Date.now())
  const forgotten = groups.flatMap((g) => g.forget)
  if (!o.dryRun) await forEachConcurrent(forgotten, 16, (b) => repo.forgetBackup(b.id))
  return { groups, forgotten, ofRestorePoints: forgotten.filter((b) => RESTORE_POINT_TAG in b.tags).length }
}
