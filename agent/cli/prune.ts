// ebs-worker prune: deletes what no backup needs, repacks mostly unused packs (maintenance/prune.ts).
import { InvalidArgumentError, Option, type Command } from 'commander'
import type { CliContext } from './context.ts'
import { parseSize, wholeNumber, withRepository, type RepositoryOptions } from './options.ts'

const percent = (value: string): number => {
  const n = Number(value.replace(/%$/, ''))
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100) throw new InvalidArgumentError('--max-unused must be a percentage from 0 to 100')
  return n
}

export function pruneCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('prune').description('delete what no backup needs; repack mostly unused packs (safe while backups run)'))
    .option('--max-unused <percent>', 'repack packs with more than this unused share', percent, 5)
    .option('--max-repack-size <size>', 'repack at most this many bytes of packs in this run', parseSize)
    .option('--dry-run', 'say what would be deleted and repacked, change nothing')
    .option('--max-wait <seconds>', 'longest wait for running backups before leaving the deletion to the next prune', wholeNumber('--max-wait'), 3600)
    .addOption(new Option('--grace <seconds>', 'unreferenced packs younger than this are left (a backup may be writing them)').argParser(wholeNumber('--grace')).default(3600).hideHelp())
    .action(async (opts: RepositoryOptions & { maxUnused: number; maxRepackSize?: number; dryRun?: boolean; maxWait: number; grace: number }) => {
      const [{ openRepository }, { describePrune, prune }] = await Promise.all([import('../app/repository.ts'), import('../maintenance/prune.ts')])
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const tty = opts.progress && !opts.json && process.stderr.isTTY
      const r = await prune(repo, {
        maxUnusedPercent: opts.maxUnused, ...(opts.maxRepackSize !== undefined ? { maxRepackBytes: opts.maxRepackSize } : {}),
        dryRun: opts.dryRun === true, maxWaitMs: opts.maxWait * 1000, graceMs: opts.grace * 1000,
        onProgress: (p) => tty && process.stderr.write(`\rprune: ${p.phase} ${p.done}/${p.total}      `),
      })
      if (tty) process.stderr.write('\n')
      print(describePrune(r), { repository: repo.url, ...r })
    })
}
