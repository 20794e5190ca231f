// Which backup a task made: a small record in the repository (tasks/<hash of the task key>),
// written once the backup exists, so a redelivered task finds it with one GET instead of scanning
// manifests, and reports it again instead of backing the volume up twice. With the checkpoints a
// task cut short (the visibility cap, SIGTERM, a crash) goes on from, saved under the same key:
// what the handlers pass the pipelines is made here.
import { z } from 'zod'
import { isEbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { BackupOptions } from '../pipeline/backup.ts'
import type { RestoreOptions } from '../pipeline/restore.ts'
import type { Manifest } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'

const recordSchema = z.object({ key: z.string(), backupId: z.string() })

/** What a task's checkpoint and task record are saved under in the repository. */
export const taskKey = (taskId: string): string => `task:${taskId}`

/** Records that the backup for `key` is `backupId`. */
export async function saveTaskRecord(repo: Repository, key: string, backupId: string): Promise<void> {
  await repo.saveRecord('tasks', key, Buffer.from(JSON.stringify({ version: 1, key, backupId, savedAt: new Date().toISOString() })))
}

/** The backup recorded for `key`, if its manifest exists. */
export async function findTaskBackup(repo: Repository, key: string): Promise<Manifest | null> {
  const data = await repo.loadRecord('tasks', key)
  if (!data) return null
  let parsed
  try {
    parsed = recordSchema.safeParse(JSON.parse(data.toString('utf8')))
  } catch {
    return null
  }
  if (!parsed.success || parsed.data.key !== key) return null
  return repo.loadManifest(parsed.data.backupId).catch((err: unknown) => {
    if (isEbsWorkerError(err, ErrorCode.BackupNotFound)) return null
    throw err
  })
}

/** The backup an earlier attempt of this task made (its task record), as a reused result. */
export async function madeBackup(repo: Repository, taskId: string): Promise<Record<string, unknown> | null> {
  const made = await findTaskBackup(repo, taskKey(taskId))
  return made ? { backupId: made.id, reused: true, ...made.stats } : null
}

/** A task's backup: checkpointed under the task, and recorded under it once made. */
export function taskBackup(repo: Repository, taskId: string, intervalSeconds: number): Pick<BackupOptions, 'checkpoint' | 'onCommitted'> {
  return {
    checkpoint: { key: taskKey(taskId), intervalMs: intervalSeconds * 1000 },
    // Recorded before the checkpoint goes: a retry after a crash in between finds one or the other.
    onCommitted: (manifest) => saveTaskRecord(repo, taskKey(taskId), manifest.id),
  }
}

/** A task's restore: checkpointed under the task, valid only for the same volume. */
export function restoreCheckpoint(taskId: string, volumeId: string, intervalSeconds: number): NonNullable<RestoreOptions['checkpoint']> {
  return { key: taskKey(taskId), target: volumeId, intervalMs: intervalSeconds * 1000 }
}
