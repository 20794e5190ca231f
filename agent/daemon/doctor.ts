// `ebs-worker doctor`: is this worker able to work? One line per check, each ok, warn or problem,
// and for a problem how to fix it. The checks use the daemon's own configuration, clients and
// code paths (loadConfig, whoAmI, aws/clients.ts, app/repository.ts, the device scan), so what
// passes here is what the daemon will find.
import { readdir, readFile, statfs, access, constants } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { GetEbsDefaultKmsKeyIdCommand } from '@aws-sdk/client-ec2'
import { DescribeKeyCommand } from '@aws-sdk/client-kms'
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs'
import { AwsClients } from '../aws/clients.ts'
import { awsSettings, type Environment } from '../aws/config.ts'
import { loadConfig, type DaemonConfig } from './config.ts'
import { EBS_MODEL } from '../device/ebs-device.ts'
import { describe, isEbsWorkerError, ErrorCode } from '../core/errors.ts'
import { formatBytes } from '../core/units.ts'
import { withDefaults, type Tuning } from '../core/tuning.ts'
import { codecThreadCount } from '../repo/codec-threads.ts'
import { DEFAULT_CHUNK_SIZE } from '../repo/repository.ts'
import { imdsAnswered, whoAmI, type WorkerIdentity } from '../aws/identity.ts'
import { openRepository } from '../app/repository.ts'
import { CHECK_NAMES, type Check, type CheckName } from './checks.ts'

export type { Check } from './checks.ts'

/** What the machine has; the real one reads /proc/meminfo and statfs. */
export interface SystemFacts {
  memAvailable(): Promise<number>
  freeDisk(path: string): Promise<number>
}

export const MiB = 1024 * 1024
/**
 * Memory a task needs with this tuning (README, "How it works"): a backup holds its reads in
 * flight × the chunk size + (uploads + 1) × the pack size, a restore its GETs in flight × the
 * largest request; either also two chunk buffers per codec thread (sealed or decoded chunks in
 * flight), and 32 MiB for the SDK's and zstd's buffers. At the defaults on 2 vCPUs:
 * max(16 × 1 + 5 × 8, 8 × 8) + 2 × 2 × 1 + 32 = 100 MiB.
 */
export function memoryPerTask(t: Tuning, chunkSize = DEFAULT_CHUNK_SIZE, threads = codecThreadCount()): number {
  const backup = t.readConcurrency * chunkSize + (t.uploadConcurrency + 1) * t.packSize
  const restore = t.restoreConcurrency * t.maxRequestBytes
  return Math.max(backup, restore) + 2 * threads * chunkSize + 32 * MiB
}
/**
 * The process itself: 256 MiB, which holds up to 4 codec threads (about 20 MiB each, their own
 * heaps and zstd contexts); each further one adds its 20 MiB.
 */
export function memoryBase(threads = codecThreadCount()): number {
  return 256 * MiB + Math.max(0, threads - 4) * 20 * MiB
}
/** Free space the log directory needs: logrotate keeps 7 files of up to 100 MiB. */
export const DISK_FOR_LOGS = 1024 * MiB

export interface DoctorOptions {
  configPath: string
  /** The environment the daemon would run with (AWS settings); none by default. */
  env?: Environment
  only?: readonly string[]
  /** KMS keys tasks will use (volume.kmsKeyId); the Region's default EBS key is always checked. */
  kmsKeys?: readonly string[]
  /** Where the daemon's log goes (its free space is checked). */
  logDir?: string
  system?: SystemFacts
}

const realSystem: SystemFacts = {
  async memAvailable() {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(await readFile('/proc/meminfo', 'utf8'))
    if (!m) throw new Error('no MemAvailable in /proc/meminfo')
    return Number(m[1]) * 1024
  },
  async freeDisk(path) {
    const s = await statfs(path)
    return s.bavail * s.bsize
  },
}

const errName = (err: unknown): string => (err as { name?: string }).name ?? 'Error'
const denied = (err: unknown): boolean => /AccessDenied|UnauthorizedOperation|NotAuthorized|Forbidden/i.test(errName(err))

