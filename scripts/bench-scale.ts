// Helpers for scripts/bench-scale.sh (`npm run bench:scale`), run with the project's Node 24:
//
//   node scripts/bench-scale.ts runs URL KEYFILE FROM TO          index runs of a synthetic repository (part 1)
//   node scripts/bench-scale.ts image PATH MIB                    a small image of fresh data (part 1)
//   node scripts/bench-scale.ts strace LOG IMAGE REPO             start-up requests in an strace log (part 1)
//   node scripts/bench-scale.ts proxy PORT TARGET COUNTS          a counting HTTP proxy in front of S3 (part 1)
//   node scripts/bench-scale.ts sparse PATH SIZE [PACKED]         a sparse image holding ~1 GiB (part 2)
//   node scripts/bench-scale.ts profile FILE.cpuprofile           where a process's CPU time went (part 2)
//   node scripts/bench-scale.ts report DIR                        the Markdown report of a run
//
// and, in scripts/bench-scale-metadata.ts, the model of part 3. Every object they write goes
// through the repository's own modules (agent/repo): the runs are what a backup would have
// written, encoded and blob-encoded (compressed, encrypted) the same way.
import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import { createServer, request as httpRequest } from 'node:http'
import { open, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { appendFileSync } from 'node:fs'
import { join } from 'node:path'
import pLimit from 'p-limit'
import { openRepository } from '../agent/app/repository.ts'
import { AwsClients } from '../agent/aws/clients.ts'
import { awsSettings } from '../agent/aws/config.ts'
import { timestampedId } from '../agent/core/ids.ts'
import { encodeRun } from '../agent/repo/index-run.ts'
import { indexObject } from '../agent/repo/layout.ts'
import { openBackend } from '../agent/storage/open.ts'
import { newPackId } from '../agent/repo/pack.ts'
import type { BlobRef } from '../agent/repo/tree.ts'
import { between, changeModel, changeVolume, type ChangeModel, GiB, KiB, MiB, rng, simulate, TiB, writeVolume } from './bench-scale-metadata.ts'

const DAY = 86_400_000

// ---- part 1: a repository's index runs -------------------------------------------------------

/**
 * Where a backup's new chunks went: `count` entries as a backup of fresh data leaves them, in
 * packs of 16 MiB (stored blobs of 128 KiB–1 MiB: compressed chunks), with ids that are uniform
 * 256-bit values (SHA-256 or HMAC outputs). Returned sorted by id, as index runs are.
 */
export function syntheticEntries(count: number, r: () => number, blobMin = 128 * KiB, blobMax = MiB + 29): BlobRef[] {
  // Sorted uniform ids: sorted random 32-bit prefixes, then random bytes; encodeRun sorts again
  // (already in order, so cheaply) and the run's bytes are those of a real one.
  const prefixes = new Uint32Array(randomBytes(count * 4).buffer, 0, count).sort()
  const tails = randomBytes(count * 28)
  const refs: BlobRef[] = new Array(count)
  let pack = newPackId()
  let offset = 0
  // Blobs go into packs in the order they were written, not by id: shuffle the pack slots.
  const slots: Array<{ pack: string; offset: number; length: number }> = []
  for (let i = 0; i < count; i++) {
    const length = between(r, blobMin, blobMax)
    if (offset + length > 16 * MiB) {
      pack = newPackId()
      offset = 0
    }
    slots.push({ pack, offset, length })
    offset += length
  }
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1))
    const t = slots[i]!
    slots[i] = slots[j]!
    slots[j] = t
  }
  for (let i = 0; i < count; i++) {
    const id = Buffer.allocUnsafe(32)
    id.writeUInt32BE(prefixes[i]!, 0)
    tails.copy(id, 4, i * 28, i * 28 + 28)
    const s = slots[i]!
    refs[i] = { id, pack: s.pack, offset: s.offset, length: s.length, rawLength: MiB }
  }
  return refs
}

export interface RunPlan {
  /** Runs written in the last 30 days: the same at every size. */
  recentRuns: number
  /** Their entries, together. */
  recentEntries: number
  /** Entries of an older run (the size a backup consolidates its runs to). */
  oldRunEntries: number
  /** How far back the repository's history goes. */
  years: number
}

export function runPlan(env: NodeJS.ProcessEnv = process.env): RunPlan {
  const num = (name: string, def: number): number => {
    const v = env[name] ? Number(env[name]) : def
    if (!Number.isFinite(v) || v <= 0) throw new Error(`${name}: "${env[name]}" is not a positive number`)
    return v
  }
  return {
    recentRuns: Math.round(num('SCALE_RECENT_RUNS', 300)),
    recentEntries: Math.round(num('SCALE_RECENT_ENTRIES', 450_000)),
    oldRunEntries: Math.round(num('SCALE_OLD_RUN_ENTRIES', 65_536)),
    years: num('SCALE_YEARS', 3),
  }
}

/**
 * The sizes of the recent runs: a fixed sequence (seeded) of backups' run sizes, log-uniform
 * between 1/8 and 8 times the mean, scaled to add up to `recentEntries`.
 */
export function recentRunSizes(plan: RunPlan): number[] {
  const r = rng('recent-runs')
  const raw = Array.from({ length: plan.recentRuns }, () => Math.exp((r() * 2 - 1) * Math.log(8)))
  const sum = raw.reduce((a, b) => a + b, 0)
  const sizes = raw.map((x) => Math.max(1, Math.round((x / sum) * plan.recentEntries)))
  sizes[0]! += plan.recentEntries - sizes.reduce((a, b) => a + b, 0)
  return sizes
}

