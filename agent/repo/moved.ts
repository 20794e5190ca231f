// Where the live blobs of a repacked pack went. References are never rewritten (manifests are
// immutable, and may be under S3 Object Lock), so once prune has copied a pack's live blobs into
// new packs and deleted the old one, `moved/<old pack id>` maps each old offset to the blob's new
// reference; readers that find the old pack gone look there. It is kept as long as a kept backup
// refers to the old pack (prune sees that when it walks them), and goes with the last one.
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { decodeRef, encodeRef, type BlobRef } from './tree.ts'

const movedSchema = z.strictObject({
  version: z.literal(1),
  pack: z.string().regex(/^[0-9a-f]{32}$/),
  movedAt: z.string(),
  /** [old offset, new reference (base64)] per blob that was live. */
  blobs: z.array(z.tuple([z.number().int().nonnegative(), z.string()])),
})

export interface Moved {
  pack: string
  movedAt: string
  /** Old offset → the blob's new reference. */
  blobs: Map<number, BlobRef>
}

export function encodeMoved(m: Moved): Buffer {
  return Buffer.from(JSON.stringify({ version: 1, pack: m.pack, movedAt: m.movedAt, blobs: [...m.blobs].map(([offset, ref]) => [offset, encodeRef(ref)]) }))
}

export function decodeMoved(buf: Buffer, what: string): Moved {
  let json: unknown
  try {
    json = JSON.parse(buf.toString('utf8'))
  } catch {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not JSON`)
  }
  const parsed = movedSchema.safeParse(json)
  if (!parsed.success) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is invalid: ${z.prettifyError(parsed.error)}`)
  return { pack: parsed.data.pack, movedAt: parsed.data.movedAt, blobs: new Map(parsed.data.blobs.map(([offset, ref]) => [offset, decodeRef(ref)])) }
}

/** The reference a blob has now, given the one a backup recorded and its pack's moved record. */
export function forward(ref: BlobRef, moved: Moved): BlobRef | null {
  const now = moved.blobs.get(ref.offset)
  return now && now.id.equals(ref.id) ? now : null
}
