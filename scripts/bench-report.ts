// Helpers for scripts/bench.sh (`npm run bench`), run with the project's Node 24:
//   node scripts/bench-report.ts image PATH GIB       write the mixed-content benchmark image
//   node scripts/bench-report.ts report RESULTS.tsv   print the markdown tables of a run
//   node scripts/bench-report.ts ebs-note GIB B.json R.json   one line on ebs-worker's own stats
//
// The image cycles 64 MiB segments random / text / zero / zero: 25 % incompressible, 25 %
// compressible, 50 % zeros, interleaved like the used and unused parts of a real volume. Every
// segment is generated afresh: repeating one segment would let a deduplicating tool (ebs-worker,
// restic) store it once and look better than it would on a real volume. Zeros are written, not
// left as holes, so every tool reads the whole image from disk.
import { randomBytes } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const SEGMENT = 64 * MiB

/**
 * Text-like data that zstd -3 compresses roughly 2.5-3x: words drawn uniformly from a fresh
 * 4096-word vocabulary of random lowercase words, with some punctuation and line breaks. About
 * 16 bits of randomness per 7-8 bytes, so it compresses well but never repeats (no long matches).
 */
function textGenerator(): (out: Buffer) => void {
  const words: Uint8Array[] = []
  const letters = randomBytes(4096 * 12)
  for (let w = 0; w < 4096; w++) {
    const len = 2 + (letters[w * 12]! % 10)
    const word = new Uint8Array(len)
    for (let i = 0; i < len; i++) word[i] = 97 + (letters[w * 12 + 1 + i]! % 26)
    words.push(word)
  }
  const separators = [...Array(13).fill(' '), ', ', '. ', '.\n'].map((s: string) => Buffer.from(s))
  return (out) => {
    let at = 0
    while (at < out.length) {
      const picks = randomBytes(64 * 1024)
      for (let p = 0; p + 1 < picks.length && at < out.length; p += 2) {
        const r = picks[p]! | (picks[p + 1]! << 8)
        const word = words[r & 4095]!
        const sep = separators[r >>> 12]!
        for (let i = 0; i < word.length && at < out.length; i++) out[at++] = word[i]!
        for (let i = 0; i < sep.length && at < out.length; i++) out[at++] = sep[i]!
      }
    }
  }
}

async function writeImage(path: string, gib: number): Promise<void> {
  const size = Math.round(gib * GiB)
  if (size % SEGMENT !== 0) throw new Error(`image size must be a multiple of 64 MiB, not ${size}`)
  const handle = await open(path, 'w')
  const text = textGenerator()
  const buf = Buffer.allocUnsafe(SEGMENT)
  const zeros = Buffer.alloc(SEGMENT)
  try {
    for (let at = 0, n = 0; at < size; at += SEGMENT, n++) {
      let data = zeros
      if (n % 4 === 0) data = randomBytes(SEGMENT)
      else if (n % 4 === 1) text((data = buf))
      await handle.write(data, 0, SEGMENT, at)
    }
  } finally {
    await handle.close()
  }
}

// One line of results.tsv, written by bench.sh.
interface Row {
  gib: number
  tool: string
  op: 'backup' | 'restore'
  wall: number
  user: number
  sys: number
  maxRssKiB: number
  /** CPU seconds of the test bed's daemons during the command. */
  serverCpu: number
  /** CPU seconds used on the machine by neither the tool nor the test bed (other load). */
  otherCpu: number
  /** Bytes the tool left in its bucket (backup rows); -1 if unknown. */
  stored: number
  /** "ok", "MISMATCH" or "-" (restore rows). */
  check: string
}

const TOOL_LABEL: Record<string, string> = {
  'ebs-worker': 'ebs-worker',
  aws: 'dd \\| aws s3 cp',
  rclone: 'rclone rcat / cat',
  restic: 'restic --stdin / dump',
}

function parseRows(tsv: string): Row[] {
  return tsv
    .split('\n')
    .filter((line) => line.trim() && !line.startsWith('#'))
    .map((line) => {
      const [gib, tool, op, wall, user, sys, rss, server, other, stored, check] = line.split('\t')
      return {
        gib: Number(gib), tool: tool!, op: op as Row['op'], wall: Number(wall), user: Number(user),
        sys: Number(sys), maxRssKiB: Number(rss), serverCpu: Number(server), otherCpu: Number(other), stored: Number(stored), check: check ?? '-',
      }
    })
}