/**
 * Grows the repository at URL from `from` to `to` chunks in its index: from 0, the recent runs
 * first (names spread over the last 28 days); then older runs of `oldRunEntries` (names spread
 * over the years before the window). Prints what it wrote as JSON.
 */
async function writeRuns(url: string, keyFile: string, from: number, to: number): Promise<void> {
  const plan = runPlan()
  const aws = new AwsClients(awsSettings(process.env))
  const repo = await openRepository(url, { aws, keyFile: keyFile || undefined })
  const now = Date.now()
  const jobs: Array<{ name: string; count: number }> = []
  let total = from
  if (from === 0) {
    const sizes = recentRunSizes(plan)
    const r = rng('recent-times')
    for (const count of sizes) {
      jobs.push({ name: timestampedId('', new Date(now - 600_000 - r() * 28 * DAY)), count })
      total += count
    }
  }
  const r = rng(`old-times-${from}-${to}`)
  const oldest = now - plan.years * 365 * DAY
  const newest = now - 32 * DAY
  while (total < to) {
    const count = Math.min(plan.oldRunEntries, to - total)
    jobs.push({ name: timestampedId('', new Date(oldest + r() * (newest - oldest))), count })
    total += count
  }
  if (total !== to) throw new Error(`the recent runs alone hold ${total} entries, more than ${to}`)
  const started = performance.now()
  let bytes = 0
  const limit = pLimit(4)
  const entriesRng = rng(`entries-${from}-${to}`)
  await Promise.all(jobs.map((job) => limit(async () => {
    const blob = await repo.codec.encode('index', encodeRun(syntheticEntries(job.count, entriesRng), { sort: true }))
    await repo.backend.put(indexObject(job.name), blob)
    bytes += blob.length
  })))
  aws.destroy()
  console.log(JSON.stringify({ from, to, runs: jobs.length, bytes, seconds: (performance.now() - started) / 1000, plan }))
}


// ---- part 1: images, the repository's objects, and counting start-up requests --------------

/** An image of `mib` MiB of fresh random data (new chunks for any repository). */
async function writeImage(path: string, mib: number): Promise<void> {
  const h = await open(path, 'w')
  try {
    for (let i = 0; i < mib; i += 8) await h.write(randomBytes(Math.min(8, mib - i) * MiB))
  } finally {
    await h.close()
  }
}

/** The repository's objects, "name<TAB>size" a line (to remove later what a backup adds). */
async function listObjects(url: string, out: string): Promise<void> {
  const aws = new AwsClients(awsSettings(process.env))
  const backend = openBackend(url, { aws })
  const lines: string[] = []
  for await (const o of backend.list('')) lines.push(`${o.name}\t${o.size}`)
  aws.destroy()
  await writeFile(out, lines.sort().join('\n') + '\n')
}

/** Deletes the objects that are not in the list `before` (what a measured backup added). */
async function removeNew(url: string, before: string): Promise<void> {
  const keep = new Set((await readFile(before, 'utf8')).split('\n').map((l) => l.split('\t')[0]))
  const aws = new AwsClients(awsSettings(process.env))
  const backend = openBackend(url, { aws })
  const added: string[] = []
  for await (const o of backend.list('')) if (!keep.has(o.name)) added.push(o.name)
  const limit = pLimit(8)
  await Promise.all(added.map((name) => limit(() => backend.delete(name))))
  aws.destroy()
  console.log(JSON.stringify({ removed: added.length }))
}

/** Seconds since the epoch of an strace -ttt line, and the rest of it. */
function straceLine(line: string): { t: number; call: string } | null {
  const m = /^\d+\s+(\d+\.\d+)\s+(.*)$/.exec(line)
  return m ? { t: Number(m[1]), call: m[2]! } : null
}

/**
 * The first read of a chunk: the first pread64 on the image (strace -y names the fd's file), and
 * the process's start (its execve).
 */
