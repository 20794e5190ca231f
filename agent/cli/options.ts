// Option parsers and option builders the commands share. The controller's command line uses
// the parsers too (test/layers.test.ts allows it this one file of agent/cli/), hence nothing
// here beyond commander and core.
import { InvalidArgumentError, Option, type Command } from 'commander'
import { parseBytes } from '../core/units.ts'
import { BUCKET_RULES, parseDuration, UNLIMITED, type BucketRule, type Duration, type Policy } from '../core/retention.ts'
import { TUNING_LIMITS, type Tuning } from '../core/tuning.ts'

/** An argument parser for a whole number > 0. */
export const positiveInt = (name: string) => (value: string): number => {
  const n = Number(value)
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer`)
  return n
}

/** An argument parser for a whole number from `min` to `max`. */
export const intInRange = (name: string, min: number, max: number) => (value: string): number => {
  const n = Number(value)
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`)
  return n
}

/** An argument parser for a number ≥ 0, fractions allowed (hours, seconds). */
export const nonNegativeNumber = (name: string) => (value: string): number => {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`${name} must be a number ≥ 0`)
  return n
}

/** An argument parser for a whole number ≥ `min` (seconds, minutes). */
export const wholeNumber = (name: string, min = 0) => (value: string): number => {
  const n = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a whole number, at least ${min}`)
  return n
}

/** Sizes like 1048576, 1MiB, 512KiB, 32M. */
export function parseSize(value: string): number {
  const n = parseBytes(value)
  if (n === null) throw new InvalidArgumentError(`"${value}" is not a size (like 1MiB)`)
  return n
}

/** An argument parser for a tuning knob (core/tuning.ts): a count, or with `size` a size, within the knob's bounds. */
export function tuningArg(flag: string, knob: keyof Tuning, size = false): (value: string) => number {
  const [min, max] = TUNING_LIMITS[knob]
  if (!size) return intInRange(flag, min, max)
  return (value) => {
    const n = parseSize(value)
    if (n < min || n > max) throw new InvalidArgumentError(`${flag} must be from ${min} to ${max} bytes`)
    return n
  }
}

/** How far ahead of this machine's clock a given time may be (clocks differ a little). */
export const MAX_AHEAD_MS = 5 * 60_000

const EXTENDED = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?([Zz]|([+-])(\d{2}):?(\d{2}))$/
const BASIC = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/

/**
 * An argument parser for an instant in ISO 8601: a date, a time and its zone, such as
 * 2026-11-23T04:51:25Z, 2026-11-23T05:51:25.5+01:00 or, as backup ids spell it, 20261123T045125Z.
 * Refuses dates and times that do not exist (February 30, 24:00, a 60th second), a time without
 * a zone (whose instant depends on the machine), times before 1970, and times more than
 * MAX_AHEAD_MS ahead of now.
 */
export const instantArg = (name: string, now: () => number = Date.now) => (value: string): Date => {
  const m = EXTENDED.exec(value) ?? BASIC.exec(value)
  const refuse = (why: string): never => {
    throw new InvalidArgumentError(`${name} must be an ISO 8601 time with its zone, like 2026-11-23T04:51:25Z: ${why}`)
  }
  if (!m) return refuse(`"${value}" is not one`)
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map((x) => Number(x ?? 0)) as [number, number, number, number, number, number]
  const fraction = Math.floor(Number(`0${m[7] ?? ''}`) * 1000)
  const d = new Date(0)
  d.setUTCFullYear(year, month - 1, day)
  d.setUTCHours(hour, minute, second, fraction)
  if (d.getUTCFullYear() !== year || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day || d.getUTCHours() !== hour || d.getUTCMinutes() !== minute || d.getUTCSeconds() !== second) {
    return refuse(`${value} does not exist`)
  }
  const [sign, offsetHours, offsetMinutes] = [m[9], Number(m[10] ?? 0), Number(m[11] ?? 0)]
  if (offsetHours > 23 || offsetMinutes > 59) return refuse(`${value} has no such zone offset`)
  const time = d.getTime() - (sign === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000
  if (time < 0) return refuse(`${value} is before 1970`)
  if (time > now() + MAX_AHEAD_MS) return refuse(`${value} is in the future (by more than ${MAX_AHEAD_MS / 60_000} minutes)`)
  return new Date(time)
}

/** The options of the commands that work on a repository. */
export interface RepositoryOptions {
  repo: string
  keyFile?: string
  json?: boolean
  progress: boolean
}

export function withRepository(cmd: Command): Command {
  return cmd
    .addOption(new Option('--repo <url>', 'repository: s3://bucket/prefix or file:///path').env('EBS_WORKER_REPO').makeOptionMandatory())
    .addOption(new Option('--key-file <path>', 'key file of an encrypted repository').env('EBS_WORKER_KEY_FILE'))
    .option('--json', 'print one JSON object as the last line of stdout')
    .option('--no-progress', 'no progress bar, even on a terminal')
}

/** A keep-* count: a whole number ≥ 0 (0: the rule is not used), or `unlimited` (also spelled -1, as restic did). */
const keepCount = (flag: string) => (value: string): number => {
  if (value === 'unlimited' || value === '-1') return UNLIMITED
  const n = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`${flag} must be a whole number ≥ 0, or unlimited`)
  return n
}

const keepWithin = (value: string): Duration => {
  const d = parseDuration(value)
  if (!d) throw new InvalidArgumentError('--keep-within must be a duration of years, months, days and hours, like 1y2m3d4h, 30d or 36h')
  return d
}

const keepTag = (value: string, earlier: Array<[string, string]> = []): Array<[string, string]> => {
  const eq = value.indexOf('=')
  if (eq <= 0) throw new InvalidArgumentError(`--keep-tag ${value}: expected key=value`)
  return [...earlier, [value.slice(0, eq), value.slice(eq + 1)]]
}

/** The options of a retention policy (core/retention.ts), as restic spells them. */
export interface PolicyOptions {
  keepLast?: number
  keepHourly?: number
  keepDaily?: number
  keepWeekly?: number
  keepMonthly?: number
  keepYearly?: number
  keepWithin?: Duration
  keepTag?: Array<[string, string]>
}

/** Adds the options of a retention policy: --keep-last … --keep-yearly N|unlimited, --keep-within, --keep-tag (repeatable). */
export function withPolicy(cmd: Command, what: string): Command {
  for (const rule of BUCKET_RULES) {
    const of = rule === 'last' ? `the last n ${what}` : `the newest of each of the last n ${rule === 'daily' ? 'days' : rule.replace(/ly$/, 's')} that have one`
    cmd.option(`--keep-${rule} <n>`, `keep ${of} (unlimited: all)`, keepCount(`--keep-${rule}`))
  }
  return cmd
    .option('--keep-within <duration>', `keep the ${what} newer than this before the newest one (like 1y2m3d4h)`, keepWithin)
    .option('--keep-tag <key=value>', `keep the ${what} with this tag (repeatable: any of them)`, keepTag)
}

const KEYS: Record<BucketRule, keyof PolicyOptions> = {
  last: 'keepLast', hourly: 'keepHourly', daily: 'keepDaily', weekly: 'keepWeekly', monthly: 'keepMonthly', yearly: 'keepYearly',
}

/** The policy the options give (possibly empty: core/retention.ts isEmptyPolicy). */
export function policyOf(o: PolicyOptions): Policy {
  return {
    counts: Object.fromEntries(BUCKET_RULES.filter((r) => o[KEYS[r]] !== undefined).map((r) => [r, o[KEYS[r]] as number])),
    ...(o.keepWithin ? { within: o.keepWithin } : {}),
    ...(o.keepTag ? { tags: o.keepTag } : {}),
  }
}
