// The ebs-worker command line: the program, its commands (one file each), and how a run ends.
// Every command prints a short human summary, or with --json one JSON object as the last line
// of stdout; the exit status says how it went (README, "Using it"; cli/output.ts).
import { Command } from 'commander'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { VERSION } from '../core/version.ts'
import { backupCommand } from './backup.ts'
import { cliContext, type CliContext } from './context.ts'
import { daemonCommand, healthCheckCommand, sweepVolumesCommand } from './daemon.ts'
import { doctorCommand } from './doctor.ts'
import { initCommand } from './init.ts'
import { keyCommand } from './key.ts'
import { listCommand } from './list.ts'
import { migrateCommand } from './migrate.ts'
import { pruneCommand } from './prune.ts'
import { checkCommand } from './check.ts'
import { forgetCommand } from './forget.ts'
import { ExitStatus, printer, printError, printUsageError, ReportedFailure } from './output.ts'
import { restoreCommand } from './restore.ts'
import { verifyCommand } from './verify.ts'

export function buildProgram(context: CliContext): Command {
  const program = new Command('ebs-worker')
    .description('Back up block devices (EBS volumes) into a deduplicated, compressed, encrypted repository, and restore them')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    // Set before the subcommands are added, so they inherit them: errors come back to main(),
    // and each command's help lists the AWS options below.
    .exitOverride()
    .configureHelp({ showGlobalOptions: true })
  awsOptions(program).hook('preAction', () => context.configure(program.opts()))
  for (const command of [initCommand, backupCommand, restoreCommand, verifyCommand, listCommand, forgetCommand, pruneCommand, checkCommand, migrateCommand, keyCommand, daemonCommand, healthCheckCommand, sweepVolumesCommand, doctorCommand]) {
    command(program, context)
  }
  return program
}

/**
 * The AWS CLI's global options, before or after the command: --region, --profile (its credentials
 * and Region) and --endpoint-url (every service's), over the environment's settings (aws/config.ts).
 */
export function awsOptions(program: Command): Command {
  return program
    .option('--region <region>', 'AWS Region of the calls (over AWS_REGION and the profile\'s)')
    .option('--profile <name>', 'profile of the shared AWS config and credentials files (over AWS_PROFILE): its credentials and Region')
    .option('--endpoint-url <url>', 'endpoint of every AWS service (over AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>); a repository URL\'s ?endpoint= still wins for its S3')
}

/** Runs the CLI; resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json')
  const controller = new AbortController()
  const onSignal = (): void => controller.abort()
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const context = cliContext(printer(json), controller.signal, process.env)
  try {
    await buildProgram(context).parseAsync(argv, { from: 'user' })
    return ExitStatus.ok
  } catch (err) {
    if (err instanceof ReportedFailure) return err.status
    const commanderCode = (err as { code?: string }).code
    if (commanderCode === 'commander.helpDisplayed' || commanderCode === 'commander.version') return ExitStatus.ok
    if (typeof commanderCode === 'string' && commanderCode.startsWith('commander.')) return printUsageError(err, json)
    if (controller.signal.aborted && !(err instanceof EbsWorkerError && err.code === ErrorCode.Interrupted)) {
      err = new EbsWorkerError(ErrorCode.Interrupted, `interrupted by a signal: ${describe(err)}`, { cause: err })
    }
    return printError('ebs-worker', err, json)
  } finally {
    context.close()
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
