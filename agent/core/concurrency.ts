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
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, concurrency) }, worker))
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (rejected) throw rejected.reason
  signal?.throwIfAborted()
}
