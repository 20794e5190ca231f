#!/usr/bin/env -S node --max-semi-space-size=4
// --max-semi-space-size=4 (MiB; also in the release's launcher, scripts/release.sh): V8 grows the
// main thread's young generation to 32 MiB under a backup's stream of short-lived objects, a
// tenth of the memory budget for nothing; at 4 MiB peak RSS is ~20 MiB lower and the CPU the same
// (BENCHMARKS.md). It must be given at start-up: V8 sizes the heap when it creates it.
// Entry point. libuv's thread pool runs file I/O and zstd; its default of 4 threads would cap
// the reads in flight, so it is raised before anything uses it (hence the dynamic import).
process.env.UV_THREADPOOL_SIZE ??= '16'
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(`ebs-worker needs Node.js 24 or later (this is ${process.version}); run it with "npx ebs-worker" from the checkout\n`)
  process.exit(1)
}
// Node's compile cache, before anything else is loaded (cli/compile-cache.ts).
const { useCompileCache } = await import('../cli/compile-cache.ts')
useCompileCache()
const { main } = await import('../cli/main.ts')
process.exitCode = await main(process.argv.slice(2))
