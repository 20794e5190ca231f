// Who is calling, and may they: the accounts, principals and IAM roles the AWS stand-ins share,
// with the policy evaluation they need. No IAM emulator can be installed here, so this follows
// the IAM User Guide ("Policy evaluation logic", "Cross-account policy evaluation logic", "IAM
// JSON policy elements": Effect, Action, Resource, Principal, Condition with StringEquals /
// StringLike / Bool) and the KMS Developer Guide ("Key policies", "Allowing users in other
// accounts to use a KMS key", "Grants in AWS KMS", "AWS managed keys"):
//   - a request is signed with an access key id (SigV4 Authorization header: Credential=
//     AKID/date/region/service/aws4_request); the key id names a principal of one account and the
//     credential scope names the Region. Signatures are not verified (a documented departure);
//   - an identity policy allows an action unless a Deny matches; a principal without one (the
//     plain test credentials) may do everything, as an account's administrator would;
//   - a resource policy (a KMS key policy) that names a role directly, or "*", is enough within
//     the key's account; one that names the account root delegates to the principal's identity
//     policy; across accounts both the key policy and the identity policy must allow;
//   - a KMS grant lets its grantee principal do the grant's operations, whatever the policies.
// Every call and every use of a KMS key is recorded, so tests can compare what the code did with
// what the seeds and the IAM documents say it needs.

// Pages: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
//   …/reference_policies_evaluation-logic-cross-account.html, …/reference_policies_elements.html,
//   https://docs.aws.amazon.com/kms/latest/developerguide/key-policies.html.

export interface PolicyStatement {
  Sid?: string
  Effect: 'Allow' | 'Deny'
  Action: string | string[]
  Resource?: string | string[]
  Principal?: '*' | { AWS: string | string[] }
  Condition?: Record<string, Record<string, string | string[] | boolean>>
}

export interface PolicyDocument {
  Version?: string
  Statement: PolicyStatement[]
}

export interface Principal {
  /** The caller's ARN: a user, the account root, or an assumed-role session. */
  arn: string
  accountId: string
  /** For an assumed-role session: the role's ARN (what policies name). */
  roleArn?: string
  /** Identity policy; undefined = may do everything (an administrator). */
  policy?: PolicyDocument
}

export interface Role {
  arn: string
  accountId: string
  name: string
  /** Who may assume it: principal ARNs, role ARNs, or account ids (any principal of that account). */
  trust: string[]
  policy?: PolicyDocument
}

export interface CallRecord {
  service: string
  action: string
  principal: string
  /** The role behind an assumed-role session, else the principal. */
  role: string
  accountId: string
  region: string
  allowed: boolean
}

export interface KeyUse {
  /** Key ARN. */
  key: string
  /** kms:Decrypt, kms:CreateGrant, … */
  action: string
  /** The role (or principal) on whose behalf the key was used. */
  role: string
  accountId: string
  /** What used it: "ec2:CreateVolume", "kms:DescribeKey", "kms:CreateGrant (DryRun)", … */
  via: string
  allowed: boolean
}

export type ConditionContext = Record<string, string | boolean>

/** The access key id and Region of a SigV4 Authorization header (Credential=AKID/date/region/service/aws4_request), if it has one. */
export function credentialScope(authorization: string | undefined): { accessKeyId: string; region: string } | null {
  const m = /Credential=([^/]+)\/\d{8}\/([^/]+)\//.exec(authorization ?? '')
  return m ? { accessKeyId: m[1]!, region: m[2]! } : null
}

const asList = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v])

/** IAM wildcard match: * any run of characters, ? one; actions compare case-insensitively. */
export function wildcard(pattern: string, value: string, caseInsensitive = false): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, caseInsensitive ? 'i' : '')
  return re.test(value)
}

function conditionsHold(condition: PolicyStatement['Condition'], context: ConditionContext): boolean {
  for (const [operator, entries] of Object.entries(condition ?? {})) {
    for (const [key, expected] of Object.entries(entries)) {
      const actual = context[key]
      if (actual === undefined) return false
      const values = asList(expected as string | string[] | boolean).map(String)
      const ok =
        operator === 'StringEquals' || operator === 'Bool' ? values.includes(String(actual))
        : operator === 'StringLike' ? values.some((v) => wildcard(v, String(actual)))
        : false // an operator this stand-in does not know never holds
      if (!ok) return false
    }
  }
  return true
}

function statementMatches(s: PolicyStatement, action: string, resource: string, context: ConditionContext): boolean {
  return (
    asList(s.Action).some((a) => wildcard(a, action, true)) &&
    (s.Resource === undefined || asList(s.Resource).some((r) => wildcard(r, resource))) &&
    conditionsHold(s.Condition, context)
  )
}

