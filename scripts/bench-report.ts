// Helpers for scripts/bench.sh (`npm run bench`), run with the project's Node 24:
//   node scripts/bench-report.ts image PATH GIB       write the mixed-content benchmark image
//   node scripts/bench-report.ts parts IMAGE RANDOM TEXT   its random and its text segments, each
//                                                     kind concatenated into one file (the primitives' bytes)
//   node scripts/bench-report.ts gcm seal|open [--out] FILE...   AES-256-GCM over FILEs (see gcm)
//   node scripts/bench-report.ts report RESULTS.tsv PRIMITIVES.tsv   print the markdown tables of a run
//   node scripts/bench-report.ts ebs-note GIB PROTOCOL B.json R.json   one line on ebs-worker's own stats
//
// The image cycles 64 MiB segments random / text / zero / zero: 25 % incompressible, 25 %
// compressible, 50 % zeros, interleaved like the used and unused parts of a real volume. Every
// segment is generated afresh: repeating one segment would let a deduplicating tool (ebs-worker,
// restic) store it once and look better than it would on a real volume. Zeros are written, not
// left as holes, so every tool reads the whole image from disk.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { open, readFile, stat } from 'node:fs/promises'

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

/** What segment n of the image holds; `parts` and the primitives rely on it as much as writeImage. */
type SegmentKind = 'random' | 'text' | 'zero'
const segmentKind = (n: number): SegmentKind => (n % 4 === 0 ? 'random' : n % 4 === 1 ? 'text' : 'zero')

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
      if (segmentKind(n) === 'random') data = randomBytes(SEGMENT)
      else if (segmentKind(n) === 'text') text((data = buf))
      await handle.write(data, 0, SEGMENT, at)
    }
  } finally {
    await handle.close()
  }
}

/**
 * The image's random segments into one file and its text segments into another (the zero ones are
 * skipped), in image order. Each segment is checked to be what segmentKind says: the primitives
 * would otherwise be measured on the wrong bytes.
 */
async function writeParts(image: string, randomPath: string, textPath: string): Promise<void> {
  const size = (await stat(image)).size
  if (size % SEGMENT !== 0) throw new Error(`${image}: not a bench image (${size} bytes)`)
  const input = await open(image, 'r')
  const outputs = { random: await open(randomPath, 'w'), text: await open(textPath, 'w') }
  const buf = Buffer.allocUnsafe(SEGMENT)
  const zeros = Buffer.alloc(SEGMENT)
  try {
    for (let at = 0, n = 0; at < size; at += SEGMENT, n++) {
      const { bytesRead } = await input.read(buf, 0, SEGMENT, at)
      if (bytesRead !== SEGMENT) throw new Error(`${image}: short read at ${at}`)
      const kind = segmentKind(n)
      if ((kind === 'zero') !== buf.equals(zeros)) throw new Error(`${image}: segment ${n} is not ${kind}`)
      if (kind !== 'zero') await outputs[kind].write(buf, 0, SEGMENT)
    }
  } finally {
    await Promise.all([input.close(), outputs.random.close(), outputs.text.close()])
  }
}

/** Reads until `buf` is full or the file ends; the bytes read. */
function readFull(fd: number, buf: Buffer): number {
  let got = 0
  for (let n; got < buf.length && (n = readSync(fd, buf, got, buf.length - got, null)) > 0; ) got += n
  return got
}

/**
 * AES-256-GCM over FILES in 1 MiB pieces, each sealed on its own (a fresh cipher, a 12-byte nonce
 * from a counter, a 16-byte tag), as a repository seals its chunks: the primitive's cost on real
 * bytes, through Node's crypto (OpenSSL, as ebs-worker's). seal reads FILEs; with `out` it also
 * writes FILE.gcm (each piece's ciphertext, then its tag) for open, which reads FILE.gcm files and
 * checks every tag. Without FILEs it only starts: the start-up to subtract.
 */
