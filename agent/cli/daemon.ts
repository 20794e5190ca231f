// ebs-worker daemon: the worker service (docs/TASKS.md). Its settings are built here, at its
// start, from the configuration file and the environment (daemon/config.ts).
import { Option, type Command } from 'commander'
import { DEFAULT_CONFIG_PATH, loadDaemonSettings } from '../daemon/config.ts'
import type { CliContext } from './context.ts'

/** --config of the worker's commands (daemon, doctor). */
export function configOption(): Option {
  return new Option('--config <path>', 'configuration file').env('EBS_WORKER_CONFIG').default(DEFAULT_CONFIG_PATH)
}

export function daemonCommand(program: Command, { signal, env }: CliContext): void {
  program
    .command('daemon')
    .description('run the worker: take tasks from SQS and answer on the reply queue (docs/TASKS.md)')
    .addOption(configOption())
    .action(async (opts: { config: string }) => {
      // Loaded only here: the EC2/SQS/KMS/EBS clients cost ~0.3 s of start-up the other commands do not need.
      const { Daemon } = await import('../daemon/daemon.ts')
      const daemon = new Daemon(await loadDaemonSettings(opts.config, env))
      await daemon.start()
      // SIGTERM/SIGINT: stop taking tasks, give running ones their grace, hand the rest back.
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
      await daemon.stop()
    })
}
