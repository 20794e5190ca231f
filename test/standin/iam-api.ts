// A stand-in for the IAM policy simulator API (SimulatePrincipalPolicy, SimulateCustomPolicy) over
// the IAM Query protocol (form-encoded POST, Version 2010-05-08, XML answers), so
// @aws-sdk/client-iam runs unchanged. It answers from the AwsWorld's evaluator (test/standin/
// iam.ts), the one the other stand-ins enforce, following the IAM API Reference
// ("SimulatePrincipalPolicy", "SimulateCustomPolicy", "ContextEntry", "EvaluationResult") and the
// IAM User Guide ("Testing IAM policies with the IAM policy simulator"):
//   - SimulatePrincipalPolicy evaluates the identity policies of PolicySourceArn (a user or role of
//     the caller's account; another is NoSuchEntity: the answer for another account's entity is not
//     documented) for each action on each resource, with the ContextEntries as the request context;
//     the caller needs iam:SimulatePrincipalPolicy on that entity ("IAM: Access the policy simulator
//     API"); SimulateCustomPolicy evaluates the policies of PolicyInputList instead (no resource);
//   - EvalDecision is "allowed", "explicitDeny" or "implicitDeny";
//   - a ResourcePolicy "is evaluated with each of the resources included in the simulation for IAM
//     users only", and CallerArn "is required if you include a ResourcePolicy and the
//     PolicySourceArn is not the ARN for an IAM user" (an IAM user's ARN only): with a role and no
//     CallerArn, InvalidInput ("Simulation of resource-based policies isn't supported for IAM
//     roles"). This stand-in simulates no resource policy at all.
// Pages: https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html,
//   …/API_SimulateCustomPolicy.html, …/API_ContextEntry.html, …/API_EvaluationResult.html,
//   https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies_testing-policies.html.
import { evaluate, type AwsWorld, type ConditionContext, type PolicyDocument } from './iam.ts'
import { QueryError, QueryServer, xmlEscape, type QueryRequest } from './query.ts'

const DECISION = { allow: 'allowed', deny: 'explicitDeny', implicit: 'implicitDeny' } as const

/** Name.member.1, Name.member.2, … of a Query request. */
function members(p: URLSearchParams, name: string): string[] {
  const out: string[] = []
  for (let i = 1; p.has(`${name}.member.${i}`); i++) out.push(p.get(`${name}.member.${i}`)!)
  return out
}

/** ContextEntries.member.N as a request context: boolean values as such, *List types as lists. */
function contextOf(p: URLSearchParams): ConditionContext {
  const context: ConditionContext = {}
  for (let i = 1; p.has(`ContextEntries.member.${i}.ContextKeyName`); i++) {
    const name = p.get(`ContextEntries.member.${i}.ContextKeyName`)!
    const type = p.get(`ContextEntries.member.${i}.ContextKeyType`) ?? 'string'
    const values = members(p, `ContextEntries.member.${i}.ContextKeyValues`)
    context[name] = type.endsWith('List') ? values : type === 'boolean' ? values[0]?.toLowerCase() === 'true' : (values[0] ?? '')
  }
  return context
}

export class IamStandIn extends QueryServer {
  constructor(world: AwsWorld) {
    super(world, 'https://iam.amazonaws.com/doc/2010-05-08/')
  }

  /** The identity policy of a user or role of `accountId` (undefined: it may do everything), or NoSuchEntity. */
  #policyOf(arn: string, accountId: string): PolicyDocument | undefined {
    const role = this.world.roles.get(arn)
    if (role && role.accountId === accountId) return role.policy
    const user = [...this.world.principals.values()].find((x) => x.arn === arn && !x.roleArn)
    if (user && user.accountId === accountId) return user.policy
    const m = /:(role|user)\/(?:.*\/)?([^/]+)$/.exec(arn)
    throw new QueryError(404, 'NoSuchEntity', `The ${m?.[1] ?? 'entity'} with name ${m?.[2] ?? arn} cannot be found.`)
  }

  protected handle({ action, params: p, principal, region }: QueryRequest): string {
    if (action !== 'SimulatePrincipalPolicy' && action !== 'SimulateCustomPolicy') throw new QueryError(400, 'InvalidAction', `Could not find operation ${action} for version 2010-05-08`)
    const source = action === 'SimulatePrincipalPolicy' ? p.get('PolicySourceArn') ?? '' : '*'
    if (!this.world.authorize(principal, 'iam', action, region, source)) {
      throw new QueryError(403, 'AccessDenied', `User: ${principal.arn} is not authorized to perform: iam:${action} on resource: ${source}`)
    }
    const extra = members(p, 'PolicyInputList').map((text) => JSON.parse(text) as PolicyDocument)
    let policies: Array<PolicyDocument | undefined>
    if (action === 'SimulatePrincipalPolicy') {
      if (p.has('ResourcePolicy') && !p.has('CallerArn') && source.includes(':role/')) {
        throw new QueryError(400, 'InvalidInput', 'CallerArn is required when a ResourcePolicy is given and PolicySourceArn is not an IAM user: simulation of resource-based policies is not supported for IAM roles')
      }
      policies = [this.#policyOf(source, principal.accountId), ...extra]
    } else {
      if (!extra.length) throw new QueryError(400, 'ValidationError', 'PolicyInputList is required')
      policies = extra
    }
    const context = contextOf(p)
    const resources = members(p, 'ResourceArns')
    const results = members(p, 'ActionNames').flatMap((a) => (resources.length ? resources : ['*']).map((r) => {
      const decisions = policies.map((doc) => (doc ? evaluate(doc, a, r, context) : 'allow'))
      const decision = decisions.includes('deny') ? 'deny' : decisions.includes('allow') ? 'allow' : 'implicit'
      return `<member><EvalActionName>${xmlEscape(a)}</EvalActionName><EvalResourceName>${xmlEscape(r)}</EvalResourceName>` +
        `<EvalDecision>${DECISION[decision]}</EvalDecision><MatchedStatements/><MissingContextValues/></member>`
    }))
    return `<IsTruncated>false</IsTruncated><EvaluationResults>${results.join('')}</EvaluationResults>`
  }
}
