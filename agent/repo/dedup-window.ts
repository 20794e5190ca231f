// The bounded set of stored chunks a backup recognises besides its parent's: the chunks of the
// repository's newest index runs, up to a budget of entries, and this backup's own new chunks.
// An open-addressing hash table over fixed-size records in two typed arrays, so its memory is the
// budget × 40 bytes whatever the repository's size: 16 bytes of id (a 128-bit prefix of a
// 256-bit hash: the chance that two of a billion chunks share one is about 1e-21), a pack number
// and the blob's offset, length and plaintext length.
import type { BlobRef } from './tree.ts'

const RECORD = 32
const ID_PREFIX = 16

export class DedupWindow {
  readonly capacity: number
  readonly #records: Buffer
  /** Slot → record number + 1 (0: empty). Twice the capacity, a power of two: short probes. */
  readonly #slots: Uint32Array
  readonly #mask: number
  readonly #packs: string[] = []
  readonly #packNumbers = new Map<string, number>()
  #size = 0

  constructor(capacity: number) {
    this.capacity = Math.max(1, Math.floor(capacity))
    this.#records = Buffer.alloc(this.capacity * RECORD)
    let slots = 2
    while (slots < this.capacity * 2) slots *= 2
    this.#slots = new Uint32Array(slots)
    this.#mask = slots - 1
  }

  get size(): number {
    return this.#size
  }

  get full(): boolean {
    return this.#size >= this.capacity
  }

  /** Bytes this window holds (what its budget costs). */
  get bytes(): number {
    return this.#records.length + this.#slots.byteLength
  }

  /** Remembers a stored chunk; false when the window is full (or already knows it). */
  add(ref: BlobRef): boolean {
    if (this.full) return false
    const slot = this.#find(ref.id)
    if (this.#slots[slot] !== 0) return false
    const n = this.#size++
    const at = n * RECORD
    ref.id.copy(this.#records, at, 0, ID_PREFIX)
    let pack = this.#packNumbers.get(ref.pack)
    if (pack === undefined) {
      pack = this.#packs.push(ref.pack) - 1
      this.#packNumbers.set(ref.pack, pack)
    }
    this.#records.writeUInt32LE(pack, at + 16)
    this.#records.writeUInt32LE(ref.offset, at + 20)
    this.#records.writeUInt32LE(ref.length, at + 24)
    this.#records.writeUInt32LE(ref.rawLength, at + 28)
    this.#slots[slot] = n + 1
    return true
  }

  /** Where the chunk `id` is stored, if the window knows it. */
  get(id: Buffer): BlobRef | null {
    const record = this.#slots[this.#find(id)]!
    if (record === 0) return null
    const at = (record - 1) * RECORD
    return {
      id: Buffer.from(id),
      pack: this.#packs[this.#records.readUInt32LE(at + 16)]!,
      offset: this.#records.readUInt32LE(at + 20),
      length: this.#records.readUInt32LE(at + 24),
      rawLength: this.#records.readUInt32LE(at + 28),
    }
  }

  has(id: Buffer): boolean {
    return this.#slots[this.#find(id)] !== 0
  }

  /** The slot holding `id`, or the empty slot where it would go (linear probing). */
  #find(id: Buffer): number {
    // Ids are hashes: their first bytes are already uniformly spread.
    let slot = id.readUInt32LE(0) & this.#mask
    for (;;) {
      const record = this.#slots[slot]!
      if (record === 0 || this.#records.compare(id, 0, ID_PREFIX, (record - 1) * RECORD, (record - 1) * RECORD + ID_PREFIX) === 0) return slot
      slot = (slot + 1) & this.#mask
    }
  }
}

/** Entries a backup's window holds by default: 1 Mi (40 MiB), a TiB of the newest unique data at 1 MiB chunks. */
export const DEFAULT_WINDOW_ENTRIES = 1024 * 1024
/** Only runs written in the last this many days are listed. */
export const DEFAULT_WINDOW_DAYS = 30
