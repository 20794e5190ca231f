// `ebs-worker prune`: deletes what no backup needs, repacks packs that are mostly unused, and
// drops index runs no backup will read, while other workers go on backing up. The protocol
// (docs/FORMAT.md, "Prune and running backups") in short:
//   1. take the one prune lock; note the time T0 and the backups that exist (manifests) and are
//      under way (checkpoints);
//   2. walk their chunk lists (liveness.ts): which blobs of which packs are still needed;
//   3. repack the packs whose unused share is above --max-unused: their live blobs are copied into
//      new packs (with their index runs) and a moved record says where each went;
//   4. condemn, in one record written before anything is deleted: unreferenced packs older than
//      any running backup (and than an hour), the repacked packs, runs that point at them or that
//      are older than any backup's dedup window, moved records nobody needs; with the leases of
//      the backups running right now;
//   5. wait until those backups have ended (a backup that starts later reads the condemned record
//      and dedups against none of it), then walk the backups that appeared since T0, and spare
//      whatever they use;
//   6. delete, then drop the condemned record and the lock;
//   7. on a storage that keeps versions (S3): keep the Object Lock of what kept backups use alive,
//      delete older versions whose lock has run out, report those it must leave (object-lock.ts).
// Killed at any point, the repository is whole: nothing is deleted before the record says it
// may be, and the next prune carries out what an earlier one condemned (after the same checks).
import { setTimeout as sleep } from 'node:timers/promises'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { timestampedId } from '../core/ids.ts'
import { chunkCount } from '../core/geometry.ts'
import { decodeCheckpoint } from '../pipeline/checkpoint.ts'
import { DEFAULT_WINDOW_DAYS } from '../repo/dedup-window.ts'
import { decodeRun, isRun } from '../repo/index-run.ts'
import { BACKUPS, CONFIG, INDEXES, KEYS, MOVED, PACKS } from '../repo/layout.ts'
import { listLocks, takePruneLock, type Lease, type LockInfo } from '../repo/locks.ts'
import type { ManifestV2 } from '../repo/manifest.ts'
import { PackWriter } from '../repo/pack-writer.ts'
import type { Repository } from '../repo/repository.ts'
import type { BlobRef } from '../repo/tree.ts'
import type { Condemned } from '../repo/condemned.ts'
import { manifestRoot, walkLiveness, type Root } from './liveness.ts'
import { describeLockUpkeep, lockUpkeep, type LockUpkeep } from './object-lock.ts'

export interface PruneOptions {
  /** Repack packs whose unused share exceeds this percentage (restic's --max-unused). */
  maxUnusedPercent?: number
  /** Bytes of packs repacked at most in this run. */
  maxRepackBytes?: number
  dryRun?: boolean
  /** How long to wait for running backups before leaving the deletion to the next prune. */
  maxWaitMs?: number
  /** Unreferenced packs younger than this are left (a backup may be writing them). */
  graceMs?: number
  /** How often the waits look again. */
  pollMs?: number
  /** A prune lock not rewritten for this long belongs to a prune that died (locks.ts). */
  staleLockMs?: number
  onProgress?: (p: PruneProgress) => void
  /**
   * Stops the prune at its next safe point (between objects) with INTERRUPTED: nothing is left
   * half done, and the next prune carries out what this one condemned. The lock is released.
   */
  signal?: AbortSignal
  /**
   * The prune lock, taken already by the caller (who releases it): the daemon's prune task takes
   * it before forgetting, so that a task finding another prune at work changes nothing.
   */
  lock?: Lease
  /**
   * In a dry run only: backups to count as forgotten already, so that `forget --dry-run --prune`
   * says what forgetting them would reclaim.
   */
  forgotten?: ReadonlySet<string>
}

export interface PruneProgress {
  phase: 'walk' | 'repack' | 'wait' | 'recheck' | 'delete' | 'locks'
  done: number
  total: number
}

export interface PruneResult {
  dryRun: boolean
  backups: number
  packs: { total: number; kept: number; deleted: number; repacked: number; left: number }
  bytes: { total: number; live: number; reclaimed: number; repacked: number; written: number }
  runsDeleted: number
  movedDeleted: number
  /** Why a deletion was left for the next prune (backups still running), when it was. */
  deferred: string | null
  /** Objects that could not be deleted yet (locked), with why (the first 1000; `locks.left` counts them all). */
  kept: Array<{ object: string; why: string; versionId?: string; until?: string | null; bytes?: number }>
  /** Object Lock and older versions, on a storage that keeps versions (S3); null on file://. */
  locks: LockUpkeep | null
  durationMs: number
}

