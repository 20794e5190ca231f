// ebs-worker forget with retention policies, and backup --time that places backups in time: the
// CLI as a child process, real backups, on file:// and on the test bed's S3 (Ceph RGW). The kept
// sets are derived from restic's rules (test/retention.test.ts has them case by case).
import t from 'tap'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { PACKS } from '../agent/repo/layout.ts'
import { cli, makeImage, MiB, runCli, s3Available, s3RepoUrl, sha256File, tempDir, type Teardown } from './helpers.ts'

interface Planned {
  name: string
  time: string
  volume?: string
  /** Which image (device) of the fixture: 'a' by default. */
  device?: string
  tags?: Record<string, string>
}

/** A repository (file:// in a temporary directory, or a new S3 bucket) with one random image per device. */
async function fixture(t: Teardown, where: 'file' | 's3', devices = ['a'], size = 2 * MiB) {
  const dir = await tempDir(t)
  const repo = where === 'file' ? `file://${join(dir, 'repo')}` : await s3RepoUrl()
  await cli(['init', '--repo', repo])
  const images: Record<string, string> = {}
  for (const d of devices) {
    images[d] = join(dir, `${d}.img`)
    await makeImage(images[d], size, [{ kind: 'random', offset: 0, length: size / 2 }])
  }
  return { dir, repo, images }
}

/** Makes the planned backups (a few at a time), each at its time; their ids by name. */
async function backUp(repo: string, images: Record<string, string>, plan: Planned[]): Promise<Record<string, string>> {
  const ids: Record<string, string> = {}
  for (let i = 0; i < plan.length; i += 4) {
    await Promise.all(plan.slice(i, i + 4).map(async (p) => {
      const args = ['backup', '--repo', repo, '--device', images[p.device ?? 'a']!, '--time', p.time]
      if (p.volume) args.push('--volume-id', p.volume)
      for (const [k, v] of Object.entries(p.tags ?? {})) args.push('--tag', `${k}=${v}`)
      ids[p.name] = (await cli(args)).backupId
    }))
  }
  return ids
}

const listed = async (repo: string): Promise<string[]> => (await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id)
const names = (ids: Record<string, string>, of: string[]): string[] => of.map((id) => Object.keys(ids).find((n) => ids[n] === id) ?? id)

/** Two volumes over two weeks: vol-a with two backups on one day, vol-b with two. */
const weeks: Planned[] = [
  { name: 'a1', time: '2026-11-02T10:00:00Z', volume: 'vol-a' }, // Monday, 2026-W45
  { name: 'a2', time: '2026-11-08T10:00:00Z', volume: 'vol-a' }, // Sunday, 2026-W45
  { name: 'a3', time: '2026-11-09T10:00:00Z', volume: 'vol-a' }, // Monday, 2026-W46
  { name: 'a4', time: '2026-11-10T09:00:00Z', volume: 'vol-a' },
  { name: 'a5', time: '2026-11-10T18:00:00Z', volume: 'vol-a' },
  { name: 'b1', time: '2026-11-01T10:00:00Z', volume: 'vol-b' }, // Sunday, 2026-W44
  { name: 'b2', time: '2026-11-10T12:00:00Z', volume: 'vol-b' },
]

const backends: Array<['file' | 's3', false | string]> = [['file', false], ['s3', !s3Available && 'no S3 test bed (npm test starts one)']]

