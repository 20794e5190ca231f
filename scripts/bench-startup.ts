// How fast do the CLIs start? BENCHMARKS.md, "Start-up". For each checkout given (this one by
// default; an older commit unpacked elsewhere, with a node_modules, to compare), runs
//   ebs-worker --version
//   ebs-worker backup --help
//   ebs-worker backup --repo file://… --device IMG --json      (a 6 MiB image, scripts/fixture-image.ts)
//   ebs-worker restore --repo file://… --backup ID --device NEW --json
//   ebs-controller --version
// RUNS times each (default 15), interleaved across checkouts and modes, and prints the medians of
// the wall time from spawn to exit, for backup and restore from spawn to the device's open (the
// first useful work: the command has loaded its code and opened the repository), measured by a
// preloaded probe on the same monotonic clock as the parent, and of the CPU time (user + system)
// of the process until its exit event. Modes:
//   nocache   NODE_DISABLE_COMPILE_CACHE=1: every module compiled (and type-stripped) afresh
//   cold      an empty cache directory each run (XDG_CACHE_HOME): what the first run pays,
//             writing the cache included
//   default   as a user runs it: a checkout that enables Node's compile cache uses it (warmed by
//             one untimed run first); one that does not compiles afresh
// Then, once per checkout and command, how many module files were loaded, and which of the heavy
// packages (AWS SDK clients, pino, zod, cli-progress). A CHECKOUT may also be a release's lib/
// (compiled .js, with its node_modules), as workers run it.
//   node scripts/bench-startup.ts [--runs N] [CHECKOUT...]
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fixtureImage } from './fixture-image.ts'

const args = process.argv.slice(2)
let runs = 15
const runsAt = args.indexOf('--runs')
if (runsAt >= 0) {
  runs = Number(args[runsAt + 1])
  args.splice(runsAt, 2)
}
const checkouts = (args.length ? args : [resolve(import.meta.dirname, '..')]).map((d) => resolve(d))

/**
 * Preloaded into every timed run (--import): writes on fd 3 when the device is first opened
 * (process.hrtime is CLOCK_MONOTONIC, the parent's clock too); with STARTUP_PROBE_COUNT, also the
 * module files loaded, at exit.
 */
const PROBE = `
import { registerHooks, syncBuiltinESMExports } from 'node:module'
import { writeSync } from 'node:fs'
const target = process.env.STARTUP_PROBE_OPEN
if (target) {
  const fsp = process.getBuiltinModule('node:fs/promises')
  const open = fsp.open
  let seen = false
  fsp.open = function (path, ...rest) {
    if (!seen && String(path) === target) {
      seen = true
      writeSync(3, 'open ' + process.hrtime.bigint() + '\\n')
    }
    return open.call(this, path, ...rest)
  }
  syncBuiltinESMExports()
}
process.on('exit', () => {
  const cpu = process.cpuUsage()
  writeSync(3, 'cpu ' + (cpu.user + cpu.system) + '\\n')
})
if (process.env.STARTUP_PROBE_COUNT) {
  const urls = []
  registerHooks({ load(url, context, next) { if (url.startsWith('file:')) urls.push(url); return next(url, context) } })
  process.on('exit', () => writeSync(3, 'modules ' + JSON.stringify(urls) + '\\n'))
}
`
const probeUrl = `data:text/javascript,${encodeURIComponent(PROBE)}`

interface Outcome {
  wallMs: number
  openMs: number | null
  cpuMs: number | null
  modules: string[] | null
  code: number | null
  stdout: string
  stderr: string
}

