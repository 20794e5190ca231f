// The daemon's configuration: a JSON file (default /etc/ebs-worker/config.json, or
// EBS_WORKER_CONFIG), validated strictly so that a typo is an error at start, not a surprise later;
// with what the environment says (AWS settings, metrics, systemd), the one settings object the
// daemon runs on, built at its start (cli/daemon.ts).
import { readFile } from 'node:fs/promises'
import { z } from 'zod'
import { SYSTEM_ROOTS } from '../device/ebs-device.ts'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { awsSettings, type AwsSettings, type Environment } from '../aws/config.ts'
import { tuningSchema } from '../core/tuning.ts'
import { LOG_LEVELS, logLevelFromEnv } from '../core/log.ts'
import { repositoryLocation } from '../storage/open.ts'
import type { MetricsSettings } from './metrics.ts'

export const DEFAULT_CONFIG_PATH = '/etc/ebs-worker/config.json'

const wellFormed = (url: string): boolean => {
  try {
    repositoryLocation(url)
    return true
  } catch {
    return false
  }
}

const configSchema = z.strictObject({
  /** SQS queue the tasks arrive on. */
  queueUrl: z.url(),
  /** SQS queue results are sent to. */
  replyQueueUrl: z.url(),
  /** Default repository for tasks that name none. */
  repository: z.string().regex(/^(s3|file):\/\//, 'repository is s3://bucket/prefix or file:///path'),
  /**
   * The repositories a task may name (its `repository`) besides the configured one, as URLs; one
   * whose path ends in "/*" allows it and every repository under it. Default: none (the configured one only).
   */
  allowedRepositories: z.array(z.string().regex(/^(s3|file):\/\//, 'an allowed repository is s3://bucket/prefix or file:///path, optionally ending in /*')
    .refine((entry) => wellFormed(entry.replace(/\/\*(\?|$)/, '$1')), 'not a well-formed repository URL (a bucket name S3 accepts, no . or .. segments, known options)')).min(1).optional(),
  /** Key file of an encrypted repository. */
  keyFile: z.string().optional(),
  /** Tasks run at once. */
  concurrency: z.number().int().min(1).max(64).default(2),
  waitTimeSeconds: z.number().int().min(0).max(20).default(20),
  visibilityTimeoutSeconds: z.number().int().min(5).max(43200).default(300),
  /** SQS's cap on a message's invisibility; a task still running near it carries on under a new message. Lower only in tests. */
  maxVisibilitySeconds: z.number().int().min(3).max(43200).default(43200),
  /** How often a running backup saves a checkpoint the next attempt of its task can go on from. */
  checkpointIntervalSeconds: z.number().int().min(1).max(86400).default(300),
  /** How often a running backup or restore logs its progress. */
  progressLogSeconds: z.number().int().min(1).max(86400).default(60),
  /** On SIGTERM: how long running tasks get before they are stopped and handed back. */
  shutdownGraceSeconds: z.number().int().min(0).max(3600).default(60),
  /** How long to wait for an attached volume's device to appear. */
  deviceTimeoutSeconds: z.number().int().min(1).max(3600).default(120),
  /** How long a task waits for a free device name (all of /dev/sd[f-p] taken) before it is handed back to the queue. */
  deviceNameWaitSeconds: z.number().int().min(0).max(43200).default(900),
  deviceRoots: z.strictObject({ sysBlock: z.string(), devDir: z.string(), byIdDir: z.string() }).default(SYSTEM_ROOTS),
  /** IMDS endpoint (default: the SDK's, AWS_EC2_METADATA_SERVICE_ENDPOINT or 169.254.169.254). */
  imdsEndpoint: z.url().optional(),
  /**
   * The worker's Auto Scaling group (daemon/auto-scaling.ts): on scale-in, with a termination
   * lifecycle hook, the daemon drains (stops receiving, gives running tasks their grace, hands the
   * rest back) and completes the hook; it keeps a health stamp that `ebs-worker health-check`
   * turns into SetInstanceHealth Unhealthy when it goes stale.
   */
  autoScaling: z.strictObject({
    groupName: z.string().regex(/^[\w.:\/-]{1,255}$/),
    /** The EC2_INSTANCE_TERMINATING hook to complete once drained; none: the daemon only drains. */
    lifecycleHookName: z.string().regex(/^[A-Za-z0-9._-]{1,255}$/).optional(),
    /** How often IMDS's autoscaling/target-lifecycle-state is read. */
    lifecyclePollSeconds: z.number().int().min(1).max(300).default(5),
  }).optional(),
  /**
   * The volume sweep (aws/volume-sweep.ts): at start and every intervalMinutes, delete the
   * transient task volumes of workers that are gone (terminated), detached and older than
   * olderThanMinutes. Every worker of the fleet sweeps; `ebs-worker sweep-volumes --dry-run` shows
   * what a sweep would do.
   */
  volumeSweep: z.strictObject({
    enabled: z.boolean().default(true),
    intervalMinutes: z.number().int().min(5).max(10080).default(60),
    olderThanMinutes: z.number().int().min(10).max(10080).default(60),
  }).default({ enabled: true, intervalMinutes: 60, olderThanMinutes: 60 }),
  /** Where the daemon keeps its health stamp (its mtime: the last time it was healthy). */
  healthFile: z.string().regex(/^\//).default('/var/lib/ebs-worker/healthy'),
  /** The log's level (debug, info, warn, error); EBS_WORKER_LOG_LEVEL, when set, wins. */
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** Backup and restore tuning (core/tuning.ts); what is not given keeps its default. */
  tuning: tuningSchema.default({}),
})

export type DaemonConfig = z.infer<typeof configSchema>

export async function loadConfig(path: string): Promise<DaemonConfig> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new EbsWorkerError(ErrorCode.BadInput, `cannot read the configuration ${path}: ${describe(err)}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new EbsWorkerError(ErrorCode.BadInput, `the configuration ${path} is not JSON`)
  }
  const parsed = configSchema.safeParse(json)
  if (!parsed.success) {
    throw new EbsWorkerError(ErrorCode.BadInput, `the configuration ${path} is invalid:\n${z.prettifyError(parsed.error)}`)
  }
  return parsed.data
}

/** The daemon's settings: its configuration file, and what the environment says. */
export interface DaemonSettings extends DaemonConfig {
  aws: AwsSettings
  metrics: MetricsSettings
  /** systemd's notify socket and watchdog: NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID (daemon/systemd.ts). */
  systemd: Environment
}

/** The configuration at `path` with the environment's settings (the caller passes process.env). */
export async function loadDaemonSettings(path: string, env: Environment): Promise<DaemonSettings> {
  const config = await loadConfig(path)
  return {
    ...config,
    logLevel: logLevelFromEnv(env) ?? config.logLevel,
    aws: awsSettings(env),
    metrics: { enabled: env.EBS_WORKER_METRICS !== 'off', fleet: env.EBS_WORKER_FLEET || 'default' },
    systemd: { NOTIFY_SOCKET: env.NOTIFY_SOCKET, WATCHDOG_USEC: env.WATCHDOG_USEC, WATCHDOG_PID: env.WATCHDOG_PID },
  }
}
