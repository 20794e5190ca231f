// Start-up (BENCHMARKS.md, "Start-up"): each command loads only what it uses, and Node's compile
// cache is used where it can be and ignored where it cannot (agent/cli/compile-cache.ts).
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CLI, ROOT, tempDir } from './helpers.ts'
import { VERSION } from '../agent/core/version.ts'

const CONTROLLER = join(ROOT, 'controller/bin/ebs-controller.ts')

/** Preloaded: lists on fd 3, at exit, every module file the process loaded (CommonJS and ESM). */
const COUNT_MODULES = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module'
import { writeSync } from 'node:fs'
const urls = []
registerHooks({ load(url, context, next) { if (url.startsWith('file:')) urls.push(url); return next(url, context) } })
process.on('exit', () => writeSync(3, JSON.stringify(urls)))
`)}`

interface Run {
  code: number | null
  stdout: string
  stderr: string
  modules: string[]
}

/** The program with `args`, its environment amended (undefined deletes a variable); gives up after 30 s. */
function run(script: string, args: string[], env: Record<string, string | undefined> = {}, countModules = false): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env }
  delete childEnv.NODE_COMPILE_CACHE
  delete childEnv.NODE_DISABLE_COMPILE_CACHE
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete childEnv[k]
    else childEnv[k] = v
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...(countModules ? ['--import', COUNT_MODULES] : []), script, ...args], {
      env: childEnv, stdio: ['ignore', 'pipe', 'pipe', 'pipe'], timeout: 30_000,
    })
    let stdout = ''
    let stderr = ''
    let fd3 = ''
    child.stdout!.on('data', (d) => (stdout += d))
    child.stderr!.on('data', (d) => (stderr += d))
    child.stdio[3]!.on('data', (d) => (fd3 += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr, modules: fd3 ? JSON.parse(fd3) as string[] : [] }))
  })
}

/** The packages (node_modules/…) and agent/controller rooms the modules belong to. */
function loaded(modules: string[]): Set<string> {
  const out = new Set<string>()
  for (const url of modules) {
    const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
    if (pkg) out.add(pkg[1]!)
    else out.add(url.slice(`file://${ROOT}`.length).split('/').slice(0, 2).join('/'))
  }
  return out
}

const UNUSED_SDK = ['@aws-sdk/client-ec2', '@aws-sdk/client-sqs', '@aws-sdk/client-auto-scaling', '@aws-sdk/client-iam', '@aws-sdk/client-sts', '@aws-sdk/client-ebs']

t.test('ebs-worker --version and a command\'s --help load no AWS SDK, repository or pipeline', async (t) => {
  const version = await run(CLI, ['--version'], {}, true)
  t.equal(version.code, 0)
  t.equal(version.stdout.trim(), VERSION)
  t.same([...loaded(version.modules)].filter((p) => !p.startsWith('agent/')), ['commander'], `--version: commander and agent/ only (${version.modules.length} files)`)

  for (const args of [['backup', '--help'], ['--region', 'eu-west-1', 'restore', '--help'], ['help', 'list']]) {
    const help = await run(CLI, args, {}, true)
    t.match(help.stdout, new RegExp(`^Usage: ebs-worker ${args.at(-2) === 'help' ? args.at(-1) : args.at(-2)} \\[options\\]`), `${args.join(' ')}: its help`)
    const rooms = loaded(help.modules)
    const heavy = [...rooms].filter((p) => p.startsWith('@aws-sdk/') || ['pino', 'cli-progress', 'agent/app', 'agent/pipeline', 'agent/repo', 'agent/storage', 'agent/maintenance', 'agent/daemon'].includes(p))
    t.same(heavy, [], `${args.join(' ')}: none of the heavy modules`)
    const commands = help.modules.filter((u) => u.includes('/agent/cli/') && !/\/(main|context|output|options|progress|compile-cache)\.ts$/.test(u))
    t.equal(commands.length, 1, `${args.join(' ')}: one command's module (${commands.map((u) => u.split('/').pop()).join(', ')})`)
  }
})

t.test('without a command, the help lists them all and a misspelt one is still suggested', async (t) => {
  const help = await run(CLI, ['--help'])
  t.equal(help.code, 0)
  for (const c of ['init', 'backup', 'restore', 'verify', 'list', 'forget', 'prune', 'check', 'migrate', 'key', 'daemon', 'health-check', 'sweep-volumes', 'doctor']) {
    t.match(help.stdout, new RegExp(`^  ${c} `, 'm'), `lists ${c}`)
  }
  const typo = await run(CLI, ['bakup'])
  t.equal(typo.code, 2)
  t.match(typo.stderr, /unknown command 'bakup'\n\(Did you mean backup\?\)/)
})

