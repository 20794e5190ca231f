// What doctor's checks are called and how a result reads: apart from daemon/doctor.ts, whose
// AWS clients the command line loads only when doctor runs.

export type CheckStatus = 'ok' | 'warn' | 'problem' | 'skipped'

export interface Check {
  name: string
  status: CheckStatus
  detail: string
  /** For a problem (or a warning): what to do about it. */
  fix?: string
}

export const CHECK_NAMES = ['config', 'imds', 'identity', 'queue', 'reply-queue', 'repository', 'kms', 'devices', 'memory', 'disk'] as const
export type CheckName = (typeof CHECK_NAMES)[number]

/** One line: status, check, what was found, and for a problem the fix. */
export function formatCheck(c: Check): string {
  const status = c.status === 'problem' ? 'PROBLEM' : c.status
  const line = (s: string): string => s.replace(/\s*\n\s*/g, '; ')
  return `${status.padEnd(8)}${c.name.padEnd(12)} ${line(c.detail)}${c.fix ? ` -> fix: ${line(c.fix)}` : ''}`
}