for (const [where, skip] of backends) {
  t.test(`${where}: a policy is applied to each volume's backups, and the JSON says why each kept one is kept`, { skip }, async (t) => {
    const f = await fixture(t, where)
    const ids = await backUp(f.repo, f.images, weeks)
    const r = await cli(['forget', '--repo', f.repo, '--keep-daily', '2', '--keep-weekly', '2'])
    t.same(r.policy, { daily: 2, weekly: 2 }, 'the policy')
    t.equal(r.groupBy, 'volume', 'grouped by volume by default')
    const byGroup = Object.fromEntries(r.groups.map((g: any) => [g.group, {
      keep: Object.fromEntries(g.keep.map((k: any) => [names(ids, [k.id])[0], k.reasons])),
      forget: names(ids, g.forget.map((b: any) => b.id)),
    }]))
    t.same(byGroup, {
      'vol-a': {
        keep: {
          a5: [{ rule: 'daily', period: '2026-11-10' }, { rule: 'weekly', period: '2026-W46' }],
          a3: [{ rule: 'daily', period: '2026-11-09' }],
          a2: [{ rule: 'weekly', period: '2026-W45' }],
        },
        forget: ['a4', 'a1'],
      },
      'vol-b': {
        keep: {
          b2: [{ rule: 'daily', period: '2026-11-10' }, { rule: 'weekly', period: '2026-W46' }],
          b1: [{ rule: 'daily', period: '2026-11-01' }, { rule: 'weekly', period: '2026-W44' }],
        },
        forget: [],
      },
    }, 'vol-a keeps its 2 newest days and 2 newest weeks (a day\'s later backup); vol-b keeps both')
    t.same(names(ids, r.forgotten).sort(), ['a1', 'a4'], 'the JSON lists what was forgotten')
    t.same(names(ids, await listed(f.repo)).sort(), ['a2', 'a3', 'a5', 'b1', 'b2'], 'the repository lists exactly the kept backups')
  })

  t.test(`${where}: --prune after forgetting reclaims what only the forgotten backups used; the kept one restores exactly`, { skip }, async (t) => {
    const f = await fixture(t, where, ['x', 'y', 'z'], 4 * MiB)
    const ids = await backUp(f.repo, f.images, [
      { name: 'x', time: '2026-10-01T00:00:00Z', device: 'x', volume: 'vol-p' },
      { name: 'y', time: '2026-10-02T00:00:00Z', device: 'y', volume: 'vol-p' },
      { name: 'z', time: '2026-10-03T00:00:00Z', device: 'z', volume: 'vol-p' },
    ])
    const r = await cli(['forget', '--repo', f.repo, '--keep-last', '1', '--prune', '--grace', '0'])
    t.same(names(ids, r.forgotten).sort(), ['x', 'y'], 'the two older backups are forgotten')
    t.ok(r.prune.packs.deleted > 0 && r.prune.bytes.reclaimed > 3.5 * MiB, `prune ran and reclaimed their data (${(r.prune.bytes.reclaimed / MiB).toFixed(1)} MiB, ${r.prune.packs.deleted} packs)`)
    t.equal(r.prune.backups, 1, 'prune counted the one kept backup')
    const out = join(f.dir, 'restored.img')
    await cli(['restore', '--repo', f.repo, '--backup', ids.z!, '--device', out])
    t.equal(await sha256File(out), await sha256File(f.images.z!), 'the kept backup restores exactly')
  })
}

t.test('--dry-run says what would be forgotten and forgets nothing', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, weeks)
  const dry = await cli(['forget', '--repo', f.repo, '--keep-daily', '2', '--keep-weekly', '2', '--dry-run'])
  t.equal(dry.dryRun, true)
  t.same(names(ids, dry.forgotten).sort(), ['a1', 'a4'], 'the backups that would go')
  t.equal((await listed(f.repo)).length, weeks.length, 'every backup is still there')
  const human = await runCli(['forget', '--repo', f.repo, '--keep-daily', '2', '--keep-weekly', '2', '--dry-run'])
  t.match(human.stdout, /volume vol-a: 5 backups, keep 3, would forget 2/, 'people read the plan per group')
  t.match(human.stdout, new RegExp(`keep +${ids.a5}  2026-11-10T18:00:00.000Z  daily 2026-11-10, weekly 2026-W46`), 'and why each is kept')
})

t.test('--keep-within counts back from the newest backup, not from now', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, [
    { name: 'old', time: '2025-06-01T00:00:00Z' }, { name: 'mid', time: '2025-06-05T00:00:00Z' }, { name: 'new', time: '2025-06-09T12:00:00Z' },
  ])
  const r = await cli(['forget', '--repo', f.repo, '--keep-within', '5d'])
  t.same(names(ids, r.forgotten), ['old'], 'what is more than 5 days older than the newest goes; the newest is 18 months old')
  t.same(r.groups[0].keep.map((k: any) => k.reasons), [[{ rule: 'within', within: '5d' }], [{ rule: 'within', within: '5d' }]])
})

