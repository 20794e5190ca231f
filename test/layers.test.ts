// The tree shows the data path: device → pipeline → repo → storage, with core beneath all and
// aws beside storage. No module imports from a layer above it (README, "How it works"); the
// controller uses the agent's core, aws, storage and the task protocol only.
import t from 'tap'
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { ROOT } from './helpers.ts'

/** What each room of agent/ may import, besides itself. */
const MAY_IMPORT: Record<string, string[]> = {
  core: [],
  device: ['core'],
  aws: ['core', 'device'],
  storage: ['core', 'aws'],
  repo: ['core', 'storage'],
  pipeline: ['core', 'device', 'repo'],
  maintenance: ['core', 'storage', 'repo', 'pipeline'],
  app: ['core', 'aws', 'storage', 'repo'],
  daemon: ['core', 'device', 'aws', 'storage', 'repo', 'pipeline', 'maintenance', 'app'],
  cli: ['core', 'device', 'aws', 'storage', 'repo', 'pipeline', 'maintenance', 'app', 'daemon'],
  bin: ['cli'],
}
/**
 * What the controller may use of the agent: its errors, ids, AWS helpers, storage, the task
 * protocol, and the command line's option parsers, exit statuses and compile cache.
 */
const CONTROLLER_MAY_IMPORT = ['agent/core/', 'agent/aws/', 'agent/storage/', 'agent/daemon/task.ts', 'agent/cli/options.ts', 'agent/cli/output.ts', 'agent/cli/compile-cache.ts']

async function sources(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(join(ROOT, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...(await sources(path)))
    else if (entry.name.endsWith('.ts')) out.push(path)
  }
  return out
}

async function importsOf(file: string): Promise<string[]> {
  const text = await readFile(join(ROOT, file), 'utf8')
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]|import\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g)]
    .map((m) => m[1] ?? m[2]!)
  return specs.map((s) => relative(ROOT, resolve(dirname(join(ROOT, file)), s)))
}

t.test('every room of agent/ imports only from the rooms beneath it', async (t) => {
  const files = await sources('agent')
  const rooms = new Set(files.map((f) => f.split('/')[1]!))
  t.same([...rooms].filter((r) => !(r in MAY_IMPORT)), [], 'every room has its place in the layers')
  const wrong: string[] = []
  for (const file of files) {
    const room = file.split('/')[1]!
    for (const target of await importsOf(file)) {
      if (!target.startsWith('agent/')) {
        wrong.push(`${file} imports ${target}, outside agent/`)
        continue
      }
      const to = target.split('/')[1]!
      if (to !== room && !MAY_IMPORT[room]?.includes(to)) wrong.push(`${file} (${room}) imports ${target} (${to})`)
    }
  }
  t.same(wrong, [], 'no import reaches up a layer')
})

t.test('the controller uses the agent through core, aws, storage and the task protocol', async (t) => {
  const wrong: string[] = []
  for (const file of await sources('controller')) {
    for (const target of await importsOf(file)) {
      if (target.startsWith('controller/')) continue
      if (!CONTROLLER_MAY_IMPORT.some((p) => target === p || target.startsWith(p))) wrong.push(`${file} imports ${target}`)
    }
  }
  t.same(wrong, [])
})
