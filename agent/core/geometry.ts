// A volume cut into fixed-size chunks: how many, how long each is, byte ranges, and the done-sets
// (one bit per chunk) that checkpoints and progress keep. Pure.

export interface ByteRange {
  offset: number
  length: number
}

export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize)
}

/** Bytes of chunk `i` of a volume of `size` bytes: chunkSize, less for the last one. */
export function chunkLength(size: number, chunkSize: number, i: number): number {
  return Math.min(chunkSize, size - i * chunkSize)
}

/** A set of chunk numbers, one bit each (bit i of byte i >> 3): 16 KiB per 128 Ki chunks. */
export type DoneSet = Uint8Array

/** An empty done set for `count` chunks. */
export function newDoneSet(count: number): DoneSet {
  return new Uint8Array(Math.ceil(count / 8))
}

export function isDone(done: DoneSet, i: number): boolean {
  return (done[i >> 3]! & (1 << (i & 7))) !== 0
}

export function markDone(done: DoneSet, i: number): void {
  done[i >> 3]! |= 1 << (i & 7)
}

/** Bytes of the volume the done chunks cover: where a resumed task's progress starts. */
export function doneBytes(done: DoneSet, size: number, chunkSize: number): number {
  let bytes = 0
  for (let i = 0; i < chunkCount(size, chunkSize); i++) if (isDone(done, i)) bytes += chunkLength(size, chunkSize, i)
  return bytes
}
