// The chunk-list tree (agent/repo/tree.ts): built leaf by leaf and read back by position, with an
// in-memory node store; shapes from one leaf to several levels; zero subtrees stored as nothing;
// an unchanged tree re-uses every node; a builder resumed from its state builds the same tree.
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import {
  decodeNode, encodeNode, isZeroRef, leafCount, rootLevel, TreeBuilder, TreeCursor, ZERO_REF,
  type BlobRef, type NodeStore, type TreeShape,
} from '../agent/repo/tree.ts'

function memoryStore(parent?: TreeCursor) {
  const nodes = new Map<string, Buffer>()
  const store: NodeStore & { nodes: Map<string, Buffer>; puts: number } = {
    nodes,
    puts: 0,
    idOf: (plain) => createHash('sha256').update(plain).digest(),
    async put(id, plain) {
      store.puts++
      nodes.set(id.toString('hex'), plain)
      // Where a node lands depends on its content only, so equal trees have equal references.
      return { id, pack: 'ab'.repeat(16), offset: id.readUInt32LE(0), length: plain.length, rawLength: plain.length }
    },
    ...(parent ? { existing: (level: number, index: number) => parent.refAt(level, index) } : {}),
  }
  return store
}

const loader = (nodes: Map<string, Buffer>) => async (ref: BlobRef, level: number) => {
  const plain = nodes.get(ref.id.toString('hex'))
  if (!plain) throw new Error(`no node ${ref.id.toString('hex')}`)
  const node = decodeNode(plain, 'node')
  if (node.level !== level) throw new Error(`level ${node.level}, expected ${level}`)
  return node.entries
}

function chunkRef(i: number, zero: (i: number) => boolean): BlobRef {
  if (zero(i)) return ZERO_REF
  return { id: createHash('sha256').update(String(i)).digest(), pack: 'cd'.repeat(16), offset: i, length: 100, rawLength: 1024 }
}

async function build(shape: TreeShape, zero: (i: number) => boolean, store: NodeStore) {
  const b = new TreeBuilder(shape, store)
  for (let leaf = 0; leaf < leafCount(shape); leaf++) {
    const first = leaf * shape.leafChunks
    const n = Math.max(0, Math.min(shape.leafChunks, shape.chunks - first))
    await b.pushLeaf(Array.from({ length: n }, (_, k) => chunkRef(first + k, zero)))
  }
  return b.finish()
}

t.test('node encoding round trip', async (t) => {
  const refs = [chunkRef(1, () => false), ZERO_REF, { id: randomBytes(32), pack: 'ef'.repeat(16), offset: 2 ** 32 - 1, length: 7, rawLength: 9 }]
  t.same(decodeNode(encodeNode(3, refs), 'x'), { level: 3, entries: refs })
  t.throws(() => decodeNode(encodeNode(0, refs).subarray(0, 70), 'x'), { code: 'REPO_FORMAT' })
})

for (const shape of [
  { chunks: 0, leafChunks: 4, fanout: 3 },
  { chunks: 3, leafChunks: 4, fanout: 3 },
  { chunks: 4, leafChunks: 4, fanout: 3 },
  { chunks: 13, leafChunks: 4, fanout: 3 },
  { chunks: 36, leafChunks: 4, fanout: 3 },
  { chunks: 37, leafChunks: 4, fanout: 3 },
  { chunks: 1000, leafChunks: 4, fanout: 3 },
]) {
  t.test(`${shape.chunks} chunks in leaves of ${shape.leafChunks}, nodes of ${shape.fanout}: every entry reads back in place`, async (t) => {
    const zero = (i: number) => i % 7 === 3 || (i >= 40 && i < 200)
    const store = memoryStore()
    const root = await build(shape, zero, store)
    const cursor = new TreeCursor(shape, root, loader(store.nodes))
    for (let i = 0; i < shape.chunks; i++) {
      const e = await cursor.entryAt(i)
      if (!e || !e.id.equals(chunkRef(i, zero).id) || e.offset !== chunkRef(i, zero).offset) return t.fail(`entry ${i}`)
    }
    t.equal(await cursor.entryAt(shape.chunks), null, 'nothing beyond the end')
    t.pass(`root at level ${rootLevel(shape)}`)
    if (shape.chunks >= 200) {
      // Leaves 10..49 are all zero: no node was stored for them, nor for a node covering only them.
      const stored = [...store.nodes.values()].map((p) => decodeNode(p, 'n')).filter((n) => n.level === 0).length
      t.ok(stored < leafCount(shape), `zero leaves are not stored (${stored} of ${leafCount(shape)})`)
    }
  })
}

