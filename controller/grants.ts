// Whether EBS may make the grant it needs on a role's behalf (kms:CreateGrant, whenever the role
// creates or reads a volume under a key), found without making one. A direct CreateGrant DryRun
// cannot tell: the grant EBS makes carries kms:GrantIsForAWSResource = true and kms:ViaService =
// ec2.<region>.amazonaws.com, a direct call neither ("AWS KMS condition keys"), so a policy that
// allows grants only for AWS resources (the fleet's, packaging/iam/worker-policy.json, as AWS
// recommends) refuses every direct one. The same holds for the other actions EBS asks for on the
// role's behalf (kms:Decrypt, kms:GenerateDataKeyWithoutPlaintext), which that policy allows only
// with kms:ViaService: they are found the same way (useByEbs), with the context of EBS's request
// for them (kms:ViaService, no kms:GrantIsForAWSResource). What the KMS Developer Guide says to determine access to
// a key ("Determining access to a KMS key": examine the key policy, then the IAM policies), with
// the context of EBS's request:
//   - the role's IAM policies: IAM SimulatePrincipalPolicy of kms:CreateGrant on the key, with
//     that context as ContextEntries, by a principal of the role's account (the controller's own:
//     IAM simulates only entities of the caller's account);
//   - the key policy: read with kms:GetKeyPolicy by a principal of the key's account (it is not a
//     cross-account operation); its statements naming the role, its account or everyone, simulated
//     the same way with SimulateCustomPolicy (the simulator takes a resource policy only for IAM
//     users: "Simulation of resource-based policies isn't supported for IAM roles");
//   - combined as KMS decides ("Key policies", "Allowing users in other accounts to use a KMS
//     key"): an explicit deny refuses; in the key's account a statement naming the role suffices,
//     one naming the account needs the IAM policies too; from another account both must allow.
// Grants that give the role kms:CreateGrant, and NotPrincipal statements, are not examined.
// Pages: https://docs.aws.amazon.com/kms/latest/developerguide/determining-access.html,
//   …/developerguide/conditions-kms.html#conditions-kms-grant-is-for-aws-resource,
//   https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html,
//   https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies_testing-policies.html.
import { SimulateCustomPolicyCommand, SimulatePrincipalPolicyCommand, type ContextEntry, type EvaluationResult } from '@aws-sdk/client-iam'
import { GetKeyPolicyCommand } from '@aws-sdk/client-kms'
import { accountOfRole, type Session } from './aws.ts'
import type { Outcome } from './ec2.ts'
import { describe } from '../agent/core/errors.ts'
import { awsErrorName } from '../agent/aws/errors.ts'

/** Who checks a role's grants: the controller simulates, and reads the key policies it can with the sessions at hand. */
export interface GrantCheck {
  /** The controller's own session (iam:SimulatePrincipalPolicy, iam:SimulateCustomPolicy). */
  simulator: Session
  /** Sessions that may read key policies (kms:GetKeyPolicy), each for the keys of its account. */
  readers: Session[]
}

type Decision = 'allowed' | 'explicitDeny' | 'implicitDeny'

interface Statement {
  Effect?: string
  Principal?: unknown
  NotPrincipal?: unknown
  [element: string]: unknown
}

const ROOT = /^arn:aws[\w-]*:iam::(\d{12}):root$/
/** A KMS key ARN (not an alias): its account. */
export const KEY_ARN = /^arn:aws[\w-]*:kms:[^:]+:(\d{12}):key\//

/** The statements of a key policy that name the role itself or everyone, and those that name its account (delegating to IAM), without their Principal. */
export function statementsFor(policy: { Statement?: Statement | Statement[] }, roleArn: string, accountId: string): { direct: Statement[]; account: Statement[] } {
  const direct: Statement[] = []
  const account: Statement[] = []
  for (const s of [policy.Statement ?? []].flat()) {
    if (s.NotPrincipal !== undefined) continue
    const p = s.Principal
    const names = p === '*' ? ['*'] : p && typeof p === 'object' && 'AWS' in p ? [(p as { AWS: string | string[] }).AWS].flat() : []
    const { Principal: _, ...statement } = s
    if (names.some((n) => n === '*' || n === roleArn)) direct.push(statement)
    else if (names.some((n) => n === accountId || ROOT.exec(n)?.[1] === accountId)) account.push(statement)
  }
  return { direct, account }
}

/** The context of what EBS asks KMS for (`action`: the grant, or Decrypt…), on the role's behalf, in `region`. */
function ebsContext(action: string, roleArn: string, accountId: string, region: string): ContextEntry[] {
  return [
    ...(action === 'CreateGrant' ? [{ ContextKeyName: 'kms:GrantIsForAWSResource', ContextKeyType: 'boolean' as const, ContextKeyValues: ['true'] }] : []),
    { ContextKeyName: 'kms:ViaService', ContextKeyType: 'string', ContextKeyValues: [`ec2.${region}.amazonaws.com`] },
    { ContextKeyName: 'kms:CallerAccount', ContextKeyType: 'string', ContextKeyValues: [accountId] },
    { ContextKeyName: 'aws:PrincipalArn', ContextKeyType: 'string', ContextKeyValues: [roleArn] },
    { ContextKeyName: 'aws:PrincipalAccount', ContextKeyType: 'string', ContextKeyValues: [accountId] },
  ]
}

