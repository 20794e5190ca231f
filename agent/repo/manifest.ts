// A backup's manifest: what was backed up and the ordered list of its chunk ids. It is the last
// object a backup writes; a backup without one does not exist. Pure: schema, encoding, checksum.
import { createHash } from 'node:crypto'
import { z } from 'zod'
import { ID_BYTES } from './chunk-index.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { timestampedId } from '../core/ids.ts'
import { chunkCount } from '../core/geometry.ts'

export const MANIFEST_VERSION = 1
/** The id that stands for an all-zero chunk, which is recorded but never stored. */
export const ZERO_ID = Buffer.alloc(ID_BYTES)

const statsSchema = z.object({
  bytesRead: z.number().int().nonnegative(),
  bytesNew: z.number().int().nonnegative(),
  bytesStored: z.number().int().nonnegative(),
  chunksTotal: z.number().int().nonnegative(),
  chunksZero: z.number().int().nonnegative(),
  chunksNew: z.number().int().nonnegative(),
  chunksReused: z.number().int().nonnegative(),
  chunksFromParent: z.number().int().nonnegative(),
  durationMs: z.number().nonnegative(),
})
export type BackupStats = z.infer<typeof statsSchema>

const manifestSchema = z.strictObject({
  format: z.literal('ebs-worker-backup'),
  version: z.number().int(),
  id: z.string(),
  createdAt: z.iso.datetime(),
  source: z.strictObject({
    device: z.string(),
    volumeId: z.string().optional(),
    snapshotId: z.string().optional(),
  }),
  size: z.number().int().nonnegative(),
  chunkSize: z.number().int().positive(),
  parent: z.string().nullable(),
  /** Base64 of chunkCount × 32-byte ids; ZERO_ID marks a zero chunk. */
  chunks: z.string(),
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  stats: statsSchema,
  tags: z.record(z.string(), z.string()),
})
type ManifestDocument = z.infer<typeof manifestSchema>

export interface Manifest extends Omit<ManifestDocument, 'chunks' | 'format' | 'version'> {
  /** chunkCount × 32 bytes. */
  chunks: Buffer
}

export function chunkIdAt(chunks: Buffer, index: number): Buffer {
  return chunks.subarray(index * ID_BYTES, (index + 1) * ID_BYTES)
}

/**
 * The whole-backup checksum: SHA-256 over the size, the chunk size and every chunk id in order.
 * Each id is itself a hash of its chunk's bytes, so a restore that verifies every chunk and this
 * checksum has verified every byte of the volume, including which chunk goes where.
 */
export function backupChecksum(size: number, chunkSize: number, chunks: Buffer): string {
  const header = Buffer.alloc(12)
  header.writeBigUInt64LE(BigInt(size), 0)
  header.writeUInt32LE(chunkSize, 8)
  return 'sha256:' + createHash('sha256').update(header).update(chunks).digest('hex')
}

/** Time-ordered, readable backup ids: 20261123T043200Z-1a2b3c4d. */
export function newBackupId(now = new Date()): string {
  return timestampedId('', now)
}


export function encodeManifest(m: Manifest): Buffer {
  const doc: ManifestDocument = {
    format: 'ebs-worker-backup',
    version: MANIFEST_VERSION,
    ...m,
    chunks: m.chunks.toString('base64'),
  }
  return Buffer.from(JSON.stringify(doc))
}

export function decodeManifest(plain: Buffer, id: string): Manifest {
  let json: unknown
  try {
    json = JSON.parse(plain.toString('utf8'))
  } catch {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} is not JSON`)
  }
  const version = (json as { version?: unknown })?.version
  if (typeof version === 'number' && version !== MANIFEST_VERSION) {
    throw new EbsWorkerError(
      ErrorCode.RepoVersion,
      `backup ${id} has manifest version ${version}; this ebs-worker reads version ${MANIFEST_VERSION}`,
    )
  }
  const parsed = manifestSchema.safeParse(json)
  if (!parsed.success) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} is invalid: ${z.prettifyError(parsed.error)}`)
  }
  const { format: _f, version: _v, chunks, ...rest } = parsed.data
  const m: Manifest = { ...rest, chunks: Buffer.from(chunks, 'base64') }
  if (m.id !== id) throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest stored as ${id} names backup ${m.id}`)
  if (m.chunks.length !== chunkCount(m.size, m.chunkSize) * ID_BYTES) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} lists the wrong number of chunks`)
  }
  if (backupChecksum(m.size, m.chunkSize, m.chunks) !== m.checksum) {
    throw new EbsWorkerError(ErrorCode.ChecksumMismatch, `backup ${id}: chunk list does not match its checksum`)
  }
  return m
}
