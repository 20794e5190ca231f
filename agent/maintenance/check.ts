// `ebs-worker check`: is the repository whole? The structure always — the config, every manifest
// (it decodes, its checksum holds), every node of every chunk list (it decodes, is at its level,
// holds what its place needs and hashes to the id that names it), every reference of every backup
// (it points into a pack that exists, or one whose moved record forwards it, and agrees with that
// pack's trailer: same id, offset, length and plaintext length, a node in a tree pack and a chunk
// in a data pack), every entry of every index run (the same, against the trailer), every pack
// trailer (it decodes and describes the pack's bytes exactly); with --read-data (or a subset of
// the packs) every blob of the packs read, decrypted, decompressed and re-hashed.
//
// Memory is bounded as in prune (liveness.ts): the trees are walked and every reference, with
// its id, plaintext length and the backup that reached it, goes to detailed spill files, as do
// the index runs' entries; they come back grouped pack by pack, in pack id order, and each pack
// is checked against its trailer alone, its folder of packs/ listed alongside. Damage (what a
// restore or a backup would trip over) makes the check fail; what is merely left over (packs no
// one refers to, stale locks, condemned and moved records prune has still to carry out) is told
// as information: prune's job.
import { randomInt } from 'node:crypto'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { BACKUP_ID_PATTERN } from '../core/ids.ts'
import pLimit from 'p-limit'
import { decodeBufferSize } from '../repo/codec.ts'
import { codecThreadCount, sharedBuffer } from '../repo/codec-threads.ts'
import { decodeRun, isRun } from '../repo/index-run.ts'
import { BACKUPS, CONDEMNED, INDEXES, MOVED, PACKS } from '../repo/layout.ts'
import { listLocks } from '../repo/locks.ts'
import type { Repository } from '../repo/repository.ts'
import { decodeNode, isZeroRef, rootLevel, sameRef, TreeCursor, validateShape, type BlobRef } from '../repo/tree.ts'
import { manifestRoot, RUN_SOURCE, Spill, walkLiveness, type LiveBlob, type PackLive, type Root } from './liveness.ts'
import { checkpointsAsRoots } from './prune.ts'

/** Which packs --read-data reads: all, the n-th of `of` groups by pack id, or a random share. */
export type ReadDataSubset = { kind: 'all' } | { kind: 'part'; n: number; of: number } | { kind: 'percent'; percent: number }

export interface CheckOptions {
  readData?: ReadDataSubset | null
  /** Packs checked at once (each: its trailer, and with read-data its blobs, 16 MiB at a time). */
  concurrency?: number
  onProgress?: (p: CheckProgress) => void
  signal?: AbortSignal
}

export interface CheckProgress {
  phase: 'manifests' | 'walk' | 'runs' | 'packs'
  done: number
  total: number
}

export type ProblemKind =
  | 'config' | 'manifest' | 'checkpoint' | 'node' | 'pack' | 'trailer' | 'reference' | 'moved' | 'run' | 'index' | 'blob'
  | 'unreferenced' | 'lock' | 'condemned'

/** One thing found, named by what it is in: backups (or checkpoints), pack and offset, run or object. */
export interface Problem {
  /** Damage fails the check; information does not (what prune clears away, or what a crash left). */
  severity: 'damage' | 'info'
  kind: ProblemKind
  message: string
  /** The backups whose chunk lists reach it (the first few; later backups of the same volume that share the subtree too). */
  backups?: string[]
  pack?: string
  offset?: number
  run?: string
  object?: string
}

export interface CheckResult {
  healthy: boolean
  /** Problems found, by severity (the list holds the first MAX_LISTED of each). */
  damage: number
  info: number
  problems: Problem[]
  backups: number
  checkpoints: number
  nodes: number
  references: number
  runs: number
  packs: { total: number; bytes: number; unreferenced: number; unreferencedBytes: number; read: number; bytesRead: number; blobsRead: number }
  readData: string
  durationMs: number
}

