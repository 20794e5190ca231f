// A backup's chunk list (format v2) as a tree of small nodes, so that no program ever holds a
// whole list: a 64 TiB volume has 64 Mi chunks, 3.75 GiB of entries. Leaves list up to
// `leafChunks` chunks, nodes up to `fanout` children; every entry says what a blob is (its id)
// and where it is (pack, offset, length), so a restore needs no repository index. A node's id is
// the hash of its plaintext, like a chunk's: the root authenticates every chunk id in order (a
// Merkle tree), and an incremental's unchanged leaves and nodes, identical to the parent's at the
// same place, have the same id and are not written again. Pure: encoding, shape, and the builder
// and reader, which do their I/O through the functions they are given.
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'

/** A stored blob: what it is and where it is. 60 bytes encoded. */
export interface BlobRef {
  /** Content id (32 bytes): a chunk id, or a node's. */
  id: Buffer
  /** Pack id, 32 hex characters. */
  pack: string
  offset: number
  length: number
  /** Bytes of its plaintext. */
  rawLength: number
}

export const ID_BYTES = 32
export const PACK_ID_BYTES = 16
export const ENTRY_BYTES = ID_BYTES + PACK_ID_BYTES + 12
const ZERO_PACK = '0'.repeat(PACK_ID_BYTES * 2)

/** A zero chunk, or a subtree of zero chunks: recorded, never stored. */
export const ZERO_REF: BlobRef = Object.freeze({ id: Buffer.alloc(ID_BYTES), pack: ZERO_PACK, offset: 0, length: 0, rawLength: 0 }) as BlobRef

export function isZeroRef(ref: BlobRef): boolean {
  return ref.length === 0 && ref.id.equals(ZERO_REF.id)
}

export function writeEntry(ref: BlobRef, out: Buffer, at: number): void {
  ref.id.copy(out, at)
  out.write(ref.pack, at + ID_BYTES, PACK_ID_BYTES, 'hex')
  out.writeUInt32LE(ref.offset, at + ID_BYTES + PACK_ID_BYTES)
  out.writeUInt32LE(ref.length, at + ID_BYTES + PACK_ID_BYTES + 4)
  out.writeUInt32LE(ref.rawLength, at + ID_BYTES + PACK_ID_BYTES + 8)
}

export function readEntry(buf: Buffer, at: number): BlobRef {
  return {
    id: Buffer.from(buf.subarray(at, at + ID_BYTES)),
    pack: buf.toString('hex', at + ID_BYTES, at + ID_BYTES + PACK_ID_BYTES),
    offset: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES),
    length: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES + 4),
    rawLength: buf.readUInt32LE(at + ID_BYTES + PACK_ID_BYTES + 8),
  }
}

export function encodeRef(ref: BlobRef): string {
  const out = Buffer.alloc(ENTRY_BYTES)
  writeEntry(ref, out, 0)
  return out.toString('base64')
}

export function decodeRef(text: string): BlobRef {
  const buf = Buffer.from(text, 'base64')
  if (buf.length !== ENTRY_BYTES) throw new EbsWorkerError(ErrorCode.RepoFormat, 'a tree reference is not 60 bytes')
  return readEntry(buf, 0)
}

// ---- nodes --------------------------------------------------------------------------------------

const NODE_MAGIC = Buffer.from('EBWTREE2')
const NODE_HEADER = NODE_MAGIC.length + 8

/** A node's plaintext: magic | u8 level | 3 reserved | u32 count | count × entry. Level 0 is a leaf. */
export function encodeNode(level: number, entries: readonly BlobRef[]): Buffer {
  const out = Buffer.alloc(NODE_HEADER + entries.length * ENTRY_BYTES)
  NODE_MAGIC.copy(out, 0)
  out.writeUInt8(level, NODE_MAGIC.length)
  out.writeUInt32LE(entries.length, NODE_MAGIC.length + 4)
  entries.forEach((e, i) => writeEntry(e, out, NODE_HEADER + i * ENTRY_BYTES))
  return out
}

