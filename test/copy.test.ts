// core/copy.ts: copyInto copies exactly the source, at any offset, between ordinary and shared
// buffers (the pack and seal buffers are shared), touches nothing around it, and refuses ranges
// outside the target instead of filling what fits.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { copyInto } from '../agent/core/copy.ts'
import { sharedBuffer } from '../agent/repo/codec-threads.ts'

const MiB = 1024 * 1024

for (const [name, make] of [['ordinary', (n: number) => Buffer.alloc(n)], ['shared', (n: number) => sharedBuffer(n)]] as const) {
  t.test(`into a ${name} buffer`, async (t) => {
    const source = randomBytes(MiB + 13)
    for (const at of [0, 1, 5, 13, 4096, 123457]) {
      const target = make(2 * MiB).fill(0xee)
      t.equal(copyInto(target, source.subarray(3), at), MiB + 10, `at ${at}: the source's length`)
      t.ok(target.subarray(at, at + MiB + 10).equals(source.subarray(3)), `at ${at}: the bytes`)
      t.ok(at === 0 || target[at - 1] === 0xee, `at ${at}: the byte before untouched`)
      t.equal(target[at + MiB + 10], 0xee, `at ${at}: the byte after untouched`)
    }
    // From a shared view at an odd offset (a sealed blob) into a Uint8Array that is not a Buffer.
    const blob = sharedBuffer(4096)
    randomBytes(4096).copy(blob)
    const plain = new Uint8Array(8192)
    copyInto(plain, blob.subarray(7, 1000), 11)
    t.ok(Buffer.from(plain.subarray(11, 1004)).equals(blob.subarray(7, 1000)), 'a plain Uint8Array target')
    t.equal(copyInto(make(16), Buffer.alloc(0), 16), 0, 'nothing to copy: nothing done, even at the end')
    t.throws(() => copyInto(make(16), Buffer.alloc(8), 9), RangeError, 'past the end: refused, not cut short')
    t.throws(() => copyInto(make(16), Buffer.alloc(8), -1), RangeError, 'a negative offset: refused')
  })
}