const f = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : '-')

function report(rows: Row[]): string {
  const out: string[] = []
  const sizes = [...new Set(rows.map((r) => r.gib))]
  const tools = [...new Set(rows.map((r) => r.tool))]
  for (const gib of sizes) {
    out.push(`### ${gib} GiB image`, '')
    out.push('| Operation | Tool | Wall s | MiB/s | CPU s/GiB (user+sys) | Peak RSS MiB | Server CPU s/GiB | Result |')
    out.push('|---|---|---:|---:|---:|---:|---:|---|')
    for (const op of ['backup', 'restore'] as const) {
      for (const tool of tools) {
        const r = rows.find((x) => x.gib === gib && x.tool === tool && x.op === op)
        if (!r) continue
        const result = op === 'backup'
          ? r.stored >= 0 ? `stored ${f(r.stored / MiB, 0)} MiB` : 'stored ?'
          : r.check === 'ok' ? 'sha256 ok' : `**sha256 ${r.check}**`
        out.push(`| ${op} | ${TOOL_LABEL[tool] ?? tool} | ${f(r.wall)} | ${f((gib * 1024) / r.wall, 0)} | ` +
          `${f((r.user + r.sys) / gib)} | ${f(r.maxRssKiB / 1024, 0)} | ${f(r.serverCpu / gib)} | ${result} |`)
      }
    }
    out.push('')
  }
  if (sizes.length > 1) {
    out.push('### Peak RSS (MiB) by image size', '')
    out.push(`| Tool | Operation | ${sizes.map((s) => `${s} GiB`).join(' | ')} |`)
    out.push(`|---|---|${sizes.map(() => '---:').join('|')}|`)
    for (const tool of tools) {
      for (const op of ['backup', 'restore'] as const) {
        const cells = sizes.map((gib) => {
          const r = rows.find((x) => x.gib === gib && x.tool === tool && x.op === op)
          return r ? f(r.maxRssKiB / 1024, 0) : '-'
        })
        out.push(`| ${TOOL_LABEL[tool] ?? tool} | ${op} | ${cells.join(' | ')} |`)
      }
    }
    out.push('')
  }
  // Someone else's CPU use during a measurement (more than a tenth of a core on average) makes
  // that row suspect: say so rather than let it pass as the tool's own result.
  const busy = rows.filter((r) => r.otherCpu > Math.max(1, 0.1 * r.wall))
  for (const r of busy) {
    out.push(`- **Other load** during ${r.gib} GiB ${r.tool} ${r.op}: ${f(r.otherCpu)} CPU-s used by other processes ` +
      `(${f((100 * r.otherCpu) / r.wall, 0)} % of one core over ${f(r.wall)} s); treat that row with care.`)
  }
  if (busy.length) out.push('')
  return out.join('\n')
}

/** One line on ebs-worker's run from its --json results (the last line of each output). */
async function ebsNote(gib: string, backupJson: string, restoreJson: string): Promise<string> {
  const last = async (path: string): Promise<Record<string, number>> =>
    JSON.parse((await readFile(path, 'utf8')).trim().split('\n').pop()!)
  const b = await last(backupJson)
  const r = await last(restoreJson)
  const mib = (n: number): string => f(n / MiB, 0)
  return `- ${gib} GiB, ebs-worker: backup ${f(b.durationMs! / 1000)} s by its own timer (${b.chunksTotal} chunks: ` +
    `${b.chunksNew} new, ${b.chunksZero} zero, ${b.chunksReused} reused; ${mib(b.bytesStored!)} MiB stored); restore ` +
    `${f(r.durationMs! / 1000)} s by its own timer (${mib(r.bytesFetched!)} MiB fetched in ${r.requests} requests, ` +
    `${r.zeroChunksSkipped} zero chunks skipped)\n`
}

const [cmd, ...args] = process.argv.slice(2)
if (cmd === 'image' && args.length === 2) {
  await writeImage(args[0]!, Number(args[1]))
} else if (cmd === 'report' && args.length === 1) {
  process.stdout.write(report(parseRows(await readFile(args[0]!, 'utf8'))))
} else if (cmd === 'ebs-note' && args.length === 3) {
  process.stdout.write(await ebsNote(args[0]!, args[1]!, args[2]!))
} else {
  process.stderr.write('usage: bench-report.ts image PATH GIB | report RESULTS.tsv | ebs-note GIB BACKUP.json RESTORE.json\n')
  process.exit(2)
}
