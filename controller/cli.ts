// The ebs-controller command line: backup-instance, restore-instance, preflight, list, forget. Each prints
// a short summary, or with --json one JSON object on stdout and nothing else there. Exit status
// as ebs-worker's (agent/cli/output.ts): 0 ok, 1 failure (code and message on stderr and in the
// JSON), 2 bad input or usage, 10 no repository, 12 wrong key; preflight exits 1 when a permission
// is missing. The AWS CLI's --region, --profile and --endpoint-url are taken before or after the
// command. On a terminal, the long flows say on stderr what they are doing.
//
// Each action loads the flow it runs (and with it the AWS SDK clients that flow uses) when it
// runs: `--version`, `--help` and one command do not pay for every other's (BENCHMARKS.md, "Start-up").
import { Command, InvalidArgumentError, Option } from 'commander'
import { EbsWorkerError, ErrorCode, toErrorJson } from '../agent/core/errors.ts'
import type { Check } from './preflight.ts'
import type { TaskChannel } from './tasks.ts'
import type { Waits } from './ec2.ts'
import { VERSION } from '../agent/core/version.ts'
import { assertProfileExists, awsSettings, withAwsFlags, type AwsFlags } from '../agent/aws/config.ts'
import { nonNegativeNumber, policyOf, positiveInt, withPolicy, type PolicyOptions } from '../agent/cli/options.ts'
import { ExitStatus, exitStatusFor, printUsageError } from '../agent/cli/output.ts'
import { describePolicy, describeReason, policyJson } from '../agent/core/retention.ts'

const account = (value: string): string => {
  if (!/^\d{12}$/.test(value)) throw new InvalidArgumentError('an AWS account id is 12 digits')
  return value
}

interface Common extends AwsFlags {
  json?: boolean
  queueUrl?: string
  replyQueueUrl?: string
  taskTimeout: number
  snapshotTimeout: number
  stateTimeout: number
  pollMs: number
}

/** --repo (or EBS_CONTROLLER_REPO): the repository of the backups and their restore points. */
function repoOption(): Option {
  return new Option('--repo <url>', 'repository of the backups and restore points (s3://bucket/prefix or file:///path)').env('EBS_CONTROLLER_REPO').makeOptionMandatory()
}

/** What names a backup, for backup-instance and its preflight: the instance and who reads it where. */
function withBackupSource(c: Command): Command {
  return c.requiredOption('--instance <id>', 'the EC2 instance')
    .requiredOption('--source-role <arn>', 'IAM role in the instance\'s account (snapshots, sharing, key checks)')
    .option('--worker-account <id>', 'account of the worker fleet (default: the instance\'s)', account)
    .option('--worker-role <arn>', 'worker role to assume for the KMS checks before anything is created')
    .option('--reencrypt-with <key>', 'customer managed KMS key to copy aws/ebs-encrypted snapshots under before sharing them')
}

/** What names a restore, for restore-instance and its preflight: the restore point and where it goes. */
function withRestoreTarget(c: Command): Command {
  return c.requiredOption('--backup <id>', 'restore point id (rp-…)')
    .requiredOption('--target-account <id>', 'account to restore into', account)
    .requiredOption('--target-region <region>', 'Region to restore into')
    .requiredOption('--target-kms-key <key>', 'KMS key (in the target account and Region) for the restored volumes')
    .requiredOption('--restore-role <arn>', 'IAM role in the target account (instance, volumes)')
    .addOption(repoOption())
    .option('--worker-role <arn>', 'worker role to assume for the KMS checks before anything is created')
    .option('--instance-type <type>', 'instance type (default: the original\'s)')
    .option('--image-id <ami>', 'image to launch from before the volumes are swapped in, in the target account and Region (default: the original\'s)')
    .option('--subnet-id <subnet>', 'subnet to launch into (needed where the target account has no default VPC); the instance goes into its AZ')
    .option('--security-group-ids <ids>', 'security groups of the instance, comma-separated (of the subnet\'s VPC, or the default VPC)', (v: string) => v.split(',').map((x) => x.trim()).filter(Boolean))
}