function gcm(mode: 'seal' | 'open', files: string[], out: boolean): void {
  const key = Buffer.alloc(32, 7)   // the key's value does not change the cost
  const nonce = Buffer.alloc(12)
  const TAG = 16
  let counter = 0
  for (const file of files) {
    const piece = Buffer.allocUnsafe(mode === 'seal' ? MiB : MiB + TAG)
    const fd = openSync(file, 'r')
    const w = out ? openSync(`${file}.gcm`, 'w') : -1
    try {
      for (let n; (n = readFull(fd, piece)) > 0; ) {
        nonce.writeUInt32BE(counter++, 8)   // the same sequence in open as in seal: same file order
        if (mode === 'seal') {
          const c = createCipheriv('aes-256-gcm', key, nonce)
          const sealed = c.update(piece.subarray(0, n))
          c.final()
          if (w >= 0) { writeSync(w, sealed); writeSync(w, c.getAuthTag()) }
        } else {
          if (n <= TAG) throw new Error(`${file}: a piece of ${n} bytes`)
          const d = createDecipheriv('aes-256-gcm', key, nonce)
          d.setAuthTag(piece.subarray(n - TAG, n))
          d.update(piece.subarray(0, n - TAG))
          d.final()   // throws if the tag does not match
        }
      }
    } finally {
      closeSync(fd)
      if (w >= 0) closeSync(w)
    }
  }
}

// One line of results.tsv, written by bench.sh.
interface Row {
  gib: number
  /** "http" or "https" (TLS through the test bed's haproxy). */
  proto: string
  tool: string
  op: 'backup' | 'restore'
  wall: number
  user: number
  sys: number
  maxRssKiB: number
  /** CPU seconds of the test bed's daemons during the command (haproxy's included). */
  serverCpu: number
  /** Of them, haproxy's (the TLS front; nothing over plain http). */
  tlsCpu: number
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
      const [gib, proto, tool, op, wall, user, sys, rss, server, tls, other, stored, check] = line.split('\t')
      return {
        gib: Number(gib), proto: proto!, tool: tool!, op: op as Row['op'], wall: Number(wall), user: Number(user),
        sys: Number(sys), maxRssKiB: Number(rss), serverCpu: Number(server), tlsCpu: Number(tls), otherCpu: Number(other),
        stored: Number(stored), check: check ?? '-',
      }
    })
}

type Op = Row['op']

// One line of primitives.tsv, written by bench.sh: one primitive's command on one image's bytes.
interface Primitive {
  gib: number
  name: string
  bytes: number
  wall: number
  user: number
  sys: number
}

/**
 * The work nobody can skip, per operation, in the order bench.sh measures it. SHA-256 is measured
 * once and counted for both operations (restore checks every chunk it fetched, over the same bytes).
 * gcm-seal and gcm-open are Node processes: an empty start (node-start) is subtracted from them.
 */
const PRIMITIVES: { name: string, label: string, ops: Op[] }[] = [
  { name: 'read', label: 'read the image, cold cache (`dd bs=1M`)', ops: ['backup'] },
  { name: 'sha256', label: 'SHA-256 of the non-zero data (`openssl dgst -sha256`)', ops: ['backup', 'restore'] },
  { name: 'zstd', label: 'zstd -1 of the text segments (`zstd -1 -T1`)', ops: ['backup'] },
  { name: 'gcm-seal', label: 'AES-256-GCM seal of the stored bytes (Node crypto, 1 MiB pieces)', ops: ['backup'] },
  { name: 'unzstd', label: 'zstd -d of the compressed text (`zstd -d`)', ops: ['restore'] },
  { name: 'gcm-open', label: 'AES-256-GCM open of the stored bytes (Node crypto, 1 MiB pieces)', ops: ['restore'] },
  { name: 'write', label: 'write the non-zero data to a new file, fdatasync (`dd conv=fdatasync`)', ops: ['restore'] },
]

function parsePrimitives(tsv: string): Primitive[] {
  return tsv
    .split('\n')
    .filter((line) => line.trim() && !line.startsWith('#'))
    .map((line) => {
      const [gib, name, bytes, wall, user, sys] = line.split('\t')
      return { gib: Number(gib), name: name!, bytes: Number(bytes), wall: Number(wall), user: Number(user), sys: Number(sys) }
    })
}

/** CPU seconds (user+sys) of each primitive at GIB, node-start subtracted from the Node ones. */
function primitiveCpu(prims: Primitive[], gib: number): Map<string, number> {
  const at = prims.filter((p) => p.gib === gib)
  const start = at.find((p) => p.name === 'node-start')
  const cpu = new Map<string, number>()
  for (const p of at) {
    if (p.name === 'node-start') continue
    const own = p.user + p.sys - (p.name.startsWith('gcm-') && start ? start.user + start.sys : 0)
    cpu.set(p.name, Math.max(0, own))
  }
  return cpu
}

/** The primitives' CPU seconds for OP at GIB; NaN unless every one of them was measured. */
function primitivesTotal(prims: Primitive[], gib: number, op: Op): number {
  const cpu = primitiveCpu(prims, gib)
  return PRIMITIVES.filter((p) => p.ops.includes(op)).reduce((sum, p) => sum + (cpu.get(p.name) ?? NaN), 0)
}

