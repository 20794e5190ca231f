// The controller's failures carry a stable code, as the agent's do: the CLI maps them to an exit
// status and a JSON field, and tests match on them.

export const ControllerCode = {
  BadInput: 'BAD_INPUT',
  RoleNotAssumable: 'ROLE_NOT_ASSUMABLE',
  InstanceNotFound: 'INSTANCE_NOT_FOUND',
  KeyNotFound: 'KEY_NOT_FOUND',
  AccessDenied: 'ACCESS_DENIED',
  DefaultKeyNotShareable: 'DEFAULT_KEY_NOT_SHAREABLE',
  SnapshotFailed: 'SNAPSHOT_FAILED',
  SnapshotTimeout: 'SNAPSHOT_TIMEOUT',
  TaskFailed: 'TASK_FAILED',
  TaskTimeout: 'TASK_TIMEOUT',
  RestorePointNotFound: 'RESTORE_POINT_NOT_FOUND',
  Aws: 'AWS_ERROR',
  Storage: 'STORAGE_ERROR',
} as const
export type ControllerCode = (typeof ControllerCode)[keyof typeof ControllerCode]

export class ControllerError extends Error {
  readonly code: ControllerCode
  /** What cleanup could not undo, when the failure came after something was created. */
  notCleaned: string[] = []
  constructor(code: ControllerCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'ControllerError'
  }
}

export { describe } from '../agent/core/errors.ts'

/** The AWS error name of an SDK failure ("AccessDenied", "InvalidVolume.NotFound", …). */
export function awsName(err: unknown): string {
  return (err as { name?: string }).name ?? 'Error'
}
