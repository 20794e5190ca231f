// ebs-worker doctor: can this worker work? One line per check; exit 1 when one found a problem.
import { Option, type Command } from 'commander'
import { CHECK_NAMES, formatCheck } from '../daemon/checks.ts'
import type { CliContext } from './context.ts'
import { configOption } from './daemon.ts'
import { ReportedFailure } from './output.ts'

export function doctorCommand(program: Command, context: CliContext): void {
  const { print } = context
  program
    .command('doctor')
    .description('check that this worker can work: IMDS, identity, queues, repository, KMS keys, devices, memory, disk')
    .addOption(configOption())
    .addOption(new Option('--only <check...>', 'run only these checks').choices(CHECK_NAMES))
    .option('--kms-key <id...>', 'KMS keys tasks will use (the Region\'s default EBS key is always checked)')
    .option('--json', 'print one JSON object as the last line of stdout')
    .action(async (opts: { config: string; only?: string[]; kmsKey?: string[] }) => {
      // Loaded only here, like the daemon: its EC2/SQS clients cost start-up the other commands do not need.
      const { doctor } = await import('../daemon/doctor.ts')
      const checks = await doctor({ configPath: opts.config, env: context.env, ...(opts.only ? { only: opts.only } : {}), ...(opts.kmsKey ? { kmsKeys: opts.kmsKey } : {}) })
      const problems = checks.filter((c) => c.status === 'problem').length
      print([...checks.map(formatCheck), problems ? `${problems} problem(s)` : 'no problems'], { ok: problems === 0, checks })
      if (problems) throw new ReportedFailure()
    })
}