function firstRead(lines: string[], image: string): { start: number; firstRead: number } {
  let start = NaN
  let first = NaN
  const onImage = `pread64(`
  for (const line of lines) {
    const l = straceLine(line)
    if (!l) continue
    // Node's own execve (under strace, /usr/bin/time may come first)
    if (Number.isNaN(start) && /^execve\("[^"]*\/node"/.test(l.call)) start = l.t
    if (l.call.startsWith(onImage) && l.call.includes(`<${image}>`)) {
      first = l.t
      break
    }
  }
  return { start, firstRead: first }
}

/** What the process did to the repository (a directory) before its first chunk read, from strace -f -y -ttt. */
async function countStrace(log: string, image: string, repo: string): Promise<void> {
  const lines = (await readFile(log, 'utf8')).split('\n')
  const { start, firstRead: first } = firstRead(lines, image)
  const areaOf = (path: string): string => {
    const rel = path.slice(repo.length + 1)
    return rel.includes('/') ? rel.slice(0, rel.indexOf('/') + 1) : rel
  }
  const opens: Record<string, number> = {}
  const stats: Record<string, number> = {}
  let listCalls = 0
  let listed = 0
  // When the listing of index/ began and ended, and when the last run was opened (for the phases).
  let listStart = NaN
  let listEnd = NaN
  let lastRun = NaN
  const index = `${repo}/index`
  for (const line of lines) {
    const l = straceLine(line)
    if (!l || l.t >= first) continue
    // openat(AT_FDCWD</cwd>, "/path", flags…) of an object (a directory opened to list it is not one)
    let m = /^openat\([^,]*, "([^"]+)", ([^,)]+)/.exec(l.call)
    if (m && m[1] === index && m[2]!.includes('O_DIRECTORY')) {
      if (Number.isNaN(listStart)) listStart = l.t
      continue
    }
    if (m && m[1]!.startsWith(repo + '/') && !m[2]!.includes('O_DIRECTORY') && !/= -1/.test(l.call)) {
      const area = areaOf(m[1]!)
      opens[area] = (opens[area] ?? 0) + 1
      if (area === 'index/') lastRun = l.t
      continue
    }
    // statx/newfstatat by name (the listing's per-object stat; fstat of an open file is AT_EMPTY_PATH)
    m = /^(?:statx|newfstatat)\([^,]*, "([^"]+)"/.exec(l.call)
    if (m && m[1]!.startsWith(repo + '/')) {
      const area = areaOf(m[1]!)
      stats[area] = (stats[area] ?? 0) + 1
      if (area === 'index/' && (Number.isNaN(listEnd) || l.t > listEnd)) listEnd = l.t
      continue
    }
    m = /^getdents64\(\d+<([^>]+)>, [^/]*\/\* (\d+) entries \*\//.exec(l.call)
    if (m && (m[1] === repo || m[1]!.startsWith(repo + '/'))) {
      listCalls++
      listed += Number(m[2])
      if (m[1] === index && (Number.isNaN(listEnd) || l.t > listEnd)) listEnd = l.t
    }
  }
  // Phases: the process until it lists index/ (Node, TypeScript, modules, config, SEEK_DATA), the
  // listing, then reading and decoding the window's runs and starting the writer.
  const phases = { toList: listStart - start, list: listEnd - listStart, window: first - listEnd }
  console.log(JSON.stringify({ startupSeconds: first - start, opens, stats, listCalls, listed, lastRunAt: lastRun - start, phases }))
}

/** Only the time to the first chunk read, from a light strace (-e trace=pread64,execve). */
async function startupOnly(log: string, image: string): Promise<void> {
  const { start, firstRead: first } = firstRead((await readFile(log, 'utf8')).split('\n'), image)
  console.log(JSON.stringify({ startupSeconds: first - start }))
}

/** A bucket on the test bed. */
async function makeBucket(name: string): Promise<void> {
  const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3')
  const s3 = new S3Client({ endpoint: process.env.AWS_ENDPOINT_URL_S3, forcePathStyle: true })
  await s3.send(new CreateBucketCommand({ Bucket: name }))
  s3.destroy()
}

/** S3 requests a process made before its first chunk read: the proxy's log and the process's strace. */
async function countProxy(log: string, strace: string, image: string): Promise<void> {
  const { start, firstRead: first } = firstRead((await readFile(strace, 'utf8')).split('\n'), image)
  const counts: Record<string, number> = {}
  let list = NaN
  for (const line of (await readFile(log, 'utf8')).split('\n')) {
    const [t, what] = line.split(' ')
    if (!t || !what || Number(t) < start || Number(t) >= first) continue
    counts[what] = (counts[what] ?? 0) + 1
    if (what === 'LIST:index/' && Number.isNaN(list)) list = Number(t)
  }
  // Phases: the process until it lists index/, then the listing, reading and decoding the window's runs.
  console.log(JSON.stringify({ startupSeconds: first - start, requests: counts, phases: { toList: list - start, window: first - list } }))
}

/**
 * An HTTP proxy that forwards every request to TARGET as it is (the signature stays valid: the
 * Host header is passed on) and logs "<epoch seconds> <METHOD>:<area>" per request, the area being
 * the key's first part under the repository's prefix (config, index/, packs/, backups/…), and
 * LIST:<area> for a listing. Listens on a free port, written to PORTFILE.
 */
