// The task protocol: every example in docs/TASKS.md is valid, and bad messages are rejected with
// a stable code and a reason instead of throwing.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseTask, taskPolicy, taskResult } from '../agent/daemon/task.ts'
import { readDataOf } from '../agent/daemon/handlers/check.ts'
import { UNLIMITED } from '../agent/core/retention.ts'
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
  t.same([...types].sort(), ['attach', 'backup', 'check', 'detach', 'prune', 'read', 'restore'], 'every task type has an example')
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

t.test('prune and check tasks: defaults, policies, subsets, and what is refused', async (t) => {
  const prune = parseTask(JSON.stringify({ version: 1, type: 'prune', taskId: 'p' }))
  t.match(prune.ok && prune.task, { type: 'prune', maxUnusedPercent: 5, maxWaitSeconds: 3600, dryRun: false }, 'a bare prune: prune\'s defaults, no forget')
  t.notOk(prune.ok && prune.task.type === 'prune' && prune.task.forget, 'and nothing forgotten')
  const withPolicy = parseTask(JSON.stringify({
    version: 1, type: 'prune', taskId: 'p', forget: { keepDaily: 7, keepWeekly: 'unlimited', keepWithin: '1m2d', keepTag: ['env=prod', 'pin='] },
  }))
  t.ok(withPolicy.ok, `a policy is accepted ${withPolicy.ok ? '' : withPolicy.reason}`)
  if (withPolicy.ok && withPolicy.task.type === 'prune') {
    t.equal(withPolicy.task.forget!.groupBy, 'volume', 'grouped by volume by default')
    t.same(taskPolicy(withPolicy.task.forget!), {
      counts: { daily: 7, weekly: UNLIMITED }, within: { years: 0, months: 1, days: 2, hours: 0 }, tags: [['env', 'prod'], ['pin', '']],
    }, 'as the policy core/retention.ts applies')
  }
  const base = { version: 1, type: 'prune', taskId: 'p' }
  const cases: Array<[string, unknown, RegExp]> = [
    ['an empty policy', { ...base, forget: {} }, /keeps something/],
    ['a policy of zeros', { ...base, forget: { keepLast: 0, keepWithin: '0d' } }, /keeps something/],
    ['only a grouping', { ...base, forget: { groupBy: 'none' } }, /keeps something/],
    ['a bad count', { ...base, forget: { keepDaily: 2.5 } }, /keepDaily/],
    ['a negative count', { ...base, forget: { keepDaily: -2 } }, /keepDaily/],
    ['a bad duration', { ...base, forget: { keepWithin: '30 days' } }, /keepWithin/],
    ['a unit twice', { ...base, forget: { keepWithin: '1d2d' } }, /keepWithin/],
    ['a tag without =', { ...base, forget: { keepTag: ['prod'] } }, /key=value/],
    ['an unknown rule', { ...base, forget: { keepForever: true } }, /keepForever/],
    ['a bad grouping', { ...base, forget: { keepLast: 1, groupBy: 'host' } }, /groupBy/],
    ['max-unused above 100', { ...base, maxUnusedPercent: 150 }, /maxUnusedPercent/],
    ['a CLI spelling', { ...base, 'max-unused': 5 }, /max-unused/],
    ['a bad repack size', { ...base, maxRepackBytes: 0 }, /maxRepackBytes/],
    ['a check subset 3/2', { version: 1, type: 'check', taskId: 'c', readDataSubset: '3/2' }, /readDataSubset/],
    ['a check subset of 0%', { version: 1, type: 'check', taskId: 'c', readDataSubset: '0%' }, /readDataSubset/],
    ['a check subset daily/0', { version: 1, type: 'check', taskId: 'c', readDataSubset: 'daily/0' }, /readDataSubset/],
    ['readData and a subset', { version: 1, type: 'check', taskId: 'c', readData: true, readDataSubset: '1/2' }, /not both/],
  ]
  for (const [what, body, reason] of cases) {
    const parsed = parseTask(JSON.stringify(body))
    t.equal(!parsed.ok && parsed.code, 'INVALID_TASK', `${what}: INVALID_TASK`)
    if (!parsed.ok) t.match(parsed.reason, reason, `${what}: says why (${parsed.reason.split('\n')[0]})`)
  }
  const check = parseTask(JSON.stringify({ version: 1, type: 'check', taskId: 'c' }))
  t.match(check.ok && check.task, { type: 'check', readData: false }, 'a bare check: the structure only')
  for (const subset of ['1/30', '30/30', '10%', '2.5%', 'daily/30']) t.ok(parseTask(JSON.stringify({ version: 1, type: 'check', taskId: 'c', readDataSubset: subset })).ok, `subset ${subset}`)
  const day = Date.parse('2026-11-23T17:00:00Z')
  const n = Math.floor(day / 86_400_000) % 30 + 1
  t.same(readDataOf(false, 'daily/30', day), { kind: 'part', n, of: 30 }, 'daily/30 is the day\'s part')
  t.same(readDataOf(false, 'daily/30', day + 86_400_000), { kind: 'part', n: n % 30 + 1, of: 30 }, 'the next day\'s the next')
  t.same(readDataOf(false, '2/7', day), { kind: 'part', n: 2, of: 7 })
  t.same(readDataOf(true, undefined, day), { kind: 'all' })
  t.equal(readDataOf(false, undefined, day), null)
})
