// Part 3 of `npm run bench:scale` (scripts/bench-scale.sh): the metadata a year of daily
// incrementals of a 1 TiB volume stores, format version 1 against version 2, without running
// 365 backups of a TiB. The chunk lists are built by the real code over synthetic chunk ids:
//
// - version 2: agent/repo/tree.ts's TreeBuilder, fed as BackupWriter feeds it (changed leaves
//   pushed, unchanged leaves and subtrees taken from the parent by reference), into a node store
//   that does what BackupWriter's does (the repository's codec, PackBuilder's tree packs of
//   4 MiB with their trailers), counting the bytes; the index runs (encodeRun, consolidated per
//   CONSOLIDATE entries) and the manifest (encodeManifest) of each backup, blob-encoded;
// - version 1, from its format (docs/FORMAT.md, "Version 1"): a manifest holding every chunk id
//   (JSON, base64 of 32 bytes a chunk), blob-encoded, and one index object of the backup's new
//   chunks ("EBWIDX01", agent/repo/chunk-index.ts's encodeIndex), blob-encoded.
//
// The change model: each day, extents of 1–64 MiB (uniform, in 512 KiB blocks, the EBS block
// size) at uniformly random 512 KiB-aligned offsets until they add up to 1 % of the volume; a
// chunk any extent touches has new content (a new id). The volume is full of data (no zero
// chunks); a stored chunk is 128 KiB–1 MiB (uniform: compressed chunks), packed 16 MiB a pack in
// the order chunks are read. Everything is seeded (the same extents on every run), and the
// validation image of bench-scale.sh changes by the same extents (`change`).
import { createHash, randomBytes } from 'node:crypto'
import { open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { chunkCount, type ByteRange } from '../agent/core/geometry.ts'
import { DEFAULT_TUNING } from '../agent/core/tuning.ts'
import { encodeIndex } from '../agent/repo/chunk-index.ts'
import { encodeRun } from '../agent/repo/index-run.ts'
import { LocalKeyFileProvider } from '../agent/repo/keys.ts'
import { backupChecksum, encodeManifest, newBackupId, treeChecksum, type BackupStats, type ManifestV2 } from '../agent/repo/manifest.ts'
import { newPackId, PackBuilder } from '../agent/repo/pack.ts'
import { CONSOLIDATE } from '../agent/repo/pack-writer.ts'
import { Repository } from '../agent/repo/repository.ts'
import {
  DEFAULT_FANOUT, DEFAULT_LEAF_CHUNKS, ENTRY_BYTES, ID_BYTES, leafCount, readEntry, rootLevel, TreeBuilder, writeEntry,
  type BlobRef, type TreeShape,
} from '../agent/repo/tree.ts'
import type { Backend, ObjectInfo } from '../agent/storage/types.ts'

export const KiB = 1024
export const MiB = 1024 * KiB
export const GiB = 1024 * MiB
export const TiB = 1024 * GiB

// ---- a seeded random source (the synthetic layouts must be the same on every run) ----------

/** xoshiro128** seeded from a string: reproducible, fast, good enough for layouts. */
export function rng(seed: string): () => number {
  const h = createHash('sha256').update(seed).digest()
  let a = h.readUInt32LE(0), b = h.readUInt32LE(4), c = h.readUInt32LE(8), d = h.readUInt32LE(12)
  return () => {
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0
    const t = b << 9
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11)
    return r / 2 ** 32
  }
}
function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k))
}

/** An integer in [lo, hi]. */
export function between(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1))
}

// ---- the change model -------------------------------------------------------------------------

export interface ChangeModel {
  /** Share of the volume changed a day (0.01: 1 %). */
  fraction: number
  minExtent: number
  maxExtent: number
  /** Extents start and end on these (the EBS block size). */
  align: number
  seed: string
}

