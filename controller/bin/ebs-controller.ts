#!/usr/bin/env node
// Entry point of the controller (a separate program from the worker agent; they share only the
// task protocol, agent/daemon/task.ts).
const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(`ebs-controller needs Node.js 24 or later (this is ${process.version}); run it with "npx ebs-controller" from the checkout\n`)
  process.exit(1)
}
// Node's compile cache, before anything else is loaded (agent/cli/compile-cache.ts).
const { useCompileCache } = await import('../../agent/cli/compile-cache.ts')
useCompileCache()
const { main } = await import('../cli.ts')
process.exitCode = await main(process.argv.slice(2))