export interface DecodedNode {
  level: number
  entries: BlobRef[]
}

export function decodeNode(buf: Buffer, what: string): DecodedNode {
  if (buf.length < NODE_HEADER || !buf.subarray(0, NODE_MAGIC.length).equals(NODE_MAGIC)) {
    throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is not a chunk-list node`)
  }
  const level = buf.readUInt8(NODE_MAGIC.length)
  const count = buf.readUInt32LE(NODE_MAGIC.length + 4)
  if (buf.length !== NODE_HEADER + count * ENTRY_BYTES) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is truncated (${count} entries announced)`)
  const entries: BlobRef[] = []
  for (let i = 0; i < count; i++) entries.push(readEntry(buf, NODE_HEADER + i * ENTRY_BYTES))
  return { level, entries }
}

// ---- shape --------------------------------------------------------------------------------------

/** How a list of `chunks` entries is cut: leaves of `leafChunks`, nodes of `fanout` children. */
export interface TreeShape {
  chunks: number
  leafChunks: number
  fanout: number
}

/** 128 chunks a leaf (128 MiB of volume at 1 MiB chunks, 7.5 KiB): a small change rewrites little. */
export const DEFAULT_LEAF_CHUNKS = 128
/** 64 children a node (3.75 KiB): a change rewrites one node per level, and there are few levels. */
export const DEFAULT_FANOUT = 64

/** Chunks under one node of `level` (0: a leaf). */
export function span(shape: TreeShape, level: number): number {
  return shape.leafChunks * shape.fanout ** level
}

/** The root's level: the lowest whose one node covers every chunk (0 when one leaf does). */
export function rootLevel(shape: TreeShape): number {
  let level = 0
  while (span(shape, level) < shape.chunks) level++
  return level
}

export function leafCount(shape: TreeShape): number {
  return Math.max(1, Math.ceil(shape.chunks / shape.leafChunks))
}

/** How many entries node `index` of `level` holds: the shape says it (the last nodes may be partial). */
export function entriesAt(shape: TreeShape, level: number, index: number): number {
  return level === 0
    ? Math.min(shape.leafChunks, shape.chunks - index * shape.leafChunks)
    : Math.min(shape.fanout, Math.ceil(Math.min(span(shape, level), shape.chunks - index * span(shape, level)) / span(shape, level - 1)))
}

/** The same blob at the same place (a shared subtree is the same node where it is stored, not only by id). */
export function sameRef(a: BlobRef, b: BlobRef): boolean {
  return a.pack === b.pack && a.offset === b.offset && a.length === b.length && a.rawLength === b.rawLength && a.id.equals(b.id)
}

export function validateShape(shape: TreeShape): void {
  const ok = Number.isSafeInteger(shape.chunks) && shape.chunks >= 0 && Number.isInteger(shape.leafChunks) && shape.leafChunks >= 1 &&
    shape.leafChunks <= 65536 && Number.isInteger(shape.fanout) && shape.fanout >= 2 && shape.fanout <= 65536
  if (!ok) throw new EbsWorkerError(ErrorCode.RepoFormat, `chunk-list tree shape ${JSON.stringify(shape)} is not valid`)
}

// ---- building -----------------------------------------------------------------------------------

/** Stores a node's plaintext (unless the same node exists: `existing`) and returns its reference. */
export interface NodeStore {
  /** Content id of a node's plaintext (the repository's chunk id function). */
  idOf(plain: Buffer): Buffer
  /** Writes the node (into a tree pack) and returns where it went. */
  put(id: Buffer, plain: Buffer, level: number): Promise<BlobRef>
  /** The parent backup's node at the same place, if it has one: reused when identical. */
  existing?(level: number, index: number): Promise<BlobRef | null>
}

/** How far a builder got: what a checkpoint keeps (a few KiB whatever the volume). */
export interface BuilderState {
  /** Leaves pushed so far. */
  leaves: number
  /** Per level, the references of the node being filled (level 0: leaves). */
  pending: BlobRef[][]
}

