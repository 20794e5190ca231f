// Retention policies (agent/core/retention.ts) against restic's semantics, on synthetic times.
// The expected sets are derived by hand from restic's ApplyPolicy (internal/data/snapshot_policy.go):
// newest first; tags and keep-within keep without counting; each bucket rule keeps an item whose
// period differs from the last one it kept while it has a count left (-1: unlimited), and keeps the
// group's oldest item too while it has a count left; keep-within is strictly newer than the
// duration before the newest item that is not in the future, with Go's calendar arithmetic (AddDate).
// Periods are in UTC; ISO weeks are ISO 8601's (checked against Python's date.isocalendar()).
// The cases without an "oldest" keep, `unlimited` or a given `now` (which restic 0.14, Debian's,
// predates or cannot be given) were also run once through restic 0.14 itself with TZ=UTC and
// `backup --time`: it kept the same sets.
import t from 'tap'
import {
  applyPolicy, describeReason, isoWeek, parseDuration, planRetention, subtractDuration, UNLIMITED,
  type Candidate, type Policy,
} from '../agent/core/retention.ts'

/** An item at an ISO time; its id is the time (ties get a suffix), with tags. */
const item = (iso: string, tags: Record<string, string> = {}, id = iso): Candidate => ({ id, time: Date.parse(iso), tags })
const d = (text: string) => parseDuration(text)!
const FAR = Date.parse('2030-01-01T00:00:00Z')

interface Case {
  name: string
  items: Candidate[]
  policy: Policy
  now?: string
  keep: string[]
}

const days = (from: string, to: string, at = '12:00:00'): Candidate[] => {
  const out: Candidate[] = []
  for (let t = Date.parse(`${from}T${at}Z`); t <= Date.parse(`${to}T${at}Z`); t += 86_400_000) out.push(item(new Date(t).toISOString()))
  return out
}
const iso = (s: string) => new Date(Date.parse(s)).toISOString()
/** Ids that are times, in one spelling (ids that are not times, as they are). */
const norm = (id: string) => (Number.isNaN(Date.parse(id)) ? id : iso(id))

/** A day with several backups: 4 days, 6 backups. */
const uneven = ['2026-03-01T08:00:00Z', '2026-03-01T20:00:00Z', '2026-03-02T09:00:00Z', '2026-03-03T07:00:00Z', '2026-03-03T23:59:00Z', '2026-03-04T12:00:00Z'].map((s) => item(s))

