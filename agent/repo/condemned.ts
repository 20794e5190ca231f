// What a prune decided to delete, written before anything is deleted and removed once it all is:
// `condemned/<prune id>`. Backups that start while one exists leave those packs alone (they do
// not dedup against them), and the next prune finishes a deletion a killed prune left halfway.
import { z } from 'zod'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'

const condemnedSchema = z.strictObject({
  version: z.literal(1),
  id: z.string(),
  createdAt: z.string(),
  /** Packs to delete (repacked, or no longer referenced). */
  packs: z.array(z.string().regex(/^[0-9a-f]{32}$/)),
  /** Index runs to delete (names under index/). */
  runs: z.array(z.string()),
  /** Moved records no longer needed (old pack ids). */
  moved: z.array(z.string().regex(/^[0-9a-f]{32}$/)),
  /** The leases of the backups that were running when this was written: waited for before deleting. */
  waitFor: z.array(z.string()),
})
export type Condemned = z.infer<typeof condemnedSchema>

export function encodeCondemned(c: Condemned): Buffer {
  return Buffer.from(JSON.stringify({ ...c, version: 1 }))
}

export function decodeCondemned(buf: Buffer, what: string): Condemned {
  let json: unknown
  try {
    json = JSON.parse(buf.toString('utf8'))
  } catch {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not JSON`)
  }
  const parsed = condemnedSchema.safeParse(json)
  if (!parsed.success) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is invalid: ${z.prettifyError(parsed.error)}`)
  return parsed.data
}