const MAX_LISTED = 1000
/** Backups named per problem at most. */
const MAX_NAMED = 20
/** Bytes read from a pack at once with --read-data (blobs are contiguous: one ranged GET). */
const READ_RANGE = 16 * 1024 * 1024
/** Folders of packs/ listed ahead of the one being checked. */
const LIST_AHEAD = 8
const TAIL = 12 // u32 trailer length | "EBWPACK1"
/** Errors that say the data is damaged, not that the storage could not be reached. */
const DAMAGE_CODES: ReadonlySet<string> = new Set([ErrorCode.ChunkCorrupt, ErrorCode.ChunkMissing, ErrorCode.ChecksumMismatch, ErrorCode.RepoFormat, ErrorCode.RepoVersion])

function isDamage(err: unknown): boolean {
  return err instanceof EbsWorkerError && DAMAGE_CODES.has(err.code)
}

/** `--read-data-subset`: "N/M" (the N-th of M groups of packs, by pack id) or "P%" (a random share). */
export function parseSubset(text: string): ReadDataSubset {
  const part = /^(\d+)\/(\d+)$/.exec(text.trim())
  if (part) {
    const n = Number(part[1])
    const of = Number(part[2])
    if (of >= 1 && n >= 1 && n <= of && of <= 2 ** 32) return { kind: 'part', n, of }
  }
  const percent = /^(\d+(?:\.\d+)?)%?$/.exec(text.trim())
  if (percent && !part) {
    const p = Number(percent[1])
    if (p > 0 && p <= 100) return { kind: 'percent', percent: p }
  }
  throw new EbsWorkerError(ErrorCode.BadInput, `"${text}" is not a subset of packs: N/M (the N-th of M groups, 1 ≤ N ≤ M) or a percentage (like 10%)`)
}

function describeSubset(s: ReadDataSubset | null | undefined): string {
  if (!s) return 'none'
  return s.kind === 'all' ? 'all' : s.kind === 'part' ? `${s.n}/${s.of}` : `${s.percent}%`
}

/** Whether --read-data reads pack `pack`: groups by the pack id's first 32 bits, as restic's n/t. */
export function selected(s: ReadDataSubset | null | undefined, pack: string): boolean {
  if (!s) return false
  if (s.kind === 'all') return true
  if (s.kind === 'part') return parseInt(pack.slice(0, 8), 16) % s.of === s.n - 1
  return randomInt(0, 1_000_000) < s.percent * 10_000
}

/** What was found, the first MAX_LISTED of each severity in full, the rest counted. */
class Report {
  readonly problems: Problem[] = []
  damage = 0
  info = 0

  add(p: Problem): void {
    const listed = p.severity === 'damage' ? this.damage++ : this.info++
    if (listed < MAX_LISTED) this.problems.push(p)
  }
}

