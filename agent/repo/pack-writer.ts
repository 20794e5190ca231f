// Turns a stream of encoded chunk blobs into uploaded packs, with a bounded number of packs in
// flight: memory is (concurrency + 2) pack buffers, whatever the volume size. Each pack's index
// is written as soon as the pack is durable, so a backup killed midway leaves packs the next
// backup finds and reuses; finish() folds those per-pack indexes into one index per backup.
import type { IndexEntry } from './chunk-index.ts'
import { PackBuilder } from './pack.ts'
import { PACK_INDEX } from './layout.ts'
import type { Repository } from './repository.ts'

export interface PackWriterOptions {
  /** A pack is sealed once it reaches this many bytes. */
  packSize: number
  /** Packs uploading at once. */
  concurrency: number
  /** The largest blob that will be added (a chunk plus its encoding overhead). */
  maxBlobBytes: number
}

export class PackWriter {
  readonly #repo: Repository
  readonly #options: PackWriterOptions
  readonly #inflight = new Set<Promise<void>>()
  readonly #entries: IndexEntry[] = []
  readonly #packIndexes: string[] = []
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
   * Copies a blob into the current pack (the parts may be reused once this returns or throws);
   * then waits while too many packs are uploading: backpressure on the readers.
   */
  async add(id: Buffer, parts: readonly Buffer[], rawLength: number): Promise<void> {
    this.#throwIfFailed()
    this.#builder.add(id, parts, rawLength)
    if (this.#builder.sealedBound >= this.#options.packSize) this.#seal()
    while (this.#inflight.size > this.#options.concurrency) await Promise.race(this.#inflight)
    this.#throwIfFailed()
  }

  /** Uploads what is left and writes this backup's index; entries are durable afterwards. */
  async finish(indexName: string): Promise<void> {
    if (this.#builder.count > 0) this.#seal()
    await this.settle()
    this.#throwIfFailed()
    if (this.#entries.length === 0) return
    await this.#repo.saveIndex(indexName, this.#entries)
    // The per-pack indexes are now redundant; if deleting fails they are merely duplicates.
    await Promise.allSettled(this.#packIndexes.map((name) => this.#repo.deleteIndex(name)))
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
    return new PackBuilder(this.#free.pop() ?? Buffer.allocUnsafeSlow(capacity))
  }

  #seal(): void {
    const builder = this.#builder
    this.#builder = this.#newBuilder()
    const upload = (async () => {
      const stored = await this.#repo.savePack(builder)
      // Only a pack whose upload ended well gives its buffer back: after a failure the SDK
      // may still be sending parts of it.
      this.#free.push(builder.buffer)
      const indexName = `${PACK_INDEX}${builder.id}`
      await this.#repo.saveIndex(indexName, builder.entries)
      this.#packIndexes.push(indexName)
      for (const entry of builder.entries) this.#entries.push(entry)
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
