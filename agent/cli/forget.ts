// ebs-worker forget: removes backups from the repository's list (their data goes at the next
// prune): those named, or those a retention policy does not keep (restic's semantics, per group:
// core/retention.ts). With --prune, prune runs next when something was forgotten.
import { Option, type Command } from 'commander'
import { forEachConcurrent } from '../core/concurrency.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { describePolicy, describeReason, isEmptyPolicy, policyJson, requirePolicy, type GroupDecision } from '../core/retention.ts'
import { forgetByPolicy, GROUP_BY, RESTORE_POINT_TAG, type Dated, type GroupBy } from '../maintenance/forget.ts'
import type { PruneResult } from '../maintenance/prune.ts'
import type { Repository } from '../repo/repository.ts'
import type { CliContext } from './context.ts'
import { policyOf, wholeNumber, withPolicy, withRepository, type PolicyOptions, type RepositoryOptions } from './options.ts'

interface ForgetOptions extends RepositoryOptions, PolicyOptions {
  groupBy?: GroupBy
  dryRun?: boolean
  prune?: boolean
  grace: number
}

function groupTitle(by: GroupBy, key: string): string {
  if (by === 'none') return 'all backups'
  if (by === 'tags') return key ? `tags ${key}` : 'no tags'
  return `${by} ${key}`
}

export function forgetCommand(program: Command, { print, aws }: CliContext): void {
  const command = withRepository(program.command('forget')
    .description('forget backups, named or by a retention policy: their manifests go; `prune` then deletes the data no backup needs'))
  withPolicy(command, 'backups')
    .argument('[ids...]', 'backup ids to forget (or give a policy)')
    .addOption(new Option('--group-by <what>', 'apply the policy to each group: the backups of one volume (its volume id, else its device), one device, one set of tags, or all together')
      .choices(GROUP_BY))
    .option('--dry-run', 'say what would be forgotten, change nothing')
    .option('--prune', 'then run prune (with its defaults) when backups were forgotten')
    .addOption(new Option('--grace <seconds>', 'with --prune: prune\'s --grace').argParser(wholeNumber('--grace')).default(3600).hideHelp())
    .action(async (ids: string[], opts: ForgetOptions) => {
      const policy = policyOf(opts)
      if (ids.length && (!isEmptyPolicy(policy) || opts.groupBy)) {
        throw new EbsWorkerError(ErrorCode.BadInput, 'give backup ids or a policy (--keep-*, --group-by), not both: nothing was forgotten')
      }
      if (!ids.length) requirePolicy(policy)
      const [{ openRepository }, { describePrune }] = await Promise.all([import('../app/repository.ts'), import('../maintenance/prune.ts')])
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const by = opts.groupBy ?? 'volume'
      let groups: GroupDecision<Dated>[] = []
      let forget: Array<{ id: string; tags: Record<string, string> }>
      const dryRun = opts.dryRun === true
      if (ids.length) {
        // Each must exist: a typo forgets nothing.
        forget = await Promise.all(ids.map(async (id) => ({ id, tags: (await repo.loadManifest(id)).tags })))
        if (!dryRun) await forEachConcurrent(forget, 16, (b) => repo.forgetBackup(b.id))
      } else {
        const planned = await forgetByPolicy(repo, policy, by, { dryRun })
        groups = planned.groups
        forget = planned.forgotten
      }
      const ofRestorePoints = forget.filter((b) => RESTORE_POINT_TAG in b.tags).length
      if (ofRestorePoints) {
        process.stderr.write(`ebs-worker: note: ${ofRestorePoints} of these backups belong to restore points of ebs-controller (tag ${RESTORE_POINT_TAG}), ` +
          'which can no longer be restored whole; `ebs-controller forget` keeps or forgets restore points whole\n')
      }
      const pruned = opts.prune && forget.length ? await pruneAfter(repo, opts, new Set(forget.map((b) => b.id))) : null
      const verb = dryRun ? 'would forget' : 'forgot'
      const human = ids.length
        ? ids.map((id) => `${verb} ${id}`)
        : [describePolicy(policy), ...groups.flatMap((g) => [
            `${groupTitle(by, g.group)}: ${g.keep.length + g.forget.length} backups, keep ${g.keep.length}, ${dryRun ? 'would forget' : 'forget'} ${g.forget.length}`,
            ...g.keep.map((k) => `  keep    ${k.item.id}  ${k.item.createdAt}  ${k.reasons.map(describeReason).join(', ')}`),
            ...g.forget.map((b) => `  forget  ${b.id}  ${b.createdAt}`),
          ]), `${verb} ${forget.length} backups`]
      print([...human, ...(pruned ? ['prune:', ...describePrune(pruned).map((l) => `  ${l}`)] : [])], {
        repository: repo.url, dryRun,
        ...(ids.length ? {} : {
          policy: policyJson(policy), groupBy: by,
          groups: groups.map((g) => ({
            group: g.group,
            keep: g.keep.map((k) => ({ id: k.item.id, createdAt: k.item.createdAt, reasons: k.reasons })),
            forget: g.forget.map((b) => ({ id: b.id, createdAt: b.createdAt })),
          })),
        }),
        forgotten: forget.map((b) => b.id),
        ...(pruned ? { prune: pruned } : {}),
      })
    })
}

/** prune after forgetting: a dry run counts the backups it would have forgotten as gone. */
async function pruneAfter(repo: Repository, opts: ForgetOptions, forgotten: ReadonlySet<string>): Promise<PruneResult> {
  const { prune } = await import('../maintenance/prune.ts')
  const tty = opts.progress && !opts.json && process.stderr.isTTY
  const r = await prune(repo, {
    dryRun: opts.dryRun === true, forgotten, graceMs: opts.grace * 1000,
    onProgress: (p) => tty && process.stderr.write(`\rprune: ${p.phase} ${p.done}/${p.total}      `),
  })
  if (tty) process.stderr.write('\n')
  return r
}