/** Identity-policy decision: 'allow', 'deny' (explicit), or 'implicit' (nothing allows it). */
export function evaluate(policy: PolicyDocument, action: string, resource: string, context: ConditionContext = {}): 'allow' | 'deny' | 'implicit' {
  let allowed = false
  for (const s of policy.Statement) {
    if (!statementMatches(s, action, resource, context)) continue
    if (s.Effect === 'Deny') return 'deny'
    allowed = true
  }
  return allowed ? 'allow' : 'implicit'
}

export class AwsWorld {
  readonly principals = new Map<string, Principal>()
  readonly roles = new Map<string, Role>()
  readonly calls: CallRecord[] = []
  readonly keyUses: KeyUse[] = []
  /** Account of credentials nobody registered (plain test credentials). */
  readonly defaultAccountId: string
  #sessions = 0

  constructor(defaultAccountId = '111122223333') {
    this.defaultAccountId = defaultAccountId
  }

  /** Long-term credentials of a principal of `accountId` (a user or, for a worker, an instance profile role). */
  addCredentials(accessKeyId: string, principal: Principal): void {
    this.principals.set(accessKeyId, principal)
  }

  addRole(role: Omit<Role, 'arn'> & { arn?: string }): Role {
    const full: Role = { arn: role.arn ?? `arn:aws:iam::${role.accountId}:role/${role.name}`, ...role }
    this.roles.set(full.arn, full)
    return full
  }

  /** Credentials standing for a session of `role`, as an instance profile or AssumeRole gives them. */
  sessionFor(role: Role, sessionName: string): { accessKeyId: string; secretAccessKey: string; sessionToken: string; principal: Principal } {
    const accessKeyId = `ASIA${(++this.#sessions).toString().padStart(6, '0')}${role.name.toUpperCase().replace(/[^A-Z0-9]/g, '').slice(0, 10)}`
    const principal: Principal = {
      arn: `arn:aws:sts::${role.accountId}:assumed-role/${role.name}/${sessionName}`,
      accountId: role.accountId,
      roleArn: role.arn,
      ...(role.policy ? { policy: role.policy } : {}),
    }
    this.principals.set(accessKeyId, principal)
    return { accessKeyId, secretAccessKey: `secret-${accessKeyId}`, sessionToken: `token-${accessKeyId}`, principal }
  }

  /** May `caller` assume `role`: its trust policy names the caller, its role, or its account. */
  mayAssume(caller: Principal, role: Role): boolean {
    const trusted = role.trust.some((t) => t === caller.arn || t === caller.roleArn || t === caller.accountId || t === `arn:aws:iam::${caller.accountId}:root`)
    const allowed = !caller.policy || evaluate(caller.policy, 'sts:AssumeRole', role.arn) === 'allow'
    return trusted && allowed
  }

  /** The principal and Region of a signed request (SigV4 Authorization header). */
  callerOf(authorization: string | undefined, fallbackRegion: string): { principal: Principal; region: string; accessKeyId: string } {
    const scope = credentialScope(authorization)
    const accessKeyId = scope?.accessKeyId ?? 'anonymous'
    const principal = this.principals.get(accessKeyId) ?? { arn: `arn:aws:iam::${this.defaultAccountId}:root`, accountId: this.defaultAccountId }
    return { principal, region: scope?.region ?? fallbackRegion, accessKeyId }
  }

  record(principal: Principal, service: string, action: string, region: string, allowed: boolean): void {
    this.calls.push({ service, action, principal: principal.arn, role: principal.roleArn ?? principal.arn, accountId: principal.accountId, region, allowed })
  }

  /** The identity-policy decision for a call, recorded. */
  authorize(principal: Principal, service: string, action: string, region: string, resource = '*', context: ConditionContext = {}): boolean {
    const allowed = !principal.policy || evaluate(principal.policy, `${service}:${action}`, resource, context) === 'allow'
    this.record(principal, service, action, region, allowed)
    return allowed
  }

  /** The distinct `service:Action` a role called (allowed or not). */
  actionsOf(role: string): string[] {
    return [...new Set(this.calls.filter((c) => c.role === role).map((c) => `${c.service}:${c.action}`))].sort()
  }

  /** The distinct keys a role used (successfully) through EBS or KMS. */
  keysUsedBy(role: string): string[] {
    return [...new Set(this.keyUses.filter((u) => u.role === role && u.allowed).map((u) => u.key))].sort()
  }
}
