// Runs `fn` over a lazily produced sequence with at most `concurrency` calls in flight. Unlike
// queuing a promise per item, memory does not grow with the number of items (a volume has
// millions of chunks). The first failure stops the other workers from taking new items.
export async function forEachConcurrent<T>(
  items: Iterable<T>,
  concurrency: number,
  fn: (item: T) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const iterator = items[Symbol.iterator]()
  let failed = false
  const worker = async (): Promise<void> => {
    while (!failed && !signal?.aborted) {
      const next = iterator.next()
      if (next.done) return
      try {
        await fn(next.value)
      } catch (err) {
        failed = true
        throw err
      }
    }
  }
  await settleAll(Array.from({ length: Math.max(1, concurrency) }, worker))
  signal?.throwIfAborted()
}

/**
 * Waits for every one of `promises`, even after one failed (nothing is left running behind the
 * caller's back: its cleanup may undo what they use), then throws the first failure, in their
 * order; else their values, in that order.
 */
export async function settleAll<T>(promises: Iterable<Promise<T>>): Promise<T[]> {
  const settled = await Promise.allSettled(promises)
  const rejected = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (rejected) throw rejected.reason
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value)
}
