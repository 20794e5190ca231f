// ebs-worker check: is the repository whole? Its structure, and with --read-data (or a subset of
// the packs) every blob re-hashed (maintenance/check.ts). Exit 0 healthy, 3 damaged.
import { InvalidArgumentError, type Command } from 'commander'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { check, describeCheck, parseSubset, type ReadDataSubset } from '../maintenance/check.ts'
import type { CliContext } from './context.ts'
import { ExitStatus, ReportedFailure } from './output.ts'
import { withRepository, type RepositoryOptions } from './options.ts'

const subset = (value: string): ReadDataSubset => {
  try {
    return parseSubset(value)
  } catch (err) {
    throw new InvalidArgumentError(describe(err))
  }
}

export function checkCommand(program: Command, { print, aws, signal }: CliContext): void {
  withRepository(program.command('check').description('check the repository\'s structure (and with --read-data its every blob); exit 3 on damage'))
    .option('--read-data', 'also read, decrypt, decompress and re-hash every blob of every pack')
    .option('--read-data-subset <subset>', 'read only some packs: N/M (the N-th of M groups by pack id) or P% (a random share)', subset)
    .action(async (opts: RepositoryOptions & { readData?: boolean; readDataSubset?: ReadDataSubset }) => {
      if (opts.readData && opts.readDataSubset) throw new InvalidArgumentError('give --read-data or --read-data-subset, not both')
      const { openRepository } = await import('../app/repository.ts')
      let repo
      try {
        repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      } catch (err) {
        // A config that cannot be read is damage like any other (a missing repository is not).
        if (!(err instanceof EbsWorkerError && err.code === ErrorCode.RepoFormat)) throw err
        const problem = { severity: 'damage', kind: 'config', object: 'config', message: describe(err) }
        print([`DAMAGE [config] ${problem.message}`], { ok: false, repository: opts.repo, healthy: false, damage: 1, info: 0, problems: [problem] })
        throw new ReportedFailure(ExitStatus.damaged)
      }
      const tty = opts.progress && !opts.json && process.stderr.isTTY
      const r = await check(repo, {
        readData: opts.readData ? { kind: 'all' } : opts.readDataSubset ?? null, signal,
        onProgress: (p) => tty && process.stderr.write(`\rcheck: ${p.phase} ${p.done}/${p.total}      `),
      })
      if (tty) process.stderr.write('\n')
      print(describeCheck(r), { ok: r.healthy, repository: repo.url, ...r })
      if (!r.healthy) throw new ReportedFailure(ExitStatus.damaged)
    })
}
