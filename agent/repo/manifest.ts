// A backup's manifest: what was backed up, and where its chunk list is. It is the last object a
// backup writes; a backup without one does not exist. Pure: schemas, encoding, checksums.
//
// Version 2 (written now) is a small header: the chunk list is a tree of nodes in tree packs
// (tree.ts), named by the root's reference, so `list` reads a few hundred bytes per backup.
// Version 1 (read only) holds every chunk id in the manifest itself (base64 of chunkCount × 32
// bytes): 32 MiB per TiB, and more than V8 can hold as one string from about 12 TiB on.
import { createHash } from 'node:crypto'
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { timestampedId } from '../core/ids.ts'
import { chunkCount } from '../core/geometry.ts'
import { decodeRef, encodeRef, ID_BYTES, type BlobRef } from './tree.ts'

export const MANIFEST_VERSION = 2
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
  /** Bytes of chunk-list nodes written (version 2): the backup's new metadata, besides its manifest. */
  bytesMetadata: z.number().int().nonnegative().optional(),
})
export type BackupStats = z.infer<typeof statsSchema>

const headerFields = {
  format: z.literal('ebs-worker-backup'),
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
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  stats: statsSchema,
  tags: z.record(z.string(), z.string()),
}

const v1Schema = z.strictObject({
  ...headerFields,
  version: z.literal(1),
  /** Base64 of chunkCount × 32-byte ids; ZERO_ID marks a zero chunk. */
  chunks: z.string(),
})

const v2Schema = z.strictObject({
  ...headerFields,
  version: z.literal(2),
  tree: z.strictObject({
    /** The root node's reference (tree.ts, 60 bytes in base64); all zeros for a volume of zeros. */
    root: z.string(),
    leafChunks: z.number().int().positive(),
    fanout: z.number().int().min(2),
  }),
})

/** What every manifest says, whatever its version. */
export interface ManifestHeader {
  id: string
  createdAt: string
  source: { device: string; volumeId?: string | undefined; snapshotId?: string | undefined }
  size: number
  chunkSize: number
  parent: string | null
  checksum: string
  stats: BackupStats
  tags: Record<string, string>
}

/** A version 2 manifest: its chunk list is the tree under `root`. */
export interface ManifestV2 extends ManifestHeader {
  version: 2
  tree: { root: BlobRef; leafChunks: number; fanout: number }
}

/** A version 1 manifest (read only): its chunk list is in it. */
export interface ManifestV1 extends ManifestHeader {
  version: 1
  /** chunkCount × 32 bytes. */
  chunks: Buffer
}

export type Manifest = ManifestV1 | ManifestV2

/** Without the chunk list: what `list` shows. */
export type BackupSummary = Omit<ManifestHeader, 'checksum' | 'chunkSize'>

export function chunkIdAt(chunks: Buffer, index: number): Buffer {
  return chunks.subarray(index * ID_BYTES, (index + 1) * ID_BYTES)
}

/**
 * The whole-backup checksum of version 1: SHA-256 over the size, the chunk size and every chunk
 * id in order. Each id is itself a hash of its chunk's bytes, so a restore that verifies every
 * chunk and this checksum has verified every byte of the volume, including which chunk goes where.
 */
export function backupChecksum(size: number, chunkSize: number, chunks: Buffer): string {
  const header = Buffer.alloc(12)
  header.writeBigUInt64LE(BigInt(size), 0)
  header.writeUInt32LE(chunkSize, 8)
  return 'sha256:' + createHash('sha256').update(header).update(chunks).digest('hex')
}

/**
 * The whole-backup checksum of version 2: SHA-256 over the size, the chunk size, the tree's
 * shape and the root's id. The root's id is the hash of its node, which holds its children's
 * ids, down to the chunk ids (a Merkle tree): the same guarantee as version 1's, computed
 * without holding the list.
 */
export function treeChecksum(size: number, chunkSize: number, tree: ManifestV2['tree']): string {
  const header = Buffer.alloc(20)
  header.writeBigUInt64LE(BigInt(size), 0)
  header.writeUInt32LE(chunkSize, 8)
  header.writeUInt32LE(tree.leafChunks, 12)
  header.writeUInt32LE(tree.fanout, 16)
  return 'sha256:' + createHash('sha256').update(header).update(tree.root.id).digest('hex')
}

export function encodeManifest(m: ManifestV2): Buffer {
  const { version: _v, tree, ...header } = m
  return Buffer.from(JSON.stringify({
    format: 'ebs-worker-backup', version: MANIFEST_VERSION, ...header,
    tree: { root: encodeRef(tree.root), leafChunks: tree.leafChunks, fanout: tree.fanout },
  }))
}

export function decodeManifest(plain: Buffer, id: string): Manifest {
  let json: unknown
  try {
    json = JSON.parse(plain.toString('utf8'))
  } catch {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} is not JSON`)
  }
  const version = (json as { version?: unknown })?.version
  if (version !== 1 && version !== 2) {
    throw new EbsWorkerError(ErrorCode.RepoVersion,
      `backup ${id} has manifest version ${String(version)}; this ebs-worker reads versions 1 and 2`, { context: { backupId: id } })
  }
  const parsed = (version === 1 ? v1Schema : v2Schema).safeParse(json)
  if (!parsed.success) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} is invalid: ${z.prettifyError(parsed.error)}`, { context: { backupId: id } })
  }
  let m: Manifest
  if (parsed.data.version === 1) {
    const { format: _f, chunks, ...rest } = parsed.data
    m = { ...rest, version: 1, chunks: Buffer.from(chunks, 'base64') }
    if (m.chunks.length !== chunkCount(m.size, m.chunkSize) * ID_BYTES) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest of backup ${id} lists the wrong number of chunks`, { context: { backupId: id } })
    }
    if (backupChecksum(m.size, m.chunkSize, m.chunks) !== m.checksum) {
      throw new EbsWorkerError(ErrorCode.ChecksumMismatch, `backup ${id}: chunk list does not match its checksum`, { context: { backupId: id } })
    }
  } else {
    const { format: _f, tree, ...rest } = parsed.data
    m = { ...rest, version: 2, tree: { root: decodeRef(tree.root), leafChunks: tree.leafChunks, fanout: tree.fanout } }
    if (treeChecksum(m.size, m.chunkSize, m.tree) !== m.checksum) {
      throw new EbsWorkerError(ErrorCode.ChecksumMismatch, `backup ${id}: chunk list does not match its checksum`, { context: { backupId: id } })
    }
  }
  if (m.id !== id) throw new EbsWorkerError(ErrorCode.RepoFormat, `manifest stored as ${id} names backup ${m.id}`, { context: { backupId: id } })
  return m
}

/** The summary `list` shows. */
export function summaryOf(m: Manifest): BackupSummary {
  return { id: m.id, createdAt: m.createdAt, source: m.source, size: m.size, parent: m.parent, stats: m.stats, tags: m.tags }
}

/** Time-ordered, readable backup ids: 20261123T043200Z-1a2b3c4d. */
export function newBackupId(now = new Date()): string {
  return timestampedId('', now)
}
