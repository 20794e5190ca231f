// ebs-worker verify: reads back, decrypts, decompresses and re-hashes every chunk of a backup.
import type { Command } from 'commander'
import { formatBytes } from '../core/units.ts'
import type { CliContext } from './context.ts'
import { withRepository, type RepositoryOptions } from './options.ts'
import { withProgress } from './progress.ts'
import { getsInFlight } from './restore.ts'

export function verifyCommand(program: Command, { print, signal, aws }: CliContext): void {
  withRepository(program.command('verify').description('prove a backup intact by reading back every chunk'))
    .requiredOption('--backup <id>', 'backup id')
    .option(...getsInFlight)
    .action(async (opts: RepositoryOptions & { backup: string; concurrency: number }) => {
      const [{ openRepository }, { verify }, { CodecThreads }] = await Promise.all([import('../app/repository.ts'), import('../pipeline/restore.ts'), import('../repo/codec-threads.ts')])
      CodecThreads.shared().start() // while the repository opens
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const r = await withProgress('verify ', opts.progress && !opts.json, (onProgress) =>
        verify(repo, { backupId: opts.backup, concurrency: opts.concurrency, onProgress, signal }))
      print([`backup ${r.backupId} is intact: ${r.chunksVerified} chunks verified, ${formatBytes(r.bytesFetched)} read`], { ...r })
    })
}
