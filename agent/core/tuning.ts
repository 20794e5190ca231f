// The tuning knobs of backups and restores, their defaults and their bounds, in one place: the
// CLI's flags default to them and check against them, the daemon's config.json may set them
// (`tuning`, checked by the same bounds), and the pipelines fall back to them.
import { z } from 'zod'

const MiB = 1024 * 1024

export interface Tuning {
  /** Chunk reads in flight during a backup (lazily hydrated EBS volumes want many). */
  readConcurrency: number
  /** Packs uploading at once during a backup. */
  uploadConcurrency: number
  /**
   * A pack is sealed once it reaches this many bytes. 8 MiB: one PUT each (cheaper in requests than
   * a 16 MiB pack's multipart upload), and (uploads + 1) pack buffers stay small.
   */
  packSize: number
  /** zstd level of new blobs: 1 is within a few percent of 3's ratio on disk data, at about twice the speed. */
  compressionLevel: number
  /** Ranged GETs in flight during a restore or a verify. */
  restoreConcurrency: number
  /**
   * Upper bound of one coalesced GET: 8 MiB, the size AWS suggests for ranged GETs, and with 8
   * in flight 64 MiB of request buffers (a whole 16 MiB pack per GET would be 160 MiB).
   */
  maxRequestBytes: number
}

export const DEFAULT_TUNING: Readonly<Tuning> = Object.freeze({
  readConcurrency: 16,
  uploadConcurrency: 4,
  packSize: 8 * MiB,
  compressionLevel: 1,
  restoreConcurrency: 8,
  maxRequestBytes: 8 * MiB,
})

/** The bounds each knob is checked against, wherever it comes from (inclusive). */
export const TUNING_LIMITS: Readonly<Record<keyof Tuning, readonly [min: number, max: number]>> = Object.freeze({
  readConcurrency: [1, 256],
  uploadConcurrency: [1, 64],
  packSize: [MiB, 1024 * MiB],
  compressionLevel: [1, 19],
  restoreConcurrency: [1, 256],
  maxRequestBytes: [MiB, 1024 * MiB],
})

const knob = (name: keyof Tuning) => z.number().int().min(TUNING_LIMITS[name][0]).max(TUNING_LIMITS[name][1])

/** Some knobs, each within its bounds, no others (a typo is an error, not a silent default). */
export const tuningSchema = z.strictObject({
  readConcurrency: knob('readConcurrency').optional(),
  uploadConcurrency: knob('uploadConcurrency').optional(),
  packSize: knob('packSize').optional(),
  compressionLevel: knob('compressionLevel').optional(),
  restoreConcurrency: knob('restoreConcurrency').optional(),
  maxRequestBytes: knob('maxRequestBytes').optional(),
})

/** The knobs given, the defaults for the rest. */
export function withDefaults(partial: z.infer<typeof tuningSchema> = {}): Tuning {
  const out: Tuning = { ...DEFAULT_TUNING }
  for (const [key, value] of Object.entries(partial) as Array<[keyof Tuning, number | undefined]>) {
    if (value !== undefined) out[key] = value
  }
  return out
}
