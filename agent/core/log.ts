// The log: one JSON object per line on stderr (pino), what journald or the unit's log file, and
// the CloudWatch agent, pick up (docs/OPERATIONS.md, "Logs"). Every line has `time` (ISO 8601),
// `level` (debug, info, warn, error, as a word), `msg`, `version`, and what the process binds:
// the daemon its `fleet` and `instanceId`, each task its `taskId` and `taskType` (a child
// logger). A failure goes under `error`: its type, message, code, retryable, context, the AWS
// request id and HTTP status when AWS answered, its stack and its causes. A fallback that worked
// (the work went on another way) is a warning, not an error.
//
// One root logger per process (`log`), configured by the daemon at its start (configureLog); the
// layers beneath it log their fallbacks through it.
import { pino, type DestinationStream, type Logger } from 'pino'
import { EbsWorkerError, ErrorCode } from './errors.ts'
import { VERSION } from './version.ts'

export type Log = Logger
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value)
}

/**
 * Paths no line may show: credentials and what could carry them. The error serializer picks its
 * fields (never an SDK error's request or response), and scrubs signatures from messages.
 */
const REDACT = [
  'credentials', '*.credentials', 'secretAccessKey', '*.secretAccessKey', 'sessionToken', '*.sessionToken',
  'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization', 'password', '*.password',
  'Plaintext', '*.Plaintext', 'dataKey', '*.dataKey',
]

/** Query-string signatures and credentials (a presigned URL in a message): replaced. */
function scrub(text: string): string {
  return text.replace(/(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s"']+/gi, '$1[redacted]')
}

interface AwsMetadata {
  httpStatusCode?: number
  requestId?: string
  extendedRequestId?: string
  attempts?: number
}

/** The AWS request id and HTTP status an error or one of its causes carries (SDK `$metadata`, or our context). */
function awsAnswer(err: unknown): { requestId?: string; extendedRequestId?: string; httpStatus?: number } {
  const out: { requestId?: string; extendedRequestId?: string; httpStatus?: number } = {}
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const meta = (e as { $metadata?: AwsMetadata }).$metadata
    const context = e instanceof EbsWorkerError ? e.context : undefined
    out.requestId ??= context?.requestId ?? meta?.requestId
    out.extendedRequestId ??= meta?.extendedRequestId
    out.httpStatus ??= context?.httpStatus ?? meta?.httpStatusCode
  }
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined))
}

/** Any thrown value as the `error` of a log line. */
export function errorFields(err: unknown, depth = 0): Record<string, unknown> {
  if (!(err instanceof Error)) {
    return err !== null && typeof err === 'object' ? { ...(err as Record<string, unknown>) } : { message: scrub(String(err)) }
  }
  const out: Record<string, unknown> = { type: err.name, message: scrub(err.message) }
  if (err instanceof EbsWorkerError) {
    out.code = err.code
    out.retryable = err.retryable
    if (Object.keys(err.context).length) out.context = err.context
  }
  if (depth === 0) Object.assign(out, awsAnswer(err))
  if (err.stack) out.stack = scrub(err.stack)
  if (err.cause !== undefined && depth < 4) out.cause = errorFields(err.cause, depth + 1)
  return out
}

export interface LogOptions {
  level?: LogLevel
  /** Fields on every line besides `version`. */
  bindings?: Record<string, unknown>
  /** Where the lines go; default stderr, written synchronously (nothing lost when the process ends). */
  destination?: DestinationStream
}

export function createLog(options: LogOptions = {}): Log {
  return pino({
    level: options.level ?? 'info',
    base: { version: VERSION, ...options.bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    errorKey: 'error',
    serializers: { error: (err: unknown) => errorFields(err) },
    redact: { paths: REDACT, censor: '[redacted]' },
  }, options.destination ?? pino.destination({ dest: 2, sync: true }))
}

/** The level EBS_WORKER_LOG_LEVEL asks for, if any; a word that is not a level is an error. */
export function logLevelFromEnv(env: Record<string, string | undefined>): LogLevel | undefined {
  const value = env.EBS_WORKER_LOG_LEVEL?.trim().toLowerCase()
  if (!value) return undefined
  if (!isLogLevel(value)) throw new EbsWorkerError(ErrorCode.BadInput, `EBS_WORKER_LOG_LEVEL=${value} is not a log level: one of ${LOG_LEVELS.join(', ')}`)
  return value
}

const stderr = pino.destination({ dest: 2, sync: true })
let rootDestination: DestinationStream = stderr

/** The process's root logger (stderr; EBS_WORKER_LOG_LEVEL, else info). */
export const log: Log = createLog({ level: safeLevel(), destination: { write: (line: string) => void rootDestination.write(line) } })

/** Sends the root logger's lines to `destination` (a test reads what the layers log); returns the undo. */
export function logTo(destination: DestinationStream): () => void {
  rootDestination = destination
  return () => {
    rootDestination = stderr
  }
}

function safeLevel(): LogLevel {
  try {
    return logLevelFromEnv(process.env) ?? 'info'
  } catch {
    return 'info'
  }
}

/** Sets the root logger's level and adds fields to every line it (and any child made after) writes. */
export function configureLog(options: { level?: LogLevel; bindings?: Record<string, unknown> }): void {
  if (options.level) log.level = options.level
  if (options.bindings) log.setBindings(options.bindings)
}