/** The restore options restore-instance and its preflight share, as the flows take them. */
interface RestoreTarget {
  backup: string; targetAccount: string; targetRegion: string; targetKmsKey: string; restoreRole: string; repo: string; workerRole?: string
  instanceType?: string; imageId?: string; subnetId?: string; securityGroupIds?: string[]
}

function restoreTarget(o: RestoreTarget) {
  return {
    restorePointId: o.backup, repo: o.repo, targetAccount: o.targetAccount, targetRegion: o.targetRegion, targetKmsKey: o.targetKmsKey, restoreRole: o.restoreRole,
    ...(o.workerRole ? { workerRole: o.workerRole } : {}), ...(o.instanceType ? { instanceType: o.instanceType } : {}), ...(o.imageId ? { imageId: o.imageId } : {}),
    ...(o.subnetId ? { subnetId: o.subnetId } : {}), ...(o.securityGroupIds?.length ? { securityGroupIds: o.securityGroupIds } : {}),
  }
}

function withCommon(c: Command, queues = true): Command {
  c.option('--json', 'print one JSON object on stdout, and nothing else there')
    .addOption(new Option('--snapshot-timeout <seconds>', 'longest wait for snapshots').argParser(positiveInt('--snapshot-timeout')).default(3600))
    .addOption(new Option('--state-timeout <seconds>', 'longest wait for a volume or instance state change').argParser(positiveInt('--state-timeout')).default(600))
    .addOption(new Option('--poll-ms <ms>', 'first poll interval of the waits').argParser(positiveInt('--poll-ms')).default(500).hideHelp())
  if (queues) {
    c.addOption(new Option('--queue-url <url>', 'SQS queue the workers take tasks from').env('EBS_CONTROLLER_QUEUE_URL'))
      .addOption(new Option('--reply-queue-url <url>', 'SQS queue the workers answer on').env('EBS_CONTROLLER_REPLY_QUEUE_URL'))
      .addOption(new Option('--task-timeout <seconds>', 'longest wait for a worker\'s answer to a task').argParser(positiveInt('--task-timeout')).default(6 * 3600))
  }
  return c
}

function waitsOf(o: Common): Waits {
  return { snapshotTimeoutMs: o.snapshotTimeout * 1000, stateTimeoutMs: o.stateTimeout * 1000, pollMs: o.pollMs }
}

async function channel(o: Common): Promise<TaskChannel> {
  if (!o.queueUrl || !o.replyQueueUrl) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'the task and reply queues are needed: --queue-url and --reply-queue-url (or EBS_CONTROLLER_QUEUE_URL, EBS_CONTROLLER_REPLY_QUEUE_URL)')
  }
  const { TaskChannel } = await import('./tasks.ts')
  return new TaskChannel({ queueUrl: o.queueUrl, replyQueueUrl: o.replyQueueUrl, timeoutMs: o.taskTimeout * 1000 })
}

/** The Region of the calls (the instance's, for a backup): --region, AWS_REGION, else the profile's. */
async function region(): Promise<string> {
  const { ownClients } = await import('./aws.ts')
  const clients = ownClients()
  try {
    const r = await clients.resolveRegion()
    if (!r) throw new EbsWorkerError(ErrorCode.BadInput, 'no Region: pass --region, set AWS_REGION, or use a profile (--profile, AWS_PROFILE) that has one')
    return r
  } finally {
    clients.destroy()
  }
}

function onStep(o: Common): { onStep?: (step: string) => void } {
  const steps = stepsOf(o)
  return steps ? { onStep: steps } : {}
}

function print(json: boolean | undefined, human: string, obj: Record<string, unknown>): void {
  process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${human}\n`)
}

/**
 * What a long flow is doing, on stderr, when that is a terminal and the output is not JSON: one
 * line a step, with the time since the start (nothing in logs and pipes).
 */
function stepsOf(o: Common): ((step: string) => void) | undefined {
  if (o.json || !process.stderr.isTTY) return undefined
  const started = Date.now()
  return (step) => {
    const s = Math.round((Date.now() - started) / 1000)
    process.stderr.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${step}\n`)
  }
}

