// check: is the repository whole? Its structure, and with readData (or a subset of the packs) every
// blob re-hashed (maintenance/check.ts), as `ebs-worker check`. Damage is a result, not a failure:
// the task succeeds with `healthy: false` and the problems (the first MAX_PROBLEMS of them), and
// the CheckProblems metric carries the count for the alarm.
import { EbsWorkerError, ErrorCode, describe } from '../../core/errors.ts'
import { check as checkRepository, parseSubset, type ReadDataSubset } from '../../maintenance/check.ts'
import { phaseLog, type Handler } from './context.ts'

/** Problems listed in a reply at most, damage first (an SQS message holds 256 KiB); the counts are whole. */
const MAX_PROBLEMS = 50
const DAY_MS = 86_400_000

/** The task's subset: N/M and P% as the command line's; daily/M is the day's part (UTC days since 1970, mod M). */
export function readDataOf(readData: boolean, subset: string | undefined, now: number): ReadDataSubset | null {
  if (readData) return { kind: 'all' }
  if (!subset) return null
  const daily = /^daily\/(\d+)$/.exec(subset)
  if (daily) {
    const of = Number(daily[1])
    return { kind: 'part', n: (Math.floor(now / DAY_MS) % of) + 1, of }
  }
  return parseSubset(subset)
}

export const check: Handler<'check'> = async (task, ctx, signal) => {
  const url = task.repository ?? ctx.config.repository
  let repo
  try {
    repo = await ctx.repository(task.repository)
  } catch (err) {
    // A config that cannot be read is damage like any other (a missing repository is not).
    if (!(err instanceof EbsWorkerError && err.code === ErrorCode.RepoFormat)) throw err
    const problem = { severity: 'damage', kind: 'config', object: 'config', message: describe(err) }
    return { repository: url, healthy: false, damage: 1, info: 0, problems: [problem] }
  }
  const r = await checkRepository(repo, { readData: readDataOf(task.readData, task.readDataSubset, Date.now()), signal, onProgress: phaseLog(ctx) })
  const problems = [...r.problems.filter((p) => p.severity === 'damage'), ...r.problems.filter((p) => p.severity !== 'damage')].slice(0, MAX_PROBLEMS)
  return { repository: repo.url, ...r, problems, ...(r.problems.length > problems.length ? { problemsListed: problems.length } : {}) }
}
