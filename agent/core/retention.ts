// Retention policies: which backups (or restore points) a `forget` keeps, with restic's semantics
// (restic's internal/data/snapshot_policy.go, ApplyPolicy), applied to each group on its own.
// Pure: the caller lists, groups, deletes; nothing here reads a clock (`now` is passed in).
//
// In a group, newest first (ties: the larger id first), each item is kept when any rule keeps it:
//   - `tag K=V`: it has that tag (tag matches are not counted: such an item still goes through
//     the other rules and uses up their counts like any other);
//   - `within D`: it is strictly newer than D before the group's newest item that is not in the
//     future (not before `now`); D is years, months, days, hours (1y2m3d4h), calendar arithmetic;
//   - `last N`, `hourly N`, `daily N`, `weekly N`, `monthly N`, `yearly N`: a bucket rule keeps an
//     item whose period (itself for `last`; its hour, day, ISO week, month or year otherwise)
//     differs from the last period the rule kept, while the rule has a count left (N, or -1 for
//     unlimited), and counts it down. So each period's newest item is kept, for the N newest
//     periods that have one. And while a rule has a count left when the group's oldest item comes,
//     that oldest item is kept too even if its period already has one ("oldest"): the history
//     kept reaches as far back as the counts allow.
// Periods are in UTC (restic uses the snapshot's local time zone).
import { EbsWorkerError, ErrorCode } from './errors.ts'

/** A count of a bucket rule: N > 0, UNLIMITED, or 0 for a rule not used. */
export const UNLIMITED = -1

export const BUCKET_RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const
export type BucketRule = (typeof BUCKET_RULES)[number]

/** restic's durations: calendar years, months and days, then hours. */
export interface Duration {
  years: number
  months: number
  days: number
  hours: number
}

export interface Policy {
  /** Counts of the bucket rules (0 or absent: not used; UNLIMITED: every period). */
  counts: Partial<Record<BucketRule, number>>
  /** Keep what is newer than this before the group's newest (absent or zero: not used). */
  within?: Duration
  /** Keep what has any of these tags (key, value). */
  tags?: ReadonlyArray<readonly [string, string]>
}

/** What a policy is applied to: a backup, a restore point. */
export interface Candidate {
  id: string
  /** Milliseconds since the epoch. */
  time: number
  tags: Readonly<Record<string, string>>
}

/** Why an item was kept: the rule, and for a bucket rule the period it stands for. */
export type Reason =
  | { rule: BucketRule; period: string; oldest?: true }
  | { rule: 'within'; within: string }
  | { rule: 'tag'; tag: string }

export interface Kept<T> {
  item: T
  reasons: Reason[]
}

export interface Decision<T> {
  /** Newest first. */
  keep: Kept<T>[]
  /** Newest first. */
  forget: T[]
}

const HOUR_MS = 3_600_000
const DAY_MS = 24 * HOUR_MS
/** Go's zero time, 0001-01-01T00:00:00Z: restic's "newest" when every item is in the future. */
const ZERO_TIME = utc(1, 0, 1)

/** Milliseconds of year-month(0-based)-day UTC, normalised like Go's time.Date (no 19xx mapping of small years). */
function utc(year: number, month: number, day: number): number {
  const d = new Date(0)
  d.setUTCFullYear(year, month, day)
  return d.getTime()
}

const pad = (n: number, width = 2): string => String(n).padStart(width, '0')

/** The ISO 8601 week of an instant, in UTC: `2026-W47` (the year is the week's, which may differ from the date's). */
export function isoWeek(time: number): string {
  const d = new Date(time)
  const weekday = (d.getUTCDay() + 6) % 7 // Monday 0 … Sunday 6
  // The Thursday of its week decides the year; week 1 holds the year's first Thursday.
  const thursday = new Date(utc(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - weekday + 3))
  const year = thursday.getUTCFullYear()
  const firstThursday = utc(year, 0, 1 + ((4 - new Date(utc(year, 0, 1)).getUTCDay() + 7) % 7))
  return `${pad(year, 4)}-W${pad(1 + Math.round((thursday.getTime() - firstThursday) / (7 * DAY_MS)))}`
}

