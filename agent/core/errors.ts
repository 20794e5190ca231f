// One error type for the agent and the controller. A failure that crosses a module boundary
// carries a stable code (what the CLIs turn into an exit status and the daemon into a task
// reply), whether another attempt may succeed (derived from the code, never chosen per throw),
// and context fields that say where it happened: the task, the volume, the device and offset,
// the pack or object, the AWS call. The message is for people; the code and fields are for
// programs, which therefore never parse the message.

export const ErrorCode = {
  BadInput: 'BAD_INPUT',
  DeviceNotFound: 'DEVICE_NOT_FOUND',
  DeviceUnusable: 'DEVICE_UNUSABLE',
  TargetTooSmall: 'TARGET_TOO_SMALL',
  RepoNotFound: 'REPO_NOT_FOUND',
  /** A task named a repository the worker's configuration does not allow (allowedRepositories). */
  RepositoryNotAllowed: 'REPOSITORY_NOT_ALLOWED',
  RepoExists: 'REPO_EXISTS',
  RepoFormat: 'REPO_FORMAT',
  RepoVersion: 'REPO_VERSION',
  /** Another process holds the repository's lock for this (a prune): a later attempt may get it. */
  RepoLocked: 'REPO_LOCKED',
  KeyRequired: 'KEY_REQUIRED',
  WrongKey: 'WRONG_KEY',
  BackupNotFound: 'BACKUP_NOT_FOUND',
  BackupIncompatible: 'BACKUP_INCOMPATIBLE',
  ChunkMissing: 'CHUNK_MISSING',
  ChunkCorrupt: 'CHUNK_CORRUPT',
  ChecksumMismatch: 'CHECKSUM_MISMATCH',
  /** The storage (S3, a directory) failed or did not answer: a later attempt may succeed. */
  Storage: 'STORAGE_ERROR',
  /** A stored object the caller needs is not there (storage knows objects, not what they hold). */
  ObjectNotFound: 'OBJECT_NOT_FOUND',
  Interrupted: 'INTERRUPTED',
  ImdsUnavailable: 'IMDS_UNAVAILABLE',
  NotImplemented: 'NOT_IMPLEMENTED',
  VolumeNotFound: 'VOLUME_NOT_FOUND',
  /** The task's volume is busy elsewhere (another zone, another instance): a later attempt may succeed. */
  VolumeBusy: 'VOLUME_BUSY',
  /** Every device name a volume can be attached under here is taken: a later attempt (here or on another worker) may succeed. */
  NoFreeDeviceName: 'NO_FREE_DEVICE_NAME',
  SnapshotNotFound: 'SNAPSHOT_NOT_FOUND',
  InstanceNotFound: 'INSTANCE_NOT_FOUND',
  /** An AMI that does not exist for the caller in the Region (AMIs are per Region and per account). */
  ImageNotFound: 'IMAGE_NOT_FOUND',
  AccessDenied: 'ACCESS_DENIED',
  RoleNotAssumable: 'ROLE_NOT_ASSUMABLE',
  DefaultKeyNotShareable: 'DEFAULT_KEY_NOT_SHAREABLE',
  KeyNotFound: 'KEY_NOT_FOUND',
  /** A KMS key that cannot be used for this (disabled, pending deletion, of the wrong kind). */
  KeyUnusable: 'KEY_UNUSABLE',
  /** KMS did not answer (throttling, an outage): a later attempt may succeed. */
  KmsError: 'KMS_ERROR',
  /** Any other AWS failure (throttling, a service error, an unexpected answer): context.service says which. */
  AwsError: 'AWS_ERROR',
  SnapshotFailed: 'SNAPSHOT_FAILED',
  SnapshotTimeout: 'SNAPSHOT_TIMEOUT',
  /** A wait for an AWS resource's state (a volume, an instance) ran out. */
  StateTimeout: 'STATE_TIMEOUT',
  TaskFailed: 'TASK_FAILED',
  TaskTimeout: 'TASK_TIMEOUT',
  RestorePointNotFound: 'RESTORE_POINT_NOT_FOUND',
  /** Not one of ours: a bug, or a failure nobody classified. Treated as transient. */
  Internal: 'INTERNAL',
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

/**
 * Codes another attempt may fix: the daemon leaves the task's message for SQS to redeliver, a
 * reply says `retryable: true`, a caller may try again. Every other code is permanent.
 */
const RETRYABLE: ReadonlySet<string> = new Set<ErrorCode>([
  ErrorCode.Storage, ErrorCode.RepoLocked, ErrorCode.Interrupted, ErrorCode.ImdsUnavailable, ErrorCode.VolumeBusy, ErrorCode.NoFreeDeviceName, ErrorCode.KmsError,
  ErrorCode.AwsError, ErrorCode.SnapshotTimeout, ErrorCode.StateTimeout, ErrorCode.TaskTimeout, ErrorCode.Internal,
])

const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode))

