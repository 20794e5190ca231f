// Retries as a wrapper around any storage: a read whose transfer broke midway (InterruptedTransfer)
// is tried again with exponential backoff and jitter, up to a bound, then reported as a storage
// failure that says how many attempts were made. The SDK retries a request until its response
// headers arrive; this covers what comes after (a body cut short) and the lean ranged GET, which
// has no SDK under it. Writes are not retried here: the SDK resends their (in-memory) bodies.
import { setTimeout as sleep } from 'node:timers/promises'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { InterruptedTransfer, type Backend, type ListOptions, type ObjectInfo, type PutOptions, type Versions } from './types.ts'

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number
  /** The first backoff's upper bound; it doubles with each attempt. */
  baseDelayMs?: number
}

class RetryingBackend implements Backend {
  readonly #inner: Backend
  readonly #policy: Required<RetryPolicy>

  constructor(inner: Backend, policy: RetryPolicy) {
    this.#inner = inner
    this.#policy = { baseDelayMs: 100, ...policy, attempts: Math.max(1, policy.attempts) }
  }

  get url(): string {
    return this.#inner.url
  }

  get versions(): Versions | undefined {
    return this.#inner.versions
  }

  get usesBodySha256(): boolean {
    return this.#inner.usesBodySha256 ?? false
  }

  get(name: string): Promise<Buffer | null> {
    return this.#retry(name, () => this.#inner.get(name))
  }

  getRange(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.#retry(name, () => this.#inner.getRange(name, offset, length, into))
  }

  put(name: string, data: Buffer, options?: PutOptions): Promise<void> {
    return this.#inner.put(name, data, options)
  }

  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.#inner.list(prefix, options)
  }

  delete(name: string): Promise<void> {
    return this.#inner.delete(name)
  }

  async #retry<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const { attempts, baseDelayMs } = this.#policy
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (err) {
        if (!(err instanceof InterruptedTransfer)) throw err
        if (attempt >= attempts) {
          throw new EbsWorkerError(ErrorCode.Storage,
            `cannot read ${name} from ${this.url} after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${describe(err)}`,
            { cause: err, context: { object: name, attempts } })
        }
        await sleep(Math.random() * baseDelayMs * 2 ** attempt)
      }
    }
  }
}

/** `backend` with its interrupted reads retried as `policy` says. */
export function withRetries(backend: Backend, policy: RetryPolicy): Backend {
  return new RetryingBackend(backend, policy)
}
