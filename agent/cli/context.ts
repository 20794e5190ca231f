// What every command gets from the program: how to print, the signal that interrupts it, and
// the one settings object of the program (built here, at its edge, from the environment).
import { AwsClients } from '../aws/clients.ts'
import { awsSettings, type Environment } from '../aws/config.ts'
import type { Printer } from './output.ts'

export interface CliContext {
  print: Printer
  /** Aborted by SIGINT and SIGTERM. */
  signal: AbortSignal
  /** The environment the program was started with (the daemon and doctor read their settings from it). */
  env: Environment
  /** The program's AWS clients, from the environment's settings, built on first use. */
  aws(): AwsClients
  /** Closes what aws() built. */
  close(): void
}

export function cliContext(print: Printer, signal: AbortSignal, env: Environment): CliContext {
  let aws: AwsClients | null = null
  return {
    print, signal, env,
    aws: () => (aws ??= new AwsClients(awsSettings(env))),
    close: () => aws?.destroy(),
  }
}