export async function check(repo: Repository, o: CheckOptions = {}): Promise<CheckResult> {
  const started = performance.now()
  if (repo.version !== 2) {
    throw new EbsWorkerError(ErrorCode.RepoVersion,
      `repository ${repo.url} is of format version ${repo.version}: check reads version 2. Upgrade it in place with "ebs-worker migrate --repo ${repo.url}" (verify checks a version 1 backup meanwhile)`,
      { context: { repository: repo.url } })
  }
  const report = new Report()
  const result: CheckResult = {
    healthy: true, damage: 0, info: 0, problems: report.problems, backups: 0, checkpoints: 0, nodes: 0, references: 0, runs: 0,
    packs: { total: 0, bytes: 0, unreferenced: 0, unreferencedBytes: 0, read: 0, bytesRead: 0, blobsRead: 0 },
    readData: describeSubset(o.readData), durationMs: 0,
  }

  // Who else is at work: stale locks are left-overs; a running prune may delete packs as we look.
  for (const lock of await listLocks(repo)) {
    if (lock.stale) {
      report.add({ severity: 'info', kind: 'lock', object: lock.name,
        message: `lock ${lock.name} (${lock.kind} ${lock.id}, ${lock.host} pid ${lock.pid}) has not been refreshed since ${lock.modified.toISOString()}: its process died; it no longer counts` })
    }
  }
  const condemnedPacks = new Set<string>()
  const condemnedRuns = new Set<string>()
  try {
    for (const c of await repo.listCondemned()) {
      for (const p of c.packs) condemnedPacks.add(p)
      for (const r of c.runs) condemnedRuns.add(r)
      report.add({ severity: 'info', kind: 'condemned', object: `${CONDEMNED}${c.id}`,
        message: `prune ${c.id} condemned ${c.packs.length} packs, ${c.runs.length} index runs and ${c.moved.length} moved records that are not all deleted yet: the next prune finishes it` })
    }
  } catch (err) {
    if (!isDamage(err)) throw err
    report.add({ severity: 'damage', kind: 'condemned', object: CONDEMNED, message: `a condemned record cannot be read (prune stops on it): ${describe(err)}` })
  }
  const movedPacks = new Set((await repo.listObjects(MOVED)).map((obj) => obj.name.slice(MOVED.length)))

  // Manifests: each decodes, its checksum holds, its tree has a shape this repository's chunk lists can have.
  const roots: Root[] = []
  /** Who refers: each root's backup id (or checkpoint), each index run's name (RUN_SOURCE + its number). */
  const labels: string[] = []
  const runNames: string[] = []
  const backupIds = await repo.backupIds()
  for (const obj of await repo.listObjects(BACKUPS)) {
    const id = obj.name.slice(BACKUPS.length)
    if (!BACKUP_ID_PATTERN.test(id)) report.add({ severity: 'info', kind: 'manifest', object: obj.name, message: `${obj.name} is not named like a backup: nothing reads it` })
  }
  for (const [i, id] of backupIds.entries()) {
    o.signal?.throwIfAborted()
    o.onProgress?.({ phase: 'manifests', done: i, total: backupIds.length })
    let root: Root
    try {
      const m = await repo.loadManifest(id)
      if (m.version !== 2) {
        throw new EbsWorkerError(ErrorCode.RepoFormat, `backup ${id} has a version 1 manifest in a version 2 repository: its chunks are in no index a reader loads`)
      }
      if (m.chunkSize !== repo.chunkSize) throw new EbsWorkerError(ErrorCode.RepoFormat, `backup ${id} has chunks of ${m.chunkSize} bytes; the repository's are ${repo.chunkSize}`)
      root = manifestRoot(m)
      validateShape(root.shape)
    } catch (err) {
      if (isDamage(err)) {
        report.add({ severity: 'damage', kind: 'manifest', backups: [id], object: `${BACKUPS}${id}`, message: describe(err) })
        continue
      }
      if (err instanceof EbsWorkerError && err.code === ErrorCode.BackupNotFound) continue // forgotten since the listing
      throw err
    }
    roots.push(root)
    labels.push(id)
  }
  result.backups = roots.length
  // Checkpoints of unfinished backups: their work is referred to, as a backup's is.
  try {
    const fromCheckpoints = await checkpointsAsRoots(repo, (name, err) =>
      report.add({ severity: 'info', kind: 'checkpoint', object: name, message: `checkpoint ${name} cannot be read (its backup starts again from the beginning): ${describe(err)}` }))
    for (const r of fromCheckpoints) {
      try {
        validateShape(r.shape)
      } catch (err) {
        report.add({ severity: 'info', kind: 'checkpoint', object: r.group, message: `${r.group}: ${describe(err)} (its backup starts again from the beginning)` })
        continue
      }
      roots.push(r)
      labels.push(r.group)
    }
    result.checkpoints = fromCheckpoints.length
  } catch (err) {
    if (!isDamage(err)) throw err
    report.add({ severity: 'info', kind: 'checkpoint', object: 'checkpoints/', message: `a checkpoint cannot be read (its backup starts again from the beginning): ${describe(err)}` })
  }
  const sourceNames = (sources: readonly number[] | undefined): { backups?: string[]; runs: string[] } => {
    const distinct = [...new Set(sources ?? [])]
    const backups = distinct.filter((s) => s < RUN_SOURCE).map((s) => labels[s]!)
    return { ...(backups.length ? { backups } : {}), runs: distinct.filter((s) => s >= RUN_SOURCE).map((s) => runNames[s - RUN_SOURCE]!) }
  }

  // --read-data: ranges read into shared buffers (one per pack being read), decoded on the codec
  // threads, two chunks per thread in flight (as a restore).
  const rangeBuffers: Buffer[] = []
  const plainBuffers: Buffer[] = []
  const decoding = pLimit(Math.max(2, 2 * codecThreadCount()))
  const spill = await Spill.open(true)
  try {
    // The trees: every node read and proven; every reference spilled with where it came from.
    const live = await walkLiveness(repo, roots, movedPacks, (done, total) => o.onProgress?.({ phase: 'walk', done, total }), {
      spill,
      onError: (err, at) => {
        if (!isDamage(err)) throw err
        const backups = [labels[at.root]!]
        if (at.level === null) {
          report.add({ severity: 'damage', kind: 'moved', backups, pack: at.ref.pack, offset: at.ref.offset, message: `pack ${at.ref.pack} was repacked, and its moved record cannot be read: ${describe(err)}` })
        } else if (!(err instanceof EbsWorkerError && err.code === ErrorCode.ChunkMissing)) {
          // (A node in a pack that is gone is told with its pack, below.)
          report.add({ severity: 'damage', kind: 'node', backups, pack: at.ref.pack, offset: at.ref.offset, message: describe(err) })
        }
      },
    })
    result.nodes = live.nodesRead
    result.references = live.refs
    for (const pack of movedPacks) {
      if (!live.movedNeeded.has(pack)) report.add({ severity: 'info', kind: 'moved', pack, object: `${MOVED}${pack}`, message: `the moved record of pack ${pack} is needed by no backup: prune deletes it` })
    }

    // The index runs: every entry spilled, to be held against its pack's trailer.
    const runObjects = await repo.listObjects(INDEXES)
    for (const [i, obj] of runObjects.entries()) {
      o.signal?.throwIfAborted()
      o.onProgress?.({ phase: 'runs', done: i, total: runObjects.length })
      const name = obj.name.slice(INDEXES.length)
      let plain: Buffer | null
      try {
        plain = await repo.readIndexObject(obj.name)
        if (!plain) continue
        if (!isRun(plain)) {
          report.add({ severity: 'info', kind: 'index', object: obj.name, run: name, message: `${obj.name} is a version 1 index, which nothing reads in a version 2 repository` })
          continue
        }
        const run = decodeRun(plain, obj.name)
        const source = RUN_SOURCE + runNames.length
        runNames.push(name)
        for (const e of run.entries) await spill.add(e, run.tree, source)
      } catch (err) {
        if (!isDamage(err)) throw err
        report.add({ severity: 'damage', kind: 'index', object: obj.name, run: name, message: `${describe(err)} (backups that load their dedup window fail on it)` })
      }
    }
    result.runs = runNames.length

    // Pack by pack, a folder of packs/ at a time. The listings of the next folders are asked for
    // while this one's packs are checked: one LIST after the other cost a round trip per folder
    // (256 of them: 13 s against the test bed, for any repository, even an empty one).
    const groups = spill.packs()
    let next = await groups.next()
    const pool = new Pool(o.concurrency ?? 8)
    const listing = (folder: number) => {
      const listed = repo.listObjects(`${PACKS}${folder.toString(16).padStart(2, '0')}/`)
      listed.catch(() => {}) // awaited in its turn; not an unhandled rejection before that
      return listed
    }
    const ahead = Array.from({ length: LIST_AHEAD }, (_, folder) => listing(folder))
    for (let folder = 0; folder < 256; folder++) {
      o.signal?.throwIfAborted()
      o.onProgress?.({ phase: 'packs', done: folder, total: 256 })
      const hex = folder.toString(16).padStart(2, '0')
      const objects = await ahead.shift()!
      if (folder + LIST_AHEAD < 256) ahead.push(listing(folder + LIST_AHEAD))
      const listed = new Map(objects.map((obj) => [obj.name.slice(PACKS.length + 3), obj.size]))
      for (const size of listed.values()) {
        result.packs.total++
        result.packs.bytes += size
      }
      while (!next.done && next.value.pack.startsWith(hex)) {
        const group = next.value
        const size = listed.get(group.pack)
        listed.delete(group.pack)
        if (size === undefined) missingPack(group)
        else await pool.run(() => checkPack(group.pack, size, group))
        next = await groups.next()
      }
      for (const [pack, size] of listed) {
        result.packs.unreferenced++
        result.packs.unreferencedBytes += size
        report.add({ severity: 'info', kind: 'unreferenced', pack, message: `pack ${pack} (${size} bytes) is referred to by no backup and no index run: prune deletes it` })
        if (selected(o.readData, pack)) await pool.run(() => checkPack(pack, size, null))
      }
    }
    await pool.drain()
  } finally {
    await spill.close()
  }

  await nameAffected(repo, roots, labels, movedPacks, report.problems)
  await forgiveVanished(repo, report)
  result.damage = report.damage
  result.info = report.info
  result.healthy = report.damage === 0
  result.durationMs = Math.round(performance.now() - started)
  return result

  /** Referred to, and not there: gone (or forwarded by a moved record that does not hold the blob). */
  function missingPack(group: PackLive): void {
    const fromBackups = group.blobs.filter((b) => b.sources!.some((s) => s < RUN_SOURCE))
    if (fromBackups.length) {
      const { backups } = sourceNames(fromBackups.flatMap((b) => b.sources!).slice(0, 8))
      const first = fromBackups[0]!.offset
      const why = movedPacks.has(group.pack)
        ? `pack ${group.pack} was repacked and is gone, and its moved record does not forward ${fromBackups.length} of the blobs backups refer to (the first at offset ${first})`
        : `pack ${group.pack} is missing: ${fromBackups.length} blobs that backups refer to were in it (the first at offset ${first})`
      report.add({ severity: 'damage', kind: movedPacks.has(group.pack) ? 'moved' : 'pack', ...(backups ? { backups } : {}), pack: group.pack, offset: first, message: why })
    }
    // Index runs that point at it: harmless once prune has condemned it (no backup dedups against it).
    const byRun = new Map<string, LiveBlob>()
    for (const b of group.blobs) for (const run of sourceNames(b.sources).runs) if (!byRun.has(run)) byRun.set(run, b)
    for (const [run, b] of byRun) {
      const condemned = condemnedPacks.has(group.pack) || condemnedRuns.has(run)
      report.add({ severity: condemned ? 'info' : 'damage', kind: 'run', run, pack: group.pack, offset: b.offset,
        message: `index run ${run} points at pack ${group.pack}, which does not exist` +
          (condemned ? ': prune condemned it and deletes the run' : ' (a backup that dedups against it would refer to nothing)') })
    }
  }

  /** One pack against its trailer; with read-data, every blob in it read and proven. */
  async function checkPack(pack: string, size: number, group: PackLive | null): Promise<void> {
    const referred = (offset: number) => group?.blobs.filter((b) => b.offset === offset) ?? []
    const named = (blobs: readonly LiveBlob[]) => sourceNames(blobs.flatMap((b) => b.sources!).slice(0, 8))
    let trailer: Awaited<ReturnType<Repository['readPackTrailer']>>
    try {
      trailer = await repo.readPackTrailer(pack, size)
    } catch (err) {
      if (!isDamage(err)) throw err
      const { backups, runs } = named(group?.blobs ?? [])
      report.add({ severity: group ? 'damage' : 'info', kind: 'pack', ...(backups ? { backups } : {}), ...(runs.length ? { run: runs[0]! } : {}), pack,
        message: `${describe(err)}${group ? '' : ' (no backup or index run refers to it: prune deletes it)'}` })
      return
    }
    // The trailer describes the pack's bytes exactly: its blobs one after the other, then itself.
    let at = 0
    let why: string | null = null
    for (const e of trailer.entries) {
      if (e.pack !== pack) why = `its trailer names pack ${e.pack} for the blob at offset ${e.offset}`
      else if (e.offset !== at) why = `its trailer leaves a gap or an overlap at offset ${e.offset}`
      if (why) break
      at += e.length
    }
    if (!why && at !== trailer.blobsEnd) why = `its trailer lists blobs up to byte ${at}, but they end at byte ${trailer.blobsEnd}`
    if (why) report.add({ severity: group ? 'damage' : 'info', kind: 'trailer', pack, offset: at, message: `pack ${pack}: ${why}` })
    // Every reference agrees with the trailer.
    const byOffset = new Map(trailer.entries.map((e) => [e.offset, e]))
    for (const b of group?.blobs ?? []) {
      const e = byOffset.get(b.offset)
      const wrong = !e ? `nothing starts at offset ${b.offset} (the pack's blobs end at ${trailer.blobsEnd})`
        : !e.id.equals(b.id!) ? `the blob at offset ${b.offset} is ${e.id.toString('hex').slice(0, 16)}…, not ${b.id!.toString('hex').slice(0, 16)}…`
        : e.length !== b.length || e.rawLength !== b.rawLength ? `the blob at offset ${b.offset} is ${e.length} bytes (${e.rawLength} plain), not ${b.length} (${b.rawLength})`
        : b.tree !== trailer.tree ? `a ${b.tree ? 'chunk-list node' : 'chunk'} is referred to in a ${trailer.tree ? 'tree' : 'data'} pack`
        : null
      if (!wrong) continue
      const { backups, runs } = sourceNames(b.sources)
      if (backups) report.add({ severity: 'damage', kind: 'reference', backups, pack, offset: b.offset, message: `pack ${pack}: ${wrong}` })
      for (const run of runs) report.add({ severity: 'damage', kind: 'run', run, pack, offset: b.offset, message: `index run ${run} disagrees with pack ${pack}: ${wrong}` })
    }
    if (selected(o.readData, pack)) await readPack(pack, trailer.entries, trailer.tree)

    /**
     * Every blob read, decoded and re-hashed; damage where something refers to it, information
     * elsewhere. A range is read into a shared buffer and its chunks are decoded side by side on
     * the codec threads, as a restore does (chunk-reader.ts); findings are told in pack order.
     */
    async function readPack(pack: string, entries: readonly BlobRef[], tree: boolean): Promise<void> {
      result.packs.read++
      for (let i = 0; i < entries.length;) {
        o.signal?.throwIfAborted()
        let j = i + 1
        while (j < entries.length && entries[j]!.offset + entries[j]!.length - entries[i]!.offset <= READ_RANGE) j++
        const first = entries[i]!
        const last = entries[j - 1]!
        const length = last.offset + last.length - first.offset
        let range = rangeBuffers.pop()
        if (!range || range.length < length) range = sharedBuffer(Math.max(READ_RANGE, length))
        try {
          let data: Buffer
          try {
            data = await repo.readPackRange(pack, first.offset, length, range)
          } catch (err) {
            if (!isDamage(err)) throw err
            const { backups } = named(entries.slice(i, j).flatMap((e) => referred(e.offset)))
            report.add({ severity: group ? 'damage' : 'info', kind: 'blob', ...(backups ? { backups } : {}), pack, offset: first.offset, message: describe(err) })
            return
          }
          result.packs.bytesRead += data.length
          const damage = await Promise.all(entries.slice(i, j).map((e) => decoding(() => proveBlob(e, data.subarray(e.offset - first.offset, e.offset - first.offset + e.length), tree))))
          entries.slice(i, j).forEach((e, k) => {
            const err = damage[k]
            if (err === null) {
              result.packs.blobsRead++
              return
            }
            const refs = referred(e.offset)
            const { backups, runs } = named(refs)
            report.add({ severity: refs.length ? 'damage' : 'info', kind: 'blob', ...(backups ? { backups } : {}), ...(runs.length ? { run: runs[0]! } : {}), pack, offset: e.offset,
              message: `pack ${pack}: the ${tree ? 'chunk-list node' : 'chunk'} at offset ${e.offset} is damaged: ${describe(err)}${refs.length ? '' : ' (nothing refers to it)'}` })
          })
        } finally {
          rangeBuffers.push(range)
        }
        i = j
      }
    }
  }

  /** Decodes one blob and proves it is the one its trailer names: null, or the damage found. */
  async function proveBlob(e: BlobRef, blob: Buffer, tree: boolean): Promise<unknown> {
    try {
      if (tree) {
        const plain = await repo.codec.decode('tree', blob, e.rawLength)
        if (!repo.chunkId(plain).equals(e.id)) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, 'the node does not match its id')
        decodeNode(plain, 'the node')
        return null
      }
      const plainBuffer = plainBuffers.pop() ?? sharedBuffer(decodeBufferSize(repo.chunkSize))
      try {
        const plain = await repo.decodeChunk(blob, e.id, e.rawLength, plainBuffer)
        if (plain.length !== e.rawLength) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `it holds ${plain.length} bytes, its trailer says ${e.rawLength}`)
      } finally {
        plainBuffers.push(plainBuffer)
      }
      return null
    } catch (err) {
      if (!isDamage(err)) throw err
      return err
    }
  }
}

