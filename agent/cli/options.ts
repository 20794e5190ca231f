// Option parsers and option builders the commands share. The controller's command line uses
// the parsers too (test/layers.test.ts allows it this one file of agent/cli/), hence nothing
// here beyond commander and core.
import { InvalidArgumentError, Option, type Command } from 'commander'
import { parseBytes } from '../core/units.ts'
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
