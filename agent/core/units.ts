// Byte counts for people: "1.5 GiB", "576.0 MiB". One format for the CLI's summaries and
// progress bar and for doctor's lines.

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/** Sizes like 1048576, 1MiB, 512KiB, 32M, 2g; null when `value` is not one. */
export function parseBytes(value: string): number | null {
  const m = /^(\d+)\s*(k|m|g|kib|mib|gib|kb|mb|gb)?$/i.exec(value.trim())
  if (!m) return null
  const unit = (m[2] ?? '').toLowerCase()[0]
  const scale = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1
  return Number(m[1]) * scale
}

const PERIOD_UNITS: Record<string, number> = { s: 1, h: 3600, d: 86_400, w: 7 * 86_400, y: 365 * 86_400 }

/**
 * A length of time in seconds from numbers each with a unit, s, h, d, w or y (365 days), each
 * unit at most once: `30d`, `2w`, `1y`, `1y2w`, `90s`. No `m`: months and minutes both claim it.
 * Null when `value` is not one.
 */
export function parsePeriod(value: string): number | null {
  const s = value.trim().toLowerCase()
  if (!/^(\d+[shdwy])+$/.test(s)) return null
  let seconds = 0
  const seen = new Set<string>()
  for (const [, n, unit] of s.matchAll(/(\d+)([shdwy])/g)) {
    if (seen.has(unit!)) return null
    seen.add(unit!)
    seconds += Number(n) * PERIOD_UNITS[unit!]!
  }
  return Number.isSafeInteger(seconds) ? seconds : null
}

/** Seconds for people: "30d", "2w 3d", "90s" (the largest units that fit). */
export function formatPeriod(seconds: number): string {
  const parts: string[] = []
  let left = seconds
  for (const unit of ['y', 'w', 'd', 'h', 's']) {
    const n = Math.floor(left / PERIOD_UNITS[unit]!)
    if (n) parts.push(`${n}${unit}`)
    left -= n * PERIOD_UNITS[unit]!
  }
  return parts.join(' ') || '0s'
}
