// Time-ordered, readable ids: a UTC timestamp to the second and 8 random hex digits, so that ids
// sort by creation time and two made in the same second still differ (20261123T043200Z-1a2b3c4d).
import { randomBytes } from 'node:crypto'

/** `[prefix-]20261123T043200Z-1a2b3c4d`. */
export function timestampedId(prefix = '', now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')
  return `${prefix ? `${prefix}-` : ''}${stamp}-${randomBytes(4).toString('hex')}`
}

/** The timestamp part of an id made by timestampedId, as a pattern (anchor it yourself). */
export const TIMESTAMPED = '\\d{8}T\\d{6}Z-[0-9a-f]{8}'

/** A backup id: a timestampedId without a prefix. */
export const BACKUP_ID_PATTERN = new RegExp(`^${TIMESTAMPED}$`)
