// ebs-controller forget: a retention policy (agent/core/retention.ts: restic's semantics) applied
// to each instance's restore points. A restore point is kept or forgotten whole: forgetting it
// deletes the manifests of its volume backups, then its own JSON (RestorePointStore.forget), all
// through the repository's storage: the controller needs no repository key and no part of
// agent/repo (the manifests' names come from agent/core/backup-names.ts). The data goes at the
// workers' next prune. A backup that a kept restore point also names is left.
import pLimit from 'p-limit'
import { forEachConcurrent } from '../agent/core/concurrency.ts'
import { EbsWorkerError, ErrorCode } from '../agent/core/errors.ts'
import { BACKUP_ID_PATTERN } from '../agent/core/ids.ts'
import { groupItems, planRetention, type Candidate, type GroupDecision, type Policy } from '../agent/core/retention.ts'
import { isInstanceId, RestorePointStore, type RestorePoint, type RestorePointEntry } from './restore-point.ts'

export interface ForgetOptions {
  repo: string
  /** Only this instance's restore points (all instances' by default). */
  instanceId?: string
  policy: Policy
  dryRun?: boolean
  /** The clock, for keep-within's "not in the future" (tests). */
  now?: number
}

/** A restore point as the policy sees it: its time is createdAt, its tags the instance's. */
export interface Point extends Candidate {
  restorePoint: RestorePoint
  /** Its objects (one, unless both layouts hold it). */
  objects: string[]
}

export interface ForgetResult {
  /** Per instance, in instance id order. */
  groups: GroupDecision<Point>[]
  /** The restore points forgotten (or that would be, in a dry run). */
  forgotten: string[]
  /** Their backups whose manifests were deleted. */
  backups: string[]
  /** Their backups left because a kept restore point names them too. */
  spared: string[]
}

export async function forgetRestorePoints(o: ForgetOptions): Promise<ForgetResult> {
  if (o.instanceId !== undefined && !isInstanceId(o.instanceId)) {
    throw new EbsWorkerError(ErrorCode.BadInput, `${o.instanceId} is not an EC2 instance id (i-0123456789abcdef0)`)
  }
  const store = new RestorePointStore(o.repo)
  // Every restore point is read (a few hundred bytes each), those of the old layout too, whose
  // instance only their JSON says, and those of other instances, whose backups must be spared.
  const byId = new Map<string, { objects: string[]; entry: RestorePointEntry }>()
  for (const e of await store.entries()) {
    const seen = byId.get(e.id)
    if (!seen) byId.set(e.id, { objects: [e.object], entry: e })
    else {
      seen.objects.push(e.object)
      if (e.instanceId !== null) seen.entry = e // the instance's folder wins, as in load()
    }
  }
  const limit = pLimit(16)
  const points: Point[] = await Promise.all([...byId.values()].map(({ objects, entry }) => limit(async () => {
    const rp = await store.read(entry)
    for (const v of rp.volumes) {
      if (!BACKUP_ID_PATTERN.test(v.backupId)) {
        throw new EbsWorkerError(ErrorCode.RepoFormat, `restore point ${rp.id} names "${v.backupId}", which is not a backup id: nothing was forgotten`,
          { context: { restorePointId: rp.id, repository: o.repo } })
      }
    }
    return { id: rp.id, time: Date.parse(rp.createdAt), tags: rp.instance.tags, restorePoint: rp, objects }
  })))
  const mine = points.filter((p) => o.instanceId === undefined || p.restorePoint.instance.instanceId === o.instanceId)
  const groups = planRetention(groupItems(mine, (p) => p.restorePoint.instance.instanceId), o.policy, o.now ?? Date.now(), { what: 'restore points', named: false })

  const going = new Set(groups.flatMap((g) => g.forget.map((p) => p.id)))
  const stay = new Set(points.filter((p) => !going.has(p.id)).flatMap((p) => p.restorePoint.volumes.map((v) => v.backupId)))
  const forget = groups.flatMap((g) => g.forget)
  const backupsOf = (p: Point): string[] => p.restorePoint.volumes.map((v) => v.backupId).filter((b) => !stay.has(b))
  if (!o.dryRun) await forEachConcurrent(forget, 8, (p) => store.forget(p.id, p.objects, backupsOf(p)))
  return {
    groups,
    forgotten: forget.map((p) => p.id),
    backups: forget.flatMap(backupsOf),
    spared: [...new Set(forget.flatMap((p) => p.restorePoint.volumes.map((v) => v.backupId).filter((b) => stay.has(b))))],
  }
}
