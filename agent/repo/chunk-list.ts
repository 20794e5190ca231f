// A backup's chunk list as readers see it, whatever the manifest's version: leaf after leaf of
// blob references (what each chunk is and where it is). Version 2 walks the tree (one node per
// level held); version 1 maps the ids in the manifest through the repository's index, as version
// 1 always did.
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { chunkCount } from '../core/geometry.ts'
import type { ChunkIndex } from './chunk-index.ts'
import { chunkIdAt, ZERO_ID, type ManifestV1, type ManifestV2 } from './manifest.ts'
import { DEFAULT_LEAF_CHUNKS, isZeroRef, leafCount, TreeCursor, ZERO_REF, type BlobRef, type NodeLoader } from './tree.ts'

export interface ChunkList {
  /** Chunks in the list. */
  readonly count: number
  /** Chunks per leaf (the last one may have fewer). */
  readonly leafChunks: number
  readonly leaves: number
  /** The entries of leaf `k`: ZERO_REF for a zero chunk. Fastest in order. */
  leaf(k: number): Promise<BlobRef[]>
  /** Whether leaf `k` holds only zero chunks (known without reading it, in version 2). */
  zeroLeaf(k: number): Promise<boolean>
}

export function treeList(m: ManifestV2, load: NodeLoader): ChunkList {
  const shape = { chunks: chunkCount(m.size, m.chunkSize), leafChunks: m.tree.leafChunks, fanout: m.tree.fanout }
  const cursor = new TreeCursor(shape, m.tree.root, load)
  return {
    count: shape.chunks, leafChunks: shape.leafChunks, leaves: leafCount(shape), leaf: (k) => cursor.leaf(k),
    zeroLeaf: async (k) => {
      const ref = await cursor.refAt(0, k)
      return ref !== null && isZeroRef(ref)
    },
  }
}

/** Leaves of a version 1 list: as many chunks as a version 2 leaf holds by default. */
const V1_LEAF = DEFAULT_LEAF_CHUNKS

export function v1List(m: ManifestV1, index: ChunkIndex): ChunkList {
  const count = chunkCount(m.size, m.chunkSize)
  return {
    count,
    leafChunks: V1_LEAF,
    leaves: Math.max(1, Math.ceil(count / V1_LEAF)),
    async zeroLeaf(k) {
      for (let i = k * V1_LEAF; i < Math.min(count, (k + 1) * V1_LEAF); i++) if (!chunkIdAt(m.chunks, i).equals(ZERO_ID)) return false
      return true
    },
    async leaf(k) {
      const out: BlobRef[] = []
      for (let i = k * V1_LEAF; i < Math.min(count, (k + 1) * V1_LEAF); i++) {
        const id = chunkIdAt(m.chunks, i)
        if (id.equals(ZERO_ID)) {
          out.push(ZERO_REF)
          continue
        }
        const loc = index.get(id)
        if (!loc) {
          throw new EbsWorkerError(ErrorCode.ChunkMissing,
            `backup ${m.id}: the chunk at offset ${i * m.chunkSize} is not in any index of the repository`,
            { context: { backupId: m.id, offset: i * m.chunkSize } })
        }
        out.push({ id: Buffer.from(id), ...loc })
      }
      return out
    },
  }
}