t.test('a backup of a file:// repository loads none of the SDK clients it does not use', async (t) => {
  const dir = await tempDir(t, 'startup')
  const repo = `file://${join(dir, 'repo')}`
  const image = join(dir, 'image.img')
  await writeFile(image, Buffer.alloc(1024 * 1024, 7))
  t.equal((await run(CLI, ['init', '--repo', repo, '--json'])).code, 0)
  const backup = await run(CLI, ['backup', '--repo', repo, '--device', image, '--json'], {}, true)
  t.equal(backup.code, 0, backup.stderr)
  const rooms = loaded(backup.modules)
  t.same(UNUSED_SDK.filter((p) => rooms.has(p)), [], 'no EC2, SQS, Auto Scaling, IAM, STS or EBS client')
  t.notOk(rooms.has('cli-progress'), 'no progress bar library without a terminal')
  t.notOk(rooms.has('agent/daemon'), 'nothing of the daemon')
})

t.test('ebs-controller --version loads no flow and no AWS SDK client', async (t) => {
  const r = await run(CONTROLLER, ['--version'], {}, true)
  t.equal(r.code, 0)
  t.equal(r.stdout.trim(), VERSION)
  const rooms = loaded(r.modules)
  t.same([...rooms].filter((p) => p.startsWith('@aws-sdk/') || p === 'pino'), [], 'no AWS SDK')
  t.same(r.modules.filter((u) => u.includes('/controller/') && !/\/(cli|bin\/ebs-controller)\.ts$/.test(u)), [], 'only controller/cli.ts of the controller')
})

t.test('the compile cache goes to the user\'s cache directory and is used by the next start', async (t) => {
  const cacheHome = await tempDir(t, 'startup-cache')
  const first = await run(CLI, ['--version'], { XDG_CACHE_HOME: cacheHome })
  t.equal(first.code, 0)
  t.equal(first.stderr, '')
  const dir = join(cacheHome, 'ebs-worker/node-compile-cache')
  const versions = await readdir(dir)
  t.equal(versions.length, 1, `one directory for this Node (${versions.join(', ')})`)
  t.ok((await readdir(join(dir, versions[0]!))).length > 0, 'with cached modules in it')
  // Node says what it does with the cache when asked (NODE_DEBUG_NATIVE), on stderr.
  const second = await run(CLI, ['--version'], { XDG_CACHE_HOME: cacheHome, NODE_DEBUG_NATIVE: 'COMPILE_CACHE' })
  t.equal(second.code, 0)
  t.match(second.stderr, /V8 code cache for ESM file:\/\/\S+\/agent\/cli\/main\.ts was accepted/, 'the next start uses it')

  t.equal((await run(CONTROLLER, ['--version'], { XDG_CACHE_HOME: cacheHome })).code, 0)
  const controller = await run(CONTROLLER, ['--version'], { XDG_CACHE_HOME: cacheHome, NODE_DEBUG_NATIVE: 'COMPILE_CACHE' })
  t.equal(controller.code, 0)
  t.match(controller.stderr, /V8 code cache for ESM file:\/\/\S+\/controller\/cli\.ts was accepted/, 'the controller\'s too')

  const pointed = join(cacheHome, 'elsewhere')
  t.equal((await run(CLI, ['--version'], { NODE_COMPILE_CACHE: pointed })).code, 0)
  t.ok((await readdir(pointed)).length > 0, 'NODE_COMPILE_CACHE (the systemd units\') wins')

  const off = await tempDir(t, 'startup-off')
  t.equal((await run(CLI, ['--version'], { XDG_CACHE_HOME: off, NODE_DISABLE_COMPILE_CACHE: '1' })).code, 0)
  t.same(await readdir(off), [], 'NODE_DISABLE_COMPILE_CACHE=1: none')
})

t.test('a cache directory that cannot be made or written changes nothing', async (t) => {
  const dir = await tempDir(t, 'startup-bad')
  await writeFile(join(dir, 'a-file'), 'not a directory')
  await mkdir(join(dir, 'home/.cache/ebs-worker'), { recursive: true })
  await writeFile(join(dir, 'home/.cache/ebs-worker/node-compile-cache'), 'not a directory either')
  const cases: Array<[string, Record<string, string | undefined>]> = [
    // mkdir under /proc says ENOENT, and Node's own recursive mkdir would retry it forever.
    ['under /proc', { XDG_CACHE_HOME: '/proc/ebs-worker-test' }],
    ['under a file', { XDG_CACHE_HOME: join(dir, 'a-file') }],
    ['the cache directory a file', { XDG_CACHE_HOME: undefined, HOME: join(dir, 'home') }],
    ['a relative XDG_CACHE_HOME, HOME under /proc', { XDG_CACHE_HOME: 'relative', HOME: '/proc/ebs-worker-test' }],
  ]
  for (const [what, env] of cases) {
    const started = Date.now()
    const r = await run(CLI, ['--version'], env)
    t.equal(r.code, 0, `${what}: exit 0`)
    t.equal(r.stdout.trim(), VERSION, `${what}: the version`)
    t.equal(r.stderr, '', `${what}: nothing on stderr`)
    t.ok(Date.now() - started < 20_000, `${what}: promptly`)
  }
})