const f = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : '-')

// The goals of issue 12 for ebs-worker, per image size and protocol.
const GOAL_WALL_VS_FASTEST = 0.5
const GOAL_CPU_VS_PRIMITIVES = 1.3
const GOAL_PEAK_RSS_MIB = 256
const met = (ok: boolean): string => (ok ? 'met' : '**not met**')

function report(rows: Row[], prims: Primitive[]): string {
  const out: string[] = []
  const sizes = [...new Set(rows.map((r) => r.gib))]
  const tools = [...new Set(rows.map((r) => r.tool))]
  const protos = [...new Set(rows.map((r) => r.proto))]
  const label = (tool: string): string => TOOL_LABEL[tool] ?? tool
  for (const gib of sizes) {
    out.push(`### ${gib} GiB image`, '')
    out.push('| Operation | Tool | Protocol | Wall s | MiB/s | CPU s/GiB (user+sys) | CPU / primitives | Peak RSS MiB | ' +
      'Server CPU s/GiB | of it TLS (haproxy) | Result |')
    out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|')
    for (const op of ['backup', 'restore'] as const) {
      const prim = primitivesTotal(prims, gib, op)
      for (const tool of tools) {
        for (const proto of protos) {
          const r = rows.find((x) => x.gib === gib && x.proto === proto && x.tool === tool && x.op === op)
          if (!r) continue
          const result = op === 'backup'
            ? r.stored >= 0 ? `stored ${f(r.stored / MiB, 0)} MiB` : 'stored ?'
            : r.check === 'ok' ? 'sha256 ok' : `**sha256 ${r.check}**`
          out.push(`| ${op} | ${label(tool)} | ${proto} | ${f(r.wall)} | ${f((gib * 1024) / r.wall, 0)} | ` +
            `${f((r.user + r.sys) / gib)} | ${f((r.user + r.sys) / prim, 2)} | ${f(r.maxRssKiB / 1024, 0)} | ` +
            `${f(r.serverCpu / gib)} | ${proto === 'https' ? f(r.tlsCpu / gib) : '–'} | ${result} |`)
        }
      }
    }
    out.push('')
    const cpu = primitiveCpu(prims, gib)
    if (cpu.size) {
      out.push(`Primitives on this image's bytes (CPU = user+sys, GNU time; "CPU / primitives" above divides a row's ` +
        'CPU by its operation\'s total):', '')
      out.push('| Primitive | MiB | CPU s | CPU s/GiB of image | Counted for |')
      out.push('|---|---:|---:|---:|---|')
      for (const p of PRIMITIVES) {
        const m = prims.find((x) => x.gib === gib && x.name === p.name)
        out.push(`| ${p.label} | ${m ? f(m.bytes / MiB, 0) : '-'} | ${f(cpu.get(p.name) ?? NaN, 2)} | ` +
          `${f((cpu.get(p.name) ?? NaN) / gib, 2)} | ${p.ops.join(', ')} |`)
      }
      for (const op of ['backup', 'restore'] as const) {
        const total = primitivesTotal(prims, gib, op)
        out.push(`| **all of ${op}'s** | | **${f(total, 2)}** | **${f(total / gib, 2)}** | ${op} |`)
      }
      out.push('')
    }
    const goals: string[] = []
    for (const proto of protos) {
      for (const op of ['backup', 'restore'] as const) {
        const at = rows.filter((x) => x.gib === gib && x.proto === proto && x.op === op)
        const ebs = at.find((x) => x.tool === 'ebs-worker')
        if (!ebs) continue
        // (a restore that got the data wrong is no yardstick)
        const fastest = at.filter((x) => x.tool !== 'ebs-worker' && x.check !== 'MISMATCH').sort((a, b) => a.wall - b.wall)[0]
        const wall = fastest
          ? `${f(ebs.wall / fastest.wall, 2)} (${f(ebs.wall)} s vs ${f(fastest.wall)} s, ${label(fastest.tool)}): ` +
            met(ebs.wall / fastest.wall <= GOAL_WALL_VS_FASTEST)
          : '– (no alternative in BENCH_TOOLS)'
        const ratio = (ebs.user + ebs.sys) / primitivesTotal(prims, gib, op)
        const cpuGoal = Number.isFinite(ratio) ? `${f(ratio, 2)}: ${met(ratio <= GOAL_CPU_VS_PRIMITIVES)}` : '– (no primitives)'
        const rss = ebs.maxRssKiB / 1024
        goals.push(`| ${proto} | ${op} | ${wall} | ${cpuGoal} | ${f(rss, 0)} MiB: ${met(rss < GOAL_PEAK_RSS_MIB)} |`)
      }
    }
    if (goals.length) {
      out.push(`Goals (ebs-worker, ${gib} GiB):`, '')
      out.push(`| Protocol | Operation | Wall ÷ fastest alternative's (≤ ${GOAL_WALL_VS_FASTEST}) | ` +
        `CPU / primitives (≤ ${GOAL_CPU_VS_PRIMITIVES}) | Peak RSS (< ${GOAL_PEAK_RSS_MIB} MiB) |`)
      out.push('|---|---|---|---|---|')
      out.push(...goals, '')
    }
  }
  if (sizes.length > 1) {
    out.push('### Peak RSS (MiB) by image size', '')
    out.push(`| Tool | Protocol | Operation | ${sizes.map((s) => `${s} GiB`).join(' | ')} |`)
    out.push(`|---|---|---|${sizes.map(() => '---:').join('|')}|`)
    for (const tool of tools) {
      for (const proto of protos) {
        for (const op of ['backup', 'restore'] as const) {
          const cells = sizes.map((gib) => {
            const r = rows.find((x) => x.gib === gib && x.proto === proto && x.tool === tool && x.op === op)
            return r ? f(r.maxRssKiB / 1024, 0) : '-'
          })
          if (cells.some((c) => c !== '-')) out.push(`| ${label(tool)} | ${proto} | ${op} | ${cells.join(' | ')} |`)
        }
      }
    }
    out.push('')
  }
  // Someone else's CPU use during a measurement (more than a tenth of a core on average) makes
  // that row suspect: say so rather than let it pass as the tool's own result.
  const busy = rows.filter((r) => r.otherCpu > Math.max(1, 0.1 * r.wall))
  for (const r of busy) {
    out.push(`- **Other load** during ${r.gib} GiB ${r.tool} ${r.op} over ${r.proto}: ${f(r.otherCpu)} CPU-s used by other processes ` +
      `(${f((100 * r.otherCpu) / r.wall, 0)} % of one core over ${f(r.wall)} s); treat that row with care.`)
  }
  if (busy.length) out.push('')
  return out.join('\n')
}

