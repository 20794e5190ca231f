// ebs-worker daemon: the worker service (docs/TASKS.md). Its settings are built here, at its
// start, from the configuration file and the environment (daemon/config.ts).
import { flushCompileCache } from 'node:module'
import { Option, type Command } from 'commander'
import { wholeNumber } from './options.ts'
import { DEFAULT_CONFIG_PATH, loadDaemonSettings } from '../daemon/config.ts'
import type { CliContext } from './context.ts'

/** --config of the worker's commands (daemon, doctor). */
export function configOption(): Option {
  return new Option('--config <path>', 'configuration file').env('EBS_WORKER_CONFIG').default(DEFAULT_CONFIG_PATH)
}

export function daemonCommand(program: Command, context: CliContext): void {
  const { signal } = context
  program
    .command('daemon')
    .description('run the worker: take tasks from SQS and answer on the reply queue (docs/TASKS.md)')
    .addOption(configOption())
    .action(async (opts: { config: string }) => {
      // Loaded only here: the EC2/SQS/KMS/EBS clients cost ~0.3 s of start-up the other commands do not need.
      const { Daemon } = await import('../daemon/daemon.ts')
      const daemon = new Daemon(await loadDaemonSettings(opts.config, context.env))
      await daemon.start()
      // The compile cache (cli/compile-cache.ts) is written when a process exits, which a daemon
      // may not do for weeks: write it now that the daemon's code is loaded.
      flushCompileCache()
      // SIGTERM/SIGINT: stop taking tasks, give running ones their grace, hand the rest back. Or
      // the daemon ends by itself: drained for scale-in, its lifecycle hook completed.
      const stopped = new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
      await Promise.race([stopped, daemon.finished])
      await daemon.stop()
    })
}

export function healthCheckCommand(program: Command, context: CliContext): void {
  const { print } = context
  program
    .command('health-check')
    .description("report this instance Unhealthy to its Auto Scaling group when the daemon has not been healthy for --max-age (ebs-worker-health.timer)")
    .addOption(configOption())
    .option('--max-age <seconds>', 'how long the daemon may go without being healthy', wholeNumber('--max-age', 1), 300)
    .option('--json', 'one JSON object on stdout')
    .action(async (opts: { config: string; maxAge: number }) => {
      const [{ checkHealth }, { whoAmI }, { AwsClients }] = await Promise.all([
        import('../daemon/auto-scaling.ts'), import('../aws/identity.ts'), import('../aws/clients.ts'),
      ])
      const settings = await loadDaemonSettings(opts.config, context.env)
      const endpoint = settings.imdsEndpoint ?? settings.aws.imdsEndpoint
      const identity = await whoAmI(endpoint ? { endpoint } : {})
      const aws = new AwsClients({ ...settings.aws, region: settings.aws.region ?? identity.region })
      try {
        const v = await checkHealth({ client: aws.autoScaling(identity.region), instanceId: identity.instanceId, healthFile: settings.healthFile, maxAgeSeconds: opts.maxAge })
        print([v.healthy ? `healthy: ${v.reason}` : `unhealthy, reported to Auto Scaling: ${v.reason}`], { instanceId: identity.instanceId, ...v })
      } finally {
        aws.destroy()
      }
    })
}

export function sweepVolumesCommand(program: Command, { print, env }: CliContext): void {
  program
    .command('sweep-volumes')
    .description('delete the task volumes of workers that are gone: transient, detached, older than --older-than, their worker terminated (the daemon does this itself every volumeSweep.intervalMinutes; docs/OPERATIONS.md)')
    .addOption(configOption())
    .option('--older-than <minutes>', 'only volumes created at least this long ago (default: volumeSweep.olderThanMinutes of the configuration)', wholeNumber('--older-than', 10))
    .option('--dry-run', 'say what would be deleted; delete nothing')
    .option('--json', 'one JSON object on stdout')
    .action(async (opts: { config: string; olderThan?: number; dryRun?: boolean }) => {
      const [{ sweepVolumes }, { whoAmI }, { AwsClients }] = await Promise.all([
        import('../aws/volume-sweep.ts'), import('../aws/identity.ts'), import('../aws/clients.ts'),
      ])
      const settings = await loadDaemonSettings(opts.config, env)
      const endpoint = settings.imdsEndpoint ?? settings.aws.imdsEndpoint
      const identity = await whoAmI(endpoint ? { endpoint } : {})
      const aws = new AwsClients({ ...settings.aws, region: settings.aws.region ?? identity.region })
      const olderThanMinutes = opts.olderThan ?? settings.volumeSweep.olderThanMinutes
      try {
        const out = await sweepVolumes({ client: aws.ec2(identity.region), olderThanMs: olderThanMinutes * 60_000, dryRun: opts.dryRun === true })
        const verb = opts.dryRun ? 'would delete' : 'deleted'
        print([
          ...out.deleted.map((v) => `${verb} ${v.volumeId} (task ${v.taskId}, worker ${v.worker}, created ${v.createdAt})`),
          ...out.failed.map((v) => `could not delete ${v.volumeId} (task ${v.taskId}, worker ${v.worker}): ${v.error}`),
          ...out.kept.map((v) => `kept ${v.volumeId} (task ${v.taskId}, worker ${v.worker}): ${v.why}`),
          `${out.deleted.length} ${verb}, ${out.kept.length} kept, ${out.failed.length} failed`,
        ], { dryRun: opts.dryRun === true, olderThanMinutes, ...out })
        if (out.failed.length) process.exitCode = 1
      } finally {
        aws.destroy()
      }
    })
}