export function changeModel(env: NodeJS.ProcessEnv = process.env): ChangeModel {
  return {
    fraction: Number(env.SCALE_META_CHANGE ?? 0.01),
    minExtent: Number(env.SCALE_META_MIN_EXTENT_MIB ?? 1) * MiB,
    maxExtent: Number(env.SCALE_META_MAX_EXTENT_MIB ?? 64) * MiB,
    align: 512 * KiB,
    seed: env.SCALE_SEED ?? 'ebs-worker bench-scale',
  }
}

/** Day `day`'s changed extents of a `size`-byte volume: sorted, overlaps merged. */
export function dayExtents(size: number, day: number, m: ChangeModel): ByteRange[] {
  const r = rng(`${m.seed}/${size}/${m.fraction}/${day}`)
  const blocks = size / m.align
  let left = Math.max(1, Math.round((m.fraction * size) / m.align))
  const raw: ByteRange[] = []
  while (left > 0) {
    const n = Math.min(left, between(r, m.minExtent / m.align, m.maxExtent / m.align), blocks)
    const at = between(r, 0, blocks - n)
    raw.push({ offset: at * m.align, length: n * m.align })
    left -= n
  }
  raw.sort((a, b) => a.offset - b.offset)
  const out: ByteRange[] = []
  for (const e of raw) {
    const last = out[out.length - 1]
    if (last && e.offset <= last.offset + last.length) last.length = Math.max(last.length, e.offset + e.length - last.offset)
    else out.push({ ...e })
  }
  return out
}

/** The chunks the extents touch, in order. */
export function touchedChunks(extents: readonly ByteRange[], chunkSize: number): number[] {
  const out: number[] = []
  for (const e of extents) {
    const first = Math.floor(e.offset / chunkSize)
    const last = Math.floor((e.offset + e.length - 1) / chunkSize)
    for (let i = Math.max(first, (out[out.length - 1] ?? -1) + 1); i <= last; i++) out.push(i)
  }
  return out
}

// ---- the validation image ---------------------------------------------------------------------

/** Stored size of a chunk's data (before the codec's header and tag): uniform in [min, max). */
export const BLOB_MIN = 128 * KiB
export const BLOB_MAX = MiB

/**
 * One chunk of the validation image: r random bytes, then zeros (so that it is stored in about
 * r bytes: the model's chunk sizes), r uniform in [BLOB_MIN, BLOB_MAX).
 */
function chunkContent(out: Buffer): void {
  const r = BLOB_MIN + Math.floor(Math.random() * (BLOB_MAX - BLOB_MIN))
  randomBytes(r).copy(out, 0)
  out.fill(0, r)
}

/** The validation volume: `size` bytes of chunks made by chunkContent. */
export async function writeVolume(path: string, size: number, chunkSize: number): Promise<void> {
  const h = await open(path, 'w')
  const buf = Buffer.alloc(chunkSize)
  try {
    for (let at = 0; at < size; at += chunkSize) {
      chunkContent(buf)
      await h.write(buf, 0, chunkSize, at)
    }
  } finally {
    await h.close()
  }
}

/**
 * Day `day`'s change to the validation volume: new content in every chunk the day's extents
 * touch; writes the extents as --changed-ranges JSON (what EBS's ListChangedBlocks would say).
 */
export async function changeVolume(path: string, day: number, rangesOut: string, chunkSize: number): Promise<void> {
  const h = await open(path, 'r+')
  const size = (await h.stat()).size
  const extents = dayExtents(size, day, changeModel())
  const buf = Buffer.alloc(chunkSize)
  try {
    for (const i of touchedChunks(extents, chunkSize)) {
      chunkContent(buf)
      await h.write(buf, 0, chunkSize, i * chunkSize)
    }
    await h.sync()
  } finally {
    await h.close()
  }
  await writeFile(rangesOut, JSON.stringify(extents))
  console.log(JSON.stringify({ day, extents: extents.length, bytes: extents.reduce((n, e) => n + e.length, 0), chunks: touchedChunks(extents, chunkSize).length }))
}

// ---- the model --------------------------------------------------------------------------------

