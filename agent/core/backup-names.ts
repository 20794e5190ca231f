// Where a backup's manifest and the repository's config live in a repository: the object names
// of the repository's layout that the controller needs besides its own restore points.
// `ebs-controller forget` forgets a restore point's backups by deleting their manifests through
// the storage (no key is needed to delete, and the controller uses no part of agent/repo); its
// `list` refuses a place without a config (no repository there). agent/repo/layout.ts, which
// names every other object, re-exports these.
import { EbsWorkerError, ErrorCode } from './errors.ts'
import { BACKUP_ID_PATTERN } from './ids.ts'

/** The repository's configuration (agent/repo/repository.ts reads it). */
export const CONFIG = 'config'

/** Manifests, one per backup, named by the backup id. */
export const BACKUPS = 'backups/'

/** `backups/<backup id>`; anything but a backup id (which could name another object) is refused. */
export function manifestObject(backupId: string): string {
  if (!BACKUP_ID_PATTERN.test(backupId)) throw new EbsWorkerError(ErrorCode.BadInput, `"${backupId}" is not a backup id (like 20261123T043200Z-1a2b3c4d)`)
  return `${BACKUPS}${backupId}`
}