/**
 * Every backup whose chunk list reaches a damaged place, shared subtrees included. The walk named
 * the backups that reached a blob themselves, but a later backup of the same volume that took a
 * subtree whole from the one before did not walk it. A second walk, only when there is damage,
 * carries up the tree what each subtree reaches, by node location, for the backups that share it.
 * Memory: the nodes above damage (a few per damaged place and level).
 */
async function nameAffected(repo: Repository, roots: readonly Root[], labels: readonly string[], moved: ReadonlySet<string>, problems: Problem[]): Promise<void> {
  const WHOLE: ReadonlySet<ProblemKind> = new Set(['pack', 'moved', 'trailer'])
  const placed = problems.filter((p) => p.severity === 'damage' && p.pack && p.kind !== 'run' && p.kind !== 'index' && (WHOLE.has(p.kind) || p.offset !== undefined))
  if (!placed.length) return
  const keyOfProblem = (p: Problem) => (WHOLE.has(p.kind) ? p.pack! : `${p.pack}:${p.offset}`)
  const keys = new Set(placed.map(keyOfProblem))
  const keyOf = (ref: BlobRef) => (keys.has(ref.pack) ? ref.pack : keys.has(`${ref.pack}:${ref.offset}`) ? `${ref.pack}:${ref.offset}` : null)
  const where = async (ref: BlobRef) => (moved.has(ref.pack) ? ((await repo.locate(ref).catch(() => null)) ?? ref) : ref)
  const reached = new Map<string, Set<number>>()
  /** Node location → the damaged places under it (only nodes that have some). */
  const under = new Map<string, string[]>()
  const load = repo.nodeLoader()
  const groups = new Map<string, number[]>()
  for (const [i, r] of roots.entries()) (groups.get(r.group) ?? groups.set(r.group, []).get(r.group)!).push(i)
  for (const list of groups.values()) {
    list.sort((a, b) => roots[a]!.time.localeCompare(roots[b]!.time))
    let previous: TreeCursor | null = null
    for (const i of list) {
      const root = roots[i]!
      const prev = previous && previous.shape.chunks === root.shape.chunks && previous.shape.leafChunks === root.shape.leafChunks && previous.shape.fanout === root.shape.fanout ? previous : null
      const visit = async (ref: BlobRef, level: number, index: number, placed: boolean): Promise<string[]> => {
        if (isZeroRef(ref)) return []
        const loc = await where(ref)
        const node = `${loc.pack}:${loc.offset}`
        if (placed && prev) {
          const theirs = await prev.refAt(level, index).catch(() => null)
          if (theirs && sameRef(theirs, ref)) return under.get(node) ?? []
        }
        const found = new Set<string>()
        const own = keyOf(ref) ?? keyOf(loc)
        if (own) found.add(own)
        const entries = await load(ref, level).catch(() => [] as BlobRef[])
        for (const [j, e] of entries.entries()) {
          if (level === 0) {
            const k = isZeroRef(e) ? null : keyOf(e) ?? keyOf(await where(e))
            if (k) found.add(k)
          } else {
            for (const k of await visit(e, level - 1, index * root.shape.fanout + j, placed)) found.add(k)
          }
        }
        const list = [...found]
        if (list.length) under.set(node, list)
        return list
      }
      const found: string[] = []
      if (root.tree) {
        found.push(...(await visit(root.tree, rootLevel(root.shape), 0, true)))
        previous = new TreeCursor(root.shape, root.tree, load)
      }
      for (const sub of root.subtrees ?? []) found.push(...(await visit(sub.ref, sub.level, 0, false)))
      for (const c of root.chunks ?? []) {
        const k = isZeroRef(c) ? null : keyOf(c) ?? keyOf(await where(c))
        if (k) found.push(k)
      }
      for (const k of found) (reached.get(k) ?? reached.set(k, new Set()).get(k)!).add(i)
    }
  }
  for (const p of placed) {
    const who = reached.get(keyOfProblem(p))
    if (who?.size) p.backups = [...who].map((i) => labels[i]!).sort().slice(0, MAX_NAMED)
  }
}

