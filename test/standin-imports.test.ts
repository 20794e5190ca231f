// The AWS stand-ins (test/standin/) are fixtures of their own: they import other stand-ins, the
// agent's modules they model devices with, Node and npm packages, never the tests' helpers.
import t from 'tap'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ROOT } from './helpers.ts'

t.test('no stand-in imports from test/ outside test/standin/', async (t) => {
  const dir = join(ROOT, 'test/standin')
  const wrong: string[] = []
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.ts'))) {
    const text = await readFile(join(dir, name), 'utf8')
    for (const m of text.matchAll(/(?:from|import\()\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
      const target = m[1]!
      if (target.startsWith('./') || target.startsWith('../../agent/')) continue
      wrong.push(`test/standin/${name} imports ${target}`)
    }
  }
  t.same(wrong, [])
})