const HOUR = 3_600_000

export async function prune(repo: Repository, o: PruneOptions = {}): Promise<PruneResult> {
  const started = performance.now()
  if (repo.version !== 2) {
    throw new EbsWorkerError(ErrorCode.RepoVersion, `repository ${repo.url} is of format version ${repo.version}: run "ebs-worker migrate --repo ${repo.url}" first`)
  }
  const maxUnused = (o.maxUnusedPercent ?? 5) / 100
  const lock = o.dryRun || o.lock ? null : await takePruneLock(repo, undefined, o.staleLockMs)
  // The walk's spill files (local disk), removed however the prune ends.
  let closeLive: (() => Promise<void>) | null = null
  const stopIfAborted = (): void => {
    if (o.signal?.aborted) {
      throw new EbsWorkerError(ErrorCode.Interrupted, `prune of ${repo.url} stopped (${String((o.signal.reason as Error | undefined)?.message ?? o.signal.reason)}): ` +
        'nothing is half done; the next prune carries on from what this one condemned', { context: { repository: repo.url } })
    }
  }
  try {
    stopIfAborted()
    // 1. What exists now (T0).
    const manifests = await liveManifests(repo, o.dryRun ? o.forgotten : undefined)
    const checkpointRoots = await checkpointsAsRoots(repo)
    const movedPacks = new Set((await repo.listObjects(MOVED)).map((obj) => obj.name.slice(MOVED.length)))
    const earlier = await repo.listCondemned()

    // 2. What they reach.
    const roots = [...manifests.values()].map(manifestRoot).concat(checkpointRoots)
    const live = await walkLiveness(repo, roots, movedPacks, (done, total) => o.onProgress?.({ phase: 'walk', done, total }))
    closeLive = () => live.close()
    // Per pack what the decisions need, not its blobs: memory goes with the packs, not with the
    // chunks. The blobs of the packs chosen for repacking are read from the spill again (step 3).
    const usage = new Map<string, { liveBytes: number; tree: boolean; count: number }>()
    for await (const p of live.packs()) usage.set(p.pack, { liveBytes: p.liveBytes, tree: p.tree, count: p.blobs.length })

    stopIfAborted()
    // What is there, and who is writing.
    const packs = (await repo.listObjects(PACKS)).map((obj) => ({ id: obj.name.split('/').pop()!, size: obj.size, modified: obj.modified }))
    const leases = (await listLocks(repo)).filter((l) => l.kind === 'backup' && !l.stale)
    const oldestRunning = Math.min(Date.now(), ...leases.map((l) => Date.parse(l.createdAt)))
    const cutoff = oldestRunning - (o.graceMs ?? HOUR)

    const result: PruneResult = {
      dryRun: o.dryRun ?? false, backups: manifests.size,
      packs: { total: packs.length, kept: 0, deleted: 0, repacked: 0, left: 0 },
      bytes: { total: 0, live: 0, reclaimed: 0, repacked: 0, written: 0 },
      runsDeleted: 0, movedDeleted: 0, deferred: null, kept: [], locks: null, durationMs: 0,
    }
    // 7. Locks and older versions: `uses` names what kept backups use, the packs and moved
    // records that are not (or no longer) condemned.
    const upkeep = async (condemnedPacks: readonly string[], condemnedMoved: readonly string[], spared: readonly string[] = []): Promise<void> => {
      const gone = new Set(condemnedPacks)
      const goneMoved = new Set(condemnedMoved)
      const alsoUsed = new Set(spared)
      const uses = (name: string): boolean => {
        if (name === CONFIG || name.startsWith(KEYS)) return true // the repository's keys: kept locked while they exist
        if (name.startsWith(INDEXES)) return true // a current run is live (prune hid those it replaced)
        if (name.startsWith(BACKUPS)) return manifests.has(name.slice(BACKUPS.length))
        if (name.startsWith(MOVED)) return live.movedNeeded.has(name.slice(MOVED.length)) && !goneMoved.has(name.slice(MOVED.length))
        if (!name.startsWith(PACKS)) return false
        const pack = name.slice(name.lastIndexOf('/') + 1)
        return (usage.has(pack) || alsoUsed.has(pack)) && !gone.has(pack)
      }
      result.locks = await lockUpkeep(repo, uses, { dryRun: o.dryRun ?? false, onProgress: (done) => o.onProgress?.({ phase: 'locks', done, total: done }) })
      result.kept = (result.locks?.leftVersions ?? []).map((v) => ({ object: v.object, why: v.why, versionId: v.versionId, until: v.until, bytes: v.bytes }))
    }
    const toDelete = new Set<string>()
    const toRepack: typeof packs = []
    let repackBudget = o.maxRepackBytes ?? Number.POSITIVE_INFINITY
    for (const p of packs) {
      result.bytes.total += p.size
      const u = usage.get(p.id)
      result.bytes.live += u?.liveBytes ?? 0
      if (!u) {
        // Nothing refers to it: a forgotten backup's, or a crashed one's. A young one may be a
        // running backup's, not yet in a manifest or checkpoint: left for a later prune.
        if (p.modified.getTime() < cutoff) toDelete.add(p.id)
        else result.packs.left++
        continue
      }
      // What a pack of just its live blobs would still hold besides them: its trailer (an entry a
      // blob, header, encoding, tail) — not unused space.
      const overhead = 64 + 60 * u.count
      const unused = Math.max(0, p.size - u.liveBytes - overhead) / p.size
      if (unused > maxUnused && p.size <= repackBudget && p.modified.getTime() < cutoff) {
        toRepack.push(p)
        repackBudget -= p.size
      } else {
        result.packs.kept++
      }
    }
    // What an earlier prune condemned and did not get to delete (it was killed, or waited too long).
    for (const c of earlier) for (const pack of c.packs) if (!usage.has(pack)) toDelete.add(pack)

    if (o.dryRun) {
      result.packs.deleted = toDelete.size
      result.packs.repacked = toRepack.length
      result.bytes.reclaimed = packs.filter((p) => toDelete.has(p.id)).reduce((n, p) => n + p.size, 0) +
        toRepack.reduce((n, p) => n + p.size - usage.get(p.id)!.liveBytes, 0)
      await upkeep([...toDelete, ...toRepack.map((p) => p.id)], [...movedPacks].filter((pack) => !live.movedNeeded.has(pack) && !toDelete.has(pack)))
      result.durationMs = Math.round(performance.now() - started)
      return result
    }

    // 3. Repack: live blobs copied to new packs; where each went is recorded before the old pack may go.
    // In pack id order, the spill's: one more pass over it gives each pack's live blobs as its
    // turn comes, one pack's at a time in memory.
    toRepack.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    const spilled = live.packs()
    const liveBlobsOf = async (pack: string): Promise<Array<{ offset: number; length: number }>> => {
      for (let next = await spilled.next(); !next.done && next.value.pack <= pack; next = await spilled.next()) {
        if (next.value.pack === pack) return next.value.blobs
      }
      // Never repack a pack into nothing: its live blobs were in the spill a moment ago.
      throw new Error(`prune: the live blobs of pack ${pack} are not in the spill a second time`)
    }
    const data = new PackWriter(repo, { packSize: 16 * 1024 * 1024, concurrency: 2, maxBlobBytes: repo.chunkSize + 64 })
    const trees = new PackWriter(repo, { packSize: 4 * 1024 * 1024, concurrency: 2, maxBlobBytes: 64 * 1024, tree: true })
    for (const [n, p] of toRepack.entries()) {
      stopIfAborted()
      const u = usage.get(p.id)!
      const { entries } = await repo.readPackTrailer(p.id, p.size)
      const byOffset = new Map(entries.map((e) => [e.offset, e]))
      const moved = new Map<number, BlobRef>()
      for (const b of await liveBlobsOf(p.id)) {
        const entry = byOffset.get(b.offset)
        if (!entry) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `pack ${p.id} has no blob at offset ${b.offset}, which a backup refers to`, { context: { pack: p.id, offset: b.offset } })
        const bytes = await repo.readPackRange(p.id, entry.offset, entry.length)
        moved.set(b.offset, await (u.tree ? trees : data).add(entry.id, bytes, entry.rawLength))
      }
      await data.flush()
      await trees.flush()
      await repo.saveMoved({ pack: p.id, movedAt: new Date().toISOString(), blobs: moved })
      toDelete.add(p.id)
      result.packs.repacked++
      result.bytes.repacked += u.liveBytes
      o.onProgress?.({ phase: 'repack', done: n + 1, total: toRepack.length })
    }
    await data.finish()
    await trees.finish()
    result.bytes.written = data.bytesStored + trees.bytesStored
    await live.close()

    stopIfAborted()
    // 4. Condemn, with the backups running now: they may use what is condemned until they end.
    const runs = [...new Set([...(await runsToDrop(repo, toDelete)), ...earlier.flatMap((c) => c.runs)])]
    const needless = [...movedPacks].filter((pack) => !live.movedNeeded.has(pack) && !toDelete.has(pack))
    const condemned: Condemned = {
      version: 1, id: timestampedId('prune'), createdAt: new Date().toISOString(),
      packs: [...toDelete], runs, moved: needless, waitFor: leases.map((l) => l.name),
    }
    await repo.saveCondemned(condemned)

    // 5. Wait for the backups that were running, then spare what the new backups use.
    const waited = await waitForLeases(repo, condemned.waitFor, o)
    stopIfAborted()
    if (!waited) {
      result.deferred = `backups still running after ${Math.round((o.maxWaitMs ?? HOUR) / 1000)} s (${condemned.waitFor.length} leases): the deletion is left to the next prune`
      await upkeep(condemned.packs, condemned.moved)
      result.durationMs = Math.round(performance.now() - started)
      return result
    }
    const wasCondemned = [...condemned.packs]
    const spared = await spareWhatNewBackupsUse(repo, manifests, condemned, movedPacks)
    o.onProgress?.({ phase: 'recheck', done: 1, total: 1 })

    // 6. Delete: runs first (no backup may find a chunk through them any more), then packs, then moved records.
    const sizes = new Map(packs.map((p) => [p.id, p.size]))
    const steps = condemned.runs.length + condemned.packs.length + condemned.moved.length
    let done = 0
    const step = () => {
      o.onProgress?.({ phase: 'delete', done: ++done, total: steps })
      stopIfAborted()
    }
    stopIfAborted()
    for (const run of condemned.runs) {
      await repo.deleteRun(run)
      result.runsDeleted++
      step()
    }
    for (const pack of condemned.packs) {
      await repo.deletePack(pack)
      result.packs.deleted++
      result.bytes.reclaimed += sizes.get(pack) ?? 0
      step()
    }
    result.bytes.reclaimed -= result.bytes.written
    for (const pack of condemned.moved) {
      await repo.deleteMoved(pack)
      result.movedDeleted++
      step()
    }
    for (const c of [...earlier, condemned]) await repo.deleteCondemned(c.id)
    result.packs.kept += spared
    await upkeep(condemned.packs, condemned.moved, wasCondemned.filter((p) => !condemned.packs.includes(p)))
    result.durationMs = Math.round(performance.now() - started)
    return result
  } finally {
    await closeLive?.()
    await lock?.release()
  }
}

