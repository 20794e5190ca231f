// What every command gets from the program: how to print, the signal that interrupts it, and
// the one settings object of the program (built here, at its edge, from the environment).
import type { AwsClients } from '../aws/clients.ts'
import { assertProfileExists, awsSettings, withAwsFlags, type AwsFlags, type Environment } from '../aws/config.ts'
import type { Printer } from './output.ts'

export interface CliContext {
  print: Printer
  /** Aborted by SIGINT and SIGTERM. */
  signal: AbortSignal
  /**
   * The environment the program was started with, as its --region, --profile and --endpoint-url
   * amend it (the daemon and doctor read their settings from it). Read it in an action, not before.
   */
  readonly env: Environment
  /** The program's AWS clients, from the environment's settings, built on first use (in an action: configure() loads them). */
  aws(): AwsClients
  /** Closes what aws() built. */
  close(): void
  /**
   * Takes the program's AWS flags, before a command runs (a profile that no shared file names is
   * refused), and loads aws/clients.ts, which `--version` and `--help` do without.
   */
  configure(flags: AwsFlags): Promise<void>
}

export function cliContext(print: Printer, signal: AbortSignal, started: Environment): CliContext {
  let aws: AwsClients | null = null
  let Clients: typeof AwsClients | null = null
  let env = started
  return {
    print, signal,
    get env() {
      return env
    },
    aws: () => {
      if (!Clients) throw new Error('aws() before configure()')
      return (aws ??= new Clients(awsSettings(env)))
    },
    close: () => aws?.destroy(),
    configure: async (flags) => {
      env = withAwsFlags(started, flags)
      if (flags.profile !== undefined) await assertProfileExists(env, flags.profile)
      Clients ??= (await import('../aws/clients.ts')).AwsClients
    },
  }
}
