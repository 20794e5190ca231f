// The worker as a member of an Auto Scaling group (packaging/cloudformation/fleet.yaml):
// - scale-in: the group's EC2_INSTANCE_TERMINATING lifecycle hook holds the instance in
//   Terminating:Wait; IMDS's autoscaling/target-lifecycle-state then says "Terminated" (EC2 Auto
//   Scaling User Guide, "Retrieve the target lifecycle state through instance metadata"). The
//   daemon watches it, drains (stops receiving, running tasks get their grace, the rest are handed
//   back: checkpointed, another worker goes on) and completes the hook with CONTINUE, so the
//   instance goes as soon as it is done, not at the hook's timeout.
// - health: the daemon's own health (it can receive from its queue, daemon.ts `healthy`) kept as
//   the mtime of a stamp file; `ebs-worker health-check` (a systemd timer) reports the instance
//   Unhealthy to Auto Scaling when the stamp is stale or missing (SetInstanceHealth, respecting the
//   group's health check grace period), and the group replaces it. EC2's status checks alone
//   would keep an instance whose daemon is down, stuck or misconfigured in service for ever.
import { CompleteLifecycleActionCommand, SetInstanceHealthCommand, type AutoScalingClient } from '@aws-sdk/client-auto-scaling'
import { MetadataService } from '@aws-sdk/ec2-metadata-service'
import { mkdir, stat, utimes, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'

/** IMDS's target lifecycle state of this instance (no leading slash: see aws/identity.ts). */
export const TARGET_LIFECYCLE_STATE = 'latest/meta-data/autoscaling/target-lifecycle-state'

/** A reader of the target lifecycle state; null when IMDS has none (not in an Auto Scaling group). */
export function lifecycleStateReader(endpoint?: string): () => Promise<string | null> {
  const service = new MetadataService({
    ...(endpoint ? { endpoint } : {}),
    httpOptions: { timeout: 2000 },
    retries: 1,
    ec2MetadataV1Disabled: true,
  })
  return async () => {
    try {
      return (await service.request(TARGET_LIFECYCLE_STATE, {})).trim()
    } catch (err) {
      if (/\b404\b|not found/i.test(String((err as Error)?.message ?? err))) return null
      throw err
    }
  }
}

export interface LifecycleWatchOptions {
  read: () => Promise<string | null>
  pollMs: number
  /** Called once, when the target state becomes Terminated. */
  onTerminating: () => void
  onError: (err: unknown) => void
}

/** Polls the target lifecycle state until it is Terminated. */
export class LifecycleWatch {
  readonly #o: LifecycleWatchOptions
  #timer: NodeJS.Timeout | null = null
  #stopped = false

  constructor(options: LifecycleWatchOptions) {
    this.#o = options
  }

  start(): void {
    const tick = async (): Promise<void> => {
      this.#timer = null
      try {
        const state = await this.#o.read()
        if (this.#stopped) return
        if (state === 'Terminated') {
          this.#stopped = true
          this.#o.onTerminating()
          return
        }
      } catch (err) {
        this.#o.onError(err)
      }
      if (!this.#stopped) this.#timer = setTimeout(() => void tick(), this.#o.pollMs)
    }
    void tick()
  }

  stop(): void {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = null
  }
}

/** Lets the instance go on (CONTINUE), once the daemon has drained. */
export async function completeLifecycleAction(client: AutoScalingClient, o: { groupName: string; hookName: string; instanceId: string }): Promise<void> {
  await client.send(new CompleteLifecycleActionCommand({
    AutoScalingGroupName: o.groupName, LifecycleHookName: o.hookName, InstanceId: o.instanceId, LifecycleActionResult: 'CONTINUE',
  }))
}

/** Marks the health stamp: now is a time the daemon was healthy. */
export async function touchHealthStamp(path: string, now = new Date()): Promise<void> {
  try {
    await utimes(path, now, now)
  } catch {
    await mkdir(dirname(path), { recursive: true })
    await writeFile(path, 'the mtime of this file is the last time ebs-worker daemon could receive tasks\n')
    await utimes(path, now, now)
  }
}

/** Seconds since the stamp was last marked; null when there is none. */
export async function healthStampAge(path: string, now = Date.now()): Promise<number | null> {
  try {
    return Math.max(0, (now - (await stat(path)).mtimeMs) / 1000)
  } catch {
    return null
  }
}

export interface HealthVerdict {
  healthy: boolean
  /** Seconds since the daemon was last healthy, or null: never (since boot) */
  ageSeconds: number | null
  reported: boolean
  reason: string
}

/**
 * The health check: the stamp no older than maxAgeSeconds is healthy; otherwise the instance is
 * reported Unhealthy (ShouldRespectGracePeriod: a report during the group's grace period after
 * launch is ignored, so a worker still booting is not replaced).
 */
export async function checkHealth(o: {
  client: AutoScalingClient; instanceId: string; healthFile: string; maxAgeSeconds: number; now?: number
}): Promise<HealthVerdict> {
  const age = await healthStampAge(o.healthFile, o.now)
  if (age !== null && age <= o.maxAgeSeconds) return { healthy: true, ageSeconds: Math.round(age), reported: false, reason: 'the daemon is receiving tasks' }
  const reason = age === null ? 'the daemon has not been healthy since it was installed' : `the daemon has not been healthy for ${Math.round(age)} s (more than ${o.maxAgeSeconds} s)`
  await o.client.send(new SetInstanceHealthCommand({ InstanceId: o.instanceId, HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: true }))
  return { healthy: false, ageSeconds: age === null ? null : Math.round(age), reported: true, reason }
}
