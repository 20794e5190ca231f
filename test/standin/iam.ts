// Who is calling, and may they: the accounts, principals and IAM roles the AWS stand-ins share,
// with the policy evaluation they need. No IAM emulator can be installed here, so this follows
// the IAM User Guide ("Policy evaluation logic", "Cross-account policy evaluation logic", "IAM
// JSON policy elements": Effect, Action, Resource, Principal, Condition) and the KMS Developer
// Guide ("Key policies", "Allowing users in other accounts to use a KMS key", "Grants in AWS KMS",
// "AWS managed keys"):
//   - a request is signed with an access key id (SigV4 Authorization header: Credential=
//     AKID/date/region/service/aws4_request); the key id names a principal of one account and the
//     credential scope names the Region. Signatures are not verified (a documented departure);
//   - an identity policy allows an action unless a Deny matches; a principal without one (the
//     plain test credentials) may do everything, as an account's administrator would;
//   - a resource policy (a KMS key policy) that names a role directly, or "*", is enough within
//     the key's account; one that names the account root delegates to the principal's identity
//     policy; across accounts both the key policy and the identity policy must allow;
//   - a KMS grant lets its grantee principal do the grant's operations, whatever the policies;
//   - conditions ("IAM JSON policy elements: Condition", "… Condition operators", "Single-valued
//     vs. multivalued context keys"): context key names compare case-insensitively; operators
//     within a block, keys within an operator and ANDed, the values of one key ORed (NORed for a
//     negated operator). String(Not)Equals(IgnoreCase), String(Not)Like (* and ?), Arn(Not)Equals,
//     Arn(Not)Like (each of the six ARN components on its own), Bool, and Null ("true": the key is
//     absent, "false": present); a key absent from the request makes a condition false, but true
//     for a negated operator; the IfExists suffix makes an absent key true; ForAnyValue: and
//     ForAllValues: compare each value of a multivalued key (ForAllValues: true when absent). Any
//     other operator is a test error, not a silent "does not match".
// Every call and every use of a KMS key is recorded, so tests can compare what the code did with
// what the seeds and the IAM documents say it needs.

// Pages: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
//   …/reference_policies_condition-keys.html#condition-keys-principalarn, …/reference_policies_iam-condition-keys.html#ck_externalid,
//   …/reference_policies_evaluation-logic-cross-account.html, …/reference_policies_elements.html,
//   https://docs.aws.amazon.com/kms/latest/developerguide/key-policies.html.