t.test('--keep-daily unlimited keeps every day\'s newest, and the oldest of all', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, ['2026-11-01T01', '2026-11-01T02', '2026-11-01T03', '2026-11-02T01'].map((h, i) => ({ name: `n${i}`, time: `${h}:00:00Z` })))
  const r = await cli(['forget', '--repo', f.repo, '--keep-daily', 'unlimited'])
  t.same(names(ids, r.forgotten), ['n1'], 'only the middle backup of the first day goes')
  t.same(r.groups[0].keep.at(-1).reasons, [{ rule: 'daily', period: '2026-11-01', oldest: true }], 'the oldest says it was kept as the oldest')
})

t.test('--keep-tag keeps the tagged backups, whatever their age', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, [
    { name: 'tagged', time: '2026-01-01T00:00:00Z', tags: { keep: 'yes' } },
    { name: 'other', time: '2026-02-01T00:00:00Z', tags: { keep: 'no' } },
    { name: 'newest', time: '2026-03-01T00:00:00Z' },
  ])
  const r = await cli(['forget', '--repo', f.repo, '--keep-last', '1', '--keep-tag', 'keep=yes'])
  t.same(names(ids, r.forgotten), ['other'])
  t.same(r.groups[0].keep.map((k: any) => [names(ids, [k.id])[0], k.reasons]), [
    ['newest', [{ rule: 'last', period: '#1' }]],
    ['tagged', [{ rule: 'tag', tag: 'keep=yes' }]],
  ])
})

t.test('--group-by: volume (the default, a backup without a volume id by its device), device, tags, none', async (t) => {
  const f = await fixture(t, 'file', ['one', 'two'])
  const ids = await backUp(f.repo, f.images, [
    { name: 'g1', time: '2026-10-01T00:00:00Z', device: 'one', volume: 'vol-x', tags: { env: 'prod' } },
    { name: 'g2', time: '2026-10-02T00:00:00Z', device: 'two', volume: 'vol-x', tags: { env: 'test' } },
    { name: 'g3', time: '2026-10-03T00:00:00Z', device: 'one', tags: { env: 'prod' } },
    { name: 'g4', time: '2026-10-04T00:00:00Z', device: 'two', volume: 'vol-y' },
  ])
  const plan = async (...by: string[]) => {
    const r = await cli(['forget', '--repo', f.repo, '--keep-last', '1', '--dry-run', ...by])
    return Object.fromEntries(r.groups.map((g: any) => [g.group, names(ids, g.keep.map((k: any) => k.id))]))
  }
  t.same(await plan(), { 'vol-x': ['g2'], [f.images.one!]: ['g3'], 'vol-y': ['g4'] }, 'by volume: its volume id, else its device')
  t.same(await plan('--group-by', 'device'), { [f.images.one!]: ['g3'], [f.images.two!]: ['g4'] }, 'by device')
  t.same(await plan('--group-by', 'tags'), { '': ['g4'], 'env=prod': ['g3'], 'env=test': ['g2'] }, 'by tags: the sorted key=value list')
  t.same(await plan('--group-by', 'none'), { '': ['g4'] }, 'none: one group')
})

t.test('a policy that would keep nothing of a group is refused, and nothing is forgotten', async (t) => {
  const f = await fixture(t, 'file')
  await backUp(f.repo, f.images, [
    { name: 'a', time: '2026-10-01T00:00:00Z', volume: 'vol-a' },
    { name: 'b', time: '2026-10-01T00:00:00Z', volume: 'vol-b', tags: { keep: 'yes' } },
  ])
  const r = await runCli(['forget', '--repo', f.repo, '--keep-tag', 'keep=yes', '--json'])
  t.equal(r.code, 2, 'exit 2: bad input')
  t.equal(r.json?.error.code, 'BAD_INPUT')
  t.match(r.json?.error.message, /refusing to forget every one of the backups of vol-a/, 'the message names the group')
  t.equal((await listed(f.repo)).length, 2, 'nothing was forgotten, not even in the groups the policy keeps')
})

