// prune: the repository's maintenance, by one worker at a time (the repository's prune lock): first,
// when the task gives a policy, the backups it does not keep are forgotten (as `ebs-worker forget
// --keep-…`, per group), then prune deletes what no backup needs and repacks mostly unused packs
// (maintenance/prune.ts). The message's visibility is extended while it runs, as for any task.
// Another prune at work fails the task at once with REPO_LOCKED (retryable for the sender), having
// changed nothing.
import { EbsWorkerError, ErrorCode, isEbsWorkerError } from '../../core/errors.ts'
import { policyJson } from '../../core/retention.ts'
import { forgetByPolicy } from '../../maintenance/forget.ts'
import { prune as pruneRepository } from '../../maintenance/prune.ts'
import { takePruneLock, type Lease } from '../../repo/locks.ts'
import { taskPolicy } from '../task.ts'
import { phaseLog, ReplyNow, type Handler } from './context.ts'

/** Backup ids named in a reply at most (an SQS message holds 256 KiB); the counts are whole. */
const MAX_IDS = 1000
/** Objects prune could not delete yet, named in a reply at most. */
const MAX_KEPT = 100

export const prune: Handler<'prune'> = async (task, ctx, signal) => {
  const repo = await ctx.repository(task.repository)
  const dryRun = task.dryRun
  if (repo.version !== 2) {
    throw new EbsWorkerError(ErrorCode.RepoVersion, `repository ${repo.url} is of format version ${repo.version}: run "ebs-worker migrate --repo ${repo.url}" first`)
  }
  let lock: Lease | null = null
  if (!dryRun) {
    try {
      lock = await takePruneLock(repo)
    } catch (err) {
      if (isEbsWorkerError(err, ErrorCode.RepoLocked)) throw new ReplyNow(err)
      throw err
    }
  }
  try {
    let forgot: Record<string, unknown> | null = null
    let forgotten: Set<string> | undefined
    if (task.forget) {
      const { groupBy, ...rules } = task.forget
      const policy = taskPolicy(rules)
      const f = await forgetByPolicy(repo, policy, groupBy, { dryRun })
      forgotten = new Set(f.forgotten.map((b) => b.id))
      forgot = {
        policy: policyJson(policy), groupBy, groups: f.groups.length,
        kept: f.groups.reduce((n, g) => n + g.keep.length, 0), forgotten: f.forgotten.length,
        ids: f.forgotten.slice(0, MAX_IDS).map((b) => b.id), ofRestorePoints: f.ofRestorePoints,
      }
      ctx.log.info({ repository: repo.url, ...forgot, ids: undefined }, dryRun ? 'would forget backups' : 'forgot backups')
      if (f.ofRestorePoints) {
        ctx.log.error({ ofRestorePoints: f.ofRestorePoints },
          'forgot backups of restore points: those restore points can no longer be restored whole (ebs-controller forget keeps or forgets them whole)')
      }
    }
    const r = await pruneRepository(repo, {
      maxUnusedPercent: task.maxUnusedPercent, ...(task.maxRepackBytes !== undefined ? { maxRepackBytes: task.maxRepackBytes } : {}),
      maxWaitMs: task.maxWaitSeconds * 1000, dryRun, signal, ...(lock ? { lock } : {}),
      ...(dryRun && forgotten ? { forgotten } : {}),
      onProgress: phaseLog(ctx),
    })
    return {
      repository: repo.url, ...(forgot ? { forget: forgot } : {}), ...r,
      kept: r.kept.slice(0, MAX_KEPT), ...(r.kept.length > MAX_KEPT ? { keptCount: r.kept.length } : {}),
    }
  } finally {
    await lock?.release()
  }
}
