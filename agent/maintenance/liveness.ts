// What the repository still needs: every blob a kept backup's chunk list reaches (its nodes and
// its chunks) and every blob an unfinished backup's checkpoint refers to, found by walking the
// trees, not by loading an index. Memory is bounded whatever the repository's size: the
// references found go to spill files on local disk, one per range of pack ids, and are then
// sorted and grouped pack by pack, one file at a time.
//
// Backups of the same volume share most of their trees: each is walked alongside the one before
// it, and a subtree whose node is the earlier backup's at the same place (the same blob: same id,
// same pack and offset) is not walked again, so the walk reads about what is unique to each
// backup, not every backup whole. (The same id alone is not enough: two backups that wrote an
// identical node each have their own copy, and each copy must be kept.)
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chunkCount } from '../core/geometry.ts'
import type { ManifestV2 } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { entriesAt, isZeroRef, rootLevel, sameRef, TreeCursor, validateShape, type BlobRef, type TreeShape } from '../repo/tree.ts'

/** A chunk list to keep: a backup's tree, or the subtrees and entries of a checkpoint. */
export interface Root {
  /** Backups of one volume are walked in order, each against the one before. */
  group: string
  time: string
  shape: TreeShape
  /** The whole tree (a backup), or subtrees at their levels and positions, and loose chunk refs (a checkpoint). */
  tree?: BlobRef
  subtrees?: Array<{ level: number; ref: BlobRef }>
  chunks?: BlobRef[]
}

/** One blob a spill found in a pack. */
export interface LiveBlob {
  offset: number
  length: number
  /** Detailed spills only (check compares them with the pack's trailer): */
  id?: Buffer
  rawLength?: number
  /** The reference says it is a chunk-list node. */
  tree?: boolean
  /** The first few sources (roots, or index runs with RUN_SOURCE) that refer to it. */
  sources?: number[]
}

/** A pack's live blobs. */
export interface PackLive {
  pack: string
  /** Its blobs are chunk-list nodes. */
  tree: boolean
  /** By offset; in a detailed spill, references to one offset that disagree are listed each. */
  blobs: LiveBlob[]
  liveBytes: number
}

// pack 16 | offset u32 | length u32 | tree u8 — and, detailed: id 32 | rawLength u32 | source u32
const NARROW = 25
const WIDE = NARROW + 32 + 4 + 4
/** Bytes a detailed record sorts on: everything but its source, so equal references end up side by side. */
const WIDE_KEY = WIDE - 4
const PARTITIONS = 256
const FLUSH_BYTES = 64 * 1024
const MAX_SOURCES = 8
/** A source number with this bit set is an index run's, not a root's (check.ts). */
export const RUN_SOURCE = 0x8000_0000

/**
 * References on local disk, one file per range of pack ids (the first byte), grouped pack by pack
 * when read back: memory is the write buffers and one partition, whatever the repository's size.
 */
export class Spill {
  readonly detailed: boolean
  /** References added (before merging). */
  refs = 0
  readonly #dir: string
  readonly #files: FileHandle[]
  readonly #buffers: Array<{ buf: Buffer; used: number }>
  readonly #record: number
  #closed = false

  private constructor(dir: string, files: FileHandle[], detailed: boolean) {
    this.#dir = dir
    this.#files = files
    this.detailed = detailed
    this.#record = detailed ? WIDE : NARROW
    this.#buffers = Array.from({ length: PARTITIONS }, () => ({ buf: Buffer.allocUnsafe(FLUSH_BYTES - (FLUSH_BYTES % this.#record)), used: 0 }))
  }

