// One codec thread (a worker_threads worker, started by codec-threads.ts): it hashes, compresses,
// encrypts, decrypts, decompresses and verifies chunks in buffers it shares with the main thread
// (SharedArrayBuffers: nothing is copied to get here or back), one request at a time.
import v8 from 'node:v8'
import vm from 'node:vm'
import { createHash } from 'node:crypto'
import { parentPort } from 'node:worker_threads'
import { BlobDamage, BlobEngine, type BlobProfile } from './blob-format.ts'
import type { CodecReply, CodecRequest } from './codec-threads.ts'

const engines = new Map<number, BlobEngine>()
const port = parentPort!

// node:crypto hands each piece of ciphertext or plaintext back in a new buffer: garbage that V8
// collects only once 64 MiB or so of it piled up — per thread, so per core. A young-generation
// collection every few chunks (about a millisecond: the thread's heap is tiny) keeps it small.
v8.setFlagsFromString('--expose-gc')
const collect = vm.runInNewContext('gc') as (options: { type: 'minor' | 'major' }) => void
const COLLECT_EVERY = 4 * 1024 * 1024
let sinceCollect = 0

const buffer = (view: Uint8Array): Buffer => Buffer.from(view.buffer, view.byteOffset, view.byteLength)

port.on('message', (m: CodecRequest | { op: 'profile'; profile: number; keys: BlobProfile }) => {
  if (m.op === 'profile') {
    const keys = m.keys
    engines.set(m.profile, new BlobEngine({
      encryption: keys.encryption ? buffer(keys.encryption) : null, chunkId: keys.chunkId ? buffer(keys.chunkId) : null, level: keys.level,
    }))
    return
  }
  let reply: CodecReply
  try {
    const engine = engines.get(m.profile)
    if (!engine) throw new Error(`codec profile ${m.profile} unknown to this thread`)
    const data = buffer(m.data)
    switch (m.op) {
      case 'digest':
        reply = { seq: m.seq, id: createHash('sha256').update(data).digest() }
        break
      case 'identify':
        reply = BlobEngine.isZero(data) ? { seq: m.seq, zero: true } : { seq: m.seq, id: engine.chunkId(data) }
        break
      case 'seal':
        reply = { seq: m.seq, length: engine.seal('chunk', data, buffer(m.out)) }
        break
      case 'open': {
        const out = buffer(m.out)
        const length = engine.open('chunk', data, out, m.expected)
        if (!engine.chunkId(out.subarray(0, length)).equals(buffer(m.id))) throw new BlobDamage('does not match its id')
        reply = { seq: m.seq, length }
        break
      }
    }
  } catch (err) {
    reply = { seq: m.seq, error: (err as Error).message, damaged: err instanceof BlobDamage }
  }
  port.postMessage(reply)
  sinceCollect += m.data.byteLength
  if (sinceCollect >= COLLECT_EVERY) {
    sinceCollect = 0
    collect({ type: 'minor' })
  }
})
