// The codec threads: the CPU work of backups and restores — hashing chunks into their ids,
// zstd, AES-256-GCM, and on the way back the same in reverse plus the id check — spread over
// every core. The main thread keeps the I/O and the bookkeeping; a chunk's bytes stay where they
// were read (SharedArrayBuffer-backed buffers, sharedBuffer()), and each thread encodes into or
// decodes out of them in place: nothing is copied between threads.
//
// One pool per process, started on first use, one thread per core (EBS_WORKER_CODEC_THREADS to
// change it). Requests go to the thread with the fewest waiting; each thread answers in order.
// Ordering and memory bounds are the callers': the pool holds no buffers of its own. Threads
// do not keep the process alive while idle; a thread that dies fails its requests and is
// replaced by the next one.
import { getCompileCacheDir } from 'node:module'
import { availableParallelism } from 'node:os'
import { extname } from 'node:path'
import { Worker } from 'node:worker_threads'
import { createHash } from 'node:crypto'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { BlobProfile } from './blob-format.ts'

const WASM_PAGE = 65536

/**
 * A buffer the codec threads can work in without a copy, starting on a page boundary.
 *
 * Why the boundary: the kernel's copies to and from user memory (read, write, send, recv) and
 * memcpy are at their fastest between aligned addresses, and at their slowest on this class of
 * CPU (AMD) at malloc's page + 16 bytes — where glibc puts a 1 MiB allocation it maps on its own
 * pages (a 1 GiB read from the page cache: 0.45 s of system time there, 0.09 s page-aligned;
 * elsewhere in its heap it varies). Allocating aligned makes the fast case certain, and leaves
 * the door open to O_DIRECT. Node has no aligned allocator, but a shared WebAssembly.Memory is
 * mapped by V8 on its own pages (address space only: untouched pages cost no memory), and its
 * buffer is a SharedArrayBuffer. BENCHMARKS.md, "Aligned buffers".
 */
export function sharedBuffer(bytes: number): Buffer {
  if (bytes > 0) {
    const pages = Math.ceil(bytes / WASM_PAGE)
    try {
      return Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer, 0, bytes)
    } catch {
      // No WebAssembly memory left to reserve (address space): slower copies, same results.
    }
  }
  return Buffer.from(new SharedArrayBuffer(bytes))
}

export function isShared(buf: Uint8Array): boolean {
  return buf.buffer instanceof SharedArrayBuffer
}

export type CodecRequest =
  | { op: 'digest'; seq: number; profile: number; data: Uint8Array }
  | { op: 'identify'; seq: number; profile: number; data: Uint8Array }
  | { op: 'seal'; seq: number; profile: number; data: Uint8Array; out: Uint8Array }
  | { op: 'open'; seq: number; profile: number; data: Uint8Array; out: Uint8Array; id: Uint8Array; expected: number }

export type CodecReply =
  | { seq: number; zero: true }
  | { seq: number; id: Uint8Array }
  | { seq: number; length: number }
  | { seq: number; error: string; damaged: boolean }

/** What a codec thread could not do: `damaged` when the blob was at fault (not the thread). */
export class CodecError extends Error {
  readonly damaged: boolean
  constructor(message: string, damaged: boolean) {
    super(message)
    this.damaged = damaged
  }
}

interface Thread {
  worker: Worker
  waiting: Map<number, { resolve: (reply: CodecReply) => void; reject: (err: Error) => void }>
  /** Profiles this thread was told about (each once, before its first request). */
  profiles: Set<number>
}

/** One per core, or EBS_WORKER_CODEC_THREADS (1–256); a value that is not such a number is refused. */
/**
 * The thread's module, beside this one and of its kind: codec-thread.ts in a checkout,
 * codec-thread.js in a release (compiled; a `new URL` string is not rewritten by tsc).
 */
const THREAD_ENTRY = new URL(`./codec-thread${extname(new URL(import.meta.url).pathname)}`, import.meta.url)

export function codecThreadCount(): number {
  const raw = process.env.EBS_WORKER_CODEC_THREADS
  if (raw === undefined || raw === '') return availableParallelism()
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 1 || n > 256) {
    throw new EbsWorkerError(ErrorCode.BadInput, `EBS_WORKER_CODEC_THREADS must be a whole number from 1 to 256, not "${raw}"`)
  }
  return n
}

export class CodecThreads {
  static #shared: CodecThreads | null = null
  readonly #size: number
  readonly #threads: Thread[] = []
  readonly #profiles = new Map<string, { id: number; keys: BlobProfile }>()
  #seq = 0

