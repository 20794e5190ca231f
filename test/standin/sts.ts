// A stand-in for AWS STS (AssumeRole, GetCallerIdentity) speaking the STS Query protocol (form-
// encoded POST, Version 2011-06-15, XML answers), so @aws-sdk/client-sts runs unchanged. Follows
// the STS API Reference ("AssumeRole", "GetCallerIdentity", "Common errors") and the IAM User
// Guide ("Granting a user permissions to switch roles"): a role may be assumed only by a
// principal its trust policy names (directly, through its role, or through its account), under the
// trust policy's conditions (aws:PrincipalArn, sts:ExternalId from the request's ExternalId, …:
// AwsWorld.mayAssume), and whose identity policy allows sts:AssumeRole on it; otherwise
// AccessDenied (HTTP 403). The credentials
// returned belong to the role's account: every stand-in sharing the AwsWorld sees them as a
// session of that role.
// Pages: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html,
//   …/API_GetCallerIdentity.html, …/CommonErrors.html.
import type { AwsWorld } from './iam.ts'
import { QueryError, QueryServer, xmlEscape, type QueryRequest } from './query.ts'

export class StsStandIn extends QueryServer {
  constructor(world: AwsWorld) {
    super(world, 'https://sts.amazonaws.com/doc/2011-06-15/')
  }

  protected handle({ action, params: p, principal, region }: QueryRequest): string {
    if (action === 'GetCallerIdentity') {
      this.world.record(principal, 'sts', action, region, true)
      return `<Arn>${xmlEscape(principal.arn)}</Arn><UserId>${xmlEscape(principal.arn)}</UserId><Account>${principal.accountId}</Account>`
    }
    if (action !== 'AssumeRole') throw new QueryError(400, 'InvalidAction', `Could not find operation ${action} for version 2011-06-15`)
    const roleArn = p.get('RoleArn') ?? ''
    const sessionName = p.get('RoleSessionName') ?? ''
    if (!/^[\w+=,.@-]{2,64}$/.test(sessionName)) throw new QueryError(400, 'ValidationError', 'RoleSessionName must be 2-64 of [\\w+=,.@-]')
    const role = this.world.roles.get(roleArn)
    const externalId = p.get('ExternalId') ?? undefined
    if (!role || !this.world.mayAssume(principal, role, externalId)) {
      this.world.record(principal, 'sts', action, region, false)
      throw new QueryError(403, 'AccessDenied', `User: ${principal.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`)
    }
    this.world.record(principal, 'sts', action, region, true)
    const session = this.world.sessionFor(role, sessionName)
    const expiration = new Date(Date.now() + Number(p.get('DurationSeconds') ?? 3600) * 1000).toISOString()
    return `<AssumedRoleUser><Arn>${xmlEscape(session.principal.arn)}</Arn><AssumedRoleId>AROA${role.name.toUpperCase().slice(0, 12)}:${xmlEscape(sessionName)}</AssumedRoleId></AssumedRoleUser>` +
      `<Credentials><AccessKeyId>${session.accessKeyId}</AccessKeyId><SecretAccessKey>${session.secretAccessKey}</SecretAccessKey>` +
      `<SessionToken>${session.sessionToken}</SessionToken><Expiration>${expiration}</Expiration></Credentials>`
  }
}