/** The period an instant falls in, for each bucket rule ('last' is the item's rank). */
function periodOf(rule: BucketRule, time: number, rank: number): string {
  const d = new Date(time)
  const y = pad(d.getUTCFullYear(), 4)
  const m = pad(d.getUTCMonth() + 1)
  const day = pad(d.getUTCDate())
  switch (rule) {
    case 'last': return `#${rank + 1}`
    case 'hourly': return `${y}-${m}-${day}T${pad(d.getUTCHours())}`
    case 'daily': return `${y}-${m}-${day}`
    case 'weekly': return isoWeek(time)
    case 'monthly': return `${y}-${m}`
    case 'yearly': return y
  }
}

export function isZeroDuration(d: Duration | undefined): boolean {
  return !d || (d.years === 0 && d.months === 0 && d.days === 0 && d.hours === 0)
}

/** `1y2m3d4h`, the units that are not zero (restic's spelling). */
export function formatDuration(d: Duration): string {
  return `${d.years ? `${d.years}y` : ''}${d.months ? `${d.months}m` : ''}${d.days ? `${d.days}d` : ''}${d.hours ? `${d.hours}h` : ''}` || '0h'
}

/**
 * restic's durations: numbers each followed by a unit, y (years), m (months), d (days) or h
 * (hours), in any order, each unit at most once: `1y2m3d4h`, `36h`, `2m`. Null if it is not one.
 */
export function parseDuration(text: string): Duration | null {
  const s = text.trim()
  if (!/^(\d+[ymdh])+$/.test(s)) return null
  const d: Duration = { years: 0, months: 0, days: 0, hours: 0 }
  const seen = new Set<string>()
  for (const [, n, unit] of s.matchAll(/(\d+)([ymdh])/g)) {
    if (seen.has(unit!)) return null
    seen.add(unit!)
    const value = Number(n)
    if (!Number.isSafeInteger(value)) return null
    if (unit === 'y') d.years = value
    else if (unit === 'm') d.months = value
    else if (unit === 'd') d.days = value
    else d.hours = value
  }
  return d
}

/** `time` minus `d`: Go's AddDate(-years, -months, -days) (calendar, normalised), then minus the hours. */
export function subtractDuration(time: number, d: Duration): number {
  const t = new Date(time)
  t.setUTCFullYear(t.getUTCFullYear() - d.years, t.getUTCMonth() - d.months, t.getUTCDate() - d.days)
  return t.getTime() - d.hours * HOUR_MS
}

/** A policy that keeps by no rule at all (restic refuses it: "no policy was specified"). */
export function isEmptyPolicy(p: Policy): boolean {
  return BUCKET_RULES.every((r) => !p.counts[r]) && isZeroDuration(p.within) && !p.tags?.length
}

/** Checks a policy's numbers: counts are whole numbers ≥ 0 or UNLIMITED, durations whole and ≥ 0. */
export function validatePolicy(p: Policy): void {
  for (const r of BUCKET_RULES) {
    const n = p.counts[r]
    if (n !== undefined && (!Number.isSafeInteger(n) || (n < 0 && n !== UNLIMITED))) {
      throw new EbsWorkerError(ErrorCode.BadInput, `keep-${r} must be a whole number ≥ 0, or unlimited (-1), not ${n}`)
    }
  }
  const w = p.within
  if (w && ![w.years, w.months, w.days, w.hours].every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'keep-within must be a duration of whole numbers ≥ 0 (like 1y2m3d4h)')
  }
}

/** The policy in words, for people: `keep 3 latest, 7 daily, all weekly, within 1m of the newest, tagged env=prod`. */
export function describePolicy(p: Policy): string {
  const parts = BUCKET_RULES.filter((r) => p.counts[r]).map((r) => `${p.counts[r] === UNLIMITED ? 'all' : p.counts[r]} ${r === 'last' ? 'latest' : r}`)
  if (!isZeroDuration(p.within)) parts.push(`within ${formatDuration(p.within!)} of the newest`)
  if (p.tags?.length) parts.push(`tagged ${p.tags.map(([k, v]) => `${k}=${v}`).join(' or ')}`)
  return parts.length ? `keep ${parts.join(', ')}` : 'keep nothing'
}

/** Sorted newest first; of two at the same time, the larger id first (ids are time-ordered). */
export function newestFirst<T extends Candidate>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => b.time - a.time || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
}

