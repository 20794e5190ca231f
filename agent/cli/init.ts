// ebs-worker init: a new repository, not encrypted, or with its key in a file or wrapped by KMS.
import type { Command } from 'commander'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { formatBytes } from '../core/units.ts'
import { DEFAULT_CHUNK_SIZE } from '../repo/repository.ts'
import { initRepository } from '../app/repository.ts'
import type { CliContext } from './context.ts'
import { parseSize, withRepository, type RepositoryOptions } from './options.ts'

export function initCommand(program: Command, { print, aws }: CliContext): void {
  withRepository(program.command('init').description('create a repository'))
    .option('--encrypt', 'encrypt, with a key kept in --key-file (created if missing) or wrapped by --kms-key')
    .option('--kms-key <key>', 'KMS key (ARN, id or alias) that wraps the repository key: no key file to keep, IAM decides who opens it')
    .option('--chunk-size <size>', 'chunk size, a multiple of 512KiB', parseSize, DEFAULT_CHUNK_SIZE)
    .action(async (opts: RepositoryOptions & { encrypt?: boolean; kmsKey?: string; chunkSize: number }) => {
      if (opts.kmsKey && opts.keyFile) throw new EbsWorkerError(ErrorCode.BadInput, 'give --key-file or --kms-key, not both')
      if (opts.encrypt && !opts.keyFile && !opts.kmsKey) throw new EbsWorkerError(ErrorCode.BadInput, '--encrypt needs --key-file or --kms-key')
      const repo = await initRepository(opts.repo, { aws: aws(), chunkSize: opts.chunkSize, kmsKey: opts.kmsKey, keyFile: opts.encrypt ? opts.keyFile : undefined })
      const { id, chunkSize, encryption } = repo.config
      print([`created repository ${repo.url} (id ${id}, ${formatBytes(chunkSize)} chunks, ${encryption ? 'encrypted' : 'not encrypted'})`], {
        repository: repo.url, id, chunkSize, encrypted: encryption !== null,
      })
    })
}
