// Comments and documents point only at files that exist: every path to one of the project's own
// files (agent/…, controller/…, test/…, scripts/…, docs/…, packaging/…, systemd/…) named in the
// source, the tests and the Markdown documents must be there.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'
import { ROOT } from './helpers.ts'

const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '*.ts', '*.md', '*.sh', '*.json', '*.yaml', '*.service', '.ci/run'], { cwd: ROOT, encoding: 'utf8' })
  .split('\n').filter((f) => f && !f.startsWith('node_modules/') && f !== 'package-lock.json' && existsSync(join(ROOT, f)))

const ROOTS = ['agent', 'controller', 'test', 'scripts', 'docs', 'packaging', 'systemd']
// A path of the project's own: a root folder, then names; ends with an extension or a slash.
const PATH = new RegExp(`(?<![\\w./-])((?:${ROOTS.join('|')})/[\\w.@-]+(?:/[\\w.@-]+)*(?:\\.\\w+|/))`, 'g')

t.test('every path to a project file named in the code and the documents exists', async (t) => {
  const missing: string[] = []
  for (const file of files) {
    const text = await readFile(join(ROOT, file), 'utf8')
    for (const m of text.matchAll(PATH)) {
      const path = m[1]!.replace(/[.,:;)]+$/, '')
      if (/\*|<|\{/.test(path) || path.startsWith('test/fixtures/repo-v1/')) continue
      // Markdown links are relative to the document; plain mentions are relative to the root.
      const candidates = [join(ROOT, path), join(ROOT, dirname(file), path)].map(normalize)
      if (!candidates.some((c) => existsSync(c))) missing.push(`${file}: ${path}`)
    }
  }
  t.same(missing, [], 'paths that point nowhere')
})