  /** With `detailed`, each record also keeps the blob's id, plaintext length and where the reference came from. */
  static async open(detailed = false): Promise<Spill> {
    const dir = await mkdtemp(join(tmpdir(), 'ebs-worker-spill-'))
    const files: FileHandle[] = []
    try {
      for (let p = 0; p < PARTITIONS; p++) files.push(await open(join(dir, `${p}`), 'w+'))
    } catch (err) {
      await Promise.allSettled(files.map((f) => f.close()))
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    return new Spill(dir, files, detailed)
  }

  async add(ref: BlobRef, tree: boolean, source = 0): Promise<void> {
    const p = parseInt(ref.pack.slice(0, 2), 16)
    const b = this.#buffers[p]!
    if (b.used + this.#record > b.buf.length) await this.#flush(p)
    const at = b.used
    b.buf.write(ref.pack, at, 16, 'hex')
    b.buf.writeUInt32LE(ref.offset, at + 16)
    b.buf.writeUInt32LE(ref.length, at + 20)
    b.buf.writeUInt8(tree ? 1 : 0, at + 24)
    if (this.detailed) {
      ref.id.copy(b.buf, at + NARROW)
      b.buf.writeUInt32LE(ref.rawLength, at + NARROW + 32)
      b.buf.writeUInt32LE(source >>> 0, at + WIDE_KEY)
    }
    b.used += this.#record
    this.refs++
  }

  /** The references, pack by pack in pack id order: sorted by offset, merged. */
  async *packs(): AsyncGenerator<PackLive> {
    for (let p = 0; p < PARTITIONS; p++) await this.#flush(p)
    for (let p = 0; p < PARTITIONS; p++) yield* this.#partition(await readFile(join(this.#dir, `${p}`)))
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await Promise.allSettled(this.#files.map((f) => f.close()))
    await rm(this.#dir, { recursive: true, force: true })
  }

  async #flush(p: number): Promise<void> {
    const b = this.#buffers[p]!
    if (b.used) await this.#files[p]!.write(b.buf, 0, b.used)
    b.used = 0
  }

  *#partition(data: Buffer): Generator<PackLive> {
    const size = this.#record
    // By pack, then by the offset's bytes (and, detailed, the rest of the reference): equal
    // references end up side by side.
    const key = this.detailed ? WIDE_KEY : 20
    const n = data.length / size
    const order = Array.from({ length: n }, (_, i) => i)
    order.sort((a, b) => data.compare(data, b * size, b * size + key, a * size, a * size + key))
    let current: PackLive | null = null
    let last = -1
    let lastOffset = -1
    for (const i of order) {
      const at = i * size
      const pack = data.toString('hex', at, at + 16)
      const offset = data.readUInt32LE(at + 16)
      const length = data.readUInt32LE(at + 20)
      const tree = data.readUInt8(at + 24) === 1
      if (!current || current.pack !== pack) {
        if (current) yield byOffset(current)
        current = { pack, tree, blobs: [], liveBytes: 0 }
        last = -1
        lastOffset = -1
      }
      if (!this.detailed) {
        if (offset === lastOffset) continue
        current.blobs.push({ offset, length })
      } else {
        const source = data.readUInt32LE(at + WIDE_KEY)
        if (last >= 0 && data.compare(data, last + 16, last + WIDE_KEY, at + 16, at + WIDE_KEY) === 0) {
          const sources = current.blobs[current.blobs.length - 1]!.sources!
          if (sources.length < MAX_SOURCES && !sources.includes(source)) sources.push(source)
          continue
        }
        last = at
        current.blobs.push({ offset, length, tree, id: Buffer.from(data.subarray(at + NARROW, at + NARROW + 32)), rawLength: data.readUInt32LE(at + NARROW + 32), sources: [source] })
        if (offset === lastOffset) continue
      }
      current.liveBytes += length
      lastOffset = offset
    }
    if (current) yield byOffset(current)
  }
}

export interface Liveness {
  /** Packs with live blobs, in pack id order, one at a time. */
  packs(): AsyncGenerator<PackLive>
  /** Repacked packs whose moved record a kept backup still needs. */
  movedNeeded: Set<string>
  /** Nodes read, blobs found (before merging), for progress and reports. */
  nodesRead: number
  refs: number
  close(): Promise<void>
}

export interface WalkOptions {
  /** Spill into this one (detailed, with more in it: check); into one of the walk's own otherwise. */
  spill?: Spill
  /**
   * A node that cannot be read or is not what its place needs, or a reference whose moved record
   * cannot be read: handed here, not descended into, and the walk goes on (check). Without it the
   * walk ends with the error (prune).
   */
  onError?: (err: unknown, at: { root: number; ref: BlobRef; level: number | null }) => void
}

export function manifestRoot(m: ManifestV2): Root {
  return {
    group: m.source.volumeId ?? m.source.device, time: m.createdAt, tree: m.tree.root,
    shape: { chunks: chunkCount(m.size, m.chunkSize), leafChunks: m.tree.leafChunks, fanout: m.tree.fanout },
  }
}

/** Walks `roots`, writing what they reach to spill files; `moved` lists the packs that have moved records. */
export async function walkLiveness(repo: Repository, roots: Root[], moved: ReadonlySet<string>, onProgress?: (done: number, total: number) => void, o: WalkOptions = {}): Promise<Liveness> {
  const spill = o.spill ?? (await Spill.open())
  const state: Liveness = {
    movedNeeded: new Set(), nodesRead: 0, refs: 0,
    packs: () => spill.packs(),
    close: () => spill.close(),
  }
  let rootIndex = 0
  const failed = (err: unknown, ref: BlobRef, level: number | null): void => {
    if (!o.onError) throw err
    o.onError(err, { root: rootIndex, ref, level })
  }
  const emit = async (ref: BlobRef, tree: boolean): Promise<void> => {
    let at = ref
    if (moved.has(ref.pack)) {
      state.movedNeeded.add(ref.pack)
      try {
        at = (await repo.locate(ref)) ?? ref
      } catch (err) {
        failed(err, ref, null)
      }
    }
    await spill.add(at, tree, rootIndex)
    state.refs++
  }
  const load = repo.nodeLoader()

  try {
    // Each group's roots in time order: each walked against the previous one's tree.
    const groups = new Map<string, Array<{ root: Root; index: number }>>()
    for (const [index, root] of roots.entries()) (groups.get(root.group) ?? groups.set(root.group, []).get(root.group)!).push({ root, index })
    let done = 0
    for (const list of groups.values()) {
      list.sort((a, b) => a.root.time.localeCompare(b.root.time))
      let previous: { shape: TreeShape; cursor: TreeCursor } | null = null
      for (const { root, index: thisRoot } of list) {
        rootIndex = thisRoot
        validateShape(root.shape)
        const prev = previous && sameShape(previous.shape, root.shape) ? previous.cursor : null
        // `placed`: the node's position is known (a backup's tree, not a checkpoint's loose subtree).
        const visit = async (ref: BlobRef, level: number, index: number, placed: boolean): Promise<void> => {
          if (isZeroRef(ref)) return
          if (placed && prev) {
            // The earlier backup's node here, when it is the very same blob, was walked with it.
            const theirs = await prev.refAt(level, index).catch(() => null)
            if (theirs && sameRef(theirs, ref)) return
          }
          await emit(ref, true)
          let entries: BlobRef[]
          try {
            entries = await load(ref, level)
            state.nodesRead++
            const expected = placed ? entriesAt(root.shape, level, index) : entries.length
            if (entries.length !== expected) {
              throw new EbsWorkerError(ErrorCode.RepoFormat, `chunk-list node ${index} at level ${level} (pack ${ref.pack}) has ${entries.length} entries, expected ${expected}`,
                { context: { pack: ref.pack, offset: ref.offset } })
            }
          } catch (err) {
            failed(err, ref, level)
            return
          }
          if (level === 0) {
            for (const e of entries) if (!isZeroRef(e)) await emit(e, false)
            return
          }
          for (const [j, child] of entries.entries()) await visit(child, level - 1, index * root.shape.fanout + j, placed)
        }
        if (root.tree) {
          await visit(root.tree, rootLevel(root.shape), 0, true)
          previous = { shape: root.shape, cursor: new TreeCursor(root.shape, root.tree, load) }
        }
        // A checkpoint's open subtrees and entries: walked whole (positions are not tracked).
        for (const s of root.subtrees ?? []) await visit(s.ref, s.level, 0, false)
        for (const c of root.chunks ?? []) if (!isZeroRef(c)) await emit(c, false)
        onProgress?.(++done, roots.length)
      }
    }
    return state
  } catch (err) {
    await state.close()
    throw err
  }
}

function sameShape(a: TreeShape, b: TreeShape): boolean {
  return a.chunks === b.chunks && a.leafChunks === b.leafChunks && a.fanout === b.fanout
}

function byOffset(p: PackLive): PackLive {
  p.blobs.sort((a, b) => a.offset - b.offset)
  return p
}
