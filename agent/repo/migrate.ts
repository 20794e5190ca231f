// `ebs-worker migrate`: upgrades a repository of format version 1 to version 2 in place. Each
// step is idempotent and the version in the config changes last, so a migration cut short (a
// SIGKILL, a lost connection) is simply run again:
//   1. every version 1 index object becomes an index run (then it is deleted);
//   2. every version 1 manifest's chunk list becomes a tree (tree packs), and the manifest is
//      replaced by its version 2 header (one atomic put; a manifest already at version 2 is left);
//   3. the config says version 2.
// Until step 3 the repository reads as version 1 (whose readers take manifests of both versions).
// Nothing else may write to the repository meanwhile (version 1 has no locks): stop the workers.
import { chunkCount } from '../core/geometry.ts'
import { decodeIndex } from './chunk-index.ts'
import { v1List } from './chunk-list.ts'
import { isRun } from './index-run.ts'
import { INDEXES } from './layout.ts'
import { treeChecksum, type ManifestV2 } from './manifest.ts'
import { PackWriter } from './pack-writer.ts'
import { REPOSITORY_VERSION, type Repository } from './repository.ts'
import { DEFAULT_FANOUT, DEFAULT_LEAF_CHUNKS, TreeBuilder } from './tree.ts'

export interface MigrateProgress {
  step: 'indexes' | 'manifests' | 'config'
  done: number
  total: number
}

export interface MigrateResult {
  /** The version the repository had. */
  from: number
  to: number
  indexesConverted: number
  manifestsConverted: number
}

export async function migrate(repo: Repository, onProgress?: (p: MigrateProgress) => void): Promise<MigrateResult> {
  const from = repo.version
  const result: MigrateResult = { from, to: REPOSITORY_VERSION, indexesConverted: 0, manifestsConverted: 0 }
  if (from === REPOSITORY_VERSION) return result

  // 1. Index objects → runs.
  const v1Indexes: Array<{ name: string; plain: Buffer }> = []
  for await (const obj of repo.indexObjects()) if (!isRun(obj.plain)) v1Indexes.push(obj)
  for (const [n, obj] of v1Indexes.entries()) {
    const entries = decodeIndex(obj.plain, obj.name)
    if (entries.length) await repo.saveRun(entries)
    await repo.deleteRun(obj.name.slice(INDEXES.length))
    result.indexesConverted++
    onProgress?.({ step: 'indexes', done: n + 1, total: v1Indexes.length })
  }

  // 2. Manifests → trees and version 2 headers.
  const index = await repo.loadV1Index()
  const ids = await repo.backupIds()
  for (const [n, id] of ids.entries()) {
    const m = await repo.loadManifest(id)
    if (m.version === 1) {
      const list = v1List(m, index)
      const trees = new PackWriter(repo, { packSize: 4 * 1024 * 1024, concurrency: 2, maxBlobBytes: 64 * 1024, tree: true })
      const shape = { chunks: chunkCount(m.size, m.chunkSize), leafChunks: DEFAULT_LEAF_CHUNKS, fanout: DEFAULT_FANOUT }
      const builder = new TreeBuilder(shape, {
        idOf: (plain) => repo.chunkId(plain),
        put: async (nodeId, plain) => trees.add(nodeId, await repo.codec.encode('tree', plain), plain.length),
      })
      // Leaves of version 1 lists hold as many chunks as version 2 leaves do: one for one.
      for (let k = 0; k < list.leaves; k++) await builder.pushLeaf(await list.leaf(k))
      const root = await builder.finish()
      await trees.finish()
      const tree = { root, leafChunks: shape.leafChunks, fanout: shape.fanout }
      const { chunks: _chunks, version: _version, ...header } = m
      const upgraded: ManifestV2 = { ...header, version: 2, tree, checksum: treeChecksum(m.size, m.chunkSize, tree) }
      await repo.replaceManifest(upgraded)
      result.manifestsConverted++
    }
    onProgress?.({ step: 'manifests', done: n + 1, total: ids.length })
  }

  // 3. The version, last.
  await repo.setVersion(REPOSITORY_VERSION)
  onProgress?.({ step: 'config', done: 1, total: 1 })
  return result
}