/** One line on ebs-worker's run from its --json results (the last line of each output). */
async function ebsNote(gib: string, proto: string, backupJson: string, restoreJson: string): Promise<string> {
  const last = async (path: string): Promise<Record<string, number>> =>
    JSON.parse((await readFile(path, 'utf8')).trim().split('\n').pop()!)
  const b = await last(backupJson)
  const r = await last(restoreJson)
  const mib = (n: number): string => f(n / MiB, 0)
  return `- ${gib} GiB, ${proto}, ebs-worker: backup ${f(b.durationMs! / 1000)} s by its own timer (${b.chunksTotal} chunks: ` +
    `${b.chunksNew} new, ${b.chunksZero} zero, ${b.chunksReused} reused; ${mib(b.bytesStored!)} MiB stored); restore ` +
    `${f(r.durationMs! / 1000)} s by its own timer (${mib(r.bytesFetched!)} MiB fetched in ${r.requests} requests, ` +
    `${r.zeroChunksSkipped} zero chunks skipped)\n`
}

const [cmd, ...args] = process.argv.slice(2)
if (cmd === 'image' && args.length === 2) {
  await writeImage(args[0]!, Number(args[1]))
} else if (cmd === 'parts' && args.length === 3) {
  await writeParts(args[0]!, args[1]!, args[2]!)
} else if (cmd === 'gcm' && (args[0] === 'seal' || args[0] === 'open')) {
  const out = args[1] === '--out'
  gcm(args[0], args.slice(out ? 2 : 1), out)
} else if (cmd === 'report' && args.length === 2) {
  process.stdout.write(report(parseRows(await readFile(args[0]!, 'utf8')), parsePrimitives(await readFile(args[1]!, 'utf8'))))
} else if (cmd === 'ebs-note' && args.length === 4) {
  process.stdout.write(await ebsNote(args[0]!, args[1]!, args[2]!, args[3]!))
} else {
  process.stderr.write('usage: bench-report.ts image PATH GIB | parts IMAGE RANDOM TEXT | gcm seal|open [--out] FILE... | ' +
    'report RESULTS.tsv PRIMITIVES.tsv | ebs-note GIB PROTOCOL BACKUP.json RESTORE.json\n')
  process.exit(2)
}