/**
 * What a prune running alongside took away is not damage: a problem all of whose backups were
 * forgotten while the check ran, and that no index run shares, or an index run's problem whose
 * run prune has deleted since, is told as information.
 */
async function forgiveVanished(repo: Repository, report: Report): Promise<void> {
  const named = report.problems.filter((p) => p.severity === 'damage' && p.backups?.length && !p.run && p.kind !== 'manifest')
  const runs = report.problems.filter((p) => p.severity === 'damage' && p.kind === 'run' && p.run)
  const forgive = (p: Problem, why: string): void => {
    p.severity = 'info'
    p.message += ` (${why} while the check ran)`
    report.damage--
    report.info++
  }
  if (named.length) {
    const now = new Set(await repo.backupIds())
    for (const p of named) if (!p.backups!.some((b) => now.has(b) || !BACKUP_ID_PATTERN.test(b))) forgive(p, 'its backups were forgotten')
  }
  if (runs.length) {
    const now = new Set((await repo.listObjects(INDEXES)).map((obj) => obj.name.slice(INDEXES.length)))
    for (const p of runs) if (!now.has(p.run!)) forgive(p, 'prune deleted the run')
  }
}

/** At most `limit` tasks at once; the first failure is thrown once every task has ended. */
class Pool {
  readonly #limit: number
  readonly #running = new Set<Promise<void>>()
  #failure: { err: unknown } | null = null