t.test('the same list again re-uses every node of the parent; one changed entry writes one node per level', async (t) => {
  const shape = { chunks: 5000, leafChunks: 8, fanout: 4 }
  const zero = () => false
  const first = memoryStore()
  const root = await build(shape, zero, first)
  const parent = new TreeCursor(shape, root, loader(first.nodes))
  const again = memoryStore(parent)
  const same = await build(shape, zero, again)
  t.ok(same.id.equals(root.id), 'the same root')
  t.equal(again.puts, 0, 'no node written')

  const changed = memoryStore(new TreeCursor(shape, root, loader(first.nodes)))
  const b = new TreeBuilder(shape, changed)
  for (let leaf = 0; leaf < leafCount(shape); leaf++) {
    const entries = Array.from({ length: Math.min(8, 5000 - leaf * 8) }, (_, k) => chunkRef(leaf * 8 + k, zero))
    if (leaf === 300) entries[2] = { ...entries[2]!, id: randomBytes(32) }
    await b.pushLeaf(entries)
  }
  const root2 = await b.finish()
  t.notOk(root2.id.equals(root.id), 'another root')
  t.equal(changed.puts, rootLevel(shape) + 1, `one leaf and one node per level written (${changed.puts})`)
})

t.test('a builder resumed from its state builds the same tree', async (t) => {
  const shape = { chunks: 777, leafChunks: 5, fanout: 3 }
  const zero = (i: number) => i % 11 === 0
  const store = memoryStore()
  const whole = await build(shape, zero, store)
  const b1 = new TreeBuilder(shape, store)
  for (let leaf = 0; leaf < 100; leaf++) await b1.pushLeaf(Array.from({ length: 5 }, (_, k) => chunkRef(leaf * 5 + k, zero)))
  const state = JSON.parse(JSON.stringify(b1.state(), (_k, v) => (v?.type === 'Buffer' ? v : v)), (_k, v) => (v?.type === 'Buffer' ? Buffer.from(v.data) : v))
  const b2 = new TreeBuilder(shape, store, state)
  for (let leaf = 100; leaf < leafCount(shape); leaf++) {
    await b2.pushLeaf(Array.from({ length: Math.min(5, 777 - leaf * 5) }, (_, k) => chunkRef(leaf * 5 + k, zero)))
  }
  t.ok((await b2.finish()).id.equals(whole.id), 'the same root')
  t.ok(isZeroRef(ZERO_REF))
})

t.test('leaves asked for at once (a restore loads a window\'s leaves side by side): right entries, each node loaded once', async (t) => {
  const shape = { chunks: 1000, leafChunks: 4, fanout: 3 }
  const zero = (i: number) => i % 7 === 3
  const store = memoryStore()
  const root = await build(shape, zero, store)
  const loads = new Map<string, number>()
  let inFlight = 0
  let most = 0
  const load = loader(store.nodes)
  const cursor = new TreeCursor(shape, root, async (ref, level) => {
    const key = ref.id.toString('hex')
    loads.set(key, (loads.get(key) ?? 0) + 1)
    most = Math.max(most, ++inFlight)
    await new Promise((resolve) => setTimeout(resolve, 2)) // a GET's latency
    inFlight--
    return load(ref, level)
  })
  // Leaves 0..59, asked for all at once: they share their upper nodes.
  const leaves = await Promise.all(Array.from({ length: 60 }, (_, k) => cursor.leaf(k)))
  leaves.forEach((entries, k) => {
    const want = Array.from({ length: 4 }, (_, j) => chunkRef(k * 4 + j, zero))
    if (!entries.every((e, j) => e.id.equals(want[j]!.id) && e.offset === want[j]!.offset)) t.fail(`leaf ${k}`)
  })
  t.ok(most > 1, `loads ran side by side (${most} at most)`)
  t.same([...loads.values()].filter((n) => n > 1), [], `no node loaded twice (${loads.size} loads)`)
})