function proxy(portFile: string, target: string, prefix: string, logPath: string): void {
  const upstream = new URL(target)
  const log: string[] = []
  const flush = (): void => {
    if (log.length) appendFileSync(logPath, log.splice(0).join('\n') + '\n')
  }
  setInterval(flush, 200).unref()
  const area = (key: string): string => {
    const rel = key.startsWith(prefix) ? key.slice(prefix.length) : key
    return rel.includes('/') ? rel.slice(0, rel.indexOf('/') + 1) : rel
  }
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    const key = url.pathname.split('/').slice(2).map(decodeURIComponent).join('/')  // path style: /bucket/key
    const what = url.searchParams.has('list-type') || (req.method === 'GET' && key === '' && url.searchParams.has('prefix'))
      ? `LIST:${area(url.searchParams.get('prefix') ?? '')}`
      : `${req.method}:${area(key)}`
    log.push(`${((performance.timeOrigin + performance.now()) / 1000).toFixed(6)} ${what}`)
    const fwd = httpRequest({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    fwd.on('error', (err) => res.destroy(err))
    req.pipe(fwd)
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, '127.0.0.1', () => {
    const address = server.address()
    void writeFile(portFile, String(typeof address === 'object' && address ? address.port : 0))
  })
  process.on('SIGTERM', () => {
    flush()
    process.exit(0)
  })
}

// ---- part 2: a 64 TiB sparse image ----------------------------------------------------------

/**
 * About 1 GiB in a dozen places of a `size`-byte volume, from its first MiB to its last, like
 * test/scale.test.ts: 11 regions of 88 MiB and 80 MiB at the end (1,048 MiB in all).
 */
export function sparseRegions(size: number): Array<{ offset: number; length: number }> {
  const fractions = [0, 1, 3, 7, 9, 16, 22, 31, 40, 47, 55, 63].map((x) => x / 64)
  return fractions.map((f, i) => i === 11
    ? { offset: size - 80 * MiB, length: 80 * MiB }
    : { offset: i === 0 ? 0 : Math.floor((f * size) / MiB) * MiB + (i * 37 + 5) * MiB, length: 88 * MiB })
}

/**
 * The sparse image: `size` bytes, data only in sparseRegions(size), each MiB half random and
 * half text (compressible and not; every chunk distinct). With `packed`, the same data written back to back
 * into a file of just its size (the control: the same work without the holes). The data is
 * seeded, so both files hold the same bytes.
 */
async function writeSparse(path: string, size: number, packed: boolean): Promise<void> {
  const regions = sparseRegions(size)
  const h = await open(path, 'w')
  try {
    await h.truncate(packed ? regions.reduce((n, r) => n + r.length, 0) : size)
    let at = 0
    for (const [k, r] of regions.entries()) {
      for (let done = 0; done < r.length; done += 8 * MiB) {
        const n = Math.min(8 * MiB, r.length - done)
        const data = Buffer.allocUnsafe(n)
        // Each MiB: half pseudo-random (seeded AES-CTR), half text naming it: every chunk distinct.
        for (let m = 0; m < n; m += MiB) {
          const seed = createHash('sha256').update(`region ${k} at ${done + m}`).digest()
          createCipheriv('aes-256-ctr', seed, Buffer.alloc(16)).update(Buffer.alloc(MiB / 2)).copy(data, m)
          data.fill(`ebs-worker bench-scale region ${k}, MiB ${(done + m) / MiB}; `, m + MiB / 2, m + MiB)
        }
        await h.write(data, 0, n, (packed ? at : r.offset) + done)
      }
      at += r.length
    }
  } finally {
    await h.close()
  }
}


async function sha256Range(path: string, offset: number, length: number): Promise<string> {
  const h = await open(path, 'r')
  const hash = createHash('sha256')
  const buf = Buffer.allocUnsafe(8 * MiB)
  try {
    for (let done = 0; done < length; ) {
      const { bytesRead } = await h.read(buf, 0, Math.min(buf.length, length - done), offset + done)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
      done += bytesRead
    }
  } finally {
    await h.close()
  }
  return hash.digest('hex')
}

/**
 * A restored image against its source: every data region identical (sparse), or the whole file
 * (packed); and what the restored file allocates on disk (a sparse restore: about the data).
 */
async function compareRestore(source: string, restored: string, size: number, kind: string): Promise<void> {
  const st = await stat(restored)
  const regions = kind === 'packed' ? [{ offset: 0, length: st.size }] : sparseRegions(size)
  let same = 0
  for (const r of regions) if ((await sha256Range(source, r.offset, r.length)) === (await sha256Range(restored, r.offset, r.length))) same++
  console.log(JSON.stringify({ regions: regions.length, regionsIdentical: same, restoredSize: st.size, restoredAllocated: st.blocks * 512 }))
}

/**
 * Where a process's main thread spent its time, from a V8 CPU profile (node --cpu-prof): self
 * time per function and per source file, idle, GC and (program) apart. Work on libuv's thread pool
 * (zstd, AES-GCM, reads and writes) does not show here: it is in the process's CPU time but not
 * on the main thread.
 */
async function summariseProfile(path: string): Promise<void> {
  interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }
  const p = JSON.parse(await readFile(path, 'utf8')) as { nodes: Node[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const self = new Map<number, number>()
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt)
  }
  const total = (p.endTime - p.startTime) / 1000
  const fns = new Map<string, number>()
  const files = new Map<string, number>()
  for (const [id, us] of self) {
    const f = byId.get(id)!.callFrame
    const file = f.url ? f.url.replace(/^file:\/\/.*?\/(agent|node_modules|scripts)\//, '$1/').replace(/^node:/, 'node:') : f.functionName
    const name = f.url ? `${f.functionName || '(anonymous)'} (${file}:${f.lineNumber + 1})` : f.functionName
    fns.set(name, (fns.get(name) ?? 0) + us / 1000)
    const group = file.startsWith('node_modules/') ? file.split('/').slice(0, file.split('/')[1]!.startsWith('@') ? 3 : 2).join('/') : file
    files.set(group, (files.get(group) ?? 0) + us / 1000)
  }
  const top = (m: Map<string, number>, n: number) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, ms]) => ({ what: k, ms: Math.round(ms) }))
  console.log(JSON.stringify({ totalMs: Math.round(total), functions: top(fns, 12), files: top(files, 12), all: top(fns, Infinity) }))
}

// ---- the report ---------------------------------------------------------------------------------

type Json = Record<string, any>

