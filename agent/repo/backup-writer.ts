// Writing one backup: the repository's single way to save a chunk. The backup pipeline hands over
// a chunk's bytes and its offset in the volume; here it is recognised as zero, already stored
// (the repository's index, or this backup's chunks in flight) or new — then compressed,
// encrypted and packed — and its id goes into the backup's chunk list at that offset. Commit
// writes the index and, last, the manifest: until then the backup does not exist.
import type { ChunkIndex } from './chunk-index.ts'
import { ID_BYTES } from './chunk-index.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { chunkCount, chunkLength, doneBytes, isDone, markDone, newDoneSet, type DoneSet } from '../core/geometry.ts'
import { backupChecksum, chunkIdAt, newBackupId, ZERO_ID, type BackupStats, type Manifest } from './manifest.ts'
import { PackWriter } from './pack-writer.ts'
import type { Repository } from './repository.ts'

/** What became of a saved chunk. */
export type ChunkOutcome = 'zero' | 'known' | 'new'

/** How far a backup got: enough to go on from there (a checkpoint holds it). */
export interface BackupProgressState {
  backupId: string
  size: number
  chunkSize: number
  parent: string | null
  /** One bit per chunk: its id is in `chunks` and its data durable. */
  done: DoneSet
  /** The chunk list so far: an id per chunk, zero ids where not done. */
  chunks: Buffer
  stats: BackupStats
}

export interface BackupWriterOptions {
  /** Bytes of the volume. */
  size: number
  /** The backup unchanged chunks are taken from (incrementals). */
  parent?: Manifest | null
  /** A pack is sealed once it reaches this many bytes. */
  packSize: number
  /** Packs uploading at once. */
  uploadConcurrency: number
  /** An earlier attempt's state to go on from; used only if it fits and its chunks are all indexed. */
  resume?: BackupProgressState | null
}

export interface CommitOptions {
  source: Manifest['source']
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
  readonly parent: Manifest | null
  /** The state this writer went on from, when it did. */
  readonly resumed: BackupProgressState | null
  readonly stats: BackupStats
  readonly #repo: Repository
  readonly #index: ChunkIndex
  readonly #done: DoneSet
  readonly #chunks: Buffer
  readonly #pack: PackWriter
  /** Ids stored by this backup so far: two identical chunks in flight are stored once. */
  readonly #session = new Set<string>()
  readonly #zero: Buffer
  readonly #storedBefore: number

  /** Use Repository.startBackup. */
  constructor(repo: Repository, index: ChunkIndex, options: BackupWriterOptions) {
    this.#repo = repo
    this.#index = index
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
    this.id = resume?.backupId ?? newBackupId()
    // Chunks done by an earlier attempt (durable when its state was saved) are not redone.
    this.#done = resume ? resume.done : newDoneSet(this.count)
    this.#chunks = resume ? resume.chunks : Buffer.alloc(this.count * ID_BYTES)
    this.stats = { ...emptyStats(this.count), ...resume?.stats }
    this.#storedBefore = this.stats.bytesStored
    this.#zero = Buffer.alloc(this.chunkSize)
    this.#pack = new PackWriter(repo, { packSize: options.packSize, concurrency: options.uploadConcurrency, maxBlobBytes: this.chunkSize + 64 })
  }

  /** An earlier attempt's state fits this backup: same volume, chunking and parent, every done chunk indexed. */
  #fits(s: BackupProgressState): boolean {
    if (s.size !== this.size || s.chunkSize !== this.chunkSize || s.parent !== (this.parent?.id ?? null)) return false
    if (s.done.length !== newDoneSet(this.count).length || s.chunks.length !== this.count * ID_BYTES) return false
    for (let i = 0; i < this.count; i++) {
      if (!isDone(s.done, i)) continue
      const id = chunkIdAt(s.chunks, i)
      if (!id.equals(ZERO_ID) && !this.#index.has(id)) return false
    }
    return true
  }

