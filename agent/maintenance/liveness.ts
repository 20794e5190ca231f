// What the repository still needs: every blob a kept backup's chunk list reaches (its nodes and
// its chunks) and every blob an unfinished backup's checkpoint refers to, found by walking the
// trees, not by loading an index. Memory is bounded whatever the repository's size: the
// references found go to spill files on local disk, one per range of pack ids, and are then
// sorted and grouped pack by pack, one file at a time.
//
// Backups of the same volume share most of their trees: each is walked alongside the one before
// it, and a subtree whose node is the earlier backup's at the same place (same id) is not walked
// again, so the walk reads about what is unique to each backup, not every backup whole.
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chunkCount } from '../core/geometry.ts'
import type { ManifestV2 } from '../repo/manifest.ts'
import type { Repository } from '../repo/repository.ts'
import { isZeroRef, rootLevel, TreeCursor, validateShape, type BlobRef, type TreeShape } from '../repo/tree.ts'

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

/** A pack's live blobs. */
export interface PackLive {
  pack: string
  /** Its blobs are chunk-list nodes. */
  tree: boolean
  blobs: Array<{ offset: number; length: number }>
  liveBytes: number
}

const RECORD = 25 // pack 16 | offset u32 | length u32 | tree u8
const PARTITIONS = 256
const FLUSH_BYTES = 64 * 1024

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

export function manifestRoot(m: ManifestV2): Root {
  return {
    group: m.source.volumeId ?? m.source.device, time: m.createdAt, tree: m.tree.root,
    shape: { chunks: chunkCount(m.size, m.chunkSize), leafChunks: m.tree.leafChunks, fanout: m.tree.fanout },
  }
}

/** Walks `roots`, writing what they reach to spill files; `moved` lists the packs that have moved records. */
export async function walkLiveness(repo: Repository, roots: Root[], moved: ReadonlySet<string>, onProgress?: (done: number, total: number) => void): Promise<Liveness> {
  const dir = await mkdtemp(join(tmpdir(), 'ebs-worker-prune-'))
  const files: FileHandle[] = []
  const buffers = Array.from({ length: PARTITIONS }, () => ({ buf: Buffer.allocUnsafe(FLUSH_BYTES), used: 0 }))
  for (let p = 0; p < PARTITIONS; p++) files.push(await open(join(dir, `${p}`), 'w+'))
  const state: Liveness = {
    movedNeeded: new Set(), nodesRead: 0, refs: 0,
    packs: () => grouped(files, dir),
    close: async () => {
      await Promise.allSettled(files.map((f) => f.close()))
      await rm(dir, { recursive: true, force: true })
    },
  }
  const flush = async (p: number): Promise<void> => {
    const b = buffers[p]!
    if (b.used) await files[p]!.write(b.buf, 0, b.used)
    b.used = 0
  }
  const emit = async (ref: BlobRef, tree: boolean): Promise<void> => {
    let at = ref
    if (moved.has(ref.pack)) {
      state.movedNeeded.add(ref.pack)
      at = (await repo.locate(ref)) ?? ref
    }
    const p = parseInt(at.pack.slice(0, 2), 16)
    const b = buffers[p]!
    if (b.used + RECORD > FLUSH_BYTES) await flush(p)
    b.buf.write(at.pack, b.used, 16, 'hex')
    b.buf.writeUInt32LE(at.offset, b.used + 16)
    b.buf.writeUInt32LE(at.length, b.used + 20)
    b.buf.writeUInt8(tree ? 1 : 0, b.used + 24)
    b.used += RECORD
    state.refs++
  }
  const load = repo.nodeLoader()

  try {
    // Each group's roots in time order: each walked against the previous one's tree.
    const groups = new Map<string, Root[]>()
    for (const r of roots) (groups.get(r.group) ?? groups.set(r.group, []).get(r.group)!).push(r)
    let done = 0
    for (const list of groups.values()) {
      list.sort((a, b) => a.time.localeCompare(b.time))
      let previous: { shape: TreeShape; cursor: TreeCursor } | null = null
      for (const root of list) {
        validateShape(root.shape)
        const prev = previous && sameShape(previous.shape, root.shape) ? previous.cursor : null
        const visit = async (ref: BlobRef, level: number, index: number, againstPrevious: boolean): Promise<void> => {
          if (isZeroRef(ref)) return
          if (againstPrevious && prev) {
            const theirs = await prev.refAt(level, index)
            if (theirs && theirs.id.equals(ref.id)) return
          }
          await emit(ref, true)
          const entries = await load(ref, level)
          state.nodesRead++
          if (level === 0) {
            for (const e of entries) if (!isZeroRef(e)) await emit(e, false)
            return
          }
          for (const [j, child] of entries.entries()) await visit(child, level - 1, index * root.shape.fanout + j, againstPrevious)
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
    for (let p = 0; p < PARTITIONS; p++) await flush(p)
    return state
  } catch (err) {
    await state.close()
    throw err
  }
}

function sameShape(a: TreeShape, b: TreeShape): boolean {
  return a.chunks === b.chunks && a.leafChunks === b.leafChunks && a.fanout === b.fanout
}

/** The spill files, partition by partition: records sorted by pack and offset, merged, grouped by pack. */
async function* grouped(files: FileHandle[], dir: string): AsyncGenerator<PackLive> {
  for (let p = 0; p < files.length; p++) {
    const data = await readFile(join(dir, `${p}`))
    const n = data.length / RECORD
    const order = Array.from({ length: n }, (_, i) => i)
    // By pack, then by the offset's bytes: equal references end up side by side.
    order.sort((a, b) => data.compare(data, b * RECORD, b * RECORD + 20, a * RECORD, a * RECORD + 20))
    let current: PackLive | null = null
    let lastOffset = -1
    for (const i of order) {
      const at = i * RECORD
      const pack = data.toString('hex', at, at + 16)
      const offset = data.readUInt32LE(at + 16)
      const length = data.readUInt32LE(at + 20)
      if (!current || current.pack !== pack) {
        if (current) yield byOffset(current)
        current = { pack, tree: data.readUInt8(at + 24) === 1, blobs: [], liveBytes: 0 }
        lastOffset = -1
      }
      if (offset === lastOffset) continue
      current.blobs.push({ offset, length })
      current.liveBytes += length
      lastOffset = offset
    }
    if (current) yield byOffset(current)
  }
}

function byOffset(p: PackLive): PackLive {
  p.blobs.sort((a, b) => a.offset - b.offset)
  return p
}