export async function doctor(options: DoctorOptions): Promise<Check[]> {
  const wanted = (name: CheckName): boolean => !options.only?.length || options.only.includes(name)
  const system = options.system ?? realSystem
  const checks: Check[] = []
  const add = (c: Check): void => {
    checks.push(c)
  }

  // config: the daemon's own loader and schema.
  let config: DaemonConfig | null = null
  try {
    config = await loadConfig(options.configPath)
    if (wanted('config')) {
      add({ name: 'config', status: 'ok', detail: `${options.configPath}: queue ${config.queueUrl}, repository ${config.repository}, concurrency ${config.concurrency}` })
    }
  } catch (err) {
    add({ name: 'config', status: 'problem', detail: describe(err), fix: `correct ${options.configPath} (fields: README, "The daemon"; on EC2 the user-data writes it)` })
  }
  const skip = (name: CheckName, why: string): void => {
    if (wanted(name)) add({ name, status: 'skipped', detail: why })
  }
  if (!config) {
    for (const name of CHECK_NAMES) if (name !== 'config') skip(name, 'needs a valid configuration')
    return checks
  }

  // imds and identity: the document the daemon reads at start (its Region too, when the
  // environment gives none).
  const settings = awsSettings(options.env)
  const imdsEndpoint = config.imdsEndpoint ?? settings.imdsEndpoint
  const endpoint = imdsEndpoint ?? 'http://169.254.169.254'
  let identity: WorkerIdentity | null = null
  const regionNeeded = !settings.region && (wanted('queue') || wanted('reply-queue') || wanted('repository'))
  if (wanted('imds') || wanted('identity') || wanted('kms') || regionNeeded) {
    try {
      identity = await whoAmI({ ...(imdsEndpoint ? { endpoint: imdsEndpoint } : {}), retries: 1, timeoutMs: 3000 })
      if (wanted('imds')) add({ name: 'imds', status: 'ok', detail: `IMDSv2 at ${endpoint}` })
      if (wanted('identity')) {
        add({ name: 'identity', status: 'ok', detail: `${identity.instanceId} in account ${identity.accountId}, ${identity.availabilityZone} (${identity.region})` })
      }
    } catch (err) {
      if (imdsAnswered(err)) {
        if (wanted('imds')) add({ name: 'imds', status: 'ok', detail: `IMDSv2 at ${endpoint}` })
        if (wanted('identity')) add({ name: 'identity', status: 'problem', detail: describe(err), fix: 'IMDS must serve the instance identity document (IMDSv2)' })
      } else {
        if (wanted('imds')) {
          add({
            name: 'imds', status: 'problem', detail: `no answer from IMDSv2 at ${endpoint}: ${describe(err)}`,
            fix: 'run on EC2 with the metadata service enabled (launch template MetadataOptions: HttpEndpoint enabled, HttpTokens required, HttpPutResponseHopLimit ≥ 1)',
          })
        }
        skip('identity', 'needs IMDS')
      }
    }
  }

  // queue, reply-queue, repository, kms: clients as the daemon builds them (its Region: the
  // environment's, else this instance's), with fewer attempts: a check should answer soon.
  const aws = new AwsClients({ ...settings, region: settings.region ?? identity?.region, maxAttempts: 2 })
  const sqs = aws.sqs()
  try {
    for (const [name, url, needs] of [
      ['queue', config.queueUrl, 'sqs:ReceiveMessage, sqs:ChangeMessageVisibility, sqs:DeleteMessage, sqs:GetQueueAttributes, sqs:SendMessage (carry-over at the 12-hour cap)'],
      ['reply-queue', config.replyQueueUrl, 'sqs:SendMessage, sqs:GetQueueAttributes'],
    ] as const) {
      if (!wanted(name)) continue
      try {
        const out = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['All'] }))
        const a = out.Attributes ?? {}
        const waiting = `${a.ApproximateNumberOfMessages ?? '?'} waiting, ${a.ApproximateNumberOfMessagesNotVisible ?? '?'} in flight`
        if (name === 'queue' && !a.RedrivePolicy) {
          add({ name, status: 'warn', detail: `${url}: ${waiting}, no dead-letter queue`, fix: 'give the queue a redrive policy, or a task that always fails is retried forever (packaging/cloudformation/fleet.yaml does)' })
        } else add({ name, status: 'ok', detail: `${url}: ${waiting}` })
      } catch (err) {
        const n = errName(err)
        const fix = denied(err) ? `the instance role needs ${needs} on ${url} (packaging/iam/worker-policy.json)`
          : /NonExistentQueue|QueueDoesNotExist/.test(n) ? `no such queue: correct ${name === 'queue' ? 'queueUrl' : 'replyQueueUrl'} in ${options.configPath}`
          : /Region is missing/i.test(describe(err)) ? 'set AWS_REGION (in /etc/ebs-worker/environment; the user-data writes it), or run on EC2, where IMDS gives it'
          : 'check the network path to SQS (VPC endpoint or NAT) and the queue URL'
        add({ name, status: 'problem', detail: `${url}: ${n}: ${describe(err)}`, fix })
      }
    }
  } finally {
    aws.destroy()
  }

  // repository: opened as the daemon opens it (key file, format version), backups listed.
  if (wanted('repository')) {
    try {
      const repo = await openRepository(config.repository, { aws, keyFile: config.keyFile })
      const backups = await repo.listBackups()
      add({
        name: 'repository', status: 'ok',
        detail: `${repo.url}: format ${repo.config.version}, ${repo.config.encryption ? 'encrypted' : 'not encrypted'}, ${backups.length} backup(s)`,
      })
    } catch (err) {
      const code = isEbsWorkerError(err) ? err.code : errName(err)
      const fix = code === ErrorCode.RepoNotFound ? `create it once: ebs-worker init --repo ${config.repository}${config.keyFile ? ` --encrypt --key-file ${config.keyFile}` : ''}`
        : code === ErrorCode.KeyRequired || code === ErrorCode.WrongKey || code === ErrorCode.BadInput ? 'keyFile must be the key the repository was created with, readable by the ebs-worker user'
        : code === ErrorCode.RepoVersion ? 'upgrade ebs-worker to a release that reads this repository format'
        : denied(err) || /AccessDenied|403/.test(describe(err)) ? 'the instance role needs s3:GetObject, s3:PutObject, s3:ListBucket and s3:AbortMultipartUpload on the repository prefix, and s3:DeleteObject on its index/pack-* and checkpoints/* (packaging/iam/worker-policy.json)'
        : 'check the repository URL and the network path to S3'
      add({ name: 'repository', status: 'problem', detail: `${config.repository}: [${code}] ${describe(err)}`, fix })
    }
  }

  // kms: the Region's default EBS key (volumes for cross-account backups and restores use it) and
  // the keys named on the command line.
  if (wanted('kms')) {
    const region = identity?.region ?? settings.region
    if (!region) skip('kms', 'needs the Region (IMDS identity or AWS_REGION)')
    else {
      const ec2 = aws.ec2(region)
      const kms = aws.kms(region)
      try {
        const keys: Array<{ ref: string; isDefault: boolean }> = []
        try {
          const id = (await ec2.send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId
          if (id) keys.push({ ref: id, isDefault: true })
        } catch (err) {
          add({ name: 'kms', status: 'problem', detail: `GetEbsDefaultKmsKeyId: ${errName(err)}: ${describe(err)}`, fix: 'the instance role needs ec2:GetEbsDefaultKmsKeyId' })
        }
        for (const ref of options.kmsKeys ?? []) keys.push({ ref, isDefault: false })
        for (const { ref, isDefault } of keys) {
          const label = isDefault ? `default EBS key ${ref}` : `key ${ref}`
          try {
            const meta = (await kms.send(new DescribeKeyCommand({ KeyId: ref }))).KeyMetadata
            if (meta?.KeyState && meta.KeyState !== 'Enabled') {
              add({ name: 'kms', status: 'problem', detail: `${label} is ${meta.KeyState}`, fix: 'enable the key, or use another one' })
            } else if (isDefault && meta?.KeyManager === 'AWS') {
              add({
                name: 'kms', status: 'warn', detail: `${label} is the AWS managed aws/ebs: cross-account restores fail (DEFAULT_KEY_NOT_SHAREABLE)`,
                fix: "make a customer managed key this Region's default EBS key (ec2 modify-ebs-default-kms-key-id), or give restores volume.kmsKeyId",
              })
            } else add({ name: 'kms', status: 'ok', detail: `${label}: ${meta?.KeyManager === 'AWS' ? 'AWS' : 'customer'} managed, ${meta?.KeyState ?? 'state unknown'}` })
          } catch (err) {
            const n = errName(err)
            add({
              name: 'kms', status: 'problem', detail: `${label}: ${n}: ${describe(err)}`,
              fix: n === 'NotFoundException' ? 'no such key in this Region: correct the key id'
                : 'the instance role (and the key policy) must allow kms:DescribeKey, kms:CreateGrant, kms:Decrypt, kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt* on it',
            })
          }
        }
      } finally {
        aws.destroy()
      }
    }
  }

  // devices: the sysfs scan volumes are found by, and access to the device nodes.
  if (wanted('devices')) {
    const roots = config.deviceRoots
    try {
      const names = (await readdir(roots.sysBlock)).filter((n) => /^nvme\d+n\d+$/.test(n))
      let ebs = 0
      const unreadable: string[] = []
      for (const name of names) {
        const model = await readFile(join(roots.sysBlock, name, 'device', 'model'), 'utf8').then((s) => s.trim(), () => '')
        if (model !== EBS_MODEL) continue
        ebs++
        await access(join(roots.devDir, name), constants.R_OK | constants.W_OK).catch(() => unreadable.push(join(roots.devDir, name)))
      }
      if (unreadable.length) {
        add({ name: 'devices', status: 'problem', detail: `cannot read and write ${unreadable.join(', ')}`, fix: 'run as a member of the disk group (the unit sets SupplementaryGroups=disk) with DeviceAllow=block-blkext rw' })
      } else if (names.length === 0) {
        add({ name: 'devices', status: 'warn', detail: `no NVMe block devices in ${roots.sysBlock}`, fix: 'EBS volumes appear as NVMe devices on Nitro instances: use a Nitro instance type' })
      } else add({ name: 'devices', status: 'ok', detail: `${roots.sysBlock}: ${names.length} NVMe device(s), ${ebs} EBS volume(s) attached, device nodes accessible` })
    } catch (err) {
      add({ name: 'devices', status: 'problem', detail: `cannot list ${roots.sysBlock}: ${describe(err)}`, fix: 'the daemon finds volumes by NVMe serial in sysfs: /sys must be readable (deviceRoots in the configuration is for tests only)' })
    }
  }

  // memory and disk for the configured concurrency.
  if (wanted('memory')) {
    const perTask = memoryPerTask(withDefaults(config.tuning))
    const base = memoryBase()
    const need = base + config.concurrency * perTask
    try {
      const available = await system.memAvailable()
      const fits = Math.max(0, Math.floor((available - base) / perTask))
      if (available >= need) add({ name: 'memory', status: 'ok', detail: `${formatBytes(available)} available, ${formatBytes(need)} needed for concurrency ${config.concurrency}` })
      else add({ name: 'memory', status: 'problem', detail: `${formatBytes(available)} available, ${formatBytes(need)} needed for concurrency ${config.concurrency}`, fix: `lower concurrency to ${fits} or use an instance type with more memory` })
    } catch (err) {
      add({ name: 'memory', status: 'problem', detail: describe(err), fix: '/proc/meminfo must be readable' })
    }
  }
  if (wanted('disk')) {
    let dir = options.logDir ?? '/var/log/ebs-worker'
    try {
      // The nearest existing directory: before the first start the log directory may not exist.
      for (;;) {
        try {
          await access(dir)
          break
        } catch {
          if (dirname(dir) === dir) throw new Error('no existing directory')
          dir = dirname(dir)
        }
      }
      const free = await system.freeDisk(dir)
      if (free >= DISK_FOR_LOGS) add({ name: 'disk', status: 'ok', detail: `${formatBytes(free)} free for logs at ${dir}` })
      else add({ name: 'disk', status: 'problem', detail: `${formatBytes(free)} free at ${dir}, ${formatBytes(DISK_FOR_LOGS)} needed for the logs`, fix: 'grow the root volume (the AMI\'s launch template sets its size) or free space' })
    } catch (err) {
      add({ name: 'disk', status: 'problem', detail: `${dir}: ${describe(err)}`, fix: 'the log directory must exist' })
    }
  }
  return checks
}
