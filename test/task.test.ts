// The task protocol: every example in docs/TASKS.md is valid, and bad messages are rejected with
// a stable code and a reason instead of throwing.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseTask, taskResult } from '../agent/daemon/task.ts'
import { ROOT } from './helpers.ts'

t.test('the examples in docs/TASKS.md are what the code accepts', async (t) => {
  const doc = await readFile(join(ROOT, 'docs/TASKS.md'), 'utf8')
  const blocks = [...doc.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!)
  t.ok(blocks.length >= 8, `the doc has its examples (${blocks.length})`)
  const types = new Set<string>()
  for (const block of blocks) {
    if (block.trimStart().startsWith('"error"')) {
      // A reply's `error` member on its own.
      const r = taskResult.shape.error.safeParse(JSON.parse(`{${block}}`).error)
      t.ok(r.success, `the error example is valid${r.success ? '' : ': ' + r.error.message}`)
      continue
    }
    const json = JSON.parse(block)
    if ('status' in json) {
      const r = taskResult.safeParse(json)
      t.ok(r.success, `result example for ${json.taskId} is valid${r.success ? '' : ': ' + r.error.message}`)
    } else {
      const parsed = parseTask(block)
      t.ok(parsed.ok, `${json.type} example ${json.taskId} is valid${parsed.ok ? '' : ': ' + parsed.reason}`)
      types.add(json.type)
    }
  }
  t.same([...types].sort(), ['attach', 'backup', 'detach', 'read', 'restore'], 'every task type has an example')
})

t.test('defaults are filled in', async (t) => {
  const parsed = parseTask(JSON.stringify({ version: 1, type: 'detach', taskId: 'd', volumeId: 'vol-0123456789abcdef0' }))
  t.ok(parsed.ok && parsed.task.type === 'detach' && parsed.task.delete === true, 'detach deletes by default')
  const attach = parseTask(JSON.stringify({ version: 1, type: 'attach', taskId: 'a', snapshotId: 'snap-0123456789abcdef0', volume: {} }))
  t.ok(attach.ok && attach.task.type === 'attach' && attach.task.volume?.volumeType === 'gp3', 'gp3 by default')
})

t.test('bad messages are rejected with a code and a reason, never thrown', async (t) => {
  const ok = { version: 1, type: 'read', taskId: 'r1', volumeId: 'vol-0123456789abcdef0' }
  const cases: Array<[string, string, string, RegExp]> = [
    ['not JSON', '{"version": 1,', 'INVALID_JSON', /not JSON/],
    ['an array', '[1, 2]', 'INVALID_TASK', /JSON object/],
    ['null', 'null', 'INVALID_TASK', /JSON object/],
    ['no version', JSON.stringify({ ...ok, version: undefined }), 'UNSUPPORTED_VERSION', /version undefined/],
    ['version 2', JSON.stringify({ ...ok, version: 2 }), 'UNSUPPORTED_VERSION', /version 2 is not supported/],
    ['unknown type', JSON.stringify({ ...ok, type: 'format-disk' }), 'UNKNOWN_TYPE', /format-disk.*known: attach/],
    ['missing field', JSON.stringify({ ...ok, volumeId: undefined }), 'INVALID_TASK', /volumeId/],
    ['extra field', JSON.stringify({ ...ok, force: true }), 'INVALID_TASK', /force/],
    ['bad volume id', JSON.stringify({ ...ok, volumeId: '/dev/nvme1n1' }), 'INVALID_TASK', /not a volume id/],
    ['bad task id', JSON.stringify({ ...ok, taskId: '' }), 'INVALID_TASK', /task id/],
    ['bad repository', JSON.stringify({ ...ok, repository: 'ftp://x' }), 'INVALID_TASK', /repository URL/],
    ['bad account', JSON.stringify({ version: 1, type: 'attach', taskId: 'a', snapshotId: 'snap-0123456789abcdef0', sharedFromAccount: '12' }), 'INVALID_TASK', /account id/],
  ]
  for (const [what, body, code, reason] of cases) {
    const parsed = parseTask(body)
    t.equal(parsed.ok, false, `${what}: rejected`)
    if (!parsed.ok) {
      t.equal(parsed.code, code, `${what}: ${code}`)
      t.match(parsed.reason, reason, `${what}: says why`)
    }
  }
  const withId = parseTask(JSON.stringify({ ...ok, version: 9 }))
  t.equal(!withId.ok && withId.taskId, 'r1', 'a rejection keeps the task id when there is one, for the reply')
})
