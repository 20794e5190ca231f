// ebs-worker list: the backups in a repository.
import type { Command } from 'commander'
import { formatBytes } from '../core/units.ts'
import type { CliContext } from './context.ts'
import { withRepository, type RepositoryOptions } from './options.ts'

export function listCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('list').description('list the backups in a repository'))
    .action(async (opts: RepositoryOptions) => {
      const { openRepository } = await import('../app/repository.ts')
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const backups = await repo.listBackups()
      const lines = backups.map((b) =>
        `${b.id}  ${formatBytes(b.size).padStart(10)}  ${(b.source.volumeId ?? b.source.device).padEnd(24)} ${b.parent ? `parent ${b.parent}` : 'full'}`)
      print(lines.length ? lines : ['no backups'], { repository: repo.url, backups })
    })
}
