// The AWS settings of a program, read once at its edge (the CLIs, the daemon's start) from the
// environment it is given, and from then on passed down: no module below reads process.env.
// What is ours to decide (path-style addressing, queue URLs as SQS endpoints, S3 checksums, the
// lean ranged GET) is decided from this object. The standard variables keep the meaning the SDK
// gives them (AWS developer guide, "Environment variables" and "Service-specific endpoints");
// credentials stay with the SDK's default chain, of the profile AWS_PROFILE (or --profile) names.
// The command lines' --region, --profile and --endpoint-url (awsFlags) mean what the AWS CLI's
// global options mean: they win over the variables and the profile.
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
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
  /**
   * AWS_PROFILE: the profile of the shared config and credentials files (~/.aws/config,
   * ~/.aws/credentials, or AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) whose credentials and
   * Region every client takes. Unset: the SDK's default chain and the default profile.
   */
  profile?: string | undefined
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
    profile: value('AWS_PROFILE'),
    endpoints,
    maxAttempts: attempts === undefined ? undefined : Number(attempts),
    imdsEndpoint: value('AWS_EC2_METADATA_SERVICE_ENDPOINT'),
    s3: {
      checksums: s3Checksums(value('EBS_WORKER_S3_CHECKSUMS') ?? 'default'),
      leanGet: onOff('EBS_WORKER_S3_LEAN_GET', value('EBS_WORKER_S3_LEAN_GET') ?? '1'),
    },
  }
}

/** The AWS CLI's global options, as both command lines take them. */
export interface AwsFlags {
  /** --region: the Region of every call, over AWS_REGION and the profile's. */
  region?: string | undefined
  /** --profile: the profile whose credentials and Region are used, over AWS_PROFILE. */
  profile?: string | undefined
  /** --endpoint-url: every service's endpoint, over AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>. */
  endpointUrl?: string | undefined
}

/** Region names: lowercase letters, digits and hyphens (us-east-1, eu-isoe-west-1; an S3-compatible server's own). */
const REGION = /^[a-z0-9]+(-[a-z0-9]+)*$/

/**
 * The environment as the flags amend it: what --region, --profile and --endpoint-url say, in the
 * variables whose meaning they take over (so the daemon and doctor, which read their settings from
 * the environment, see them too). --endpoint-url replaces every AWS_ENDPOINT_URL_<SERVICE>, as the
 * AWS CLI's option does. Bad values are BAD_INPUT.
 */
export function withAwsFlags(env: Environment, flags: AwsFlags): Environment {
  const out: Record<string, string | undefined> = { ...env }
  if (flags.region !== undefined) {
    if (!REGION.test(flags.region)) throw new EbsWorkerError(ErrorCode.BadInput, `--region ${JSON.stringify(flags.region)} is not a Region name (like eu-west-1)`)
    out.AWS_REGION = flags.region
  }
  if (flags.profile !== undefined) {
    if (!/^[\w.@+-]+$/.test(flags.profile)) throw new EbsWorkerError(ErrorCode.BadInput, `--profile ${JSON.stringify(flags.profile)} is not a profile name`)
    out.AWS_PROFILE = flags.profile
  }
  if (flags.endpointUrl !== undefined) {
    let url: URL | null = null
    try {
      url = new URL(flags.endpointUrl)
    } catch {
      // refused below
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) {
      throw new EbsWorkerError(ErrorCode.BadInput, `--endpoint-url ${JSON.stringify(flags.endpointUrl)} is not an http:// or https:// URL`)
    }
    for (const name of Object.keys(out)) if (name.startsWith('AWS_ENDPOINT_URL_')) delete out[name]
    delete out.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
    out.AWS_ENDPOINT_URL = flags.endpointUrl
  }
  return out
}

/**
 * Refuses a profile that neither shared file names (AWS_CONFIG_FILE or ~/.aws/config as
 * [profile NAME] or [default], AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials as [NAME]), as the
 * AWS CLI does, rather than leaving the SDK to fail later without saying why.
 */
export async function assertProfileExists(env: Environment, profile: string): Promise<void> {
  const config = env.AWS_CONFIG_FILE || join(homedir(), '.aws', 'config')
  const credentials = env.AWS_SHARED_CREDENTIALS_FILE || join(homedir(), '.aws', 'credentials')
  const sections = async (path: string): Promise<string[]> => {
    const text = await readFile(path, 'utf8').catch(() => '')
    return [...text.matchAll(/^\s*\[\s*([^\]]+?)\s*\]/gm)].map((m) => m[1]!.replace(/\s+/g, ' '))
  }
  const [inConfig, inCredentials] = await Promise.all([sections(config), sections(credentials)])
  const named = profile === 'default' ? inConfig.includes('default') : inConfig.includes(`profile ${profile}`)
  if (named || inCredentials.includes(profile)) return
  throw new EbsWorkerError(ErrorCode.BadInput, `the profile ${profile} is in neither ${config} nor ${credentials}`)
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
