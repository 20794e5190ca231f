// How a command ends, in one place: its summary (human lines, or with --json one JSON object as
// the last line of stdout), its error (code and message on stderr, and in the JSON) and its exit
// status, which scripts and the daemon read to tell "bad input" from "damaged data" from "try again".
import { EbsWorkerError, ErrorCode, describe, toErrorJson } from '../core/errors.ts'

/**
 * 10 and 12 are restic's codes for "repository does not exist" and "wrong password": a script
 * tells a missing repository (create it) and a wrong key (fix the key) from other failures.
 */
export const ExitStatus = { ok: 0, failure: 1, badInput: 2, damaged: 3, repoNotFound: 10, wrongKey: 12, interrupted: 130 } as const

export function exitStatusFor(err: unknown): number {
  if (!(err instanceof EbsWorkerError)) return ExitStatus.failure
  switch (err.code) {
    case ErrorCode.BadInput:
      return ExitStatus.badInput
    case ErrorCode.ChunkCorrupt:
    case ErrorCode.ChunkMissing:
    case ErrorCode.ChecksumMismatch:
      return ExitStatus.damaged
    case ErrorCode.RepoNotFound:
      return ExitStatus.repoNotFound
    case ErrorCode.WrongKey:
      return ExitStatus.wrongKey
    case ErrorCode.Interrupted:
      return ExitStatus.interrupted
    default:
      return ExitStatus.failure
  }
}

/** Prints a command's result: its human lines, or with --json `{"ok": true, …}`. */
export type Printer = (human: string[], json: Record<string, unknown>) => void

export function printer(json: boolean): Printer {
  return (human, obj) => {
    if (json) process.stdout.write(JSON.stringify({ ok: true, ...obj }) + '\n')
    else process.stdout.write(human.join('\n') + '\n')
  }
}

/** A usage error (commander's): its message is already on stderr; with --json, the JSON too. */
export function printUsageError(err: unknown, json: boolean): number {
  if (json) process.stdout.write(JSON.stringify({ ok: false, error: toErrorJson(new EbsWorkerError(ErrorCode.BadInput, describe(err))) }) + '\n')
  return ExitStatus.badInput
}

/** A failed command: `program: error [CODE]: message` on stderr (and the stack of what is not ours), the JSON with --json; the exit status. */
export function printError(program: string, err: unknown, json: boolean): number {
  const error = toErrorJson(err)
  process.stderr.write(`${program}: error [${error.code}]: ${error.message}\n`)
  if (!(err instanceof EbsWorkerError) && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n')
  if (json) process.stdout.write(JSON.stringify({ ok: false, error }) + '\n')
  return exitStatusFor(err)
}

/**
 * A command that has printed why it failed (doctor's problem lines, check's damage): its exit
 * status (1 unless given: check's is 3, damage), no error message.
 */
export class ReportedFailure extends Error {
  readonly status: number
  constructor(status: number = ExitStatus.failure) {
    super('reported')
    this.status = status
  }
}
