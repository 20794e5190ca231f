// ebs-worker migrate: upgrades a repository of an older format in place (repo/migrate.ts). Cut
// short, it is run again; nothing else may write to the repository meanwhile.
import type { Command } from 'commander'
import type { CliContext } from './context.ts'
import { withRepository, type RepositoryOptions } from './options.ts'

export function migrateCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('migrate').description('upgrade a repository to the current format, in place (stop the workers first)'))
    .action(async (opts: RepositoryOptions) => {
      const [{ openRepository }, { migrate }] = await Promise.all([import('../app/repository.ts'), import('../repo/migrate.ts')])
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const result = await migrate(repo, (p) => {
        if (!opts.json && process.stderr.isTTY) process.stderr.write(`\rmigrate: ${p.step} ${p.done}/${p.total}   `)
      })
      if (!opts.json && process.stderr.isTTY) process.stderr.write('\n')
      const human = result.from === result.to
        ? [`repository ${repo.url} is already of format version ${result.to}`]
        : [`repository ${repo.url} upgraded from format version ${result.from} to ${result.to}: ${result.manifestsConverted} backups, ${result.indexesConverted} indexes converted`]
      print(human, { repository: repo.url, ...result })
    })
}