/** Whether `code` is one of ours (a reply from another version of the worker may carry others). */
export function isKnownCode(code: string): code is ErrorCode {
  return CODES.has(code)
}

export function isRetryableCode(code: string): boolean {
  return RETRYABLE.has(code)
}

/** Where a failure happened. Every field is optional; set what is known where it is known. */
export type ErrorContext = {
  taskId?: string
  taskType?: string
  messageId?: string
  queueUrl?: string
  /** The worker (instance id) that reported it. */
  worker?: string
  instanceId?: string
  volumeId?: string
  snapshotId?: string
  device?: string
  /** Byte offset in the device or backup. */
  offset?: number
  backupId?: string
  restorePointId?: string
  /** The repository URL. */
  repository?: string
  pack?: string
  /** A stored object's name or URL. */
  object?: string
  /** The AWS service and operation of a failed call, and what AWS said. */
  service?: string
  operation?: string
  awsError?: string
  requestId?: string
  httpStatus?: number
  attempts?: number
  role?: string
  kmsKeyId?: string
  accountId?: string
  region?: string
  /** What cleanup could not undo, when the failure came after something was created. */
  notCleaned?: string[]
}

export interface ErrorJson {
  code: string
  message: string
  retryable: boolean
  context?: ErrorContext
}

export class EbsWorkerError extends Error {
  readonly code: ErrorCode
  readonly context: ErrorContext

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; context?: ErrorContext } = {}) {
    super(message, options.cause === undefined ? {} : { cause: options.cause })
    this.code = code
    this.name = 'EbsWorkerError'
    // Context learnt deeper down (the object, the AWS request id) is kept beneath what is added here.
    const inner = options.cause instanceof EbsWorkerError ? options.cause.context : {}
    this.context = { ...inner, ...definedOnly(options.context ?? {}) }
  }

  get retryable(): boolean {
    return isRetryableCode(this.code)
  }

  /** Adds context fields on the way up; a field already set deeper down is kept. */
  with(context: ErrorContext): this {
    for (const [key, value] of Object.entries(context)) {
      if (value !== undefined && (this.context as Record<string, unknown>)[key] === undefined) {
        (this.context as Record<string, unknown>)[key] = value
      }
    }
    return this
  }

  toJSON(): ErrorJson {
    return toErrorJson(this)
  }
}

export function isEbsWorkerError(err: unknown, code?: ErrorCode): err is EbsWorkerError {
  return err instanceof EbsWorkerError && (code === undefined || err.code === code)
}

/** The code of any thrown value: ours, or INTERNAL. */
export function codeOf(err: unknown): ErrorCode {
  return err instanceof EbsWorkerError ? err.code : ErrorCode.Internal
}

/** Any thrown value as the JSON that --json output and task replies carry. */
export function toErrorJson(err: unknown): ErrorJson {
  const code = codeOf(err)
  const context = err instanceof EbsWorkerError ? err.context : {}
  return { code, message: describe(err), retryable: isRetryableCode(code), ...(Object.keys(context).length ? { context } : {}) }
}

/**
 * Adds context to an error on its way up, making it one of ours if it is not yet (as INTERNAL
 * unless `code` says what it is), so the fields reach the reply or the JSON output.
 */
export function withContext(err: unknown, context: ErrorContext, code: ErrorCode = ErrorCode.Internal): EbsWorkerError {
  if (err instanceof EbsWorkerError) return err.with(context)
  return new EbsWorkerError(code, describe(err), { cause: err, context })
}

/** A short human description of any thrown value, for messages that wrap it. */
export function describe(err: unknown): string {
  if (err instanceof Error) return err.message || err.name
  return String(err)
}

function definedOnly(context: ErrorContext): ErrorContext {
  return Object.fromEntries(Object.entries(context).filter(([, v]) => v !== undefined)) as ErrorContext
}