/**
 * Builds a tree from its leaves, given in order: each full node goes out as soon as it is full,
 * so only the path being filled is held (fanout × levels references).
 */
export class TreeBuilder {
  readonly shape: TreeShape
  readonly #store: NodeStore
  readonly #root: number
  #leaves: number
  readonly #pending: BlobRef[][]

  constructor(shape: TreeShape, store: NodeStore, state?: BuilderState) {
    validateShape(shape)
    this.shape = shape
    this.#store = store
    this.#root = rootLevel(shape)
    this.#leaves = state?.leaves ?? 0
    this.#pending = Array.from({ length: this.#root + 1 }, (_, h) => [...(state?.pending[h] ?? [])])
  }

  get leavesPushed(): number {
    return this.#leaves
  }

  /** The next leaf's entries (its chunks in order; the last leaf may be shorter). */
  async pushLeaf(entries: readonly BlobRef[]): Promise<void> {
    const index = this.#leaves
    const expected = Math.min(this.shape.leafChunks, this.shape.chunks - index * this.shape.leafChunks)
    if (index >= leafCount(this.shape) || entries.length !== Math.max(expected, 0)) {
      throw new Error(`leaf ${index} has ${entries.length} entries, expected ${expected}`)
    }
    const ref = await this.#node(0, index, entries)
    this.#leaves++
    await this.#add(0, ref)
  }

  /**
   * A whole subtree at `level` that is already stored (the parent's, unchanged) or all zeros
   * (ZERO_REF), in place of its leaves. The builder must be at that subtree's start.
   */
  async pushSubtree(level: number, ref: BlobRef): Promise<void> {
    const leaves = this.shape.fanout ** level
    if (level > this.#root || this.#leaves % leaves !== 0 || this.#pending.slice(0, level).some((refs) => refs.length)) {
      throw new Error(`a level-${level} subtree cannot start after ${this.#leaves} leaves`)
    }
    this.#leaves += Math.min(leaves, leafCount(this.shape) - this.#leaves)
    await this.#add(level, ref)
  }

