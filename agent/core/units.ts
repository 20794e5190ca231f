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