  constructor(limit: number) {
    this.#limit = Math.max(1, limit)
  }

  async run(task: () => Promise<void>): Promise<void> {
    while (this.#running.size >= this.#limit) await Promise.race(this.#running)
    if (this.#failure) await this.drain()
    const p: Promise<void> = task().catch((err: unknown) => {
      this.#failure ??= { err }
    }).finally(() => this.#running.delete(p))
    this.#running.add(p)
  }

  async drain(): Promise<void> {
    await Promise.all(this.#running)
    if (this.#failure) throw this.#failure.err
  }
}

export function describeCheck(r: CheckResult): string[] {
  const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`
  const lines = r.problems.map((p) => `${p.severity === 'damage' ? 'DAMAGE' : 'info'} [${p.kind}] ${p.message}` +
    `${p.backups ? ` — backups ${p.backups.join(', ')}` : ''}${p.run && !p.message.includes(p.run) ? ` — index run ${p.run}` : ''}`)
  const more = r.damage + r.info - r.problems.length
  if (more > 0) lines.push(`… and ${more} more`)
  lines.push(
    `${r.backups} backups, ${r.checkpoints} checkpoints: ${r.nodes} chunk-list nodes read, ${r.references} references and ${r.runs} index runs held against ${r.packs.total} packs (${mib(r.packs.bytes)})`,
    ...(r.readData !== 'none' ? [`read data (${r.readData}): ${r.packs.read} packs, ${r.packs.blobsRead} blobs, ${mib(r.packs.bytesRead)}`] : []),
    r.healthy ? `no damage found${r.info ? ` (${r.info} notes)` : ''}` : `${r.damage} problem(s): the repository is damaged`,
  )
  return lines
}