t.test('forget without ids or a policy is refused', async (t) => {
  const f = await fixture(t, 'file')
  await backUp(f.repo, f.images, [{ name: 'a', time: '2026-10-01T00:00:00Z' }])
  const r = await runCli(['forget', '--repo', f.repo, '--keep-daily', '0', '--json'])
  t.equal(r.code, 2)
  t.match(r.json?.error.message, /no policy was given/, 'a zero count is no policy, as in restic')
  t.equal((await listed(f.repo)).length, 1)
})

t.test('ids and a policy together are refused', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, [{ name: 'a', time: '2026-10-01T00:00:00Z' }, { name: 'b', time: '2026-10-02T00:00:00Z' }])
  for (const extra of [['--keep-last', '1'], ['--group-by', 'device']]) {
    const r = await runCli(['forget', '--repo', f.repo, ids.a!, ...extra, '--json'])
    t.equal(r.code, 2, `with ${extra[0]}: exit 2`)
    t.match(r.json?.error.message, /ids or a policy/)
  }
  t.equal((await listed(f.repo)).length, 2, 'nothing was forgotten')
})

t.test('named backups are forgotten; a name that is not a backup forgets nothing', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, [{ name: 'a', time: '2026-10-01T00:00:00Z' }, { name: 'b', time: '2026-10-02T00:00:00Z' }])
  const missing = await runCli(['forget', '--repo', f.repo, ids.a!, '20261003T000000Z-00000000', '--json'])
  t.equal(missing.json?.error.code, 'BACKUP_NOT_FOUND')
  t.equal((await listed(f.repo)).length, 2, 'nothing was forgotten')
  const r = await cli(['forget', '--repo', f.repo, ids.a!])
  t.same(r.forgotten, [ids.a])
  t.same(await listed(f.repo), [ids.b])
})

t.test('policy values that are not numbers, durations or tags are usage errors', async (t) => {
  const f = { repo: 'file:///nonexistent/repo' } // refused before the repository is opened
  for (const bad of [['--keep-last', '-2'], ['--keep-daily', 'x'], ['--keep-weekly', '1.5'], ['--keep-within', '1w'], ['--keep-within', '2d2d'], ['--keep-tag', 'novalue'], ['--group-by', 'host']]) {
    const r = await runCli(['forget', '--repo', f.repo, ...bad, '--json'])
    t.equal(r.code, 2, `${bad.join(' ')}: exit 2`)
  }
})

t.test('forgetting a backup that is another\'s parent leaves that one whole', async (t) => {
  const f = await fixture(t, 'file')
  const parent = (await cli(['backup', '--repo', f.repo, '--device', f.images.a!, '--time', '2026-10-01T00:00:00Z'])).backupId
  await makeImage(f.images.a!, 2 * MiB, [{ kind: 'random', offset: MiB, length: MiB }]) // the image changes
  const child = (await cli(['backup', '--repo', f.repo, '--device', f.images.a!, '--parent', parent, '--time', '2026-10-02T00:00:00Z'])).backupId
  const r = await cli(['forget', '--repo', f.repo, '--keep-last', '1'])
  t.same(r.forgotten, [parent], 'the parent is forgotten')
  const out = join(f.dir, 'restored.img')
  await cli(['restore', '--repo', f.repo, '--backup', child, '--device', out])
  t.equal(await sha256File(out), await sha256File(f.images.a!), 'the incremental backup restores exactly')
})

