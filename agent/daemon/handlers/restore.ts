// restore: a new encrypted volume holding a backup, detached and ready for the controller; for a
// cross-account restore also snapshotted and shared.
import { EbsWorkerError, ErrorCode, isEbsWorkerError } from '../../core/errors.ts'
import { assertVolumeDevice } from '../../device/ebs-device.ts'
import { assertShareableKey } from '../../aws/kms.ts'
import { restore as restoreBackup } from '../../pipeline/restore.ts'
import { restoreCheckpoint } from '../task-records.ts'
import { progressLog, type Handler } from './context.ts'

/** On a restored volume: the backup it holds, complete and synced (a redelivered task skips the restore). */
const RESTORED_TAG = 'ebs-worker:restored-backup'

export const restore: Handler<'restore'> = async (task, ctx, signal) => {
  const { volumes, config } = ctx
  const shareWith = task.snapshot?.shareWithAccount
  if (shareWith) {
    // Checked before anything is created: a snapshot under aws/ebs could never be shared.
    await assertShareableKey(ctx.kms, task.volume?.kmsKeyId ?? (await volumes.defaultKmsKeyId()))
  }
  const repo = await ctx.repository(task.repository)
  const manifest = await repo.loadManifest(task.backupId)
  const sizeGiB = task.sizeGiB ?? Math.ceil(manifest.size / 1024 ** 3)
  if (sizeGiB * 1024 ** 3 < manifest.size) {
    throw new EbsWorkerError(ErrorCode.TargetTooSmall, `a ${sizeGiB} GiB volume cannot hold backup ${task.backupId} (${manifest.size} bytes)`)
  }
  const { volumeId, created, tags } = await volumes.createEmpty(task.taskId, sizeGiB, task.volume ?? {})
  let done = false
  let permanent = false
  try {
    let figures: Record<string, unknown>
    if (tags[RESTORED_TAG] === task.backupId) {
      // Redelivered after an earlier attempt restored the volume: only what came after is left.
      figures = { volumeId, backupId: task.backupId, sizeGiB, reused: true }
    } else {
      const device = await volumes.attachHere(volumeId, signal)
      // Before anything is opened for writing: the device must be this volume (its NVMe serial).
      await assertVolumeDevice(device.path, volumeId, config.deviceRoots)
      // Zero chunks are skipped only on a volume this attempt created: one left by an earlier
      // attempt may hold part of the data already (its checkpoint says which).
      const result = await restoreBackup(repo, {
        backupId: task.backupId, device: device.path, freshTarget: created, signal,
        concurrency: ctx.tuning.restoreConcurrency, maxRequestBytes: ctx.tuning.maxRequestBytes,
        // Cut short (the visibility cap, SIGTERM, a crash), the next attempt goes on from here on the same volume.
        checkpoint: restoreCheckpoint(task.taskId, volumeId, config.checkpointIntervalSeconds),
        onProgress: progressLog(ctx),
      })
      // Kept for its instance (same account), the volume is no longer transient: neither the
      // worker nor a volume sweep may delete it. A cross-account one is staging for a snapshot: the
      // controller has it deleted (a detach task).
      if (task.snapshot) await volumes.tag(volumeId, { [RESTORED_TAG]: task.backupId })
      else await volumes.keep(volumeId, { [RESTORED_TAG]: task.backupId })
      figures = {
        volumeId, backupId: task.backupId, sizeGiB, bytesWritten: result.bytesWritten, chunksVerified: result.chunksVerified, durationMs: result.durationMs,
        ...(result.resumedFrom ? { resumedFrom: result.resumedFrom } : {}),
      }
    }
    await volumes.release(volumeId, { delete: false })
    done = true
    if (!task.snapshot) return figures
    // The cross-account path: the controller builds the instance from this shared snapshot.
    const snapshotId = await volumes.snapshot(task.taskId, volumeId)
    if (shareWith) await volumes.share(snapshotId, shareWith)
    return { ...figures, snapshotId, ...(shareWith ? { sharedWith: shareWith } : {}) }
  } catch (err) {
    permanent = isEbsWorkerError(err) && !err.retryable && !signal.aborted
    throw err
  } finally {
    // A failed restore leaves no half-written volume attached. After a transient failure it is
    // kept (detached) for the retry, which finds it by its tag; after a permanent one no retry
    // comes, so it is deleted.
    if (!done) await volumes.release(volumeId, { delete: permanent }).catch((err: unknown) =>
      ctx.log.error({ volumeId, error: err }, 'could not release volume'))
  }
}
