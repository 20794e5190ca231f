// ebs-worker key add|list|remove: the keys that open an encrypted repository. The master secret
// stays the same; each key (a key file, a KMS key) wraps it separately, the config's key in the
// config and every further one in its own object keys/<id> (docs/FORMAT.md, "Keys"). The
// break-glass key of docs/OPERATIONS.md is one of these: a key file kept offline beside a KMS key.
import type { Command } from 'commander'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { KeyEntry } from '../repo/keys.ts'
import type { CliContext } from './context.ts'
import { withRepository, type RepositoryOptions } from './options.ts'

const KINDS: Record<string, string> = { 'local-file': 'key-file', 'aws-kms': 'kms' }

/** A key as `key list --json` gives it: kind, the KMS key ARN or the key file's fingerprint. */
function keyJson(k: KeyEntry): Record<string, unknown> {
  return {
    id: k.id,
    kind: k.key ? (KINDS[k.key.provider] ?? k.key.provider) : 'unreadable',
    ...(k.key?.provider === 'local-file' ? { fingerprint: k.key.keyId } : k.key ? { keyArn: k.key.keyId } : {}),
    createdAt: k.createdAt,
    current: k.current,
    ...(k.error ? { error: k.error } : {}),
  }
}

function keyLine(k: KeyEntry): string {
  const j = keyJson(k)
  const what = k.key ? `${String(j.kind).padEnd(8)} ${k.key.keyId}` : `unreadable: ${k.error}`
  return `${k.current ? '*' : ' '} ${k.id.padEnd(16)}  ${(k.createdAt ?? '').padEnd(24)}  ${what}`
}

export function keyCommand(program: Command, { print, aws }: CliContext): void {
  const key = program.command('key').description('add, list and remove the keys that open an encrypted repository (a key file, a KMS key)')

  withRepository(key.command('add').description('add a key (a key file or a KMS key) that opens the repository, besides the ones it has; open it with one of those'))
    .option('--new-key-file <path>', 'the key file to add (created, with a new random key, when it does not exist)')
    .option('--new-kms-key <key>', 'the KMS key (ARN, id or alias) to add')
    .action(async (opts: RepositoryOptions & { newKeyFile?: string; newKmsKey?: string }) => {
      if (!opts.newKeyFile === !opts.newKmsKey) throw new EbsWorkerError(ErrorCode.BadInput, 'give the key to add: --new-key-file or --new-kms-key (one of them)')
      const { newKeyProvider, openRepository } = await import('../app/repository.ts')
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const { provider, created } = await newKeyProvider({ aws: aws(), keyFile: opts.newKeyFile, kmsKey: opts.newKmsKey })
      const added = await repo.addKey(provider)
      const j = keyJson(added)
      print([
        ...(created ? [`created key file ${opts.newKeyFile} (mode 0600): keep it safe, it opens the repository`] : []),
        `added key ${added.id} (${j.kind} ${added.key!.keyId}) to ${repo.url}`,
      ], { repository: repo.url, key: j, keyFileCreated: created })
    })

  withRepository(key.command('list').description('list the keys of the repository (* the one used now)'))
    .action(async (opts: RepositoryOptions) => {
      const { openRepository } = await import('../app/repository.ts')
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const keys = await repo.listKeys()
      print(keys.map(keyLine), { repository: repo.url, keys: keys.map(keyJson) })
    })

  withRepository(key.command('remove').description('remove a key (not the one used now, nor the last)'))
    .argument('<id>', 'the key\'s id, as `key list` shows it (config: the config\'s own key)')
    .action(async (id: string, opts: RepositoryOptions) => {
      const { openRepository } = await import('../app/repository.ts')
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const removed = await repo.removeKey(id)
      const lock = repo.objectLock
      print([
        `removed key ${id} from ${repo.url}`,
        ...(lock && id !== 'config' ? [`under Object Lock its object stays, as an older version, until its lock runs out and a prune deletes it (docs/OPERATIONS.md, "Keys")`] : []),
      ], { repository: repo.url, key: keyJson(removed) })
    })
}
