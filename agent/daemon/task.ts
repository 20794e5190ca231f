// The task protocol (docs/TASKS.md): what the controller sends on the task queue and what the
// worker answers on the reply queue. Pure: parsing and validation, no I/O. A message that is not
// a valid task never throws: it becomes a rejection with a stable code and a readable reason.
import { z } from 'zod'
import { BACKUP_ID_PATTERN } from '../core/ids.ts'
import { BUCKET_RULES, isEmptyPolicy, parseDuration, UNLIMITED, type BucketRule, type Policy } from '../core/retention.ts'

export const TASK_PROTOCOL_VERSION = 1

const taskId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/, 'a task id is 1–128 letters, digits, . _ : / -')
const snapshotId = z.string().regex(/^snap-[0-9a-f]{8,17}$/, 'not a snapshot id (snap-…)')
const volumeId = z.string().regex(/^vol-[0-9a-f]{8,17}$/, 'not a volume id (vol-…)')
const backupId = z.string().regex(BACKUP_ID_PATTERN, 'not a backup id (20261123T043200Z-1a2b3c4d)')
const accountId = z.string().regex(/^\d{12}$/, 'not an AWS account id (12 digits)')
/** A KMS key id, ARN or alias; absent means the Region's default EBS key. */
const kmsKeyId = z.string().min(1).max(2048)
const repository = z.string().regex(/^(s3|file):\/\//, 'a repository URL is s3://bucket/prefix or file:///path')
const tags = z.record(z.string().max(128), z.string().max(256))

const volumeSpec = z.strictObject({
  volumeType: z.enum(['gp2', 'gp3', 'io1', 'io2', 'st1', 'sc1', 'standard']).default('gp3'),
  iops: z.number().int().positive().optional(),
  throughput: z.number().int().positive().optional(),
  kmsKeyId: kmsKeyId.optional(),
})

const base = { version: z.literal(TASK_PROTOCOL_VERSION), taskId }

const attachFields = {
  snapshotId,
  /** The snapshot was shared from another account: the volume is encrypted with this Region's default key unless kmsKeyId says otherwise. */
  sharedFromAccount: accountId.optional(),
  volume: volumeSpec.optional(),
}

const readFields = {
  repository: repository.optional(),
  /** Incremental: the previous backup of the same volume. */
  parentBackupId: backupId.optional(),
  /** With parentBackupId: the snapshots to ask EBS ListChangedBlocks about. */
  parentSnapshotId: snapshotId.optional(),
  tags: tags.optional(),
}

export const attachTask = z.strictObject({ ...base, type: z.literal('attach'), ...attachFields })
export const readTask = z.strictObject({
  ...base,
  type: z.literal('read'),
  volumeId,
  snapshotId: snapshotId.optional(),
  ...readFields,
})
export const restoreTask = z.strictObject({
  ...base,
  type: z.literal('restore'),
  backupId,
  repository: repository.optional(),
  /** Size of the new volume; at least the backup's size (default: the backup's size). */
  sizeGiB: z.number().int().positive().max(65536).optional(),
  volume: volumeSpec.optional(),
  /** Snapshot the restored volume (and share the snapshot): the cross-account restore path. */
  snapshot: z.strictObject({ shareWithAccount: accountId.optional() }).optional(),
})
export const detachTask = z.strictObject({
  ...base,
  type: z.literal('detach'),
  volumeId,
  /** Delete the volume after detaching it (only volumes this agent created are ever deleted). */
  delete: z.boolean().default(true),
})
export const backupTask = z.strictObject({ ...base, type: z.literal('backup'), ...attachFields, ...readFields })

/** A keep-* count: a whole number ≥ 0 (0: the rule is not used), or "unlimited" (also -1, as restic spells it). */
const keepCount = z.union([z.number().int().min(-1).max(1_000_000), z.literal('unlimited')])
/** A retention policy, as `ebs-worker forget`'s options: applied per group before the prune. */
const forgetFields = z.strictObject({
  keepLast: keepCount.optional(),
  keepHourly: keepCount.optional(),
  keepDaily: keepCount.optional(),
  keepWeekly: keepCount.optional(),
  keepMonthly: keepCount.optional(),
  keepYearly: keepCount.optional(),
  /** restic's durations, as `forget --keep-within`: 1y2m3d4h, 30d, 36h (each unit once). */
  keepWithin: z.string().refine((d) => parseDuration(d) !== null, 'keepWithin is a duration of years, months, days and hours, each once, like 1y2m3d4h, 30d or 36h').optional(),
  keepTag: z.array(z.string().regex(/^[^=]+=/, 'keepTag entries are key=value')).max(100).optional(),
  groupBy: z.enum(['volume', 'device', 'tags', 'none']).default('volume'),
})
export type ForgetPolicy = z.infer<typeof forgetFields>
const forgetPolicy = forgetFields.refine((p) => !isEmptyPolicy(taskPolicy(p)),
  'forget needs a policy that keeps something (keepLast … keepYearly, keepWithin, keepTag): an empty one would forget every backup')

const KEEP: Record<BucketRule, 'keepLast' | 'keepHourly' | 'keepDaily' | 'keepWeekly' | 'keepMonthly' | 'keepYearly'> = {
  last: 'keepLast', hourly: 'keepHourly', daily: 'keepDaily', weekly: 'keepWeekly', monthly: 'keepMonthly', yearly: 'keepYearly',
}

/** A task's `forget` as the policy core/retention.ts applies. */
export function taskPolicy(f: Omit<ForgetPolicy, 'groupBy'>): Policy {
  const counts: Policy['counts'] = {}
  for (const rule of BUCKET_RULES) {
    const n = f[KEEP[rule]]
    if (n !== undefined) counts[rule] = n === 'unlimited' ? UNLIMITED : n
  }
  const within = f.keepWithin === undefined ? null : parseDuration(f.keepWithin)
  return {
    counts,
    ...(within ? { within } : {}),
    ...(f.keepTag?.length ? { tags: f.keepTag.map((t) => [t.slice(0, t.indexOf('=')), t.slice(t.indexOf('=') + 1)] as const) } : {}),
  }
}

export const pruneTask = z.strictObject({
  ...base,
  type: z.literal('prune'),
  repository: repository.optional(),
  /** Forget by this policy first (as `ebs-worker forget --keep-…`), under the prune lock. */
  forget: forgetPolicy.optional(),
  /** Repack packs whose unused share exceeds this percentage (`prune --max-unused`). */
  maxUnusedPercent: z.number().min(0).max(100).default(5),
  /** Repack at most this many bytes of packs in this run (`prune --max-repack-size`). */
  maxRepackBytes: z.number().int().positive().optional(),
  /** Longest wait for running backups before leaving the deletion to the next prune (`prune --max-wait`). */
  maxWaitSeconds: z.number().int().min(0).max(43200).default(3600),
  /** Say what would be forgotten, deleted and repacked; change nothing. */
  dryRun: z.boolean().default(false),
})

/** `check --read-data-subset`: N/M, P%, or daily/M (the day's part of M: every pack once in M days). */
const readDataSubset = z.string().refine((s) => {
  const part = /^(\d{1,10})\/(\d{1,10})$/.exec(s)
  if (part) return Number(part[1]) >= 1 && Number(part[1]) <= Number(part[2])
  const daily = /^daily\/(\d{1,10})$/.exec(s)
  if (daily) return Number(daily[1]) >= 1
  const percent = /^(\d{1,3}(?:\.\d+)?)%$/.exec(s)
  return percent !== null && Number(percent[1]) > 0 && Number(percent[1]) <= 100
}, 'readDataSubset is N/M (1 ≤ N ≤ M), daily/M, or a percentage like 10%')

export const checkTask = z.strictObject({
  ...base,
  type: z.literal('check'),
  repository: repository.optional(),
  /** Also read and re-hash every blob of every pack (`check --read-data`). */
  readData: z.boolean().default(false),
  readDataSubset: readDataSubset.optional(),
}).refine((t) => !(t.readData && t.readDataSubset), 'give readData or readDataSubset, not both')

export const task = z.discriminatedUnion('type', [attachTask, readTask, restoreTask, detachTask, backupTask, pruneTask, checkTask])
export type Task = z.infer<typeof task>
export type TaskType = Task['type']

/** Stable codes for a message that is not a task the worker can run. */
export type RejectionCode = 'INVALID_JSON' | 'UNSUPPORTED_VERSION' | 'UNKNOWN_TYPE' | 'INVALID_TASK'

export type ParsedTask = { ok: true; task: Task } | { ok: false; code: RejectionCode; reason: string; taskId?: string }

/** Parses a message body. Never throws: a bad message is a rejection with its reason. */
export function parseTask(body: string): ParsedTask {
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    return { ok: false, code: 'INVALID_JSON', reason: 'the message body is not JSON' }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    return { ok: false, code: 'INVALID_TASK', reason: 'a task is a JSON object' }
  }
  const head = json as Record<string, unknown>
  const id = typeof head.taskId === 'string' ? { taskId: head.taskId } : {}
  if (head.version !== TASK_PROTOCOL_VERSION) {
    return {
      ok: false,
      code: 'UNSUPPORTED_VERSION',
      reason: `task protocol version ${JSON.stringify(head.version)} is not supported (this worker speaks ${TASK_PROTOCOL_VERSION})`,
      ...id,
    }
  }
  const types = task.options.map((o) => o.shape.type.value)
  if (!types.includes(head.type as TaskType)) {
    return { ok: false, code: 'UNKNOWN_TYPE', reason: `unknown task type ${JSON.stringify(head.type)} (known: ${types.join(', ')})`, ...id }
  }
  const parsed = task.safeParse(json)
  if (!parsed.success) return { ok: false, code: 'INVALID_TASK', reason: z.prettifyError(parsed.error), ...id }
  return { ok: true, task: parsed.data }
}

export const taskResult = z.strictObject({
  version: z.literal(TASK_PROTOCOL_VERSION),
  taskId: z.string(),
  type: z.string(),
  status: z.enum(['succeeded', 'failed', 'rejected']),
  /** Which worker ran it (instance id). */
  worker: z.string(),
  startedAt: z.iso.datetime(),
  finishedAt: z.iso.datetime(),
  /** Type-specific figures on success (volumeId, backupId, bytesRead…). */
  result: z.record(z.string(), z.unknown()).optional(),
  /** On failure or rejection: a stable code, a human message, and whether a retry may help. */
  error: z.strictObject({
    code: z.string(),
    message: z.string(),
    retryable: z.boolean(),
    /** Where it happened: taskId, volumeId, device, offset, pack, object, the AWS call… (agent/core/errors.ts ErrorContext). */
    context: z.record(z.string(), z.unknown()).optional(),
  }).optional(),
})
export type TaskResult = z.infer<typeof taskResult>