const decisionOf = (results: EvaluationResult[] | undefined): Decision => {
  const decisions = (results ?? []).map((r) => r.EvalDecision)
  return decisions.includes('explicitDeny') ? 'explicitDeny' : decisions.length && decisions.every((d) => d === 'allowed') ? 'allowed' : 'implicitDeny'
}

/**
 * May EBS do `action` (kms:CreateGrant, kms:Decrypt…) with `keyArn` for `roleArn` in `region` (see
 * the top): ok, or not with the reason. The grant is the one EBS makes; the other actions EBS asks
 * for with kms:ViaService too, which a worker policy may require (packaging/iam/worker-policy.json).
 */
export async function useByEbs(g: GrantCheck, roleArn: string, region: string, keyArn: string, action: string = 'CreateGrant'): Promise<Outcome> {
  const roleAccount = accountOfRole(roleArn)
  const keyAccount = KEY_ARN.exec(keyArn)?.[1]
  const what = `kms:${action} on ${keyArn} as EBS asks for it (${action === 'CreateGrant' ? 'kms:GrantIsForAWSResource, ' : ''}kms:ViaService ec2.${region}.amazonaws.com)`
  // A refusal says what KMS would answer EBS, as the other rows say what AWS answered.
  const refusedBecause = (why: string): Outcome => ({ ok: false, detail: `AccessDeniedException: KMS would refuse EBS ${what}: ${why}` })
  const unknown = (why: string): Outcome => ({ ok: false, detail: `cannot check ${what}: ${why}` })
  if (!keyAccount) return unknown(`${keyArn} is not a key ARN`)
  if (g.simulator.accountId !== roleAccount) {
    return unknown(`IAM simulates only roles of the caller's account, and ${roleArn} is not of the controller's account ${g.simulator.accountId}`)
  }
  const reader = g.readers.find((s) => s.accountId === keyAccount)
  if (!reader) return unknown(`its key policy can be read only in account ${keyAccount} (kms:GetKeyPolicy is not cross-account), and no role of that account is at hand`)
  const iam = g.simulator.iam(region)
  const context = ebsContext(action, roleArn, roleAccount, region)
  let identity: Decision
  try {
    identity = decisionOf((await iam.send(new SimulatePrincipalPolicyCommand({
      PolicySourceArn: roleArn, ActionNames: [`kms:${action}`], ResourceArns: [keyArn], ContextEntries: context,
    }))).EvaluationResults)
  } catch (err) {
    return unknown(`IAM SimulatePrincipalPolicy of ${roleArn}: ${awsErrorName(err)}: ${describe(err)} (the controller needs iam:SimulatePrincipalPolicy)`)
  }
  let policy: { Statement?: Statement | Statement[] }
  try {
    policy = JSON.parse((await reader.kms(region).send(new GetKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'default' }))).Policy ?? '{}')
  } catch (err) {
    return unknown(`${reader.role} could not read its key policy: ${awsErrorName(err)}: ${describe(err)} (kms:GetKeyPolicy)`)
  }
  const { direct, account } = statementsFor(policy, roleArn, roleAccount)
  const simulate = async (statements: Statement[]): Promise<Decision> => statements.length ? decisionOf((await iam.send(new SimulateCustomPolicyCommand({
    PolicyInputList: [JSON.stringify({ Version: '2012-10-17', Statement: statements })], ActionNames: [`kms:${action}`], ResourceArns: [keyArn], ContextEntries: context,
  }))).EvaluationResults) : 'implicitDeny'
  let byRole: Decision
  let byAccount: Decision
  try {
    byRole = await simulate(direct)
    byAccount = await simulate(account)
  } catch (err) {
    return unknown(`IAM SimulateCustomPolicy of its key policy: ${awsErrorName(err)}: ${describe(err)} (the controller needs iam:SimulateCustomPolicy)`)
  }
  const denied = [identity === 'explicitDeny' && `the IAM policies of ${roleArn}`, (byRole === 'explicitDeny' || byAccount === 'explicitDeny') && `the key policy of ${keyArn}`].filter(Boolean)
  if (denied.length) return refusedBecause(`explicitly denied by ${denied.join(' and ')}`)
  const keyAllows = byRole === 'allowed' || byAccount === 'allowed'
  const ok = keyAccount === roleAccount ? byRole === 'allowed' || (byAccount === 'allowed' && identity === 'allowed') : keyAllows && identity === 'allowed'
  if (ok) return { ok: true }
  const missing = [
    !keyAllows && `the key policy of ${keyArn} allows it neither to ${roleArn} nor to account ${roleAccount}`,
    identity !== 'allowed' && `the IAM policies of ${roleArn} do not allow it (IAM policy simulator: ${identity})`,
  ].filter(Boolean)
  return refusedBecause(missing.join('; '))
}
