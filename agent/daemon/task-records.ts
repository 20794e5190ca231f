// What the daemon keeps in the repository about its tasks, through the repository's own calls
// (for now): the record of the backup a task made, which a redelivered task finds instead of
// making another, and the checkpoints a task cut short (the visibility cap, SIGTERM, a crash)
// goes on from. Both are saved under the task's key.
import type { BackupOptions } from '../pipeline/backup.ts'
import type { RestoreOptions } from '../pipeline/restore.ts'
import type { Repository } from '../repo/repository.ts'

/** What a task's checkpoint and task record are saved under in the repository. */
const taskKey = (taskId: string): string => `task:${taskId}`

/** The backup an earlier attempt of this task made (its task record), as a reused result. */
export async function madeBackup(repo: Repository, taskId: string): Promise<Record<string, unknown> | null> {
  const made = await repo.findTaskBackup(taskKey(taskId))
  return made ? { backupId: made.id, reused: true, ...made.stats } : null
}

/** A backup's checkpoints, and once done its task record. */
export function backupCheckpoint(taskId: string, intervalSeconds: number): NonNullable<BackupOptions['checkpoint']> {
  return { key: taskKey(taskId), intervalMs: intervalSeconds * 1000 }
}

/** A restore's checkpoints, valid only for the same volume. */
export function restoreCheckpoint(taskId: string, volumeId: string, intervalSeconds: number): NonNullable<RestoreOptions['checkpoint']> {
  return { key: taskKey(taskId), target: volumeId, intervalMs: intervalSeconds * 1000 }
}