/** A storage that keeps nothing but the config (the model's repository only lends its codec). */
class ConfigOnly implements Backend {
  readonly url = 'memory://bench-scale'
  #config: Buffer | null = null
  async get(name: string): Promise<Buffer | null> {
    return name === 'config' ? this.#config : null
  }
  async getRange(): Promise<Buffer> {
    throw new Error('not stored')
  }
  async put(name: string, data: Buffer): Promise<void> {
    if (name === 'config') this.#config = data
  }
  async *list(): AsyncIterable<ObjectInfo> {}
  async delete(): Promise<void> {}
}

/** One backup's metadata, by part. */
export interface BackupFigures {
  day: number
  chunksChanged: number
  bytesChanged: number
  leavesWritten: number
  nodesWritten: number
  treePacks: number
  v2: { tree: number; manifest: number; index: number; total: number }
  v1: { manifest: number; index: number; total: number }
}

const TREE_PACK_SIZE = 4 * MiB
const TREE_MAX_BLOB = 64 * KiB

/**
 * A volume's backups, one after another: the current chunk list (entries and ids of every chunk)
 * and the current tree's node references per level, from which the next backup takes what did
 * not change.
 */
export class MetadataModel {
  readonly size: number
  readonly chunkSize: number
  readonly count: number
  readonly shape: TreeShape
  readonly #repo: Repository
  readonly #entries: Buffer
  readonly #ids: Buffer
  /** Per level, the current tree's node references (level 0: leaves). */
  #levels: BlobRef[][] = []
  #parent: string | null = null
  readonly #encrypted: boolean
  readonly #blob: () => number

  private constructor(repo: Repository, size: number, encrypted: boolean, seed: string) {
    this.#repo = repo
    this.size = size
    this.chunkSize = repo.chunkSize
    this.count = chunkCount(size, this.chunkSize)
    this.shape = { chunks: this.count, leafChunks: DEFAULT_LEAF_CHUNKS, fanout: DEFAULT_FANOUT }
    this.#entries = Buffer.alloc(this.count * ENTRY_BYTES)
    this.#ids = Buffer.alloc(this.count * ID_BYTES)
    this.#encrypted = encrypted
    const r = rng(`${seed}/blobs/${size}`)
    this.#blob = () => between(r, BLOB_MIN, BLOB_MAX - 1) + 1 + (encrypted ? 28 : 0)
  }

  /** A model over a repository made by Repository.init (encrypted with a key file in `dir`, or not). */
  static async create(size: number, options: { encrypted: boolean; dir: string; seed: string }): Promise<MetadataModel> {
    const keyProvider = options.encrypted
      ? await LocalKeyFileProvider.open(join(options.dir, `model-${randomBytes(4).toString('hex')}.key`), { create: true })
      : undefined
    const repo = await Repository.init(new ConfigOnly(), keyProvider ? { keyProvider } : {})
    return new MetadataModel(repo, size, options.encrypted, options.seed)
  }

