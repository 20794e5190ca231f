// Copies into (and out of) shared memory at memcpy's speed. V8 copies from or into a
// SharedArrayBuffer (TypedArray.prototype.set, hence Buffer.copy) with relaxed atomic moves,
// which run at ~3 GiB/s whenever source and target are not equally aligned — every blob placed at
// an arbitrary offset of a pack — against ~20 GiB/s for memcpy (scripts/bench-alignment.ts).
// Buffer.fill with a value exactly as long as the range it fills is one memcpy in Node's native
// code (node_buffer.cc, Fill), whatever the memory.

/** Copies all of `source` into `target` at `at` (they must not overlap); returns source.length. */
export function copyInto(target: Uint8Array, source: Uint8Array, at: number): number {
  if (source.length === 0) return 0
  if (!Number.isInteger(at) || at < 0 || at + source.length > target.length) {
    throw new RangeError(`cannot copy ${source.length} bytes to offset ${at} of a ${target.length}-byte buffer`)
  }
  const buf = Buffer.isBuffer(target) ? target : Buffer.from(target.buffer, target.byteOffset, target.byteLength)
  buf.fill(source, at, at + source.length)
  return source.length
}