/** Every version 2 manifest, by id. */
async function liveManifests(repo: Repository, forgotten?: ReadonlySet<string>): Promise<Map<string, ManifestV2>> {
  const out = new Map<string, ManifestV2>()
  for (const id of await repo.backupIds()) {
    if (forgotten?.has(id)) continue
    const m = await repo.loadManifest(id).catch((err: unknown) => {
      // Forgotten between the listing and the read.
      if (err instanceof EbsWorkerError && err.code === ErrorCode.BackupNotFound) return null
      throw err
    })
    if (!m) continue
    if (m.version !== 2) throw new EbsWorkerError(ErrorCode.RepoVersion, `backup ${id} is of manifest version 1: run "ebs-worker migrate" first`)
    out.set(id, m)
  }
  return out
}

/**
 * The unfinished backups' checkpoints: what they made is kept for the next attempt. A damaged one
 * is used by no one: passed over (and told to `onDamaged`, check's report).
 */
export async function checkpointsAsRoots(repo: Repository, onDamaged?: (name: string, err: unknown) => void): Promise<Root[]> {
  const roots: Root[] = []
  for (const { name, data } of await repo.listRecords('checkpoints')) {
    let c
    try {
      c = decodeCheckpoint(data, name)
    } catch (err) {
      onDamaged?.(name, err)
      continue
    }
    if (c.kind !== 'backup') continue
    const w = c.writer
    roots.push({
      group: `checkpoint:${w.backupId}`, time: c.savedAt,
      shape: { chunks: chunkCount(w.size, w.chunkSize), leafChunks: w.leafChunks, fanout: w.fanout },
      subtrees: w.builder.pending.flatMap((refs, level) => refs.map((ref) => ({ level, ref }))),
      chunks: w.leaf,
    })
  }
  return roots
}