  /** A backup: the first one of everything (`null`), then incrementals of the chunks given. */
  async backup(day: number, changed: number[] | null, bytesChanged: number): Promise<BackupFigures> {
    const codec = this.#repo.codec
    const chunks = changed ?? Array.from({ length: this.count }, (_, i) => i)

    // New chunks, packed 16 MiB a pack in the order they are read (PackWriter's sealing rule);
    // each pack's entries go into the index runs, folded per CONSOLIDATE entries.
    const packSize = DEFAULT_TUNING.packSize
    const capacity = packSize + this.chunkSize + 64 + 64 * KiB
    const runs: BlobRef[][] = []
    let pending: BlobRef[] = []
    let pack: BlobRef[] = []
    let packId = newPackId()
    let bytes = 0
    const seal = (): void => {
      pending.push(...pack)
      if (pending.length >= CONSOLIDATE) runs.push(pending.splice(0))
      pack = []
      packId = newPackId()
      bytes = 0
    }
    const ids = randomBytes(chunks.length * ID_BYTES)
    const fresh: BlobRef[] = []
    for (const [k, i] of chunks.entries()) {
      const length = this.#blob()
      if (bytes > 0 && bytes + length > capacity - 64 * KiB) seal()
      const ref: BlobRef = { id: ids.subarray(k * ID_BYTES, (k + 1) * ID_BYTES), pack: packId, offset: bytes, length, rawLength: this.chunkSize }
      bytes += length
      pack.push(ref)
      fresh.push(ref)
      if (bytes + 60 * pack.length + 64 >= packSize) seal()
      writeEntry(ref, this.#entries, i * ENTRY_BYTES)
      ref.id.copy(this.#ids, i * ID_BYTES)
    }
    if (pack.length) seal()
    if (pending.length) runs.push(pending)
    let index2 = 0
    for (const run of runs) index2 += (await codec.encode('index', encodeRun(run, { sort: true }))).length

    // The tree, as BackupWriter builds it.
    const tree = await this.#buildTree(chunks, changed === null)
    const root = this.#levels[rootLevel(this.shape)]![0]!

    const id = newBackupId(new Date(Date.UTC(2026, 0, 1) + day * 86_400_000))
    const source = { device: '/dev/nvme1n1', volumeId: 'vol-0123456789abcdef0', snapshotId: 'snap-0123456789abcdef0' }
    const stats: BackupStats = {
      bytesRead: chunks.length * this.chunkSize, bytesNew: chunks.length * this.chunkSize, bytesStored: fresh.reduce((n, r) => n + r.length, 0),
      chunksTotal: this.count, chunksZero: 0, chunksNew: chunks.length, chunksReused: 0, chunksFromParent: this.count - chunks.length,
      durationMs: 123456,
    }
    const createdAt = new Date(Date.UTC(2026, 0, 1) + day * 86_400_000 + 3_600_000).toISOString()
    const treeRef = { root, leafChunks: this.shape.leafChunks, fanout: this.shape.fanout }
    const v2: ManifestV2 = {
      version: 2, id, createdAt, source, size: this.size, chunkSize: this.chunkSize, parent: this.#parent, tree: treeRef,
      checksum: treeChecksum(this.size, this.chunkSize, treeRef), stats: { ...stats, bytesMetadata: tree.bytes }, tags: {},
    }
    const manifest2 = (await codec.encode('manifest', encodeManifest(v2))).length

    // Version 1: the manifest holds every chunk id; one index object of the new chunks.
    const v1 = Buffer.from(JSON.stringify({
      format: 'ebs-worker-backup', version: 1, id, createdAt, source, size: this.size, chunkSize: this.chunkSize, parent: this.#parent,
      chunks: this.#ids.toString('base64'), checksum: backupChecksum(this.size, this.chunkSize, this.#ids), stats, tags: {},
    }))
    const manifest1 = (await codec.encode('manifest', v1)).length
    const index1 = (await codec.encode('index', encodeIndex(fresh))).length
    this.#parent = id

    return {
      day, chunksChanged: chunks.length, bytesChanged, leavesWritten: tree.leaves, nodesWritten: tree.nodes, treePacks: tree.packs,
      v2: { tree: tree.bytes, manifest: manifest2, index: index2, total: tree.bytes + manifest2 + index2 },
      v1: { manifest: manifest1, index: index1, total: manifest1 + index1 },
    }
  }

  /**
   * Builds this backup's tree with TreeBuilder: a leaf holding a changed chunk is pushed (its
   * entries: the new ones and the parent's), every other leaf, or the largest whole subtree of
   * unchanged leaves that starts there, goes in by the parent's reference; nodes identical to
   * the parent's at the same place are not stored again (the builder asks `existing`). The nodes
   * that are stored go into tree packs of 4 MiB, as BackupWriter's PackWriter seals them.
   */
  async #buildTree(chunks: number[], full: boolean): Promise<{ bytes: number; leaves: number; nodes: number; packs: number }> {
    const codec = this.#repo.codec
    const L = leafCount(this.shape)
    const F = this.shape.fanout
    const levels = this.#levels
    let asked = { level: -1, index: -1 }
    const buffer = Buffer.allocUnsafe(TREE_PACK_SIZE + TREE_MAX_BLOB + 64 * KiB)
    let builder = new PackBuilder(buffer, { tree: true })
    let bytes = 0
    let packs = 0
    let leaves = 0
    let nodes = 0
    const seal = async (): Promise<void> => {
      const trailer = await codec.encode('pack-trailer', builder.trailerPlaintext())
      bytes += builder.finish(trailer).length
      packs++
      builder = new PackBuilder(buffer, { tree: true })
    }
    const tree = new TreeBuilder(this.shape, {
      idOf: (plain) => this.#repo.chunkId(plain),
      existing: async (level, index) => {
        asked = { level, index }
        return levels[level]?.[index] ?? null
      },
      put: async (id, plain, level) => {
        if (asked.level !== level) throw new Error(`node at level ${level} put without being looked up`)
        const blob = await codec.encode('tree', plain)
        if (builder.bytes > 0 && builder.bytes + blob.length > buffer.length - 64 * KiB) await seal()
        const ref = builder.add(id, blob, plain.length)
        if (builder.sealedBound >= TREE_PACK_SIZE) await seal()
        ;(levels[level] ??= [])[asked.index] = ref
        if (level === 0) leaves++
        else nodes++
        return ref
      },
    })
    const changedLeaves = new Set(chunks.map((i) => Math.floor(i / this.shape.leafChunks)))
    const sortedChanged = [...changedLeaves].sort((a, b) => a - b)
    let next = 0 // index into sortedChanged of the first changed leaf ≥ k
    for (let k = 0; k < L; ) {
      while (next < sortedChanged.length && sortedChanged[next]! < k) next++
      if (full || changedLeaves.has(k)) {
        const count = Math.min(this.shape.leafChunks, this.count - k * this.shape.leafChunks)
        const entries: BlobRef[] = []
        for (let j = 0; j < count; j++) entries.push(readEntry(this.#entries, (k * this.shape.leafChunks + j) * ENTRY_BYTES))
        await tree.pushLeaf(entries)
        k++
        continue
      }
      // The largest subtree that starts here and holds no changed leaf (BackupWriter's pushWhole).
      const stretchEnd = sortedChanged[next] ?? L
      let level = tree.subtreeLevel
      while (level > 0 && Math.min(k + F ** level, L) > stretchEnd) level--
      await tree.pushSubtree(level, levels[level]![k / F ** level]!)
      k = Math.min(k + F ** level, L)
    }
    const root = await tree.finish()
    if (builder.count > 0) await seal()
    // A root that is a leaf (a small volume) was recorded at level 0; keep the root at its level.
    ;(levels[rootLevel(this.shape)] ??= [])[0] = root
    return { bytes, leaves, nodes, packs }
  }
}

// ---- runs of the model ------------------------------------------------------------------------

/**
 * Day 0's full backup, then `days` daily incrementals of the change model: one JSON line per
 * backup on stdout.
 */
export async function simulate(size: number, days: number, options: { encrypted: boolean; dir: string; model?: ChangeModel }): Promise<void> {
  const m = options.model ?? changeModel()
  const model = await MetadataModel.create(size, { encrypted: options.encrypted, dir: options.dir, seed: m.seed })
  console.log(JSON.stringify({ model: m, size, days, encrypted: options.encrypted }))
  const full = await model.backup(0, null, size)
  console.log(JSON.stringify(full))
  for (let day = 1; day <= days; day++) {
    const extents = dayExtents(size, day, m)
    const figures = await model.backup(day, touchedChunks(extents, model.chunkSize), extents.reduce((n, e) => n + e.length, 0))
    console.log(JSON.stringify(figures))
  }
}
