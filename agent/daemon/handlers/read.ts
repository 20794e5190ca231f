// read: an attached volume backed up into the repository, reading only what EBS says was
// written or changed when the task names the snapshots. The backup task's read step too.
import { EbsWorkerError, ErrorCode, describe } from '../../core/errors.ts'
import type { ByteRange } from '../../core/geometry.ts'
import { waitForEbsDevice } from '../../device/ebs-device.ts'
import { listBlocks, type BlockQuery } from '../../aws/snapshot-blocks.ts'
import { TASK_ID_TAG } from '../../aws/volumes.ts'
import { backup } from '../../pipeline/backup.ts'
import { madeBackup, taskBackup } from '../task-records.ts'
import { progressLog, type Handler, type TaskContext } from './context.ts'

/** What a read needs to know, from a `read` task or the read step of a `backup` task. */
export interface ReadSpec {
  taskId: string
  repository?: string | undefined
  parentBackupId?: string | undefined
  /** The snapshot the volume was made from, and the parent backup's: EBS lists the blocks to read. */
  snapshotId?: string | undefined
  parentSnapshotId?: string | undefined
  tags?: Record<string, string> | undefined
}

export const read: Handler<'read'> = async (task, ctx, signal) => {
  const made = await madeBackup(await ctx.repository(task.repository), task.taskId)
  if (made) return { ...made, volumeId: task.volumeId }
  await checkParent(ctx, task)
  // A volume that does not exist or is attached elsewhere fails now, not after the device timeout.
  await ctx.volumes.assertAttachedHere(task.volumeId)
  return readVolume(ctx, task.volumeId, task, signal)
}

/** Backs up an attached volume (a task whose backup exists never gets here: madeBackup). */
export async function readVolume(ctx: TaskContext, volumeId: string, task: ReadSpec, signal: AbortSignal): Promise<Record<string, unknown>> {
  const repo = await ctx.repository(task.repository)
  const device = await waitForEbsDevice(volumeId, {
    roots: ctx.config.deviceRoots,
    timeoutMs: ctx.config.deviceTimeoutSeconds * 1000,
    signal,
  })
  const listing = await blockListing(ctx, task, device.size, signal)
  const { readConcurrency, uploadConcurrency, packSize } = ctx.tuning
  const result = await backup(repo, {
    device: device.path,
    ...(task.parentBackupId ? { parent: task.parentBackupId } : {}),
    ...listing.ranges,
    source: { volumeId, ...(task.snapshotId ? { snapshotId: task.snapshotId } : {}) },
    tags: { ...task.tags, [TASK_ID_TAG]: task.taskId },
    readConcurrency, uploadConcurrency, packSize,
    // A task cut short (the visibility cap, SIGTERM, a crash) goes on from here next time.
    ...taskBackup(repo, task.taskId, ctx.config.checkpointIntervalSeconds),
    onProgress: progressLog(ctx),
    signal,
  })
  return {
    backupId: result.id, volumeId, device: device.path, ...listing.figures, ...result.stats,
    ...(result.resumedFrom ? { resumedFrom: result.resumedFrom } : {}),
  }
}

/** A parent snapshot must be the one the parent backup was taken from; checked before any work. */
export async function checkParent(ctx: TaskContext, task: ReadSpec): Promise<void> {
  if (!task.parentSnapshotId) return
  if (!task.parentBackupId || !task.snapshotId) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'parentSnapshotId needs parentBackupId (its backup) and snapshotId (the snapshot this volume holds)')
  }
  // Changed blocks are only as good as the claim that the parent backup holds that snapshot.
  const parent = await (await ctx.repository(task.repository)).loadManifest(task.parentBackupId)
  if (parent.source.snapshotId !== task.parentSnapshotId) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `parent backup ${parent.id} was taken from ${parent.source.snapshotId ?? 'no snapshot'}, not ${task.parentSnapshotId}: its changed blocks would not apply`)
  }
}

/**
 * Which blocks to read, from EBS: those changed since the parent snapshot, or those the
 * snapshot holds at all. Without a snapshot id, or when EBS cannot say (no permission, another
 * lineage…), every block is read: slower, never wrong.
 */
async function blockListing(ctx: TaskContext, task: ReadSpec, deviceSize: number, signal: AbortSignal): Promise<{
  ranges: { changedRanges?: Iterable<ByteRange>; writtenRanges?: Iterable<ByteRange> }
  figures: Record<string, unknown>
}> {
  if (!task.snapshotId) return { ranges: {}, figures: { blockListing: 'none' } }
  const query: BlockQuery = task.parentSnapshotId
    ? { kind: 'changed', firstSnapshotId: task.parentSnapshotId, secondSnapshotId: task.snapshotId }
    : { kind: 'written', snapshotId: task.snapshotId }
  const api = query.kind === 'changed' ? 'ListChangedBlocks' : 'ListSnapshotBlocks'
  try {
    const blocks = await listBlocks(ctx.ebs, query, deviceSize, signal)
    const figures = { blockListing: api, blocksListed: blocks.count, blockSize: blocks.blockSize }
    return { ranges: query.kind === 'changed' ? { changedRanges: blocks.ranges() } : { writtenRanges: blocks.ranges() }, figures }
  } catch (err) {
    if (signal.aborted) throw err
    // A fallback that works (slower, never wrong): a warning.
    ctx.log.warn({ api, error: err }, 'no block list from EBS; reading the whole volume')
    return { ranges: {}, figures: { blockListing: 'none', blockListingError: `${api}: ${describe(err)}` } }
  }
}