/**
 * Index runs to delete: those older than any backup's dedup window (no backup reads them; the
 * packs' trailers hold the same), and those that point at a pack being deleted (a backup must not
 * find a chunk there). The latter's other entries are written again in a new run first.
 */
async function runsToDrop(repo: Repository, dropped: ReadonlySet<string>): Promise<string[]> {
  const old = new Date(Date.now() - (DEFAULT_WINDOW_DAYS + 1) * 86_400_000)
  const oldName = timestampedId('', old).slice(0, 16)
  const out: string[] = []
  for (const obj of await repo.listObjects(INDEXES)) {
    const name = obj.name.slice(INDEXES.length)
    if (name < oldName) {
      out.push(name)
      continue
    }
    const plain = await repo.readIndexObject(obj.name)
    if (!plain || !isRun(plain)) continue
    const run = decodeRun(plain, obj.name)
    if (!run.entries.some((e) => dropped.has(e.pack))) continue
    const kept = run.entries.filter((e) => !dropped.has(e.pack))
    if (kept.length) await repo.saveRun(kept)
    out.push(name)
  }
  return out
}

/** Waits until none of `names` is a live lease; false when that took longer than allowed. */
async function waitForLeases(repo: Repository, names: readonly string[], o: PruneOptions): Promise<boolean> {
  if (!names.length) return true
  const deadline = Date.now() + (o.maxWaitMs ?? HOUR)
  for (;;) {
    const liveNow = new Set((await listLocks(repo)).filter((l: LockInfo) => !l.stale).map((l) => l.name))
    const left = names.filter((n) => liveNow.has(n)).length
    o.onProgress?.({ phase: 'wait', done: names.length - left, total: names.length })
    if (!left) return true
    if (Date.now() > deadline || o.signal?.aborted) return false
    await sleep(o.pollMs ?? 5000, undefined, o.signal ? { signal: o.signal } : {}).catch(() => {})
  }
}