async function jsonLines(path: string): Promise<Json[]> {
  try {
    return (await readFile(path, 'utf8')).split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Json)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const fmt = (x: number, digits = 1): string => x.toFixed(digits)
const spread = (xs: number[], digits = 1): string =>
  xs.length > 1 ? `${fmt(median(xs), digits)} (${fmt(Math.min(...xs), digits)}–${fmt(Math.max(...xs), digits)})` : fmt(xs[0] ?? NaN, digits)
/** Bytes for people: B, KiB, MiB, GiB. */
function size(n: number): string {
  if (n < 10 * KiB) return `${Math.round(n)} B`
  if (n < MiB) return `${fmt(n / KiB)} KiB`
  if (n < GiB) return `${fmt(n / MiB)} MiB`
  return `${fmt(n / GiB, 2)} GiB`
}
const power = (n: number): string => {
  const e = Math.log10(n)
  return Number.isInteger(e) ? `10^${e}` : n.toLocaleString('en-US')
}
const table = (head: string[], align: string[], rows: string[][]): string =>
  [`| ${head.join(' | ')} |`, `|${align.map((a) => (a === 'r' ? '---:' : '---')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n')

function otherLoad(rows: Json[], what: (r: Json) => string): string[] {
  return rows.filter((r) => r.otherCpu / Math.max(r.wall, 0.01) > 0.1)
    .map((r) => `${what(r)}: ${fmt(r.otherCpu)} CPU-s by other processes (${Math.round((100 * r.otherCpu) / r.wall)} % of a core over ${fmt(r.wall)} s)`)
}

async function startupReport(dir: string): Promise<string[]> {
  const rows = await jsonLines(join(dir, 'startup.jsonl'))
  if (!rows.length) return []
  const plan = (rows.find((r) => r.kind === 'generate')?.plan ?? runPlan()) as RunPlan
  const all = [...new Set(rows.filter((r) => r.kind === 'count' && r.chunks > 0).map((r) => r.chunks as number))].sort((a, b) => a - b)
  const out: string[] = [`## 1. A backup task's start-up in repositories of ${all.map(power).join(', ')} chunks`, '']
  out.push(`Each repository: ${plan.recentRuns} index runs written in the last 30 days (${plan.recentEntries.toLocaleString('en-US')} entries, the same at every size), ` +
    `the rest in runs of ${plan.oldRunEntries.toLocaleString('en-US')} entries named over the ${plan.years} years before; a backup of ${rows.find((r) => r.cli)?.cli?.size / MiB} MiB ` +
    `of fresh data (${rows.find((r) => r.cli)?.cli?.chunksNew} new chunks) at the default settings (a dedup window of 1 Mi entries, 30 days).`, '')
  for (const backend of ['file', 's3']) {
    const sizes = [...new Set(rows.filter((r) => r.backend === backend && r.kind === 'count').map((r) => r.chunks as number))].sort((a, b) => a - b)
    if (!sizes.length) continue
    const timedOf = (n: number) => rows.filter((r) => r.backend === backend && r.kind === 'timed' && r.chunks === n)
    const countOf = (n: number) => rows.find((r) => r.backend === backend && r.kind === 'count' && r.chunks === n)!
    if (backend === 'file') {
      out.push('### file:// (counted with strace)', '')
      out.push(table(
        ['Chunks', 'Index runs', 'Index size', 'Objects read before the first chunk read', 'Listing index/: getdents64 calls (entries)', 'stat by name in index/',
          'Time to first chunk read s', 'Wall s', 'CPU s', 'Peak RSS MiB', 'Under strace: start → listing + listing + window s'],
        ['l', 'r', 'r', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
        sizes.map((n) => {
          const c = countOf(n)
          const t = timedOf(n)
          const opens = Object.entries(c.opens as Record<string, number>).map(([k, v]) => `${v} ${k}`).join(', ') || '0'
          const p = (c.phases ?? {}) as Json
          return [n ? power(n) : '0 (empty)', String(c.runs), size(c.indexBytes), opens, `${c.listCalls} (${c.listed})`, String(c.stats['index/'] ?? 0),
            spread(t.map((r) => r.startupSeconds), 2), spread(t.map((r) => r.wall), 2), spread(t.map((r) => r.user + r.sys), 2), spread(t.map((r) => r.maxRssKiB / 1024), 0),
            Number.isFinite(p.list) ? `${fmt(p.toList, 2)} + ${fmt(p.list, 3)} + ${fmt(p.window, 2)}` : `${fmt(c.startupSeconds, 2)} (no index)`]
        })))
    } else {
      out.push('', '### S3 (the test bed, counted by a proxy)', '')
      const kinds = [...new Set(sizes.flatMap((n) => Object.keys(countOf(n).requests as object)))].sort()
      out.push(table(
        ['Chunks', 'Index runs', 'Index size', ...kinds.map((k) => `${k.replace(':', ' ')} requests`), 'Time to first chunk read s', 'Wall s', 'CPU s', 'Peak RSS MiB',
          'Through the proxy: start → LIST + LIST → first read s'],
        ['l', 'r', 'r', ...kinds.map(() => 'r'), 'r', 'r', 'r', 'r', 'r'],
        sizes.map((n) => {
          const c = countOf(n)
          const t = timedOf(n)
          const p = (c.phases ?? {}) as Json
          return [n ? power(n) : '0 (empty)', String(c.runs), size(c.indexBytes), ...kinds.map((k) => String(c.requests[k] ?? 0)),
            spread(t.map((r) => r.startupSeconds), 2), spread(t.map((r) => r.wall), 2), spread(t.map((r) => r.user + r.sys), 2), spread(t.map((r) => r.maxRssKiB / 1024), 0),
            `${fmt(p.toList, 2)} + ${fmt(p.window, 2)}`]
        })))
    }
  }
  const gen = rows.filter((r) => r.kind === 'generate')
  const timed = rows.filter((r) => r.kind === 'timed')
  const perSize = timed.filter((r) => r.backend === timed[0]?.backend && r.chunks === timed[0]?.chunks).length
  out.push('', `Timed columns: median (min–max) of ${perSize} backups per size, each with a cold page cache, under \`strace -e trace=pread64,execve\` ` +
    '(for the time from the process\'s start to its first chunk read); CPU is the process\'s user + sys. The counting run is a backup of its own (the heavy strace, ' +
    `or the proxy, slows it). Generating the runs: ${gen.map((g) => `${g.backend} ${power(g.to)}: ${g.runs} runs, ${size(g.bytes)} in ${fmt(g.seconds, 0)} s`).join('; ')}.`)
  const loaded = otherLoad(rows.filter((r) => r.kind === 'timed'), (r) => `${r.backend} ${power(r.chunks)}`)
  if (loaded.length) out.push('', `Other load during ${loaded.length} of ${rows.filter((r) => r.kind === 'timed').length} timed backups (the largest: ${loaded.sort((a, b) => b.length - a.length)[0]}).`)
  return out
}

/** Main-thread profile, grouped: what each group's self time is. */
function profileGroups(p: Json): Record<string, number> {
  const groups: Record<string, number> = {}
  const add = (g: string, ms: number): void => {
    groups[g] = (groups[g] ?? 0) + ms
  }
  for (const { what, ms } of p.all as Array<{ what: string; ms: number }>) {
    if (what === '(idle)') add('idle (waiting for I/O or the thread pool)', ms)
    else if (what === '(garbage collector)') add('garbage collection', ms)
    else if (/crypto\/hash|createHash|createHmac/.test(what)) add('chunk ids (SHA-256 / HMAC)', ms)
    else if (/crypto\/(cipher|keys)|Cipher/.test(what)) add('AES-GCM', ms)
    else if (/node:zlib|repo\/zstd/.test(what)) add('zstd (main-thread part)', ms)
    else if (/amaro|wasm:|node:internal\/(modules|bootstrap|deps\/undici)|compileSourceTextModule|internalModuleStat|readPackageJSON|^Module$|internalBinding|getCLIOptionsFromBinding|node_modules\/(zod|@aws-sdk|@smithy|commander|cli-progress)/.test(what)) {
      add('start-up (TypeScript stripping, loading modules)', ms)
    } else if (/node:buffer|node:internal\/buffer/.test(what)) add('buffer copies and allocation', ms)
    else if (/child_process|^spawn/.test(what)) add('python3 for SEEK_DATA (spawn)', ms)
    else if (/^(read|writeBuffer|writeBuffers|writeString|open|openFileHandle|close|fdatasync|fsync|fstat|lstat|stat|readFileUtf8|ftruncate|mkdir|writeSync|rename|link|unlink)$|node:internal\/fs\//.test(what)) {
      add('file system calls', ms)
    }
    else if (/agent\/repo\/(tree|backup-writer|chunk-list|chunk-reader)|agent\/core\/plan|agent\/pipeline/.test(what)) add('chunk list and plan (tree.ts, plan.ts, pipeline)', ms)
    else add('other', ms)
  }
  return groups
}

async function sparseReport(dir: string): Promise<string[]> {
  const rows = await jsonLines(join(dir, 'sparse.jsonl'))
  if (!rows.length) return []
  const tib = (rows.find((r) => r.volume === 'sparse')?.cli?.size ?? 0) / TiB
  const out: string[] = [`## 2. A ${tib} TiB sparse volume holding 1 GiB`, '']
  const result = (r: Json): string => {
    const c = r.cli
    if (r.op === 'backup') return `read ${size(c.bytesRead)}, ${c.chunksNew} new chunks (${c.chunksZero.toLocaleString('en-US')} zero), stored ${size(c.bytesStored)} + ${size(c.bytesMetadata)} of chunk list`
    if (r.op === 'restore') {
      return `wrote ${size(c.bytesWritten)} in a ${size(r.restoredSize)} file allocating ${size(r.restoredAllocated)}; ${r.regionsIdentical}/${r.regions} regions identical${r.regionsIdentical === r.regions ? '' : ' — MISMATCH'}; ${c.requests} GETs`
    }
    return `${c.chunksVerified} chunks verified, ${c.requests} GETs`
  }
  const groups = [...new Set(rows.map((r) => `${r.volume} ${r.op}`))].map((k) => rows.filter((r) => `${r.volume} ${r.op}` === k))
  out.push(table(['Volume', 'Operation', 'Wall s', 'CPU s (user + sys)', 'Its own timer s', 'Before its timer s', 'Peak RSS MiB', 'Result (first run)'],
    ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'l'],
    groups.map((g) => {
      const r = g[0]!
      const bad = g.filter((x) => x.op === 'restore' && x.regionsIdentical !== x.regions).length
      return [r.volume === 'sparse' ? `${tib} TiB sparse` : 'the same 1 GiB, packed', r.op, spread(g.map((x) => x.wall)), spread(g.map((x) => x.user + x.sys)),
        spread(g.map((x) => x.cli.durationMs / 1000)), spread(g.map((x) => x.wall - x.cli.durationMs / 1000)), spread(g.map((x) => x.maxRssKiB / 1024), 0),
        result(r) + (bad ? ` — ${bad} of ${g.length} restores DIFFER` : '')]
    })))
  out.push('', `Median (min–max) of ${groups[0]!.length} runs each, every one with a cold page cache and a fresh repository on the same XFS.`)
  out.push('', '"Its own timer": the durationMs the command reports; "before its timer": wall time before it (Node\'s start, TypeScript stripping, loading modules, opening the repository).')
  const loaded = otherLoad(rows, (r) => `${r.volume} ${r.op}`)
  if (loaded.length) out.push('', ...loaded.map((l) => `- Other load: ${l}.`))
  const profiles = await jsonLines(join(dir, 'profiles.jsonl'))
  if (profiles.length) {
    const groups = profiles.map((p) => ({ p, g: profileGroups(p) }))
    const names = [...new Set(groups.flatMap(({ g }) => Object.keys(g)))].sort((a, b) =>
      groups.reduce((n, { g }) => n + (g[b] ?? 0), 0) - groups.reduce((n, { g }) => n + (g[a] ?? 0), 0))
    out.push('', 'Where the main thread\'s time goes (one run each under `node --cpu-prof`, seconds of self time; zstd and AES-GCM of packs run partly on libuv\'s thread pool, which this does not show):', '')
    out.push(table(['', ...groups.map(({ p }) => `${p.volume === 'sparse' ? `${tib} TiB` : 'packed'} ${p.op}`)], ['l', ...groups.map(() => 'r')],
      [...names.map((n) => [n, ...groups.map(({ g }) => fmt((g[n] ?? 0) / 1000, 2))]),
        ['**profile length**', ...groups.map(({ p }) => fmt(p.totalMs / 1000, 2))]]))
    const agentTop = profiles.filter((p) => p.volume === 'sparse').map((p) => `${p.op}: ${(p.all as Array<{ what: string; ms: number }>).filter((f) => f.what.includes('agent/')).slice(0, 3).map((f) => `${f.what} ${f.ms} ms`).join(', ')}`)
    out.push('', `The agent's own functions that cost most on the ${tib} TiB volume: ${agentTop.join('; ')}.`)
  }
  return out
}

async function metadataReport(dir: string): Promise<string[]> {
  const lines = await jsonLines(join(dir, 'meta-main.jsonl'))
  const main = lines.filter((r) => r.model === undefined)
  if (!main.length) return []
  const m = (lines.find((r) => r.model)?.model ?? changeModel()) as ChangeModel
  const full = main[0]!
  const days = main.slice(1)
  const volume = full.bytesChanged as number
  const out: string[] = [`## 3. Metadata of a year of daily incrementals: a ${size(volume)} volume, ${m.fraction * 100} % changing a day`, '']
  const sum = (xs: Json[], f: (r: Json) => number): number => xs.reduce((n, r) => n + f(r), 0)
  const cols: Array<[string, (r: Json) => number]> = [
    ['v1 manifest', (r) => r.v1.manifest], ['v1 index', (r) => r.v1.index], ['**v1 total**', (r) => r.v1.total],
    ['v2 chunk-list nodes', (r) => r.v2.tree], ['v2 manifest', (r) => r.v2.manifest], ['v2 index runs', (r) => r.v2.index], ['**v2 total**', (r) => r.v2.total],
  ]
  const row = (label: string, xs: Json[], agg: 'one' | 'median' | 'sum'): string[] => [label, ...cols.map(([, f]) => {
    const v = agg === 'median' ? median(xs.map(f)) : sum(xs, f)
    return agg === 'median' ? `${size(v)} (${size(Math.min(...xs.map(f)))}–${size(Math.max(...xs.map(f)))})` : size(v)
  }), fmt(agg === 'median' ? median(xs.map((r) => r.v1.total / r.v2.total)) : sum(xs, (r) => r.v1.total) / sum(xs, (r) => r.v2.total))]
  out.push(table(['', ...cols.map(([c]) => c), 'v1 / v2'], ['l', ...cols.map(() => 'r'), 'r'], [
    row('full backup (day 0)', [full], 'one'),
    row(`an incremental, median (min–max) of ${days.length}`, days, 'median'),
    row(`${days.length} incrementals`, days, 'sum'),
    row(`the year: full + ${days.length} incrementals`, main, 'sum'),
  ]))
  out.push('', `A day changes ${spread(days.map((d) => d.chunksChanged), 0)} chunks (${size(median(days.map((d) => d.bytesChanged)))} in extents of ` +
    `${m.minExtent / MiB}–${m.maxExtent / MiB} MiB), and version 2 writes ${spread(days.map((d) => d.leavesWritten), 0)} leaves of ${Math.ceil(volume / MiB / 128)} ` +
    `and ${spread(days.map((d) => d.nodesWritten), 0)} inner nodes.`)

  const sweeps: Array<{ f: number; days: Json[] }> = [{ f: m.fraction, days }]
  for (const file of (await readdir(dir)).filter((f) => /^meta-sweep-.*\.jsonl$/.test(f))) {
    const rows = (await jsonLines(join(dir, file))).filter((r) => r.model === undefined)
    if (rows.length) sweeps.push({ f: Number(file.slice('meta-sweep-'.length, -'.jsonl'.length)), days: rows.slice(1) })
  }
  sweeps.sort((a, b) => a.f - b.f)
  if (sweeps.length > 1) {
    out.push('', 'Proportional to the change? The same volume with other daily change shares (medians over the days modelled):', '')
    out.push(table(['Changed a day', 'Days', 'Chunks changed', 'Leaves written', 'v2 total a day', 'v2 per GiB changed', 'v1 total a day', 'v1 per GiB changed'],
      ['r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
      sweeps.map(({ f, days: d }) => {
        const gib = median(d.map((r) => r.bytesChanged)) / GiB
        return [`${f * 100} %`, String(d.length), fmt(median(d.map((r) => r.chunksChanged)), 0), fmt(median(d.map((r) => r.leavesWritten)), 0),
          size(median(d.map((r) => r.v2.total))), size(median(d.map((r) => r.v2.total)) / gib), size(median(d.map((r) => r.v1.total))), size(median(d.map((r) => r.v1.total)) / gib)]
      })))
  }

  const real = await jsonLines(join(dir, 'validate-real.jsonl'))
  const sim = (await jsonLines(join(dir, 'validate-sim.jsonl'))).filter((r) => r.model === undefined)
  if (real.length && sim.length) {
    const vsize = sim[0]!.bytesChanged as number
    const hasV1 = real.some((r) => r.version === 1)
    out.push('', `Validation: real backups of a ${size(vsize)} volume full of data (each chunk 128 KiB–1 MiB of random bytes, then zeros), changed by the model's extents ` +
      `and backed up with \`--changed-ranges\`; version 2 by this code, ${hasV1 ? `version 1 by revision ${await readFile(join(dir, 'v1-rev'), 'utf8').then((s) => s.trim()).catch(() => '?')} (the last that wrote it)` : 'version 1 not run'}. ` +
      'Real: the CLI\'s bytesMetadata (tree packs), the manifest object and the new index objects; model: the same figures from the model for this volume.', '')
    const pct = (a: number, b: number): string => `${a >= b ? '+' : ''}${fmt((100 * (a - b)) / b, 1)} %`
    out.push(table(['Day', 'v2 real: nodes + manifest + index', 'v2 model', 'model vs real', ...(hasV1 ? ['v1 real: manifest + index', 'v1 model', 'model vs real'] : [])],
      ['r', 'r', 'r', 'r', ...(hasV1 ? ['r', 'r', 'r'] : [])],
      sim.map((s) => {
        const r2 = real.find((r) => r.version === 2 && r.day === s.day)
        const r1 = real.find((r) => r.version === 1 && r.day === s.day)
        const t2 = r2 ? r2.tree + r2.manifest + r2.index : NaN
        const t1 = r1 ? r1.manifest + r1.index : NaN
        return [String(s.day), r2 ? `${size(r2.tree)} + ${r2.manifest} B + ${size(r2.index)} = ${size(t2)}` : '–', `${size(s.v2.tree)} + ${s.v2.manifest} B + ${size(s.v2.index)} = ${size(s.v2.total)}`, r2 ? pct(s.v2.total, t2) : '–',
          ...(hasV1 ? [r1 ? `${size(r1.manifest)} + ${size(r1.index)} = ${size(t1)}` : '–', `${size(s.v1.manifest)} + ${size(s.v1.index)} = ${size(s.v1.total)}`, r1 ? pct(s.v1.total, t1) : '–'] : [])]
      })))
  }
  return out
}

async function report(dir: string): Promise<void> {
  const parts = [await startupReport(dir), await sparseReport(dir), await metadataReport(dir)].filter((p) => p.length)
  console.log(parts.map((p) => p.join('\n')).join('\n\n'))
}

// ---- main ---------------------------------------------------------------------------------------

async function main(argv: string[]): Promise<void> {
  const [cmd, ...args] = argv
  switch (cmd) {
    case 'runs':
      return writeRuns(args[0]!, args[1]!, Number(args[2]), Number(args[3]))
    case 'image':
      return writeImage(args[0]!, Number(args[1]))
    case 'objects':
      return listObjects(args[0]!, args[1]!)
    case 'remove-new':
      return removeNew(args[0]!, args[1]!)
    case 'strace':
      return countStrace(args[0]!, args[1]!, args[2]!)
    case 'startup':
      return startupOnly(args[0]!, args[1]!)
    case 'bucket':
      return makeBucket(args[0]!)
    case 'compare':
      return compareRestore(args[0]!, args[1]!, Number(args[2]), args[3]!)
    case 'proxy-count':
      return countProxy(args[0]!, args[1]!, args[2]!)
    case 'sparse':
      return writeSparse(args[0]!, Number(args[1]), args[2] === 'packed')
    case 'sim':
      return simulate(Number(args[0]), Number(args[1]), { encrypted: args[2] === '1', dir: args[3]! })
    case 'volume':
      return writeVolume(args[0]!, Number(args[1]), MiB)
    case 'change':
      return changeVolume(args[0]!, Number(args[1]), args[2]!, MiB)
    case 'report':
      return report(args[0]!)
    case 'profile':
      return summariseProfile(args[0]!)
    case 'proxy':
      return proxy(args[0]!, args[1]!, args[2]!, args[3]!)
    default:
      throw new Error(`unknown command ${cmd ?? ''}`)
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err))
    process.exit(1)
  })
}
