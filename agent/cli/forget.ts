// ebs-worker forget: removes backups from the repository's list (their data goes at the next prune).
import type { Command } from 'commander'
import { openRepository } from '../app/repository.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { CliContext } from './context.ts'
import { withRepository, type RepositoryOptions } from './options.ts'

export function forgetCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('forget').description('forget backups: their manifests go; `prune` then deletes the data no backup needs'))
    .argument('[ids...]', 'backup ids to forget')
    .option('--dry-run', 'say what would be forgotten, change nothing')
    .action(async (ids: string[], opts: RepositoryOptions & { dryRun?: boolean }) => {
      if (!ids.length) throw new EbsWorkerError(ErrorCode.BadInput, 'name the backups to forget')
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      for (const id of ids) await repo.loadManifest(id) // each must exist: a typo forgets nothing
      if (!opts.dryRun) for (const id of ids) await repo.forgetBackup(id)
      print(ids.map((id) => `${opts.dryRun ? 'would forget' : 'forgot'} ${id}`), { repository: repo.url, dryRun: opts.dryRun === true, forgotten: ids })
    })
}
