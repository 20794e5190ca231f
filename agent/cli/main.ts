// The ebs-worker command line: the program, its commands (one file each), and how a run ends.
// Every command prints a short human summary, or with --json one JSON object as the last line
// of stdout; the exit status says how it went (README, "Using it"; cli/output.ts).
import { Command } from 'commander'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { VERSION } from '../core/version.ts'
import { cliContext, type CliContext } from './context.ts'
import { ExitStatus, printer, printError, printUsageError, ReportedFailure } from './output.ts'

/** What a command's module exports: adds the command, its options and its action to the program. */
type Define = (program: Command, context: CliContext) => void

/**
 * Every command, in the order of the help, and the module that defines it. Only the module of the
 * command being run is loaded, and each loads the heavy part of its work (the pipeline, the
 * repository with its storage and AWS clients) only in its action, so that `--version`, `--help`
 * and one command's run do not pay for the others (BENCHMARKS.md, "Start-up").
 */
const COMMANDS: Record<string, () => Promise<Define>> = {
  init: async () => (await import('./init.ts')).initCommand,
  backup: async () => (await import('./backup.ts')).backupCommand,
  restore: async () => (await import('./restore.ts')).restoreCommand,
  verify: async () => (await import('./verify.ts')).verifyCommand,
  list: async () => (await import('./list.ts')).listCommand,
  forget: async () => (await import('./forget.ts')).forgetCommand,
  prune: async () => (await import('./prune.ts')).pruneCommand,
  check: async () => (await import('./check.ts')).checkCommand,
  migrate: async () => (await import('./migrate.ts')).migrateCommand,
  key: async () => (await import('./key.ts')).keyCommand,
  daemon: async () => (await import('./daemon.ts')).daemonCommand,
  'health-check': async () => (await import('./daemon.ts')).healthCheckCommand,
  'sweep-volumes': async () => (await import('./daemon.ts')).sweepVolumesCommand,
  doctor: async () => (await import('./doctor.ts')).doctorCommand,
}

/**
 * The program, with the command that `argv` names; when it names none, with every command (for
 * the help, and commander's "unknown command … Did you mean"), unless it asks only for the version.
 */
export async function buildProgram(context: CliContext, argv: string[]): Promise<Command> {
  const program = new Command('ebs-worker')
    .description('Back up block devices (EBS volumes) into a deduplicated, compressed, encrypted repository, and restore them')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    // Set before the subcommands are added, so they inherit them: errors come back to main(),
    // and each command's help lists the AWS options below.
    .exitOverride()
    .configureHelp({ showGlobalOptions: true })
  awsOptions(program).hook('preAction', () => context.configure(program.opts()))
  const named = commandName(program, argv)
  const wanted = named !== undefined && Object.hasOwn(COMMANDS, named) ? [named]
    : argv.includes('--version') || argv.includes('-V') ? []
      : Object.keys(COMMANDS)
  for (const name of wanted) (await COMMANDS[name]!())(program, context)
  return program
}

/**
 * The command `argv` names: its first argument that is neither an option nor the value of one of
 * the program's options (`--region eu-west-1 list`); in `help backup`, backup.
 */
function commandName(program: Command, argv: string[]): string | undefined {
  const takesValue = new Set(program.options.filter((o) => o.required || o.optional).map((o) => o.long))
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('-')) return arg === 'help' ? argv[i + 1] : arg
    if (takesValue.has(arg)) i++
  }
  return undefined
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
    await (await buildProgram(context, argv)).parseAsync(argv, { from: 'user' })
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
