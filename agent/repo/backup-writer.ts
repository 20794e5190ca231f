// Writing one backup: the repository's single way to save a chunk. The backup pipeline says, in
// the volume's order, what each stretch of chunks is: read (then it hands over each chunk's bytes
// and offset, in any order), unchanged since the parent, or zeros. A read chunk is recognised as
// zero, as the parent's chunk at the same place, as one the dedup window knows (the repository's
// newest chunks, and this backup's), or it is new: compressed, encrypted and packed. Its
// reference goes into the chunk list, which is built leaf by leaf as the volume's order allows
// (tree.ts): memory holds the leaves being filled, never the list. Commit writes the packs left,
// the index runs, the list's last nodes and, last, the manifest: until then the backup does not
// exist.
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { Stretch } from '../core/plan.ts'
import { chunkCount, chunkLength } from '../core/geometry.ts'
import pLimit from 'p-limit'
import { sealBound, sharedBuffer } from './codec.ts'
import { codecThreadCount } from './codec-threads.ts'
import type { DedupWindow } from './dedup-window.ts'
import { newBackupId, treeChecksum, type BackupStats, type ManifestV2 } from './manifest.ts'
import { PackWriter } from './pack-writer.ts'
import type { Repository } from './repository.ts'
import type { Lease } from './locks.ts'
import {
  DEFAULT_FANOUT, DEFAULT_LEAF_CHUNKS, isZeroRef, leafCount, span, TreeBuilder, TreeCursor, ZERO_REF,
  type BlobRef, type BuilderState, type TreeShape,
} from './tree.ts'

/** What became of a saved chunk. */
export type ChunkOutcome = 'zero' | 'parent' | 'known' | 'new'

/** How far a backup got: what a checkpoint keeps to go on from there (a few KiB whatever the volume). */
export interface WriterState {
  backupId: string
  size: number
  chunkSize: number
  parent: string | null
  leafChunks: number
  fanout: number
  /** Chunks before this one are in the list. */
  cursor: number
  /** The leaf being filled: the entries of its chunks before the cursor. */
  leaf: BlobRef[]
  builder: BuilderState
  stats: BackupStats
}

export interface BackupWriterOptions {
  /** Bytes of the volume. */
  size: number
  /** The backup unchanged chunks are taken from (incrementals). */
  parent?: ManifestV2 | null
  /** A pack is sealed once it reaches this many bytes. */
  packSize: number
  /** Packs uploading at once. */
  uploadConcurrency: number
  /** An earlier attempt's state to go on from; used only if it fits. */
  resume?: WriterState | null
  /** This backup's lease on the repository (locks.ts), released when it ends. */
  lease?: Lease
  /** Packs a prune condemned: never deduplicated against. */
  condemned?: ReadonlySet<string>
  /**
   * The backup's time, when it is not now (`backup --time`: imports, tests): its createdAt and
   * the timestamp of its id, so that ids stay in the order of the backups' times.
   */
  time?: Date | null
}

export interface CommitOptions {
  source: ManifestV2['source']
  tags: Record<string, string>
  /** Time spent on the backup, all attempts together. */
  durationMs: number
}

const emptyStats = (count: number): BackupStats => ({
  bytesRead: 0, bytesNew: 0, bytesStored: 0, chunksTotal: count, chunksZero: 0,
  chunksNew: 0, chunksReused: 0, chunksFromParent: 0, durationMs: 0,
})

export class BackupWriter {
  readonly id: string
  readonly size: number
  readonly chunkSize: number
  readonly count: number
  readonly shape: TreeShape
  readonly parent: ManifestV2 | null
  /** The state this writer went on from, when it did. */
  readonly resumed: WriterState | null
  readonly stats: BackupStats
  readonly #repo: Repository
  readonly #window: DedupWindow
  readonly #data: PackWriter
  readonly #trees: PackWriter
  readonly #builder: TreeBuilder
  readonly #parentTree: TreeCursor | null
  /** The parent's tree has this one's shape: its leaves and nodes can be taken whole. */
  readonly #sameShape: boolean
  readonly #storedBefore: number
  readonly #metadataBefore: number
  /** Stretches declared and not yet all in the list, in order. */
  readonly #stretches: Stretch[] = []
  /** Chunks declared so far (the next stretch starts here). */
  #declared: number
  /** Entries of read chunks done but not yet in the list (they may finish out of order). */
  readonly #done = new Map<number, BlobRef>()
  /** The next chunk to go into the list, and the entries of its leaf before it. */
  #cursor: number
  #leaf: BlobRef[]
  /** Leaves and subtrees go to the builder one at a time, in order. */
  #chain: Promise<void> = Promise.resolve()
  #failure: unknown = null
  readonly #lease: Lease | null
  readonly #condemned: ReadonlySet<string>
  readonly #time: Date | null
  /** Output buffers of chunk encodings, one per encoding in flight. */
  readonly #sealBuffers: Buffer[] = []
  readonly #sealing = pLimit(2 * codecThreadCount())