/** Which of one group's items the policy keeps, and why; the others are to be forgotten. */
export function applyPolicy<T extends Candidate>(items: readonly T[], policy: Policy, now: number): Decision<T> {
  validatePolicy(policy)
  const list = newestFirst(items)
  const decision: Decision<T> = { keep: [], forget: [] }
  if (!list.length) return decision
  const buckets = BUCKET_RULES.map((rule) => ({ rule, count: policy.counts[rule] ?? 0, last: null as string | null }))
  // The newest item not in the future (strictly before now), as restic's findLatestTimestamp.
  let newest = ZERO_TIME
  for (const x of list) if (x.time > newest && x.time < now) newest = x.time
  const within = isZeroDuration(policy.within) ? null : { from: subtractDuration(newest, policy.within!), label: formatDuration(policy.within!) }
  for (const [rank, item] of list.entries()) {
    const reasons: Reason[] = []
    for (const [k, v] of policy.tags ?? []) if (item.tags[k] === v) reasons.push({ rule: 'tag', tag: `${k}=${v}` })
    if (within && item.time > within.from) reasons.push({ rule: 'within', within: within.label })
    const oldest = rank === list.length - 1
    for (const b of buckets) {
      if (b.count === 0) continue
      const period = periodOf(b.rule, item.time, rank)
      if (period === b.last && !oldest) continue
      reasons.push({ rule: b.rule, period, ...(period === b.last ? { oldest: true as const } : {}) })
      b.last = period
      if (b.count > 0) b.count--
    }
    if (reasons.length) decision.keep.push({ item, reasons })
    else decision.forget.push(item)
  }
  return decision
}

/** One group's decision, under its key. */
export interface GroupDecision<T> extends Decision<T> {
  group: string
}

/** What is being forgotten, for messages: its name, and whether items can also be forgotten by naming them. */
export interface Subject {
  what: string
  /** Items can be named instead (`ebs-worker forget ID…`): how a whole group is forgotten. */
  named: boolean
}

const BACKUPS: Subject = { what: 'backups', named: true }

/**
 * Applies the policy to each group (groups in key order). Refuses — BAD_INPUT, nothing decided —
 * a policy that is empty, or that would keep nothing of a group: a typo in a tag must not forget
 * everything (restic: "refusing to delete last snapshot of snapshot group"). Forgetting a whole
 * group is done by naming its items, where they can be named.
 */
export function planRetention<T extends Candidate>(groups: ReadonlyMap<string, readonly T[]>, policy: Policy, now: number, subject = BACKUPS): GroupDecision<T>[] {
  requirePolicy(policy, subject)
  const out = [...groups.keys()].sort().map((group) => ({ group, ...applyPolicy(groups.get(group)!, policy, now) }))
  const emptied = out.filter((g) => !g.keep.length && g.forget.length)
  if (emptied.length) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `refusing to forget every one of the ${subject.what} of ${emptied.map((g) => g.group || 'the repository').join(', ')}: the policy (${describePolicy(policy)}) keeps none there; ` +
      `nothing was forgotten${subject.named ? ` (name the ${subject.what} to forget a whole group)` : ''}`)
  }
  return out
}

/** Refuses an empty policy (restic: "no policy was specified, no snapshots will be removed"). */
export function requirePolicy(policy: Policy, subject = BACKUPS): void {
  if (isEmptyPolicy(policy)) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `no policy was given, so no ${subject.what} would be forgotten: give --keep-* options${subject.named ? `, or name the ${subject.what} to forget` : ''}`)
  }
}

/** A policy as JSON: its counts (-1: unlimited), `within` as restic spells it, `tags` as key=value. */
export function policyJson(p: Policy): Record<string, unknown> {
  return {
    ...Object.fromEntries(BUCKET_RULES.filter((r) => p.counts[r]).map((r) => [r, p.counts[r]])),
    ...(isZeroDuration(p.within) ? {} : { within: formatDuration(p.within!) }),
    ...(p.tags?.length ? { tags: p.tags.map(([k, v]) => `${k}=${v}`) } : {}),
  }
}

/** Items grouped by `keyOf`, in their given order within each group. */
export function groupItems<T>(items: readonly T[], keyOf: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>()
  for (const item of items) {
    const key = keyOf(item)
    const g = groups.get(key)
    if (g) g.push(item)
    else groups.set(key, [item])
  }
  return groups
}

/** How a reason reads: `daily 2026-11-23`, `oldest monthly 2026-11`, `within 7d`, `tag env=prod`. */
export function describeReason(r: Reason): string {
  if (r.rule === 'within') return `within ${r.within}`
  if (r.rule === 'tag') return `tag ${r.tag}`
  return `${r.oldest ? 'oldest ' : ''}${r.rule} ${r.period}`
}