/**
 * The backups made since T0 (and the checkpoints saved since) may use condemned packs (a backup
 * that started before the record reused their chunks): what they reach is taken off the record.
 * Returns how many packs were spared.
 */
async function spareWhatNewBackupsUse(repo: Repository, before: ReadonlyMap<string, ManifestV2>, condemned: Condemned, movedPacks: ReadonlySet<string>): Promise<number> {
  const fresh = [...(await liveManifests(repo)).values()].filter((m) => !before.has(m.id))
  const roots = fresh.map(manifestRoot).concat(await checkpointsAsRoots(repo))
  if (!roots.length) return 0
  const live = await walkLiveness(repo, roots, movedPacks)
  const used = new Set<string>()
  try {
    for await (const p of live.packs()) used.add(p.pack)
  } finally {
    await live.close()
  }
  const spared = condemned.packs.filter((p) => used.has(p)).length
  condemned.packs = condemned.packs.filter((p) => !used.has(p))
  condemned.moved = condemned.moved.filter((p) => !live.movedNeeded.has(p))
  if (spared || condemned.moved.length) await repo.saveCondemned(condemned)
  return spared
}

export function describePrune(r: PruneResult): string[] {
  const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`
  return [
    `${r.dryRun ? 'would reclaim' : 'reclaimed'} ${mib(Math.max(0, r.bytes.reclaimed))} of ${mib(r.bytes.total)} (live ${mib(r.bytes.live)}, ${r.backups} backups)`,
    `packs: ${r.packs.total} total, ${r.packs.deleted} ${r.dryRun ? 'to delete' : 'deleted'}, ${r.packs.repacked} ${r.dryRun ? 'to repack' : 'repacked'}, ${r.packs.left} too young to tell`,
    ...(r.deferred ? [r.deferred] : []),
    ...(r.locks ? describeLockUpkeep(r.locks, r.dryRun) : []),
  ]
}