export interface PolicyStatement {
  Sid?: string
  Effect: 'Allow' | 'Deny'
  Action: string | string[]
  Resource?: string | string[]
  Principal?: '*' | { AWS: string | string[] }
  Condition?: Record<string, Record<string, string | string[] | boolean | boolean[]>>
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
  /** Who may assume it: principal ARNs, role ARNs, or account ids (any principal of that account); with `trustPolicy`, unused. */
  trust: string[]
  /** Its trust policy, evaluated with its conditions (mayAssume); instead of `trust`. */
  trustPolicy?: PolicyDocument
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

/** The request context: each key's value, or values for a multivalued key (aws:TagKeys). */
export type ConditionContext = Record<string, string | boolean | string[]>

/** One thing IAM decides for a call: an action (service:Action) on a resource ARN ("*" for none), with its request context. */
export interface AuthorizationRequest {
  action: string
  resource: string
  context: ConditionContext
}

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

/** ArnLike: each of the six colon-separated components matched on its own (the resource part keeps its colons). */
function arnLike(pattern: string, value: string): boolean {
  const split = (arn: string): string[] => {
    const parts = arn.split(':')
    return parts.length < 6 ? [arn] : [...parts.slice(0, 5), parts.slice(5).join(':')]
  }
  const p = split(pattern)
  const v = split(value)
  return p.length === v.length && p.every((x, i) => wildcard(x, v[i]!))
}

/** One value of the request against one value of the policy, by the operator's base name. */
const MATCHERS: Record<string, (policy: string, request: string) => boolean> = {
  StringEquals: (p, r) => p === r,
  StringEqualsIgnoreCase: (p, r) => p.toLowerCase() === r.toLowerCase(),
  StringLike: (p, r) => wildcard(p, r),
  ArnEquals: (p, r) => p === r,
  ArnLike: arnLike,
  Bool: (p, r) => p.toLowerCase() === r.toLowerCase(),
}
const NEGATED: Record<string, string> = {
  StringNotEquals: 'StringEquals', StringNotEqualsIgnoreCase: 'StringEqualsIgnoreCase', StringNotLike: 'StringLike', ArnNotEquals: 'ArnEquals', ArnNotLike: 'ArnLike',
}

/** The request's values of a context key (names compare case-insensitively), or undefined when absent. */
function contextValues(context: ConditionContext, key: string): string[] | undefined {
  const name = Object.keys(context).find((k) => k.toLowerCase() === key.toLowerCase())
  const value = name === undefined ? undefined : context[name]
  return value === undefined ? undefined : asList(value as string | boolean | string[]).map(String)
}

/** One operator on one key: does the condition hold? */
function conditionHolds(operator: string, key: string, expected: unknown, context: ConditionContext): boolean {
  const values = asList(expected as string | string[] | boolean).map(String)
  const actual = contextValues(context, key)
  const set = /^(ForAnyValue|ForAllValues):(.+)$/.exec(operator)
  let base = set ? set[2]! : operator
  const ifExists = base.endsWith('IfExists')
  if (ifExists) base = base.slice(0, -'IfExists'.length)
  if (base === 'Null') {
    if (set || ifExists) throw new Error(`condition operator ${operator} is not one IAM defines`)
    return values.some((v) => (v.toLowerCase() === 'true' ? actual === undefined : actual !== undefined))
  }
  const negated = base in NEGATED
  const match = MATCHERS[negated ? NEGATED[base]! : base]
  if (!match) throw new Error(`condition operator ${operator} is not implemented by the IAM stand-in (test/standin/iam.ts)`)
  // One request value against the policy's values: ORed, or NORed for a negated operator.
  const one = (r: string): boolean => (negated ? !values.some((v) => match(v, r)) : values.some((v) => match(v, r)))
  if (set?.[1] === 'ForAllValues') return (actual ?? []).every(one)
  if (set?.[1] === 'ForAnyValue') return actual !== undefined && actual.some(one)
  if (actual === undefined) return ifExists || negated
  return actual.length === 1 ? one(actual[0]!) : actual.some(one)
}

function conditionsHold(condition: PolicyStatement['Condition'], context: ConditionContext): boolean {
  for (const [operator, entries] of Object.entries(condition ?? {})) {
    for (const [key, expected] of Object.entries(entries)) if (!conditionHolds(operator, key, expected, context)) return false
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

  /**
   * May `caller` assume `role` (with `externalId`, if the request gave one): its trust policy
   * allows the caller (naming it, its role, or its account) under its conditions, and no statement
   * of it denies; and the caller's identity policy allows sts:AssumeRole on the role. The trust
   * policy's context ("AWS global condition context keys", "Available keys for AWS STS"):
   * aws:PrincipalArn is the caller's ARN, the role's for a role session ("For IAM roles, the
   * request context returns the ARN of the role, not the ARN of the user that assumed the role");
   * aws:PrincipalAccount its account; sts:ExternalId the ExternalId of the request, absent when it
   * gave none.
   */
  mayAssume(caller: Principal, role: Role, externalId?: string): boolean {
    const names = (t: string): boolean => t === '*' || t === caller.arn || t === caller.roleArn || t === caller.accountId || t === `arn:aws:iam::${caller.accountId}:root`
    let trusted: boolean
    if (role.trustPolicy) {
      const context: ConditionContext = {
        'aws:PrincipalArn': caller.roleArn ?? caller.arn, 'aws:PrincipalAccount': caller.accountId, ...(externalId !== undefined ? { 'sts:ExternalId': externalId } : {}),
      }
      const applies = role.trustPolicy.Statement.filter((st) => (st.Principal === '*' ? true : asList(st.Principal?.AWS).some(names)))
      const decision = evaluate({ Statement: applies.map(({ Principal: _, ...st }) => st) }, 'sts:AssumeRole', role.arn, context)
      trusted = decision === 'allow'
    } else {
      trusted = role.trust.some(names)
    }
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

  /**
   * The identity-policy decision for a call that IAM authorizes as several requests, one per
   * resource it touches (and ec2:CreateTags for tags on creation), recorded once as the call:
   * allowed only when every one is. Returns the first refused one.
   */
  authorizeAll(principal: Principal, service: string, action: string, region: string, requests: AuthorizationRequest[]): AuthorizationRequest | null {
    const refused = principal.policy ? requests.find((r) => evaluate(principal.policy!, r.action, r.resource, r.context) !== 'allow') ?? null : null
    this.record(principal, service, action, region, refused === null)
    return refused
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
