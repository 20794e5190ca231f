// A stand-in for EC2 Auto Scaling's two calls a worker makes about itself, in the Auto Scaling
// Query protocol (form-encoded POST, Version 2011-01-01, XML answers), so
// @aws-sdk/client-auto-scaling runs unchanged: CompleteLifecycleAction (a lifecycle hook's wait
// ends; only for an instance whose lifecycle action of that hook is pending, else ValidationError
// "No active Lifecycle Action found") and SetInstanceHealth (of an instance in a group, else
// ValidationError). The caller's identity policy is evaluated on the group's ARN with its tags as
// aws:ResourceTag/… (Service Authorization Reference, "Amazon EC2 Auto Scaling"): AccessDenied
// otherwise. Pages: https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CompleteLifecycleAction.html,
// …/API_SetInstanceHealth.html.
import type { AwsWorld } from './iam.ts'
import { QueryError, QueryServer, type QueryRequest } from './query.ts'

export interface GroupInstance {
  lifecycleState: 'InService' | 'Terminating:Wait' | 'Terminating:Proceed' | 'Terminated'
  health: 'Healthy' | 'Unhealthy'
}

export interface Group {
  name: string
  arn: string
  tags: Record<string, string>
  /** Lifecycle hooks on EC2_INSTANCE_TERMINATING. */
  terminatingHooks: string[]
  instances: Map<string, GroupInstance>
}

export interface AutoScalingCall {
  action: string
  params: Record<string, string>
  ok: boolean
}

export class AutoScalingStandIn extends QueryServer {
  readonly groups = new Map<string, Group>()
  readonly calls: AutoScalingCall[] = []

  constructor(world: AwsWorld) {
    super(world, 'http://autoscaling.amazonaws.com/doc/2011-01-01/')
  }

  addGroup(g: { name: string; accountId: string; region: string; tags?: Record<string, string>; terminatingHooks?: string[]; instances?: string[] }): Group {
    const group: Group = {
      name: g.name,
      arn: `arn:aws:autoscaling:${g.region}:${g.accountId}:autoScalingGroup:6d4bd2a4-0bde-4ee3-9a0b-d7cbb53e1a1c:autoScalingGroupName/${g.name}`,
      tags: g.tags ?? {},
      terminatingHooks: g.terminatingHooks ?? [],
      instances: new Map((g.instances ?? []).map((id) => [id, { lifecycleState: 'InService', health: 'Healthy' }])),
    }
    this.groups.set(g.name, group)
    return group
  }

  /** Scale-in picks `instanceId`: with a terminating hook it waits (Terminating:Wait), else it goes. */
  scaleIn(groupName: string, instanceId: string): void {
    const group = this.groups.get(groupName)!
    group.instances.get(instanceId)!.lifecycleState = group.terminatingHooks.length > 0 ? 'Terminating:Wait' : 'Terminated'
  }

  #groupOf(instanceId: string): Group | undefined {
    return [...this.groups.values()].find((g) => g.instances.has(instanceId))
  }

  protected handle({ action, params: p, principal, region }: QueryRequest): string {
    const params = Object.fromEntries(p.entries())
    const refuse = (e: QueryError): never => {
      this.calls.push({ action, params, ok: false })
      throw e
    }
    const authorize = (group: Group): void => {
      const context = Object.fromEntries(Object.entries(group.tags).map(([k, v]) => [`aws:ResourceTag/${k}`, v]))
      if (!this.world.authorize(principal, 'autoscaling', action, region, group.arn, context)) {
        refuse(new QueryError(403, 'AccessDenied', `User: ${principal.arn} is not authorized to perform: autoscaling:${action} on resource: ${group.arn}`))
      }
    }
    if (action === 'CompleteLifecycleAction') {
      const group = this.groups.get(p.get('AutoScalingGroupName') ?? '')
      const instanceId = p.get('InstanceId') ?? ''
      const result = p.get('LifecycleActionResult')
      if (!group) return refuse(new QueryError(400, 'ValidationError', `Group ${p.get('AutoScalingGroupName')} not found`))
      authorize(group)
      if (result !== 'CONTINUE' && result !== 'ABANDON') return refuse(new QueryError(400, 'ValidationError', 'LifecycleActionResult is CONTINUE or ABANDON'))
      const instance = group.instances.get(instanceId)
      if (!group.terminatingHooks.includes(p.get('LifecycleHookName') ?? '') || instance?.lifecycleState !== 'Terminating:Wait') {
        return refuse(new QueryError(400, 'ValidationError', `No active Lifecycle Action found with instance ID ${instanceId}`))
      }
      instance.lifecycleState = 'Terminating:Proceed'
      this.calls.push({ action, params, ok: true })
      return ''
    }
    if (action === 'SetInstanceHealth') {
      const instanceId = p.get('InstanceId') ?? ''
      const group = this.#groupOf(instanceId)
      if (!group) return refuse(new QueryError(400, 'ValidationError', `Instance Id not found - No managed instance found for instance ID: ${instanceId}`))
      authorize(group)
      const status = p.get('HealthStatus')
      if (status !== 'Healthy' && status !== 'Unhealthy') return refuse(new QueryError(400, 'ValidationError', 'HealthStatus is Healthy or Unhealthy'))
      group.instances.get(instanceId)!.health = status
      this.calls.push({ action, params, ok: true })
      return ''
    }
    return refuse(new QueryError(400, 'InvalidAction', `Could not find operation ${action} for version 2011-01-01`))
  }
}