export async function main(argv: string[]): Promise<number> {
  let status: number = ExitStatus.ok
  const json = argv.includes('--json')
  /** An action with the program's options merged in (the AWS flags), its failure reported. */
  const run = (fn: (...args: any[]) => Promise<void>) => async (...args: any[]): Promise<void> => {
    const opts = (args.at(-1) as Command).optsWithGlobals() as Common
    args[args.length - 2] = opts
    try {
      const env = withAwsFlags(process.env, opts)
      if (opts.profile !== undefined) await assertProfileExists(env, opts.profile)
      const { configureAws, configureExternalId } = await import('./aws.ts')
      configureAws(awsSettings(env))
      configureExternalId(process.env.EBS_CONTROLLER_EXTERNAL_ID || undefined)
      await fn(...args)
    } catch (err) {
      const error = toErrorJson(err)
      status = exitStatusFor(err)
      process.stderr.write(`ebs-controller: ${error.code}: ${error.message}\n`)
      if (opts.json) process.stdout.write(JSON.stringify({ ok: false, error: { ...error, notCleaned: error.context?.notCleaned ?? [] } }) + '\n')
    }
  }
  const program = new Command('ebs-controller').version(VERSION)
    .description('Drives ebs-worker fleets through SQS: instance-level backups and restores, same or cross account, with KMS')
    .exitOverride()
    .showHelpAfterError()
    .configureHelp({ showGlobalOptions: true })
    .option('--region <region>', 'AWS Region of the calls, and the instance\'s for a backup (over AWS_REGION and the profile\'s)')
    .option('--profile <name>', 'profile of the shared AWS config and credentials files (over AWS_PROFILE): its credentials and Region')
    .option('--endpoint-url <url>', 'endpoint of every AWS service (over AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>)')

  withBackupSource(withCommon(program.command('backup-instance').description('snapshot an instance, have workers back up every volume, record a restore point')))
    .addOption(repoOption())
    .option('--keep-snapshots', 'keep the instance snapshots after the backup (default: delete them)')
    .option('--full', 'back up every volume in full (default: incremental from the instance\'s latest restore point)')
    .action(run(async (o: Common & { instance: string; sourceRole: string; repo: string; workerAccount?: string; workerRole?: string; reencryptWith?: string; keepSnapshots?: boolean; full?: boolean }) => {
      const tasks = await channel(o)
      try {
        const { backupInstance } = await import('./backup.ts')
        const out = await backupInstance({
          instanceId: o.instance, sourceRole: o.sourceRole, repo: o.repo, region: await region(), waits: waitsOf(o), ...onStep(o),
          ...(o.workerAccount ? { workerAccount: o.workerAccount } : {}), ...(o.workerRole ? { workerRole: o.workerRole } : {}),
          ...(o.reencryptWith ? { reencryptWith: o.reencryptWith } : {}), ...(o.keepSnapshots ? { keepSnapshots: true } : {}), ...(o.full ? { full: true } : {}),
        }, tasks)
        const rp = out.restorePoint
        const human = [`restore point ${rp.id} of ${rp.instance.instanceId} (${rp.instance.instanceType}):`,
          ...rp.volumes.map((v) => `  ${v.deviceName}  ${v.volumeId}  ${v.sizeGiB} GiB  backup ${v.backupId}`),
          ...(out.cleanup.failed.length ? [`could not clean up: ${out.cleanup.failed.join('; ')}`] : [])].join('\n')
        print(o.json, human, { ok: true, restorePoint: rp, cleanup: out.cleanup })
        if (out.cleanup.failed.length) status = 1
      } finally {
        await tasks.close()
      }
    }))

  withRestoreTarget(withCommon(program.command('restore-instance').description('rebuild an instance from a restore point, in this or another account')))
    .option('--availability-zone <az>', 'AZ of the new instance (cross-account; default: the subnet\'s, else the original\'s, in the target Region)')
    .option('--no-start', 'leave the instance stopped')
    .action(run(async (o: Common & RestoreTarget & { availabilityZone?: string; start: boolean }) => {
      const tasks = await channel(o)
      try {
        const { restoreInstance } = await import('./restore.ts')
        const out = await restoreInstance({
          ...restoreTarget(o), waits: waitsOf(o), ...onStep(o), noStart: !o.start, ...(o.availabilityZone ? { availabilityZone: o.availabilityZone } : {}),
        }, tasks)
        const human = [`instance ${out.instanceId} in ${o.targetAccount} ${o.targetRegion}:`, ...out.volumes.map((v) => `  ${v.deviceName}  ${v.volumeId}  ${v.kmsKeyId}`),
          ...(out.droppedTags.length ? [`tags of the original not copied (reserved aws: keys, or beyond EC2's 50): ${out.droppedTags.join(', ')}`] : []),
          ...(out.cleanup.failed.length ? [`could not clean up: ${out.cleanup.failed.join('; ')}`] : [])].join('\n')
        print(o.json, human, { ok: true, ...out })
        if (out.cleanup.failed.length) status = 1
      } finally {
        await tasks.close()
      }
    }))

  const preflight = program.command('preflight').description('check every permission a backup or restore needs, before anything is created')
  const report = async (o: Common, checks: Check[]): Promise<void> => {
    const { formatChecks } = await import('./preflight.ts')
    print(o.json, formatChecks(checks), { ok: checks.every((c) => c.ok), checks })
    if (!checks.every((c) => c.ok)) status = 1
  }
  withBackupSource(withCommon(preflight.command('backup-instance'), false))
    .action(run(async (o: Common & { instance: string; sourceRole: string; workerAccount?: string; workerRole?: string; reencryptWith?: string }) => {
      const { preflightBackup } = await import('./preflight.ts')
      await report(o, await preflightBackup({
        instanceId: o.instance, sourceRole: o.sourceRole, region: await region(),
        ...(o.workerAccount ? { workerAccount: o.workerAccount } : {}), ...(o.workerRole ? { workerRole: o.workerRole } : {}), ...(o.reencryptWith ? { reencryptWith: o.reencryptWith } : {}),
      }))
    }))
  withRestoreTarget(withCommon(preflight.command('restore-instance'), false))
    .action(run(async (o: Common & RestoreTarget) => {
      const { preflightRestore } = await import('./preflight.ts')
      await report(o, await preflightRestore(restoreTarget(o)))
    }))

  withCommon(program.command('sweep-snapshots').description("delete the snapshots of backups that never finished (a controller that died mid-run)"), false)
    .requiredOption('--source-role <arn>', 'IAM role in the instances\' account')
    .addOption(repoOption())
    .option('--older-than-hours <n>', 'only snapshots started at least this long ago (a backup may still be running)', nonNegativeNumber('--older-than-hours'), 24)
    .option('--dry-run', 'say what would be deleted, delete nothing')
    .action(run(async (o: Common & { sourceRole: string; repo: string; olderThanHours: number; dryRun?: boolean }) => {
      const { sweepSnapshots } = await import('./sweep.ts')
      const out = await sweepSnapshots({
        sourceRole: o.sourceRole, region: await region(), repo: o.repo, olderThanMs: o.olderThanHours * 3600_000, ...(o.dryRun ? { dryRun: true } : {}),
      })
      const verb = o.dryRun ? 'would delete' : 'deleted'
      const human = [...out.deleted.map((d) => `${verb} ${d.snapshotId} (restore point ${d.restorePoint} never written)`),
        ...out.kept.map((k) => `kept ${k.snapshotId}: ${k.why}`), ...out.failed.map((f) => `could not delete ${f}`)].join('\n') || 'no snapshots of ebs-controller'
      print(o.json, human, { ok: out.failed.length === 0, dryRun: Boolean(o.dryRun), ...out })
      if (out.failed.length) status = 1
    }))

  program.command('list').description('list the restore points of a repository: instance, time, volumes')
    .addOption(repoOption())
    .option('--instance <id>', 'only this instance\'s restore points')
    .option('--json', 'print one JSON object on stdout, and nothing else there')
    .action(run(async (o: { repo: string; instance?: string; json?: boolean }) => {
      const { RestorePointStore } = await import('./restore-point.ts')
      const store = new RestorePointStore(o.repo)
      await store.assertRepository()
      const points = (await Promise.all((await store.entries()).map((e) => store.read(e))))
        .filter((rp) => o.instance === undefined || rp.instance.instanceId === o.instance)
      const human = points.map((rp) => [`${rp.id}  ${rp.instance.instanceId}  ${rp.createdAt}  ${rp.volumes.length} volume${rp.volumes.length === 1 ? '' : 's'}`,
        ...rp.volumes.map((v) => `  ${v.deviceName}  ${v.volumeId}  ${v.sizeGiB} GiB  backup ${v.backupId}`)].join('\n')).join('\n')
      print(o.json, human || (o.instance ? `no restore points of ${o.instance}` : 'no restore points'), {
        ok: true, repository: o.repo,
        restorePoints: points.map((rp) => ({
          id: rp.id, instanceId: rp.instance.instanceId, createdAt: rp.createdAt,
          volumes: rp.volumes.map((v) => ({ deviceName: v.deviceName, volumeId: v.volumeId, sizeGiB: v.sizeGiB, backupId: v.backupId })),
        })),
      })
    }))

  withPolicy(program.command('forget')
    .description('apply a retention policy to each instance\'s restore points: each is kept or forgotten whole, with its volume backups'), 'restore points')
    .addOption(repoOption())
    .option('--instance <id>', 'only this instance\'s restore points')
    .option('--dry-run', 'say what would be forgotten, change nothing')
    .option('--json', 'print one JSON object on stdout, and nothing else there')
    .action(run(async (o: PolicyOptions & { repo: string; instance?: string; dryRun?: boolean; json?: boolean }) => {
      const policy = policyOf(o)
      const [{ RestorePointStore }, { forgetRestorePoints }] = await Promise.all([import('./restore-point.ts'), import('./forget.ts')])
      await new RestorePointStore(o.repo).assertRepository()
      const out = await forgetRestorePoints({ repo: o.repo, policy, ...(o.instance ? { instanceId: o.instance } : {}), ...(o.dryRun ? { dryRun: true } : {}) })
      const verb = o.dryRun ? 'would forget' : 'forgot'
      const human = [describePolicy(policy), ...out.groups.flatMap((g) => [
        `instance ${g.group}: ${g.keep.length + g.forget.length} restore points, keep ${g.keep.length}, ${o.dryRun ? 'would forget' : 'forget'} ${g.forget.length}`,
        ...g.keep.map((k) => `  keep    ${k.item.id}  ${k.item.restorePoint.createdAt}  ${k.reasons.map(describeReason).join(', ')}`),
        ...g.forget.map((p) => `  forget  ${p.id}  ${p.restorePoint.createdAt}  (${p.restorePoint.volumes.length} volume${p.restorePoint.volumes.length === 1 ? '' : 's'})`),
      ]), `${verb} ${out.forgotten.length} restore points and ${out.backups.length} backups` +
        (out.forgotten.length ? '; the workers\' next prune deletes the data no backup needs' : ''),
      ...(out.spared.length ? [`left ${out.spared.length} backups that kept restore points also name`] : [])].join('\n')
      print(o.json, human, {
        ok: true, repository: o.repo, dryRun: Boolean(o.dryRun), policy: policyJson(policy),
        groups: out.groups.map((g) => ({
          instance: g.group,
          keep: g.keep.map((k) => ({ id: k.item.id, createdAt: k.item.restorePoint.createdAt, reasons: k.reasons, backups: k.item.restorePoint.volumes.map((v) => v.backupId) })),
          forget: g.forget.map((p) => ({ id: p.id, createdAt: p.restorePoint.createdAt, backups: p.restorePoint.volumes.map((v) => v.backupId) })),
        })),
        forgotten: out.forgotten, backupsForgotten: out.backups, backupsSpared: out.spared,
      })
    }))

  try {
    await program.parseAsync(argv, { from: 'user' })
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || (err as { exitCode?: number }).exitCode === 0) return ExitStatus.ok
    return printUsageError(err, json)
  }
  return status
}