  /** Use Repository.startBackup. */
  constructor(repo: Repository, window: DedupWindow, options: BackupWriterOptions) {
    this.#repo = repo
    this.#window = window
    this.#lease = options.lease ?? null
    this.#condemned = options.condemned ?? new Set()
    this.#time = options.time ?? null
    this.size = options.size
    this.chunkSize = repo.chunkSize
    this.count = chunkCount(this.size, this.chunkSize)
    this.parent = options.parent ?? null
    if (this.parent && this.parent.chunkSize !== this.chunkSize) {
      throw new EbsWorkerError(ErrorCode.BackupIncompatible, `parent backup ${this.parent.id} uses ${this.parent.chunkSize}-byte chunks, not ${this.chunkSize}`,
        { context: { backupId: this.parent.id } })
    }
    const resume = options.resume && this.#fits(options.resume) ? options.resume : null
    this.resumed = resume
    this.shape = { chunks: this.count, leafChunks: resume?.leafChunks ?? DEFAULT_LEAF_CHUNKS, fanout: resume?.fanout ?? DEFAULT_FANOUT }
    this.id = resume?.backupId ?? newBackupId(this.#time ?? new Date())
    this.stats = { ...emptyStats(this.count), ...resume?.stats }
    this.#storedBefore = this.stats.bytesStored
    this.#metadataBefore = this.stats.bytesMetadata ?? 0
    this.#cursor = resume?.cursor ?? 0
    this.#declared = this.#cursor
    this.#leaf = resume ? [...resume.leaf] : []
    this.#data = new PackWriter(repo, { packSize: options.packSize, concurrency: options.uploadConcurrency, maxBlobBytes: this.chunkSize + 64 })
    // Nodes are small (a few KiB): small packs, so a backup's few nodes do not wait for 16 MiB.
    this.#trees = new PackWriter(repo, { packSize: 4 * 1024 * 1024, concurrency: 2, maxBlobBytes: 64 * 1024, tree: true })
    const p = this.parent
    this.#parentTree = p ? new TreeCursor({ chunks: chunkCount(p.size, p.chunkSize), leafChunks: p.tree.leafChunks, fanout: p.tree.fanout }, p.tree.root, repo.nodeLoader()) : null
    this.#sameShape = Boolean(p && this.#parentTree && this.#parentTree.shape.chunks === this.count &&
      p.tree.leafChunks === this.shape.leafChunks && p.tree.fanout === this.shape.fanout)
    const parentTree = this.#parentTree
    this.#builder = new TreeBuilder(this.shape, {
      idOf: (plain) => repo.chunkId(plain),
      put: async (id, plain) => this.#trees.add(id, await repo.codec.encode('tree', plain), plain.length),
      ...(this.#sameShape && parentTree ? { existing: (level: number, index: number) => parentTree.refAt(level, index) } : {}),
    }, resume?.builder)
  }

  /** An earlier attempt's state fits this backup: same volume, chunking and parent. */
  #fits(s: WriterState): boolean {
    return s.size === this.size && s.chunkSize === this.chunkSize && s.parent === (this.parent?.id ?? null) &&
      s.cursor >= 0 && s.cursor <= this.count && s.leaf.length === s.cursor % s.leafChunks
  }

  /** Chunks before this one were done by an earlier attempt (a resumed backup starts here). */
  get resumeAt(): number {
    return this.resumed?.cursor ?? 0
  }

  /** Bytes of the volume in the list so far. */
  get bytesDone(): number {
    return Math.min(this.size, this.#cursor * this.chunkSize)
  }

  /** Bytes of chunks stored in packs, all attempts together. */
  get bytesStored(): number {
    return this.#storedBefore + this.#data.bytesStored
  }

  /** Bytes of chunk-list nodes stored, all attempts together. */
  get bytesMetadata(): number {
    return this.#metadataBefore + this.#trees.bytesStored
  }

  /**
   * Says what chunks [from, to) are, in the volume's order: read (their bytes then come through
   * saveChunk, in any order), unchanged since the parent (its entries are taken, unread), or
   * zeros (never written: recorded, unread). What is not read goes into the list in its turn,
   * whole leaves and subtrees at once where it can: zeros as nothing, the parent's by reference.
   */
  declare(stretch: Stretch): void {
    if (stretch.kind === 'parent' && !this.parent) throw new EbsWorkerError(ErrorCode.BadInput, 'no parent backup to take unchanged chunks from')
    if (stretch.from !== this.#declared || stretch.to < stretch.from || stretch.to > this.count) {
      throw new Error(`chunks ${stretch.from}–${stretch.to} declared out of order (next: ${this.#declared} of ${this.count})`)
    }
    if (stretch.kind === 'parent') this.stats.chunksFromParent += stretch.to - stretch.from
    if (stretch.kind === 'zero') this.stats.chunksZero += stretch.to - stretch.from
    if (stretch.to > stretch.from) this.#stretches.push(stretch)
    this.#declared = stretch.to
  }

  /**
   * Saves the chunk read at `offset` (declared with read()): zero, the parent's, known, or new
   * (encoded into a pack). `data` may be reused by the caller once this resolves; backpressure:
   * it waits while too many packs are uploading.
   */
  async saveChunk(offset: number, data: Buffer): Promise<ChunkOutcome> {
    this.#throwIfFailed()
    const i = this.#chunkAt(offset)
    const length = chunkLength(this.size, this.chunkSize, i)
    if (data.length !== length) {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `chunk at offset ${offset} is ${data.length} bytes, expected ${length}`, { context: { offset } })
    }
    this.stats.bytesRead += length
    let outcome: ChunkOutcome
    let ref: BlobRef
    // Zero test and id on a codec thread when `data` is shared (the pipeline's read buffers are).
    const id = await this.#repo.codec.identifyChunk(data)
    if (!id) {
      this.stats.chunksZero++
      outcome = 'zero'
      ref = ZERO_REF
    } else {
      const theirs = await this.#parentEntry(i, length)
      const known = this.#usable(theirs && theirs.id.equals(id) ? theirs : null) ?? this.#usable(this.#window.get(id))
      if (known) {
        this.stats.chunksReused++
        outcome = theirs === known ? 'parent' : 'known'
        ref = known
      } else {
        this.stats.chunksNew++
        this.stats.bytesNew += length
        // Encoded on a codec thread into a reused shared buffer, then copied into the pack. Two
        // encodings per thread in flight keep the threads busy; more would only hold buffers.
        ref = await this.#sealing(async () => {
          const out = this.#sealBuffers.pop() ?? sharedBuffer(sealBound(this.chunkSize))
          try {
            return await this.#data.add(id, await this.#repo.codec.sealChunk(data, out), length)
          } finally {
            this.#sealBuffers.push(out)
          }
        })
        // Two identical chunks of this backup are stored once (while the window has room).
        this.#window.add(ref)
        outcome = 'new'
      }
    }
    this.#done.set(i, ref)
    await this.#advance()
    return outcome
  }

  /** Uploads what is packed and waits until every chunk done so far is in the list and durable. */
  async flush(): Promise<void> {
    await this.#advance()
    await this.#chain
    this.#throwIfFailed()
    await this.#data.flush()
    await this.#trees.flush()
  }

  /** What a checkpoint saves: call after flush(), with no saveChunk in flight. */
  state(durationMs: number): WriterState {
    return {
      backupId: this.id, size: this.size, chunkSize: this.chunkSize, parent: this.parent?.id ?? null,
      leafChunks: this.shape.leafChunks, fanout: this.shape.fanout, cursor: this.#cursor, leaf: [...this.#leaf],
      builder: this.#builder.state(), stats: { ...this.stats, bytesStored: this.bytesStored, bytesMetadata: this.bytesMetadata, durationMs },
    }
  }

  /** Writes the packs left, the index runs, the list's last nodes and, last, the manifest: the backup now exists. */
  async commit(options: CommitOptions): Promise<ManifestV2> {
    await this.#advance()
    await this.#chain
    this.#throwIfFailed()
    if (this.#cursor !== this.count) throw new Error(`backup ${this.id}: ${this.count - this.#cursor} chunks never saved`)
    const root = await this.#builder.finish()
    await this.#data.finish()
    await this.#trees.finish()
    this.stats.bytesStored = this.bytesStored
    this.stats.bytesMetadata = this.bytesMetadata
    this.stats.durationMs = options.durationMs
    const tree = { root, leafChunks: this.shape.leafChunks, fanout: this.shape.fanout }
    const manifest: ManifestV2 = {
      version: 2,
      id: this.id,
      createdAt: (this.#time ?? new Date()).toISOString(),
      source: options.source,
      size: this.size,
      chunkSize: this.chunkSize,
      parent: this.parent?.id ?? null,
      tree,
      checksum: treeChecksum(this.size, this.chunkSize, tree),
      stats: this.stats,
      tags: options.tags,
    }
    await this.#repo.saveManifest(manifest)
    await this.#lease?.release()
    return manifest
  }

  /** Waits for every upload to end (before giving up on a backup); nothing becomes visible. */
  async abandon(): Promise<void> {
    await this.#chain.catch(() => {})
    await this.#data.settle()
    await this.#trees.settle()
    await this.#lease?.release()
  }

  /** The parent's entry for chunk `i` when it is a whole chunk there too (else null). */
  async #parentEntry(i: number, length: number): Promise<BlobRef | null> {
    const tree = this.#parentTree
    if (!tree || length !== this.chunkSize || (i + 1) * this.chunkSize > this.parent!.size) return null
    const entry = await tree.entryAt(i)
    return entry && !isZeroRef(entry) ? entry : null
  }

  /** A stored copy this backup may refer to: not in a pack a prune condemned. */
  #usable(ref: BlobRef | null): BlobRef | null {
    return ref && !this.#condemned.has(ref.pack) ? ref : null
  }

  /** Moves what is ready into the list, in order; leaves go to the builder one at a time. */
  async #advance(): Promise<void> {
    const work = this.#chain.then(() => this.#drain())
    this.#chain = work.catch((err: unknown) => {
      this.#failure ??= err
    })
    await work
  }

  async #drain(): Promise<void> {
    const L = this.shape.leafChunks
    while (this.#cursor < this.count) {
      const stretch = this.#stretches[0]
      if (!stretch || stretch.from > this.#cursor) break
      if (stretch.kind === 'read') {
        const ref = this.#done.get(this.#cursor)
        if (!ref) break
        this.#done.delete(this.#cursor)
        this.#leaf.push(ref)
        this.#cursor++
      } else if (this.#leaf.length === 0 && (await this.#pushWhole(stretch))) {
        // One or more whole leaves or subtrees went in at once.
      } else {
        // Part of a leaf: its entries one by one (from the parent's leaf, or zeros).
        const end = Math.min(stretch.to, (Math.floor(this.#cursor / L) + 1) * L)
        for (let i = this.#cursor; i < end; i++) {
          this.#leaf.push(stretch.kind === 'zero' ? ZERO_REF : ((await this.#parentTree!.entryAt(i)) ?? ZERO_REF))
        }
        this.#cursor = end
      }
      if (this.#cursor >= stretch.to) this.#stretches.shift()
      if (this.#leaf.length === L || (this.#cursor === this.count && this.#leaf.length > 0)) {
        const leaf = this.#leaf
        this.#leaf = []
        await this.#builder.pushLeaf(leaf)
      }
    }
    if (this.#cursor === this.count && this.#builder.leavesPushed < leafCount(this.shape)) {
      // A volume of no chunks: one empty leaf.
      await this.#builder.pushLeaf([])
    }
  }

  /**
   * At a leaf boundary, a zero or unchanged stretch that covers whole leaves goes in as whole
   * subtrees: zero ones as nothing, the parent's by its references, without reading them.
   */
  async #pushWhole(stretch: Stretch): Promise<boolean> {
    const L = this.shape.leafChunks
    if (this.#cursor % L !== 0) return false
    if (stretch.kind === 'parent' && !this.#sameShape) return false
    let pushed = false
    for (;;) {
      const leafIndex = this.#cursor / L
      // The largest subtree that starts here and that the stretch covers (to the end of the volume).
      let level = this.#builder.subtreeLevel
      while (level >= 0 && Math.min(this.#cursor + span(this.shape, level), this.count) > stretch.to) level--
      if (level < 0) return pushed
      const ref = stretch.kind === 'zero' ? ZERO_REF : await this.#parentTree!.refAt(level, leafIndex / this.shape.fanout ** level)
      if (!ref) return pushed
      await this.#builder.pushSubtree(level, ref)
      this.#cursor = Math.min(this.#cursor + span(this.shape, level), this.count)
      pushed = true
      if (this.#cursor >= stretch.to || this.#cursor >= this.count) return true
    }
  }

  #chunkAt(offset: number): number {
    if (offset % this.chunkSize !== 0 || offset < 0 || offset >= Math.max(this.size, 1)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `offset ${offset} is not the start of a chunk of this ${this.size}-byte volume`)
    }
    return offset / this.chunkSize
  }

  #throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure
  }
}
