// The one place AWS SDK failures become our codes, for the agent and the controller alike. The
// SDK names a service error after its AWS error code (EC2 API Reference "Error codes", KMS, EBS
// direct and S3 API References, "Errors"); a failure that never reached AWS (no network, no
// credentials) has a JavaScript error name. What is permanent (denied, not found, invalid) says
// so; throttling, service errors and the unknown stay retryable under the service's code.
import { EbsWorkerError, ErrorCode, describe, type ErrorContext } from '../core/errors.ts'

export type AwsService = 'EC2' | 'KMS' | 'EBS' | 'STS' | 'SQS' | 'S3' | 'IMDS' | 'IAM'

export interface AwsCall {
  service: AwsService
  operation: string
  /** Who made the call, for the message ("source role arn:aws:iam::…"); the worker when absent. */
  who?: string
}

const ACCESS_DENIED = new Set([
  'UnauthorizedOperation', 'AccessDenied', 'AccessDeniedException', 'AuthFailure', 'Forbidden',
  'InvalidClientTokenId', 'UnrecognizedClientException', 'SignatureDoesNotMatch', 'ExpiredToken', 'ExpiredTokenException',
])

/** The AWS error name of any thrown value ("InvalidVolume.NotFound", "AccessDeniedException", "TimeoutError"…). */
export function awsErrorName(err: unknown): string {
  return (err as { name?: string } | null)?.name ?? 'Error'
}

function httpStatusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode
}

/** The code for an AWS error `name` from `service`. */
export function awsErrorCode(service: AwsService, name: string, httpStatus?: number): ErrorCode {
  // The repository's storage keeps one code for all it cannot do (a refused request included:
  // instance credentials rotate, and a policy being fixed is picked up by a later attempt).
  if (ACCESS_DENIED.has(name) && service !== 'S3') return ErrorCode.AccessDenied
  switch (service) {
    case 'EC2':
      if (name === 'InvalidVolume.NotFound') return ErrorCode.VolumeNotFound
      if (name === 'InvalidSnapshot.NotFound') return ErrorCode.SnapshotNotFound
      if (name === 'InvalidInstanceID.NotFound' || name === 'InvalidInstanceID.Malformed') return ErrorCode.InstanceNotFound
      if (name === 'InvalidAMIID.NotFound') return ErrorCode.ImageNotFound
      // No default VPC and no subnet given: the request must name one.
      if (name === 'VPCIdNotSpecified') return ErrorCode.BadInput
      // EC2 reports what KMS refused EBS as KMS.* (KMS.DisabledException, KMS.NotFoundException…).
      if (name.startsWith('KMS.')) return ErrorCode.AccessDenied
      if (name.startsWith('Invalid') || name === 'IncorrectState' || name === 'VolumeInUse' || name === 'MissingParameter') return ErrorCode.BadInput
      // "The specified operation is not allowed" (Error codes): sharing an aws/ebs snapshot, among others.
      if (name === 'OperationNotPermitted') return ErrorCode.BadInput
      return ErrorCode.AwsError
    case 'KMS':
      if (name === 'NotFoundException') return ErrorCode.KeyNotFound
      if (name === 'IncorrectKeyException' || name === 'InvalidCiphertextException') return ErrorCode.WrongKey
      if (name === 'DisabledException' || name === 'KMSInvalidStateException' || name === 'InvalidKeyUsageException') return ErrorCode.KeyUnusable
      return ErrorCode.KmsError
    case 'EBS':
      if (name === 'ResourceNotFoundException') return ErrorCode.SnapshotNotFound
      if (name === 'ValidationException') return ErrorCode.BadInput
      return ErrorCode.AwsError
    case 'S3':
      if (name === 'NoSuchBucket') return ErrorCode.RepoNotFound
      if (name === 'NoSuchKey' || name === 'NotFound' || httpStatus === 404) return ErrorCode.ObjectNotFound
      return ErrorCode.Storage
    case 'IAM':
      if (name === 'NoSuchEntity' || name === 'InvalidInput') return ErrorCode.BadInput
      return ErrorCode.AwsError
    case 'STS':
    case 'SQS':
      return ErrorCode.AwsError
    case 'IMDS':
      return ErrorCode.ImdsUnavailable
  }
}

/** An SDK failure as ours: the code, "who: SERVICE Operation failed: Name: message", and the fields. */
export function awsError(err: unknown, call: AwsCall, context: ErrorContext = {}): EbsWorkerError {
  if (err instanceof EbsWorkerError) return err.with(context)
  const name = awsErrorName(err)
  const status = httpStatusOf(err)
  const meta = (err as { $metadata?: { requestId?: string; attempts?: number } } | null)?.$metadata
  const attempts = meta?.attempts && meta.attempts > 1 ? ` after ${meta.attempts} attempts` : ''
  const message = `${call.who ? `${call.who}: ` : ''}${call.service} ${call.operation} failed${attempts}: ${name}: ${describe(err)}`
  return new EbsWorkerError(awsErrorCode(call.service, name, status), message, {
    cause: err,
    context: {
      ...context, service: call.service, operation: call.operation, awsError: name,
      ...(meta?.requestId ? { requestId: meta.requestId } : {}), ...(status ? { httpStatus: status } : {}),
      ...(meta?.attempts ? { attempts: meta.attempts } : {}),
    },
  })
}

/** Runs one AWS call; its failure becomes ours (awsError). */
export async function awsCall<T>(call: AwsCall, fn: () => Promise<T>, context: ErrorContext = {}): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    throw awsError(err, call, context)
  }
}
