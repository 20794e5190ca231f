// AWS clients for the controller: its own credentials (the default chain: environment, profile,
// instance profile), and sessions of the roles it assumes in other accounts (STS AssumeRole,
// refreshed before they expire). Every client is built by agent/aws/clients.ts from the settings
// the command line read from the environment (configureAws): endpoint overrides
// (AWS_ENDPOINT_URL_EC2, _KMS, _STS, _SQS, _IAM) apply as the SDK documents them, which is how
// tests point the clients at the stand-ins.
import type { EC2Client } from '@aws-sdk/client-ec2'
import type { IAMClient } from '@aws-sdk/client-iam'
import type { KMSClient } from '@aws-sdk/client-kms'
import { AssumeRoleCommand, GetCallerIdentityCommand } from '@aws-sdk/client-sts'
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@aws-sdk/types'
import { EbsWorkerError, ErrorCode, describe } from '../agent/core/errors.ts'
import { awsErrorName } from '../agent/aws/errors.ts'
import { AwsClients } from '../agent/aws/clients.ts'
import { awsSettings, type AwsSettings } from '../agent/aws/config.ts'

let settings: AwsSettings = awsSettings()

let externalId: string | undefined

/** The AWS settings every client of the controller is built from; its command line sets them once, from the environment. */
export function configureAws(s: AwsSettings): void {
  settings = s
}

/**
 * The external id every AssumeRole carries (EBS_CONTROLLER_EXTERNAL_ID), for roles whose trust
 * policy asks for one (sts:ExternalId: an account run by a third party; packaging/iam/README.md).
 * STS API Reference, AssumeRole: ExternalId, 2 to 1224 of [\w+=,.@:/-].
 */
export function configureExternalId(id: string | undefined): void {
  if (id !== undefined && !/^[\w+=,.@:/-]{2,1224}$/.test(id)) {
    throw new EbsWorkerError(ErrorCode.BadInput, 'EBS_CONTROLLER_EXTERNAL_ID is 2 to 1224 letters, digits or +=,.@:/-_')
  }
  externalId = id
}

/** Clients with the controller's own credentials (its queues); the caller destroys them. */
export function ownClients(): AwsClients {
  return new AwsClients(settings)
}

export interface Session {
  /** The role's ARN, or "controller" for the controller's own credentials. */
  role: string
  accountId: string
  credentials?: AwsCredentialIdentityProvider
  ec2(region: string): EC2Client
  kms(region: string): KMSClient
  /** IAM (global; the Region names the partition). */
  iam(region: string): IAMClient
}

const ROLE_ARN = /^arn:aws[\w-]*:iam::(\d{12}):role\/[\w+=,.@/-]+$/

export function accountOfRole(roleArn: string): string {
  const m = ROLE_ARN.exec(roleArn)
  if (!m) throw new EbsWorkerError(ErrorCode.BadInput, `${roleArn} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)`)
  return m[1]!
}

function session(role: string, accountId: string, credentials?: AwsCredentialIdentityProvider): Session {
  const clients = new AwsClients(settings, credentials ? { credentials } : {})
  return {
    role, accountId, ...(credentials ? { credentials } : {}),
    ec2: (region) => clients.ec2(region),
    kms: (region) => clients.kms(region),
    iam: (region) => clients.iam(region),
  }
}

/** The controller's own session; its account from STS GetCallerIdentity (which needs no permission). */
export async function ownSession(region: string): Promise<Session> {
  const clients = ownClients()
  try {
    const me = await clients.sts(region).send(new GetCallerIdentityCommand({}))
    return session('controller', me.Account!)
  } catch (err) {
    throw new EbsWorkerError(ErrorCode.AwsError, `cannot tell which account the controller's credentials belong to: ${describe(err)}`, { cause: err })
  } finally {
    clients.destroy()
  }
}

/** A session of `roleArn`, assumed with the controller's credentials; refreshed 5 minutes before expiry. */
export async function assumeRole(roleArn: string, region: string, sessionName = 'ebs-controller'): Promise<Session> {
  const accountId = accountOfRole(roleArn)
  const sts = ownClients().sts(region)
  let current: AwsCredentialIdentity | null = null
  const fetch = async (): Promise<AwsCredentialIdentity> => {
    try {
      const out = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: sessionName, DurationSeconds: 3600, ...(externalId ? { ExternalId: externalId } : {}) }))
      const c = out.Credentials!
      return { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken!, ...(c.Expiration ? { expiration: c.Expiration } : {}) }
    } catch (err) {
      const name = awsErrorName(err)
      throw new EbsWorkerError(ErrorCode.RoleNotAssumable,
        `cannot assume the role ${roleArn}: ${name}: ${describe(err)}. Its trust policy must let the controller's principal assume it ` +
        '(aws:PrincipalArn; and sts:ExternalId = EBS_CONTROLLER_EXTERNAL_ID if it asks for one), ' +
        'and the controller\'s identity policy must allow sts:AssumeRole on it (packaging/iam/)', { cause: err })
    }
  }
  current = await fetch()
  const provider: AwsCredentialIdentityProvider = async () => {
    if (!current?.expiration || current.expiration.getTime() - Date.now() < 5 * 60_000) current = await fetch()
    return current
  }
  return session(roleArn, accountId, provider)
}
