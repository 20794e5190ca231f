// Errors that cross a module boundary carry a stable code: the CLI maps it to an exit
// status and a JSON field, and the daemon will map it to a task result.

export const ErrorCode = {
  BadInput: 'BAD_INPUT',
  DeviceNotFound: 'DEVICE_NOT_FOUND',
  DeviceUnusable: 'DEVICE_UNUSABLE',
  TargetTooSmall: 'TARGET_TOO_SMALL',
  RepoNotFound: 'REPO_NOT_FOUND',
  RepoExists: 'REPO_EXISTS',
  RepoFormat: 'REPO_FORMAT',
  RepoVersion: 'REPO_VERSION',
  KeyRequired: 'KEY_REQUIRED',
  WrongKey: 'WRONG_KEY',
  BackupNotFound: 'BACKUP_NOT_FOUND',
  BackupIncompatible: 'BACKUP_INCOMPATIBLE',
  ChunkMissing: 'CHUNK_MISSING',
  ChunkCorrupt: 'CHUNK_CORRUPT',
  ChecksumMismatch: 'CHECKSUM_MISMATCH',
  Storage: 'STORAGE_ERROR',
  Interrupted: 'INTERRUPTED',
  ImdsUnavailable: 'IMDS_UNAVAILABLE',
  NotImplemented: 'NOT_IMPLEMENTED',
  VolumeNotFound: 'VOLUME_NOT_FOUND',
  /** The task's volume is busy elsewhere (another zone, another instance): a later attempt may succeed. */
  VolumeBusy: 'VOLUME_BUSY',
  SnapshotNotFound: 'SNAPSHOT_NOT_FOUND',
  AccessDenied: 'ACCESS_DENIED',
  Ec2Error: 'EC2_ERROR',
  DefaultKeyNotShareable: 'DEFAULT_KEY_NOT_SHAREABLE',
  /** A KMS key that cannot be used for this (disabled, deleted, of the wrong kind). */
  KeyUnusable: 'KEY_UNUSABLE',
  /** KMS did not answer (throttling, an outage): a later attempt may succeed. */
  KmsError: 'KMS_ERROR',
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

export class EbsWorkerError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'EbsWorkerError'
  }
}

export function isEbsWorkerError(err: unknown, code?: ErrorCode): err is EbsWorkerError {
  return err instanceof EbsWorkerError && (code === undefined || err.code === code)
}

/** A short human description of any thrown value, for messages that wrap it. */
export function describe(err: unknown): string {
  if (err instanceof Error) return err.message || err.name
  return String(err)
}