function runOnce(script: string, argv: string[], env: Record<string, string>, device?: string, count = false): Promise<Outcome> {
  return new Promise((done, fail) => {
    const started = process.hrtime.bigint()
    const child = spawn(process.execPath, ['--import', probeUrl, script, ...argv], {
      env: { ...process.env, ...env, ...(device ? { STARTUP_PROBE_OPEN: device } : {}), ...(count ? { STARTUP_PROBE_COUNT: '1' } : {}) },
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let probe = ''
    child.stdout!.on('data', (d) => (stdout += d))
    child.stderr!.on('data', (d) => (stderr += d))
    child.stdio[3]!.on('data', (d) => (probe += d))
    child.on('error', fail)
    child.on('exit', (code) => {
      const wallMs = Number(process.hrtime.bigint() - started) / 1e6
      // Let the pipes drain ('close') before reading what came through them.
      child.on('close', () => {
        const open = /^open (\d+)$/m.exec(probe)
        const modules = /^modules (.*)$/m.exec(probe)
        const cpu = /^cpu (\d+)$/m.exec(probe)
        done({
          wallMs, code, stdout, stderr,
          openMs: open ? Number(BigInt(open[1]!) - started) / 1e6 : null,
          cpuMs: cpu ? Number(cpu[1]) / 1000 : null,
          modules: modules ? JSON.parse(modules[1]!) as string[] : null,
        })
      })
    })
  })
}

const work = await mkdtemp(join(tmpdir(), 'bench-startup-'))
const image = join(work, 'image.img')
await writeFile(image, fixtureImage(1))

interface Case {
  name: string
  /** The arguments, for the n-th run; `device` is what the probe waits to see opened. */
  argv(checkout: number, n: number): { argv: string[]; device?: string }
  controller?: boolean
}

const repo = (c: number) => `file://${work}/repo-${c}`
const backupIds: string[] = []
let targets = 0
const CASES: Case[] = [
  { name: 'ebs-worker --version', argv: () => ({ argv: ['--version'] }) },
  { name: 'ebs-worker backup --help', argv: () => ({ argv: ['backup', '--help'] }) },
  { name: 'ebs-worker backup (6 MiB image, file://)', argv: (c) => ({ argv: ['backup', '--repo', repo(c), '--device', image, '--json'], device: image }) },
  {
    name: 'ebs-worker restore (6 MiB, file://, new image file)',
    argv: (c) => {
      const device = join(work, `target-${targets++}.img`)
      return { argv: ['restore', '--repo', repo(c), '--backup', backupIds[c]!, '--device', device, '--json'], device }
    },
  },
  { name: 'ebs-controller --version', argv: () => ({ argv: ['--version'] }), controller: true },
]
let colds = 0
const MODES: Array<{ name: string; env: () => Record<string, string> }> = [
  { name: 'nocache', env: () => ({ NODE_DISABLE_COMPILE_CACHE: '1' }) },
  { name: 'cold', env: () => ({ XDG_CACHE_HOME: join(work, `cold-cache-${colds++}`) }) },
  { name: 'default', env: () => ({}) },
]

/** The program in a checkout (.ts), or in a release's lib/ (tsc's .js, scripts/release.sh). */
const scriptOf = (checkout: string, controller = false) => {
  const ts = join(checkout, controller ? 'controller/bin/ebs-controller.ts' : 'agent/bin/ebs-worker.ts')
  return existsSync(ts) ? ts : ts.replace(/\.ts$/, '.js')
}

async function must(checkout: string, c: Case, ci: number, n: number, env: Record<string, string>, count = false): Promise<Outcome> {
  const { argv, device } = c.argv(ci, n)
  const r = await runOnce(scriptOf(checkout, c.controller), argv, env, device, count)
  if (r.code !== 0) throw new Error(`${c.name} in ${checkout} exited ${r.code}: ${r.stderr}`)
  if (device && device !== image) await rm(device, { force: true })
  if (env.XDG_CACHE_HOME) await rm(env.XDG_CACHE_HOME, { recursive: true, force: true })
  return r
}

try {
  // Each checkout's repository, and a backup of the image to restore.
  for (const [ci, checkout] of checkouts.entries()) {
    const init = await runOnce(scriptOf(checkout), ['init', '--repo', repo(ci), '--json'], {})
    if (init.code !== 0) throw new Error(`init in ${checkout}: ${init.stderr}`)
    const b = await runOnce(scriptOf(checkout), ['backup', '--repo', repo(ci), '--device', image, '--json'], {})
    if (b.code !== 0) throw new Error(`backup in ${checkout}: ${b.stderr}`)
    backupIds[ci] = JSON.parse(b.stdout.trim().split('\n').at(-1)!).backupId
  }
  // Warm: the page cache, and the compile cache of the checkouts that use it.
  for (const [ci, checkout] of checkouts.entries()) {
    for (const c of CASES) for (const m of MODES) await must(checkout, c, ci, -1, m.env())
  }
  const times = new Map<string, { wall: number[]; open: number[]; cpu: number[] }>()
  for (let n = 0; n < runs; n++) {
    for (const c of CASES) {
      for (const [ci, checkout] of checkouts.entries()) {
        for (const m of MODES) {
          const r = await must(checkout, c, ci, n, m.env())
          const key = `${c.name}\t${ci}\t${m.name}`
          const t = times.get(key) ?? { wall: [], open: [], cpu: [] }
          t.wall.push(r.wallMs)
          if (r.openMs !== null) t.open.push(r.openMs)
          if (r.cpuMs !== null) t.cpu.push(r.cpuMs)
          times.set(key, t)
        }
      }
    }
    process.stderr.write(`bench-startup: run ${n + 1}/${runs}\n`)
  }
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b)
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
  }
  const ms = (x: number) => `${Math.round(x)} ms`
  console.log(`runs: ${runs} each, interleaved; median; Node ${process.version}; load average ${(await import('node:os')).loadavg().map((l) => l.toFixed(2)).join(' ')}`)
  for (const [ci, checkout] of checkouts.entries()) console.log(`checkout ${ci}: ${checkout}`)
  console.log('\n| command | checkout | mode | spawn → exit | spawn → device open | CPU |\n|---|---|---|---|---|---|')
  for (const [key, t] of times) {
    const [name, ci, mode] = key.split('\t')
    console.log(`| ${name} | ${ci} | ${mode} | ${ms(median(t.wall))} | ${t.open.length ? ms(median(t.open)) : ''} | ${ms(median(t.cpu))} |`)
  }
  // What each command loads (one counted run each, compile cache off: the count is the same either way).
  const HEAVY = /node_modules\/(@aws-sdk\/(?:client-[a-z0-9-]+|lib-storage)|pino|zod|cli-progress)\//
  console.log('\n| command | checkout | module files | heavy packages loaded |\n|---|---|---|---|')
  for (const c of CASES) {
    for (const [ci, checkout] of checkouts.entries()) {
      const r = await must(checkout, c, ci, runs, MODES[0]!.env(), true)
      const heavy = [...new Set(r.modules!.map((u) => HEAVY.exec(u)?.[1]).filter(Boolean))].sort()
      console.log(`| ${c.name} | ${ci} | ${r.modules!.length} | ${heavy.join(', ') || '—'} |`)
    }
  }
} finally {
  await rm(work, { recursive: true, force: true })
}
