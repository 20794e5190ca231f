// ebs-worker init: a new repository, not encrypted, or with its key in a file or wrapped by KMS;
// under S3 Object Lock (every object it relies on locked for a period) or not.
import { InvalidArgumentError, Option, type Command } from 'commander'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { formatBytes, formatPeriod, parsePeriod } from '../core/units.ts'
import { DEFAULT_CHUNK_SIZE, MAX_LOCK_SECONDS } from '../repo/repository.ts'
import type { CliContext } from './context.ts'
import { parseSize, withRepository, type RepositoryOptions } from './options.ts'

export function initCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('init').description('create a repository'))
    .option('--encrypt', 'encrypt, with a key kept in --key-file (created if missing) or wrapped by --kms-key')
    .option('--kms-key <key>', 'KMS key (ARN, id or alias) that wraps the repository key: no key file to keep, IAM decides who opens it')
    .option('--chunk-size <size>', 'chunk size, a multiple of 512KiB', parseSize, DEFAULT_CHUNK_SIZE)
    .option('--object-lock-period <duration>', 'S3 Object Lock: lock every object the repository relies on this long (30d, 2w, 1y); the bucket must have Object Lock', lockPeriod)
    .addOption(new Option('--object-lock-mode <mode>', 'governance (s3:BypassGovernanceRetention can lift it) or compliance (nobody can)').choices(['governance', 'compliance']))
    .action(async (opts: RepositoryOptions & { encrypt?: boolean; kmsKey?: string; chunkSize: number; objectLockPeriod?: number; objectLockMode?: 'governance' | 'compliance' }) => {
      if (opts.kmsKey && opts.keyFile) throw new EbsWorkerError(ErrorCode.BadInput, 'give --key-file or --kms-key, not both')
      if (opts.encrypt && !opts.keyFile && !opts.kmsKey) throw new EbsWorkerError(ErrorCode.BadInput, '--encrypt needs --key-file or --kms-key')
      if (opts.objectLockMode && opts.objectLockPeriod === undefined) throw new EbsWorkerError(ErrorCode.BadInput, '--object-lock-mode needs --object-lock-period')
      const objectLock = opts.objectLockPeriod === undefined ? undefined : { mode: opts.objectLockMode ?? 'governance', periodSeconds: opts.objectLockPeriod }
      const { initRepository } = await import('../app/repository.ts')
      const repo = await initRepository(opts.repo, { aws: aws(), chunkSize: opts.chunkSize, kmsKey: opts.kmsKey, keyFile: opts.encrypt ? opts.keyFile : undefined, objectLock })
      const { id, chunkSize, encryption } = repo.config
      const lock = repo.objectLock
      print([
        `created repository ${repo.url} (id ${id}, ${formatBytes(chunkSize)} chunks, ${encryption ? 'encrypted' : 'not encrypted'})`,
        ...(lock ? [`every object it relies on is locked (${lock.mode} mode) for ${formatPeriod(lock.periodSeconds)}, extended by prune while kept backups use it`] : []),
        ...(lock && lock.periodSeconds < 86_400 ? ['note: a lock shorter than a day protects little; see docs/OPERATIONS.md, "Object Lock"'] : []),
      ], {
        repository: repo.url, id, chunkSize, encrypted: encryption !== null, objectLock: lock,
      })
    })
}

function lockPeriod(value: string): number {
  const seconds = parsePeriod(value)
  if (seconds === null) throw new InvalidArgumentError(`"${value}" is not a duration (like 30d, 2w, 1y or 90s)`)
  if (seconds < 1 || seconds > MAX_LOCK_SECONDS) throw new InvalidArgumentError('the period must be from 1s to 100y')
  return seconds
}
