// The AWS settings of a program, read once at its edge (the CLIs, the daemon's start) from the
// environment it is given, and from then on passed down: no module below reads process.env.
// What is ours to decide (path-style addressing, queue URLs as SQS endpoints, S3 checksums, the
// lean ranged GET) is decided from this object. The standard variables keep the meaning the SDK
// gives them (AWS developer guide, "Environment variables" and "Service-specific endpoints");
// credentials stay with the SDK's default chain.
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'

/** The services the agent and the controller call, as the SDK's endpoint variables name them. */
export const AWS_SERVICES = ['s3', 'sqs', 'ec2', 'kms', 'ebs', 'sts', 'iam', 'auto_scaling'] as const
export type AwsServiceId = (typeof AWS_SERVICES)[number]

export type S3Checksums = 'default' | 'when-required'

export interface AwsSettings {
  /**
   * AWS_REGION, else AWS_DEFAULT_REGION. Unset: the SDK's own (the profile's); the daemon takes
   * its instance's Region from IMDS instead.
   */
  region?: string | undefined
  /** Endpoint overrides: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL (none with AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true). */
  endpoints: Partial<Record<AwsServiceId, string>>
  /** AWS_MAX_ATTEMPTS. Unset: the SDK's default (3), and S3_MAX_ATTEMPTS for S3. */
  maxAttempts?: number | undefined
  /** AWS_EC2_METADATA_SERVICE_ENDPOINT. Unset: the link-local IMDS. */
  imdsEndpoint?: string | undefined
  s3: {
    /**
     * EBS_WORKER_S3_CHECKSUMS: "when-required" for S3-compatible servers that reject the SDK's
     * default request checksums (Ceph RGW answers 411 to aws-chunked bodies). A repository URL's
     * `?checksums=` wins.
     */
    checksums: S3Checksums
    /**
     * EBS_WORKER_S3_LEAN_GET=0: every GET goes through the SDK, restores' and verifies' ranged
     * GETs included, which otherwise take the lean path (storage/s3-range.ts, raw-http.ts). An
     * operator's escape hatch, should the lean path misbehave with some server or network.
     */
    leanGet: boolean
  }
}

/** Attempts of an S3 request when AWS_MAX_ATTEMPTS does not say: more than the SDK's 3, for long backups. */
export const S3_MAX_ATTEMPTS = 5

export type Environment = Readonly<Record<string, string | undefined>>

/** The settings the environment gives (the program's edge passes process.env). */
export function awsSettings(env: Environment = {}): AwsSettings {
  const value = (name: string): string | undefined => (env[name] ? env[name] : undefined)
  const endpoints: AwsSettings['endpoints'] = {}
  if (value('AWS_IGNORE_CONFIGURED_ENDPOINT_URLS')?.toLowerCase() !== 'true') {
    for (const service of AWS_SERVICES) {
      const url = value(`AWS_ENDPOINT_URL_${service.toUpperCase()}`) ?? value('AWS_ENDPOINT_URL')
      if (url) endpoints[service] = url
    }
  }
  const attempts = value('AWS_MAX_ATTEMPTS')
  if (attempts !== undefined && !(Number.isInteger(Number(attempts)) && Number(attempts) > 0)) {
    throw new EbsWorkerError(ErrorCode.BadInput, `AWS_MAX_ATTEMPTS must be a positive integer, not "${attempts}"`)
  }
  return {
    region: value('AWS_REGION') ?? value('AWS_DEFAULT_REGION'),
    endpoints,
    maxAttempts: attempts === undefined ? undefined : Number(attempts),
    imdsEndpoint: value('AWS_EC2_METADATA_SERVICE_ENDPOINT'),
    s3: {
      checksums: s3Checksums(value('EBS_WORKER_S3_CHECKSUMS') ?? 'default'),
      leanGet: onOff('EBS_WORKER_S3_LEAN_GET', value('EBS_WORKER_S3_LEAN_GET') ?? '1'),
    },
  }
}

/** A switch: 1/true/on or 0/false/off; anything else is refused rather than taken for either. */
function onOff(name: string, value: string): boolean {
  const v = value.toLowerCase()
  if (v === '1' || v === 'true' || v === 'on') return true
  if (v === '0' || v === 'false' || v === 'off') return false
  throw new EbsWorkerError(ErrorCode.BadInput, `${name} must be 1 or 0, not "${value}"`)
}

/** A checksums setting, from a URL option or the environment. */
export function s3Checksums(value: string): S3Checksums {
  if (value !== 'default' && value !== 'when-required') {
    throw new EbsWorkerError(ErrorCode.BadInput, `checksums must be "default" or "when-required", not "${value}"`)
  }
  return value
}
