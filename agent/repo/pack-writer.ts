// Turns a stream of encoded blobs into uploaded packs, with a bounded number of packs in flight:
// memory is (concurrency + 1) pack buffers (those uploading and the one being filled), whatever
// the volume size. For data packs, each
// pack's index run is written as soon as the pack is durable, so a backup killed midway leaves
// packs the next backup finds (its dedup window loads the newest runs) and reuses; every
// CONSOLIDATE entries, and at the end, those runs are folded into one sorted run, so a backup
// leaves one run per 64 Ki new chunks and holds no more than that many entries. Tree packs
// (chunk-list nodes) are not indexed: their nodes are found through the references that lead
// to them.
import type { BlobRef } from './tree.ts'
import { sharedBuffer } from './codec.ts'
import { PackBuilder } from './pack.ts'
import type { Repository } from './repository.ts'

export interface PackWriterOptions {
  /** A pack is sealed once it reaches this many bytes. */
  packSize: number
  /** Packs uploading at once. */
  concurrency: number
  /** The largest blob that will be added (a chunk plus its encoding overhead). */
  maxBlobBytes: number
  /** Chunk-list nodes rather than chunks: not indexed. */
  tree?: boolean
}

/** Entries folded into one run (64 GiB of new data at 1 MiB chunks; a few MiB of memory). */
export const CONSOLIDATE = 65536

export class PackWriter {
  readonly #repo: Repository
  readonly #options: PackWriterOptions
  readonly #inflight = new Set<Promise<void>>()
  readonly #entries: BlobRef[] = []
  readonly #runs: string[] = []
  readonly #free: Buffer[] = []
  #builder: PackBuilder
  #failure: unknown = null
  bytesStored = 0
  packsWritten = 0

  constructor(repo: Repository, options: PackWriterOptions) {
    this.#repo = repo
    this.#options = options
    this.#builder = this.#newBuilder()
  }

  /**
   * Copies a blob into the current pack (`blob` may be reused once this resolves) and says
   * where it will be. A blob that would start a new pack while `concurrency` packs are uploading
   * waits for one of them: backpressure on the readers, and at most `concurrency` + 1 pack
   * buffers. The blob is durable once flush() or finish() has resolved.
   */
  async add(id: Buffer, blob: Buffer, rawLength: number): Promise<BlobRef> {
    this.#throwIfFailed()
    const length = blob.length
    while (this.#builder.bytes > 0 && (this.#builder.sealedBound >= this.#options.packSize || this.#builder.bytes + length > this.#builder.buffer.length - 64 * 1024)) {
      if (this.#inflight.size < this.#options.concurrency) {
        this.#seal()
        break
      }
      await Promise.race(this.#inflight)
      this.#throwIfFailed()
    }
    const ref = this.#builder.add(id, blob, rawLength)
    if (this.#builder.sealedBound >= this.#options.packSize && this.#inflight.size < this.#options.concurrency) this.#seal()
    return ref
  }

  /** Uploads what is left and folds the last per-pack runs; everything is durable afterwards. */
  async finish(): Promise<void> {
    await this.flush()
    await this.#consolidate()
  }

  /** One sorted run in place of the per-pack runs written so far. */
  async #consolidate(): Promise<void> {
    if (this.#options.tree || this.#entries.length === 0) return
    const entries = this.#entries.splice(0)
    const runs = this.#runs.splice(0)
    await this.#repo.saveRun(entries)
    // The per-pack runs are now redundant; if deleting fails they are merely duplicates.
    await Promise.allSettled(runs.map((name) => this.#repo.deleteRun(name)))
  }

  /** Uploads the pack being filled and waits for every upload: all blobs added so far are durable. */
  async flush(): Promise<void> {
    if (this.#builder.count > 0) this.#seal()
    await this.settle()
    this.#throwIfFailed()
  }

  /** Waits for every upload to end, successfully or not (before giving up on a backup). */
  async settle(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight])
  }

  #newBuilder(): PackBuilder {
    const capacity = this.#options.packSize + this.#options.maxBlobBytes + 64 * 1024
    // Shared with the codec threads, which hash a sealed pack for its upload.
    return new PackBuilder(this.#free.pop() ?? sharedBuffer(capacity), { tree: this.#options.tree ?? false })
  }

  #seal(): void {
    const builder = this.#builder
    this.#builder = this.#newBuilder()
    const upload = (async () => {
      const stored = await this.#repo.savePack(builder)
      // Only a pack whose upload ended well gives its buffer back: after a failure the SDK
      // may still be sending parts of it.
      this.#free.push(builder.buffer)
      if (!this.#options.tree) {
        this.#runs.push(await this.#repo.saveRun(builder.entries))
        for (const entry of builder.entries) this.#entries.push(entry)
        if (this.#entries.length >= CONSOLIDATE) await this.#consolidate()
      }
      this.bytesStored += stored
      this.packsWritten++
    })()
      .catch((err: unknown) => {
        this.#failure ??= err
      })
      .finally(() => this.#inflight.delete(upload))
    this.#inflight.add(upload)
  }

  #throwIfFailed(): void {
    if (this.#failure !== null) throw this.#failure
  }
}