  /** The highest level whose subtree could start here (0 when only a leaf can). */
  get subtreeLevel(): number {
    let level = 0
    while (level < this.#root && this.#leaves % this.shape.fanout ** (level + 1) === 0 && this.#pending[level]!.length === 0) level++
    return level
  }

  /** Ends the tree: the partial nodes go out; returns the root's reference. */
  async finish(): Promise<BlobRef> {
    if (this.#leaves !== leafCount(this.shape)) throw new Error(`tree finished after ${this.#leaves} of ${leafCount(this.shape)} leaves`)
    if (this.#root === 0) return this.#pending[0]![0]!
    // Close every partial node bottom-up; the root is the one left at the top.
    for (let h = 0; h < this.#root; h++) {
      const refs = this.#pending[h]!
      if (refs.length) await this.#close(h)
    }
    return this.#pending[this.#root]![0]!
  }

  state(): BuilderState {
    return { leaves: this.#leaves, pending: this.#pending.map((refs) => [...refs]) }
  }

  /** Adds a reference at `level`; a full node goes out to the level above. */
  async #add(level: number, ref: BlobRef): Promise<void> {
    this.#pending[level]!.push(ref)
    if (level < this.#root && this.#pending[level]!.length === this.shape.fanout) await this.#close(level)
  }

  /** The node holding the pending references of `level` goes out as one of level + 1. */
  async #close(level: number): Promise<void> {
    const refs = this.#pending[level]!.splice(0)
    // Its index at level + 1: how many nodes of that level came before it.
    const index = Math.floor((this.#countAt(level) - refs.length) / this.shape.fanout)
    const ref = await this.#node(level + 1, index, refs)
    await this.#add(level + 1, ref)
  }

  /** References emitted at `level` so far (leaves for 0). */
  #countAt(level: number): number {
    if (level === 0) return this.#leaves
    return Math.ceil(this.#leaves / this.shape.fanout ** level)
  }

  async #node(level: number, index: number, entries: readonly BlobRef[]): Promise<BlobRef> {
    if (entries.every(isZeroRef)) return ZERO_REF
    const plain = encodeNode(level, entries)
    const id = this.#store.idOf(plain)
    const existing = await this.#store.existing?.(level, index)
    if (existing && existing.id.equals(id)) return existing
    return this.#store.put(id, plain, level)
  }
}

// ---- reading ------------------------------------------------------------------------------------

/** Loads and decodes a node (verifying it is the one its reference names). */
export type NodeLoader = (ref: BlobRef, level: number) => Promise<BlobRef[]>

/**
 * Walks a tree by position, loading each node once as long as positions only grow (a backup's
 * parent, a restore): two nodes per level are held, and those being loaded.
 */
export class TreeCursor {
  readonly shape: TreeShape
  readonly #load: NodeLoader
  readonly #root: BlobRef
  readonly #rootLevel: number
  /** Per level: the nodes held, newest last (two: positions that cross a boundary and back). */
  readonly #held: Array<Array<{ index: number; entries: BlobRef[] }>>
  /** Nodes being loaded, by level/index. */
  readonly #loading = new Map<string, Promise<BlobRef[]>>()

  constructor(shape: TreeShape, root: BlobRef, load: NodeLoader) {
    validateShape(shape)
    this.shape = shape
    this.#root = root
    this.#load = load
    this.#rootLevel = rootLevel(shape)
    this.#held = Array.from({ length: this.#rootLevel + 1 }, () => [])
  }

  /** The reference of node `index` at `level` (the root is node 0 of the root level); ZERO_REF for a zero subtree. */
  async refAt(level: number, index: number): Promise<BlobRef | null> {
    if (level > this.#rootLevel) return null
    if (level === this.#rootLevel) return index === 0 ? this.#root : null
    if (index * span(this.shape, level) >= Math.max(this.shape.chunks, 1)) return null
    const parent = await this.#entries(level + 1, Math.floor(index / this.shape.fanout))
    return parent[index % this.shape.fanout] ?? null
  }

  /** The entries of leaf `index` (ZERO_REF entries for a zero leaf). */
  async leaf(index: number): Promise<BlobRef[]> {
    return this.#entries(0, index)
  }

  /** The entry of chunk `i`, or null beyond the list. */
  async entryAt(i: number): Promise<BlobRef | null> {
    if (i >= this.shape.chunks) return null
    const leaf = await this.leaf(Math.floor(i / this.shape.leafChunks))
    return leaf[i % this.shape.leafChunks] ?? null
  }

  async #entries(level: number, index: number): Promise<BlobRef[]> {
    const held = this.#held[level]!.find((h) => h.index === index)
    if (held) return held.entries
    // Leaves are loaded several at once (chunk-reader.ts): one load per node, whoever asks.
    const key = `${level}/${index}`
    let loading = this.#loading.get(key)
    if (!loading) {
      loading = this.#loadEntries(level, index).finally(() => this.#loading.delete(key))
      this.#loading.set(key, loading)
    }
    return await loading
  }

  async #loadEntries(level: number, index: number): Promise<BlobRef[]> {
    const ref = await this.refAt(level, index)
    if (!ref) throw new EbsWorkerError(ErrorCode.RepoFormat, `the chunk list has no node ${index} at level ${level}`)
    const count = entriesAt(this.shape, level, index)
    const entries = isZeroRef(ref) ? Array.from({ length: count }, () => ZERO_REF) : await this.#load(ref, level)
    if (entries.length !== count) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `chunk-list node ${index} at level ${level} has ${entries.length} entries, expected ${count}`)
    }
    const cache = this.#held[level]!
    cache.push({ index, entries })
    if (cache.length > 2) cache.shift()
    return entries
  }
}
