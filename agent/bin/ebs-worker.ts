#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8'
// Entry point. libuv's thread pool runs file I/O and zstd; its default of 4 threads would cap
// the reads in flight, so it is raised before anything uses it (hence the dynamic import).
process.env.UV_THREADPOOL_SIZE ??= '16'
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(`ebs-worker needs Node.js 24 or later (this is ${process.version}); run it with "npx ebs-worker" from the checkout\n`)
  process.exit(1)
}
// Chunk-sized buffers (ciphertexts, request bodies) are V8 "external memory": by default every
// 64 MiB of them since the last collection starts a full garbage collection of the whole heap,
// some 40 per GiB backed up, about a sixth of the CPU. Counted within the heap's global limit
// instead, which grows with what stays alive, the collections are 3–4x fewer for ~70 MiB more
// peak RSS; the live buffers are pooled and bounded, so the limit does not grow with the volume.
setFlagsFromString('--external-memory-accounted-in-global-limit')
const { main } = await import('../cli.ts')
process.exitCode = await main(process.argv.slice(2))