  /** The process's pool. */
  static shared(): CodecThreads {
    return (CodecThreads.#shared ??= new CodecThreads(codecThreadCount()))
  }

  constructor(size: number) {
    this.#size = size
  }

  get size(): number {
    return this.#size
  }

  /** Threads running now (they start on demand, up to size). */
  get running(): number {
    return this.#threads.length
  }

  /**
   * Starts the pool's threads now rather than on first use: a command that will need them
   * (backup, restore) calls this first, so that their start — a Node isolate each, modules read
   * from disk — runs while it opens the repository, not after. Idle threads hold nothing alive.
   */
  start(): void {
    while (this.#threads.length < this.#size) this.#start()
  }

  /** Stops every thread; their waiting requests fail. The next request starts new ones. */
  async close(): Promise<void> {
    await Promise.all(this.#threads.map((t) => t.worker.terminate()))
  }

  /**
   * A number standing for these keys in requests. Repositories opened with the same keys share
   * one, so a daemon opening a repository per task does not grow the threads' tables.
   */
  profile(keys: BlobProfile): number {
    const fingerprint = createHash('sha256').update(keys.encryption ?? '').update('|').update(keys.chunkId ?? '').update(`|${keys.level}`).digest('hex')
    let p = this.#profiles.get(fingerprint)
    if (!p) this.#profiles.set(fingerprint, (p = { id: this.#profiles.size + 1, keys }))
    return p.id
  }

  /** A chunk's id, or null when it is all zeros. `data` must be shared. */
  async identify(profile: number, data: Buffer): Promise<Buffer | null> {
    const reply = await this.#request({ op: 'identify', seq: 0, profile, data })
    if ('zero' in reply) return null
    if ('id' in reply) return Buffer.from(reply.id.buffer, reply.id.byteOffset, reply.id.byteLength)
    throw new Error('codec thread: unexpected reply to identify')
  }

  /** Plain SHA-256 of `data` (shared), e.g. a pack's for its upload. */
  async digest(profile: number, data: Buffer): Promise<Buffer> {
    const reply = await this.#request({ op: 'digest', seq: 0, profile, data })
    if ('id' in reply) return Buffer.from(reply.id.buffer, reply.id.byteOffset, reply.id.byteLength)
    throw new Error('codec thread: unexpected reply to digest')
  }

  /** Encodes a chunk into `out` (sealBound(data.length) bytes); returns the blob's length. Both shared. */
  async seal(profile: number, data: Buffer, out: Buffer): Promise<number> {
    return lengthOf(await this.#request({ op: 'seal', seq: 0, profile, data, out }))
  }

  /** Decodes a chunk blob into `out`, proven to be chunk `id`; returns its length. Both shared. */
  async open(profile: number, blob: Buffer, id: Buffer, expected: number, out: Buffer): Promise<number> {
    return lengthOf(await this.#request({ op: 'open', seq: 0, profile, data: blob, out, id, expected }))
  }

  #request(request: CodecRequest): Promise<CodecReply> {
    const thread = this.#pick()
    request.seq = ++this.#seq
    if (!thread.profiles.has(request.profile)) {
      const p = [...this.#profiles.values()].find((x) => x.id === request.profile)
      if (!p) throw new Error(`codec profile ${request.profile} was never made`)
      thread.worker.postMessage({ op: 'profile', profile: p.id, keys: p.keys })
      thread.profiles.add(p.id)
    }
    return new Promise<CodecReply>((resolve, reject) => {
      if (thread.waiting.size === 0) thread.worker.ref()
      thread.waiting.set(request.seq, { resolve, reject })
      thread.worker.postMessage(request)
    }).then((reply) => {
      if ('error' in reply) throw new CodecError(reply.error, reply.damaged)
      return reply
    })
  }

  /** The thread with the fewest requests waiting; a new one while there are fewer than the pool's size. */
  #pick(): Thread {
    let best: Thread | null = null
    for (const t of this.#threads) if (!best || t.waiting.size < best.waiting.size) best = t
    if (best && (best.waiting.size === 0 || this.#threads.length >= this.#size)) return best
    return this.#start()
  }

  #start(): Thread {
    // The process's compile cache, when it has one, serves the threads too: a thread then loads
    // its modules without stripping their types again (about 10 MiB and 100 ms less per thread).
    const cache = getCompileCacheDir()
    const worker = new Worker(THREAD_ENTRY, {
      // A thread's live objects are a few small ones per request: a young generation of 8 MiB
      // (V8 grows it to tens otherwise) is ample and keeps each thread's memory small.
      resourceLimits: { maxYoungGenerationSizeMb: 8 },
      ...(cache ? { env: { ...process.env, NODE_COMPILE_CACHE: cache } } : {}),
    })
    const thread: Thread = { worker, waiting: new Map(), profiles: new Set() }
    this.#threads.push(thread)
    worker.on('message', (reply: CodecReply) => {
      const w = thread.waiting.get(reply.seq)
      if (!w) return
      thread.waiting.delete(reply.seq)
      if (thread.waiting.size === 0) worker.unref()
      w.resolve(reply)
    })
    const gone = (err: Error): void => {
      const i = this.#threads.indexOf(thread)
      if (i >= 0) this.#threads.splice(i, 1)
      for (const w of thread.waiting.values()) w.reject(err)
      thread.waiting.clear()
    }
    worker.on('error', (err) => gone(new Error(`codec thread failed: ${err.message}`, { cause: err })))
    worker.on('exit', (code) => gone(new Error(`codec thread exited (code ${code})`)))
    // Last, after the listeners: unref()ed before them, threads started ahead of use kept the
    // process from exiting once one of them had answered (test/codec-threads.test.ts).
    worker.unref()
    return thread
  }
}

function lengthOf(reply: CodecReply): number {
  if ('length' in reply) return reply.length
  throw new Error('codec thread: unexpected reply')
}
