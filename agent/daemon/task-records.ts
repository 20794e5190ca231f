// Which backup a task made: a small record in the repository (tasks/<hash of the task key>),
// written once the backup exists, so a redelivered task finds it with one GET instead of scanning
// manifests, and reports it again instead of backing the volume up twice.
import { z } from 'zod'
import { isEbsWorkerError, ErrorCode } from '../core/errors.ts'
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
