// What aligned buffers and memcpy-speed copies save (BENCHMARKS.md, "Aligned buffers, copies"):
//   node scripts/bench-alignment.ts [FILE]
// 1. Sealing a 1 MiB chunk (encrypted; random data, stored raw, and text-like, compressed) with its
//    blob at offset 0 of a page-aligned buffer, as before, and at BlobEngine.alignedStart, where
//    its payload starts on a 16-byte boundary: CPU microseconds per chunk.
// 2. A 1 MiB blob copied into a shared pack buffer at offsets equally or not equally aligned:
//    Buffer.copy (V8's relaxed-atomic move for shared memory) against copyInto (one memcpy).
// 3. A file read from the page cache in 1 MiB reads, in a fresh process that loads nothing, opens
//    the file and allocates its one buffer: a new SharedArrayBuffer (glibc maps a 1 MiB
//    allocation on its own pages and hands out page + 16 bytes) or one made as sharedBuffer()
//    makes it (page-aligned). System CPU of the reads: the kernel's copy to user memory. Where
//    glibc places an allocation depends on what the process did before (after loading modules it
//    may come from its heap, at any 16-byte boundary, and be fast), which is why ebs-worker
//    allocates aligned memory rather than hoping for it.
// FILE defaults to a 1 GiB file of random bytes made (and removed) in the OS temp directory.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BlobEngine, sealBound } from '../agent/repo/blob-format.ts'
import { sharedBuffer } from '../agent/repo/codec-threads.ts'
import { copyInto } from '../agent/core/copy.ts'

const MiB = 1024 * 1024

// Part 3's child: nothing loaded but node:fs before its one buffer is allocated (loading modules
// first moves where glibc puts it), then every 1 MiB read of the file; prints its system CPU.
// The aligned buffer is made as sharedBuffer() makes it.
const READ_INTO = `
  import { open } from 'node:fs/promises'
  const [kind, file] = process.argv.slice(1)
  const h = await open(file, 'r')
  await h.stat()
  const MiB = 1024 * 1024
  const buf = kind === 'aligned'
    ? Buffer.from(new WebAssembly.Memory({ initial: 16, maximum: 16, shared: true }).buffer, 0, MiB)
    : Buffer.from(new SharedArrayBuffer(MiB))
  const before = process.cpuUsage()
  let at = 0
  for (;;) {
    const { bytesRead } = await h.read(buf, 0, MiB, at)
    if (bytesRead === 0) break
    at += bytesRead
  }
  process.stdout.write(JSON.stringify({ bytes: at, sys: process.cpuUsage(before).system / 1e6 }))`

const engine = new BlobEngine({ encryption: randomBytes(32), chunkId: randomBytes(32), level: 1 })
const random = sharedBuffer(MiB)
randomBytes(MiB).copy(random)
const text = sharedBuffer(MiB)
const words = 'ebs worker moves volume blocks into a deduplicated compressed encrypted repository '.split(' ')
for (let at = 0; at < MiB;) at += text.write(`${words[(at * 7919) % words.length]} ${at % 1000} `, at)
const out = sharedBuffer(sealBound(MiB))
console.log('| seal of a 1 MiB chunk (AES-256-GCM) | blob at 0 | blob at alignedStart |')
console.log('|---|---:|---:|')
for (const [name, data] of [['random (stored raw)', random], ['text-like (zstd)', text]] as const) {
  const cost = (start: number) => {
    for (let i = 0; i < 20; i++) engine.seal('chunk', data, out.subarray(start)) // warm up
    const before = process.cpuUsage()
    for (let i = 0; i < 300; i++) engine.seal('chunk', data, out.subarray(start))
    const u = process.cpuUsage(before)
    return (u.user + u.system) / 300
  }
  console.log(`| ${name} | ${cost(0).toFixed(0)} µs | ${cost(engine.alignedStart).toFixed(0)} µs |`)
}

const pack = sharedBuffer(32 * MiB).fill(1)
const blob = sharedBuffer(2 * MiB).fill(7).subarray(3, 3 + MiB)
console.log('\n| copy of a 1 MiB blob into a shared buffer | Buffer.copy GiB/s | copyInto GiB/s |')
console.log('|---|---:|---:|')
for (const rel of [0, 1, 13, 16]) {
  const rate = (copy: (at: number) => void) => {
    const t0 = process.hrtime.bigint()
    let n = 0
    for (let r = 0; r < 10; r++) for (let o = 0; o + 2 * MiB < pack.length; o += MiB + 4096) { copy(o + 3 + rel); n++ }
    return (n / 1024 / (Number(process.hrtime.bigint() - t0) / 1e9)).toFixed(1)
  }
  console.log(`| +${rel} | ${rate((at) => blob.copy(pack, at))} | ${rate((at) => copyInto(pack, blob, at))} |`)
}

let file = process.argv[2]
const made = !file
if (!file) {
  file = join(tmpdir(), `bench-alignment-${process.pid}`)
  const h = await open(file, 'w')
  const block = randomBytes(16 * MiB)
  for (let i = 0; i < 64; i++) await h.write(block)
  await h.close()
}
execFileSync('cat', [file], { stdio: ['ignore', 'ignore', 'inherit'] }) // into the page cache
console.log('\n| 1 MiB reads from the page cache into (fresh process) | GiB | system CPU s/GiB |')
console.log('|---|---:|---:|')
for (let round = 0; round < 3; round++) {
  for (const [name, kind] of [['new SharedArrayBuffer', 'sab'], ['sharedBuffer() (page-aligned)', 'aligned']] as const) {
    const r = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', READ_INTO, kind, file], { encoding: 'utf8' })) as { bytes: number; sys: number }
    const gib = r.bytes / 1024 / MiB
    console.log(`| ${name} | ${gib.toFixed(2)} | ${(r.sys / gib).toFixed(2)} |`)
  }
}
if (made) await rm(file)