  /** Whether the chunk at `offset` is in the list already (an earlier attempt's, or saved). */
  isDone(offset: number): boolean {
    return isDone(this.#done, this.#chunkAt(offset))
  }

  /** Bytes of the volume accounted for so far. */
  get bytesDone(): number {
    return doneBytes(this.#done, this.size, this.chunkSize)
  }

  /** Bytes stored in packs, all attempts together. */
  get bytesStored(): number {
    return this.#storedBefore + this.#pack.bytesStored
  }

  /**
   * Saves the chunk read at `offset`: zero, already stored, or new (encoded into a pack). `data`
   * may be reused by the caller once this resolves. Resolves once the chunk is in a pack being
   * filled; backpressure: it waits while too many packs are uploading.
   */
  async saveChunk(offset: number, data: Buffer): Promise<ChunkOutcome> {
    const i = this.#chunkAt(offset)
    if (data.length !== chunkLength(this.size, this.chunkSize, i)) {
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `chunk at offset ${offset} is ${data.length} bytes, expected ${chunkLength(this.size, this.chunkSize, i)}`, { context: { offset } })
    }
    this.stats.bytesRead += data.length
    let outcome: ChunkOutcome
    if (data.equals(data.length === this.chunkSize ? this.#zero : this.#zero.subarray(0, data.length))) {
      this.stats.chunksZero++
      outcome = 'zero'
    } else {
      const id = this.#repo.chunkId(data)
      const key = id.toString('hex')
      if (this.#index.hasKey(key) || this.#session.has(key)) {
        this.stats.chunksReused++
        outcome = 'known'
      } else {
        this.#session.add(key)
        this.stats.chunksNew++
        this.stats.bytesNew += data.length
        await this.#pack.add(id, await this.#repo.codec.encodeParts('chunk', data), data.length)
        outcome = 'new'
      }
      id.copy(this.#chunks, i * ID_BYTES)
    }
    markDone(this.#done, i)
    return outcome
  }

  /**
   * The chunk at `offset` is unchanged since the parent: its id is taken from there, unread. Its
   * presence in the index is checked, so an incremental never refers to a chunk the repository
   * has lost track of.
   */
  fromParent(offset: number): void {
    const i = this.#chunkAt(offset)
    const parent = this.parent
    if (!parent) throw new EbsWorkerError(ErrorCode.BadInput, 'no parent backup to take unchanged chunks from')
    const id = chunkIdAt(parent.chunks, i)
    if (!id.equals(ZERO_ID) && !this.#index.has(id)) {
      throw new EbsWorkerError(ErrorCode.ChunkMissing, `parent backup ${parent.id} refers to chunk ${i} which no index lists`,
        { context: { backupId: parent.id, offset } })
    }
    id.copy(this.#chunks, i * ID_BYTES)
    this.stats.chunksFromParent++
    markDone(this.#done, i)
  }

  /** The chunk at `offset` was never written (the snapshot does not hold it): zeros, unread. */
  zero(offset: number): void {
    const i = this.#chunkAt(offset)
    this.stats.chunksZero++
    markDone(this.#done, i)
  }

  /** Uploads the pack being filled and waits for every upload: every chunk saved so far is durable. */
  async flush(): Promise<void> {
    await this.#pack.flush()
  }

  /** What a checkpoint saves: call after flush(), with no saveChunk in flight. */
  state(durationMs: number): BackupProgressState {
    return {
      backupId: this.id, size: this.size, chunkSize: this.chunkSize, parent: this.parent?.id ?? null,
      done: this.#done, chunks: this.#chunks, stats: { ...this.stats, bytesStored: this.bytesStored, durationMs },
    }
  }

  /** Writes the packs left, the backup's index and, last, its manifest: the backup now exists. */
  async commit(options: CommitOptions): Promise<Manifest> {
    for (let i = 0; i < this.count; i++) {
      if (!isDone(this.#done, i)) throw new Error(`backup ${this.id}: chunk ${i} was never saved`)
    }
    await this.#pack.finish(`backup-${this.id}`)
    this.stats.bytesStored = this.bytesStored
    this.stats.durationMs = options.durationMs
    const manifest: Manifest = {
      id: this.id,
      createdAt: new Date().toISOString(),
      source: options.source,
      size: this.size,
      chunkSize: this.chunkSize,
      parent: this.parent?.id ?? null,
      chunks: this.#chunks,
      checksum: backupChecksum(this.size, this.chunkSize, this.#chunks),
      stats: this.stats,
      tags: options.tags,
    }
    await this.#repo.saveManifest(manifest)
    return manifest
  }

  /** Waits for every upload to end (before giving up on a backup); nothing becomes visible. */
  async abandon(): Promise<void> {
    await this.#pack.settle()
  }

  #chunkAt(offset: number): number {
    if (offset % this.chunkSize !== 0 || offset < 0 || offset >= Math.max(this.size, 1)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `offset ${offset} is not the start of a chunk of this ${this.size}-byte volume`)
    }
    return offset / this.chunkSize
  }
}