const cases: Case[] = [
  // ---- each rule alone
  { name: 'keep-last 3 keeps the 3 newest', items: uneven, policy: { counts: { last: 3 } }, keep: ['2026-03-04T12:00:00Z', '2026-03-03T23:59:00Z', '2026-03-03T07:00:00Z'] },
  { name: 'keep-last larger than the group keeps all', items: uneven, policy: { counts: { last: 10 } }, keep: [...uneven].reverse().map((x) => x.id) },
  { name: 'keep-last unlimited keeps all', items: uneven, policy: { counts: { last: UNLIMITED } }, keep: [...uneven].reverse().map((x) => x.id) },
  {
    name: 'keep-hourly 2: the newest of each of the 2 newest hours',
    items: ['10:05', '10:40', '11:10', '11:50', '12:30'].map((h) => item(`2026-03-01T${h}:00Z`)),
    policy: { counts: { hourly: 2 } }, keep: ['2026-03-01T12:30:00Z', '2026-03-01T11:50:00Z'],
  },
  {
    name: 'keep-daily 3: the newest of each of the 3 newest days (a day with two backups keeps its later one)',
    items: uneven, policy: { counts: { daily: 3 } }, keep: ['2026-03-04T12:00:00Z', '2026-03-03T23:59:00Z', '2026-03-02T09:00:00Z'],
  },
  {
    name: 'keep-daily with counts left keeps the oldest too, though its day already has one',
    items: uneven, policy: { counts: { daily: 5 } },
    keep: ['2026-03-04T12:00:00Z', '2026-03-03T23:59:00Z', '2026-03-02T09:00:00Z', '2026-03-01T20:00:00Z', '2026-03-01T08:00:00Z'],
  },
  {
    name: 'keep-monthly 4 with four backups of one month keeps the newest and the oldest (restic forum, 2024)',
    items: ['2024-01-02T13:42:44Z', '2024-01-03T01:04:38Z', '2024-01-04T20:09:54Z', '2024-01-04T20:20:32Z'].map((s) => item(s)),
    policy: { counts: { monthly: 4 } }, keep: ['2024-01-04T20:20:32Z', '2024-01-02T13:42:44Z'],
  },
  {
    name: 'keep-daily unlimited: every day\'s newest, and the oldest of all',
    items: ['2026-03-01T01:00:00Z', '2026-03-01T02:00:00Z', '2026-03-01T03:00:00Z', '2026-03-02T01:00:00Z', '2026-03-02T02:00:00Z'].map((s) => item(s)),
    policy: { counts: { daily: UNLIMITED } }, keep: ['2026-03-02T02:00:00Z', '2026-03-01T03:00:00Z', '2026-03-01T01:00:00Z'],
  },
  {
    name: 'keep-yearly unlimited: each year\'s newest, and the oldest',
    items: ['2020-02-01T00:00:00Z', '2020-06-01T00:00:00Z', '2021-03-01T00:00:00Z', '2021-12-31T23:00:00Z', '2023-01-01T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { yearly: UNLIMITED } }, keep: ['2023-01-01T00:00:00Z', '2021-12-31T23:00:00Z', '2020-06-01T00:00:00Z', '2020-02-01T00:00:00Z'],
  },
  {
    name: 'a rule whose count ran out does not keep the oldest',
    items: ['2026-03-01T01:00:00Z', '2026-03-01T02:00:00Z', '2026-03-02T01:00:00Z'].map((s) => item(s)),
    policy: { counts: { daily: 2 } }, keep: ['2026-03-02T01:00:00Z', '2026-03-01T02:00:00Z'],
  },
  {
    name: 'a single backup is kept by any bucket rule',
    items: [item('2026-03-01T01:00:00Z')], policy: { counts: { weekly: 1 } }, keep: ['2026-03-01T01:00:00Z'],
  },

  // ---- bucket boundaries
  {
    name: 'days end at midnight UTC: 23:59:59 and 00:00:00 are two days',
    items: ['2026-02-28T12:00:00Z', '2026-02-28T23:59:59Z', '2026-03-01T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { daily: 2 } }, keep: ['2026-03-01T00:00:00Z', '2026-02-28T23:59:59Z'],
  },
  {
    name: 'a time with an offset counts in its UTC day',
    items: [item('2026-03-01T23:30:00-02:00'), item('2026-03-02T00:30:00Z'), item('2026-03-01T12:00:00Z')],
    policy: { counts: { daily: 1 } }, keep: ['2026-03-01T23:30:00-02:00'],
  },
  {
    name: 'ISO weeks run Monday to Sunday across the new year (2024-12-30 is in 2025-W01)',
    items: ['2024-12-29T12:00:00Z', '2024-12-30T12:00:00Z', '2025-01-05T12:00:00Z', '2025-01-06T12:00:00Z'].map((s) => item(s)),
    policy: { counts: { weekly: 3 } }, keep: ['2025-01-06T12:00:00Z', '2025-01-05T12:00:00Z', '2024-12-29T12:00:00Z'],
  },
  {
    name: 'a week ends on Sunday 23:59:59 UTC',
    items: ['2026-03-08T23:59:59Z', '2026-03-09T00:00:00Z', '2026-03-02T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { weekly: 2 } }, keep: ['2026-03-09T00:00:00Z', '2026-03-08T23:59:59Z'],
  },
  {
    name: 'week 53: 2020-12-31 and 2021-01-03 are one week (2020-W53)',
    items: ['2020-12-27T12:00:00Z', '2020-12-31T12:00:00Z', '2021-01-03T12:00:00Z', '2021-01-04T12:00:00Z'].map((s) => item(s)),
    policy: { counts: { weekly: 3 } }, keep: ['2021-01-04T12:00:00Z', '2021-01-03T12:00:00Z', '2020-12-27T12:00:00Z'],
  },
  {
    name: 'months end on their last day, February 29 in a leap year',
    items: ['2024-01-31T23:59:59Z', '2024-02-01T00:00:00Z', '2024-02-29T12:00:00Z', '2024-03-01T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { monthly: 2 } }, keep: ['2024-03-01T00:00:00Z', '2024-02-29T12:00:00Z'],
  },
  {
    name: 'years end on December 31 23:59:59 UTC',
    items: ['2025-06-01T00:00:00Z', '2025-12-31T23:59:59Z', '2026-01-01T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { yearly: 1 } }, keep: ['2026-01-01T00:00:00Z'],
  },
  {
    name: 'keep-yearly 2 across a year end',
    items: ['2025-06-01T00:00:00Z', '2025-12-31T23:59:59Z', '2026-01-01T00:00:00Z'].map((s) => item(s)),
    policy: { counts: { yearly: 2 } }, keep: ['2026-01-01T00:00:00Z', '2025-12-31T23:59:59Z'],
  },

  // ---- keep-within
  {
    name: 'keep-within 2d keeps what is strictly newer than 2 days before the newest (the boundary goes)',
    items: ['2026-03-01T00:00:00Z', '2026-03-08T12:00:00Z', '2026-03-08T12:00:00.001Z', '2026-03-09T00:00:00Z', '2026-03-10T12:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('2d') }, keep: ['2026-03-10T12:00:00Z', '2026-03-09T00:00:00Z', '2026-03-08T12:00:00.001Z'],
  },
  {
    name: 'keep-within counts from the newest backup, not from now',
    items: ['2026-03-08T00:00:00Z', '2026-03-09T06:00:00Z', '2026-03-10T00:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1d') }, now: '2029-01-01T00:00:00Z', keep: ['2026-03-10T00:00:00Z', '2026-03-09T06:00:00Z'],
  },
  {
    name: 'keep-within ignores backups in the future for the newest, and keeps them',
    items: ['2026-03-07T00:00:00Z', '2026-03-08T13:00:00Z', '2026-03-09T12:00:00Z', '2026-03-12T00:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1d') }, now: '2026-03-10T00:00:00Z',
    keep: ['2026-03-12T00:00:00Z', '2026-03-09T12:00:00Z', '2026-03-08T13:00:00Z'],
  },
  {
    name: 'a backup at exactly now counts as in the future',
    items: ['2026-03-08T06:00:00Z', '2026-03-09T00:00:00Z', '2026-03-10T00:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1d') }, now: '2026-03-10T00:00:00Z',
    keep: ['2026-03-10T00:00:00Z', '2026-03-09T00:00:00Z', '2026-03-08T06:00:00Z'],
  },
  {
    name: 'all in the future: keep-within keeps all',
    items: ['2026-03-08T00:00:00Z', '2026-04-09T00:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1d') }, now: '2026-01-01T00:00:00Z', keep: ['2026-04-09T00:00:00Z', '2026-03-08T00:00:00Z'],
  },
  {
    name: 'keep-within 1m from March 31 goes back to "February 31", that is March 3',
    items: ['2026-02-28T13:00:00Z', '2026-03-02T12:00:00Z', '2026-03-03T12:00:00Z', '2026-03-03T12:00:01Z', '2026-03-31T12:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1m') }, keep: ['2026-03-31T12:00:00Z', '2026-03-03T12:00:01Z'],
  },
  {
    name: 'keep-within 1y from February 29 goes back to March 1',
    items: ['2023-02-28T23:00:00Z', '2023-03-01T00:00:00Z', '2023-03-01T00:00:01Z', '2024-02-29T00:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1y') }, keep: ['2024-02-29T00:00:00Z', '2023-03-01T00:00:01Z'],
  },
  {
    name: 'keep-within 1y2m3d4h: the calendar part first, then the hours',
    items: ['2025-03-07T06:00:00Z', '2025-03-07T06:00:01Z', '2026-05-10T10:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('1y2m3d4h') }, keep: ['2026-05-10T10:00:00Z', '2025-03-07T06:00:01Z'],
  },
  {
    name: 'keep-within 36h is 36 hours',
    items: ['2026-03-08T23:59:59Z', '2026-03-09T00:00:01Z', '2026-03-10T12:00:00Z'].map((s) => item(s)),
    policy: { counts: {}, within: d('36h') }, keep: ['2026-03-10T12:00:00Z', '2026-03-09T00:00:01Z'],
  },

  // ---- tags
  {
    name: 'keep-tag keeps what has the tag, whatever its age',
    items: [item('2026-01-01T00:00:00Z', { env: 'prod' }), item('2026-02-01T00:00:00Z', { env: 'test' }), item('2026-03-01T00:00:00Z', { env: 'prod' })],
    policy: { counts: {}, tags: [['env', 'prod']] }, keep: ['2026-03-01T00:00:00Z', '2026-01-01T00:00:00Z'],
  },
  {
    name: 'several keep-tags: any one of them keeps',
    items: [item('2026-01-01T00:00:00Z', { keep: 'yes' }), item('2026-02-01T00:00:00Z', { env: 'test' }), item('2026-03-01T00:00:00Z', { env: 'prod' })],
    policy: { counts: {}, tags: [['env', 'prod'], ['keep', 'yes']] }, keep: ['2026-03-01T00:00:00Z', '2026-01-01T00:00:00Z'],
  },
  {
    name: 'a backup kept by its tag still uses up the counts of the rules it matches',
    items: [item('2026-03-01T00:00:00Z'), item('2026-03-02T00:00:00Z'), item('2026-03-03T00:00:00Z', { env: 'prod' })],
    policy: { counts: { last: 1 }, tags: [['env', 'prod']] }, keep: ['2026-03-03T00:00:00Z'],
  },

  // ---- combinations
  {
    name: 'daily 7, weekly 4, monthly 3 over 90 daily backups',
    items: days('2026-01-01', '2026-03-31'), policy: { counts: { daily: 7, weekly: 4, monthly: 3 } },
    keep: ['2026-03-31', '2026-03-30', '2026-03-29', '2026-03-28', '2026-03-27', '2026-03-26', '2026-03-25', '2026-03-22', '2026-03-15', '2026-02-28', '2026-01-31']
      .map((s) => `${s}T12:00:00.000Z`),
  },
  {
    name: 'daily 7, weekly 4, monthly 4 over 90 daily backups: the monthly count left keeps the oldest',
    items: days('2026-01-01', '2026-03-31'), policy: { counts: { daily: 7, weekly: 4, monthly: 4 } },
    keep: ['2026-03-31', '2026-03-30', '2026-03-29', '2026-03-28', '2026-03-27', '2026-03-26', '2026-03-25', '2026-03-22', '2026-03-15', '2026-02-28', '2026-01-31', '2026-01-01']
      .map((s) => `${s}T12:00:00.000Z`),
  },
  {
    name: 'last 2 and within 3d: the union',
    items: days('2026-03-01', '2026-03-10').concat(item('2026-03-10T18:00:00Z')), policy: { counts: { last: 2 }, within: d('3d') },
    keep: ['2026-03-10T18:00:00Z', '2026-03-10T12:00:00.000Z', '2026-03-09T12:00:00.000Z', '2026-03-08T12:00:00.000Z'],
  },
  {
    name: 'hourly 3 and daily 2 over two days of 4-hourly backups',
    items: ['2026-03-01T00', '2026-03-01T04', '2026-03-01T08', '2026-03-01T12', '2026-03-01T16', '2026-03-01T20', '2026-03-02T00', '2026-03-02T04'].map((h) => item(`${h}:00:00Z`)),
    policy: { counts: { hourly: 3, daily: 2 } }, keep: ['2026-03-02T04:00:00Z', '2026-03-02T00:00:00Z', '2026-03-01T20:00:00Z'],
  },
  {
    name: 'weekly unlimited and yearly 1 over 2026\'s 53 ISO weeks (2027-01-01 is in 2026-W53)',
    items: ['2026-12-27T12:00:00Z', '2026-12-28T12:00:00Z', '2027-01-01T12:00:00Z', '2027-01-03T12:00:00Z', '2027-01-04T12:00:00Z'].map((s) => item(s)),
    policy: { counts: { weekly: UNLIMITED, yearly: 1 } },
    keep: ['2027-01-04T12:00:00Z', '2027-01-03T12:00:00Z', '2026-12-27T12:00:00Z'],
  },
  {
    name: 'two backups at the same time: the larger id counts as the newer',
    items: [item('2026-03-01T00:00:00Z', {}, 'b'), item('2026-03-01T00:00:00Z', {}, 'a'), item('2026-02-01T00:00:00Z', {}, 'c')],
    policy: { counts: { last: 1 } }, keep: ['b'],
  },
]

t.test('applyPolicy, case by case', async (t) => {
  for (const c of cases) {
    const r = applyPolicy(c.items, c.policy, c.now ? Date.parse(c.now) : FAR)
    t.same(r.keep.map((k) => norm(k.item.id)), c.keep.map(norm), c.name)
    t.equal(r.keep.length + r.forget.length, c.items.length, `${c.name}: every backup is kept or forgotten`)
  }
})

t.test('each kept backup says which rules kept it', async (t) => {
  const r = applyPolicy(uneven.concat(item('2026-01-05T00:00:00Z', { env: 'prod' })), { counts: { last: 1, daily: 6, monthly: 1 }, within: d('1d'), tags: [['env', 'prod']] }, FAR)
  const why = Object.fromEntries(r.keep.map((k) => [iso(k.item.id), k.reasons.map(describeReason)]))
  t.same(why, {
    '2026-03-04T12:00:00.000Z': ['within 1d', 'last #1', 'daily 2026-03-04', 'monthly 2026-03'],
    '2026-03-03T23:59:00.000Z': ['within 1d', 'daily 2026-03-03'],
    '2026-03-02T09:00:00.000Z': ['daily 2026-03-02'],
    '2026-03-01T20:00:00.000Z': ['daily 2026-03-01'],
    '2026-01-05T00:00:00.000Z': ['tag env=prod', 'daily 2026-01-05'],
  }, 'tags and within first, then the bucket rules in order; the oldest is kept by its own day (a new period)')
  t.same(r.keep.find((k) => k.item.id === '2026-03-04T12:00:00Z')!.reasons[2], { rule: 'daily', period: '2026-03-04' }, 'a reason is a rule and its period')
  const oldest = applyPolicy(uneven, { counts: { daily: 5 } }, FAR).keep.at(-1)!
  t.same(oldest.reasons, [{ rule: 'daily', period: '2026-03-01', oldest: true }], 'the oldest kept by a count left says so')
  t.equal(describeReason(oldest.reasons[0]!), 'oldest daily 2026-03-01')
})

t.test('ISO 8601 weeks in UTC', async (t) => {
  const weeks: Array<[string, string]> = [
    ['2020-12-31', '2020-W53'], ['2021-01-03', '2020-W53'], ['2021-01-04', '2021-W01'], ['2024-12-29', '2024-W52'],
    ['2024-12-30', '2025-W01'], ['2025-01-05', '2025-W01'], ['2025-01-06', '2025-W02'], ['2026-01-01', '2026-W01'],
    ['2026-03-29', '2026-W13'], ['2026-03-30', '2026-W14'], ['2026-12-28', '2026-W53'], ['2027-01-03', '2026-W53'], ['2027-01-04', '2027-W01'],
  ]
  for (const [day, week] of weeks) {
    t.equal(isoWeek(Date.parse(`${day}T00:00:00Z`)), week, `${day} at 00:00 is in ${week}`)
    t.equal(isoWeek(Date.parse(`${day}T23:59:59.999Z`)), week, `${day} at 23:59:59.999 too`)
  }
})

t.test('durations: restic\'s units, in any order, each once', async (t) => {
  t.same(parseDuration('1y2m3d4h'), { years: 1, months: 2, days: 3, hours: 4 })
  t.same(parseDuration('4h1y'), { years: 1, months: 0, days: 0, hours: 4 }, 'any order')
  t.same(parseDuration('36h'), { years: 0, months: 0, days: 0, hours: 36 })
  for (const bad of ['', '7', 'd', '1w', '1d1d', '-1d', '1.5d', '1d 2h', '1D']) t.equal(parseDuration(bad), null, `"${bad}" is not a duration`)
  t.equal(new Date(subtractDuration(Date.parse('2026-03-31T12:00:00Z'), d('1m'))).toISOString(), '2026-03-03T12:00:00.000Z', 'a month before March 31 is "February 31", March 3, as Go normalises it')
  t.equal(new Date(subtractDuration(Date.parse('2026-01-01T02:00:00Z'), d('3h'))).toISOString(), '2025-12-31T23:00:00.000Z', 'hours cross the day and year')
})

t.test('planRetention: per group, and the refusals', async (t) => {
  const groups = new Map([
    ['vol-b', [item('2026-03-01T00:00:00Z', {}, 'b1'), item('2026-03-02T00:00:00Z', {}, 'b2')]],
    ['vol-a', [item('2026-03-01T00:00:00Z', { env: 'prod' }, 'a1'), item('2026-03-02T00:00:00Z', {}, 'a2'), item('2026-03-03T00:00:00Z', {}, 'a3')]],
  ])
  const plan = planRetention(groups, { counts: { last: 1 } }, FAR)
  t.same(plan.map((g) => [g.group, g.keep.map((k) => k.item.id), g.forget.map((x) => x.id)]), [['vol-a', ['a3'], ['a2', 'a1']], ['vol-b', ['b2'], ['b1']]],
    'each group keeps its own newest; groups in key order')
  t.throws(() => planRetention(groups, { counts: {} }, FAR), { code: 'BAD_INPUT', message: /no policy was given/ }, 'an empty policy is refused')
  t.throws(() => planRetention(groups, { counts: { daily: 0 }, within: d('0d') }, FAR), { code: 'BAD_INPUT' }, 'zero counts and a zero duration are no policy')
  t.throws(() => planRetention(groups, { counts: {}, tags: [['env', 'prod']] }, FAR), { code: 'BAD_INPUT', message: /refusing to forget every one of the backups of vol-b/ },
    'a policy that keeps nothing of a group is refused, naming the group')
  t.throws(() => planRetention(groups, { counts: { last: -2 } }, FAR), { code: 'BAD_INPUT', message: /keep-last/ }, 'a count below -1 is refused')
})
