// storage/retry.ts: reads whose transfer broke midway are tried again, up to a bound; anything
// else goes up at once. The inner storage here fails on purpose, as a cut connection would.
import t from 'tap'
import { withRetries } from '../agent/storage/retry.ts'
import { InterruptedTransfer, type Backend } from '../agent/storage/types.ts'
import { EbsWorkerError, ErrorCode } from '../agent/core/errors.ts'

/** A storage whose reads fail `failures` times with `error()` before they answer. */
function flaky(failures: number, error: () => Error): Backend & { calls: number } {
  const store = {
    url: 'mem://flaky',
    calls: 0,
    async get(name: string) {
      if (store.calls++ < failures) throw error()
      return Buffer.from(name)
    },
    async getRange(name: string) {
      return (await store.get(name))!
    },
    async put() {},
    async *list() {},
    async delete() {},
  }
  return store
}

t.test('an interrupted read is tried again and succeeds', async (t) => {
  const inner = flaky(2, () => new InterruptedTransfer('GetObject x', new Error('socket hang up')))
  t.same(await withRetries(inner, { attempts: 3, baseDelayMs: 1 }).getRange('x', 0, 1), Buffer.from('x'))
  t.equal(inner.calls, 3, 'two failures, then the answer')
})

t.test('a read that keeps breaking fails as STORAGE_ERROR, saying how many attempts were made', async (t) => {
  const inner = flaky(10, () => new InterruptedTransfer('GetObject x', new Error('socket hang up')))
  await t.rejects(withRetries(inner, { attempts: 4, baseDelayMs: 1 }).get('x'), { code: 'STORAGE_ERROR', message: /after 4 attempts: GetObject x: socket hang up/ })
  t.equal(inner.calls, 4)
})

t.test('any other failure is not retried', async (t) => {
  const inner = flaky(10, () => new EbsWorkerError(ErrorCode.ObjectNotFound, 'object x is missing'))
  await t.rejects(withRetries(inner, { attempts: 4, baseDelayMs: 1 }).get('x'), { code: 'OBJECT_NOT_FOUND' })
  t.equal(inner.calls, 1)
})