t.test('--dry-run --prune says what forgetting would reclaim, and deletes nothing', async (t) => {
  const f = await fixture(t, 'file', ['x', 'y'], 4 * MiB)
  await backUp(f.repo, f.images, [{ name: 'x', time: '2026-10-01T00:00:00Z', device: 'x' }, { name: 'y', time: '2026-10-02T00:00:00Z', device: 'y' }])
  const before = await bytesIn(join(f.dir, 'repo', PACKS))
  const r = await cli(['forget', '--repo', f.repo, '--group-by', 'none', '--keep-last', '1', '--prune', '--dry-run', '--grace', '0'])
  t.equal(r.prune.dryRun, true, 'prune ran as a dry run')
  t.equal(r.prune.backups, 1, 'counting the backup that would be forgotten as gone')
  t.ok(r.prune.bytes.reclaimed > 1.5 * MiB, `and saying what its data would free (${(r.prune.bytes.reclaimed / MiB).toFixed(1)} MiB)`)
  t.equal(await bytesIn(join(f.dir, 'repo', PACKS)), before, 'no pack was deleted')
  t.equal((await listed(f.repo)).length, 2, 'no backup was forgotten')
})

t.test('--prune does not run when nothing was forgotten', async (t) => {
  const f = await fixture(t, 'file')
  await backUp(f.repo, f.images, [{ name: 'a', time: '2026-10-01T00:00:00Z' }])
  const r = await cli(['forget', '--repo', f.repo, '--keep-last', '3', '--prune'])
  t.same(r.forgotten, [])
  t.equal(r.prune, undefined, 'no prune')
})

t.test('forgetting backups of controller restore points says so', async (t) => {
  const f = await fixture(t, 'file')
  const ids = await backUp(f.repo, f.images, [
    { name: 'a', time: '2026-10-01T00:00:00Z', tags: { 'restore-point': 'rp-20261001T000000Z-0a0a0a0a' } },
    { name: 'b', time: '2026-10-02T00:00:00Z', tags: { 'restore-point': 'rp-20261002T000000Z-0b0b0b0b' } },
  ])
  const r = await runCli(['forget', '--repo', f.repo, ids.a!])
  t.equal(r.code, 0)
  t.match(r.stderr, /1 of these backups belong to restore points of ebs-controller.*ebs-controller forget/s, 'a note on stderr')
})

async function bytesIn(dir: string): Promise<number> {
  let n = 0
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) if (e.isFile()) n += (await stat(join(e.parentPath, e.name))).size
  return n
}

t.test('backup --time: the manifest\'s createdAt and the id\'s timestamp are that time; ids sort by it', async (t) => {
  const f = await fixture(t, 'file')
  const late = await cli(['backup', '--repo', f.repo, '--device', f.images.a!, '--time', '2026-05-06T09:08:07.5+02:00'])
  const early = await cli(['backup', '--repo', f.repo, '--device', f.images.a!, '--time', '20250101T000000Z'])
  t.equal(late.createdAt, '2026-05-06T07:08:07.500Z', 'createdAt in UTC, to the millisecond')
  t.match(late.backupId, /^20260506T070807Z-[0-9a-f]{8}$/, 'the id says the same time, to the second')
  t.match(early.backupId, /^20250101T000000Z-/, 'the basic form, as ids spell it, is accepted')
  const list = (await cli(['list', '--repo', f.repo])).backups
  t.same(list.map((b: any) => b.id), [early.backupId, late.backupId], 'list shows them in time order, though made the other way round')
  t.same(list.map((b: any) => b.createdAt), ['2025-01-01T00:00:00.000Z', '2026-05-06T07:08:07.500Z'])
})

t.test('backup --time refuses what is not an instant, and the future', async (t) => {
  const f = await fixture(t, 'file')
  const soon = new Date(Date.now() + 2 * 60_000).toISOString()
  const ok = await cli(['backup', '--repo', f.repo, '--device', f.images.a!, '--time', soon])
  t.equal(ok.createdAt, soon, 'two minutes ahead (a clock a little off) is accepted')
  const bad = ['2026-02-30T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T00:00:60Z', '2026-01-01T00:00:00', '2026-01-01', 'yesterday', '1969-12-31T23:59:59Z',
    '2026-01-01T00:00:00+25:00', new Date(Date.now() + 3600_000).toISOString()]
  for (const time of bad) {
    const r = await runCli(['backup', '--repo', f.repo, '--device', f.images.a!, '--time', time, '--json'])
    t.equal(r.code, 2, `${time}: exit 2`)
  }
  t.equal((await listed(f.repo)).length, 1, 'none of them made a backup')
})
