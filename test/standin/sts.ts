// A stand-in for AWS STS (AssumeRole, GetCallerIdentity) speaking the STS Query protocol (form-
// encoded POST, Version 2011-06-15, XML answers), so @aws-sdk/client-sts runs unchanged. Follows
// the STS API Reference ("AssumeRole", "GetCallerIdentity", "Common errors") and the IAM User
// Guide ("Granting a user permissions to switch roles"): a role may be assumed only by a
// principal its trust policy names (directly, through its role, or through its account) and whose
// identity policy allows sts:AssumeRole on it; otherwise AccessDenied (HTTP 403). The credentials
// returned belong to the role's account: every stand-in sharing the AwsWorld sees them as a
// session of that role.
// Pages: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html,
//   …/API_GetCallerIdentity.html, …/CommonErrors.html.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AwsWorld } from './iam.ts'

const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
const NS = 'https://sts.amazonaws.com/doc/2011-06-15/'

export class StsStandIn {
  readonly world: AwsWorld
  endpoint = ''
  #server: Server | null = null

  constructor(world: AwsWorld) {
    this.world = world
  }

  async start(): Promise<this> {
    this.#server = createServer((req, res) => {
      let body = ''
      req.on('data', (d) => (body += d))
      req.on('end', () => {
        const p = new URLSearchParams(body)
        const action = p.get('Action') ?? ''
        const requestId = randomUUID()
        const { principal, region } = this.world.callerOf(req.headers.authorization, 'us-east-1')
        const ok = (inner: string): void => {
          res.writeHead(200, { 'Content-Type': 'text/xml' }).end(
            `<${action}Response xmlns="${NS}"><${action}Result>${inner}</${action}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`)
        }
        const fail = (status: number, code: string, message: string): void => {
          res.writeHead(status, { 'Content-Type': 'text/xml' }).end(
            `<ErrorResponse xmlns="${NS}"><Error><Type>Sender</Type><Code>${code}</Code><Message>${xmlEscape(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`)
        }
        if (action === 'GetCallerIdentity') {
          this.world.record(principal, 'sts', action, region, true)
          return ok(`<Arn>${xmlEscape(principal.arn)}</Arn><UserId>${xmlEscape(principal.arn)}</UserId><Account>${principal.accountId}</Account>`)
        }
        if (action !== 'AssumeRole') return fail(400, 'InvalidAction', `Could not find operation ${action} for version 2011-06-15`)
        const roleArn = p.get('RoleArn') ?? ''
        const sessionName = p.get('RoleSessionName') ?? ''
        if (!/^[\w+=,.@-]{2,64}$/.test(sessionName)) return fail(400, 'ValidationError', 'RoleSessionName must be 2-64 of [\\w+=,.@-]')
        const role = this.world.roles.get(roleArn)
        if (!role || !this.world.mayAssume(principal, role)) {
          this.world.record(principal, 'sts', action, region, false)
          return fail(403, 'AccessDenied', `User: ${principal.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`)
        }
        this.world.record(principal, 'sts', action, region, true)
        const session = this.world.sessionFor(role, sessionName)
        const expiration = new Date(Date.now() + Number(p.get('DurationSeconds') ?? 3600) * 1000).toISOString()
        ok(
          `<AssumedRoleUser><Arn>${xmlEscape(session.principal.arn)}</Arn><AssumedRoleId>AROA${role.name.toUpperCase().slice(0, 12)}:${xmlEscape(sessionName)}</AssumedRoleId></AssumedRoleUser>` +
          `<Credentials><AccessKeyId>${session.accessKeyId}</AccessKeyId><SecretAccessKey>${session.secretAccessKey}</SecretAccessKey>` +
          `<SessionToken>${session.sessionToken}</SessionToken><Expiration>${expiration}</Expiration></Credentials>`,
        )
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }
}
