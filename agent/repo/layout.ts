// Where everything lives in a repository: every object name the repository writes is made here
// (docs/FORMAT.md describes them), so nothing else spells a prefix out.
import { createHash } from 'node:crypto'

/** The repository's configuration: format, version, chunk size, the wrapped key. Plain JSON (in core: the controller checks it is there). */
export { CONFIG } from '../core/backup-names.ts'
/** Further access keys: the master secret wrapped by another key file or KMS key, one per object. Plain JSON. */
export const KEYS = 'keys/'
/** Packs of chunk blobs. */
export const PACKS = 'packs/'
/** Indexes: where chunks live. */
export const INDEXES = 'index/'
/** Manifests, one per backup, named by the backup id (in core: the controller names them too). */
export { BACKUPS, manifestObject } from '../core/backup-names.ts'
/** Who is writing to the repository now: backups' leases, prune's exclusive lock. */
export const LOCKS = 'locks/'
/** Where the live blobs of a repacked pack went, by the pack's id. */
export const MOVED = 'moved/'
/** What a prune decided to delete, until it is deleted. */
export const CONDEMNED = 'condemned/'
/** Small records of the programs that use the repository. */
export const RECORD_AREAS = ['checkpoints', 'tasks'] as const
export type RecordArea = (typeof RECORD_AREAS)[number]

export function packObject(packId: string): string {
  return `${PACKS}${packId.slice(0, 2)}/${packId}`
}

export function keyObject(keyId: string): string {
  return `${KEYS}${keyId}`
}

export function movedObject(packId: string): string {
  return `${MOVED}${packId}`
}

export function indexObject(name: string): string {
  return `${INDEXES}${name}`
}

/** A record's object: keys (task ids) may hold "/" and be long, so the name is their hash. */
export function recordObject(area: RecordArea, key: string): string {
  return `${area}/${createHash('sha256').update(key).digest('hex')}`
}
