// Three AWS accounts on this machine, for the controller's end-to-end tests: production (the
// instance and the source role), backup (the worker fleet, the controller, the repository) and a
// restore target. The EC2, KMS, STS and IAM stand-ins share one AwsWorld; the roles carry the IAM
// policies of packaging/iam/ (the worker role the fleet's own, worker-policy.json as the stack
// fills it in) and the keys the key-policy statements there, so a flow that passes proves those
// documents are enough. Workers are a real `ebs-worker daemon` child process on
// fauxqs; the controller is the real `ebs-controller` child process.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { cli, CLI, lastJsonLine, makeImage, MiB, ROOT, tempDir, type Teardown } from './helpers.ts'
import { EbsStandIn } from './standin/ebs.ts'
import { Ec2StandIn } from './standin/ec2.ts'
import { AwsWorld, type PolicyDocument, type PolicyStatement } from './standin/iam.ts'
import { IamStandIn } from './standin/iam-api.ts'
import { startImds } from './standin/imds.ts'
import { KmsStandIn } from './standin/kms.ts'
import { StsStandIn } from './standin/sts.ts'

export const PROD = '111111111111'
export const BACKUP = '222222222222'
export const TARGET = '333333333333'
export const REGION = 'eu-west-1'
export const BYTES_PER_GIB = 8 * MiB
const WORKER = { instanceId: 'i-0b0b0b0b0b0b0b0b1', accountId: BACKUP, region: REGION, availabilityZone: 'eu-west-1a' }
export const CONTROLLER_CLI = join(ROOT, 'controller/bin/ebs-controller.ts')
/** The image of the tests' instances, public in REGION. */
export const PUBLIC_IMAGE = 'ami-0abcdef0123456789'

/** The roles' names (the same in each account), and the controller's principal. */
export const ROLE_NAMES = { source: 'ebs-backup-source', restore: 'ebs-restore', worker: 'ebs-worker' }
export const CONTROLLER_ARN = `arn:aws:iam::${BACKUP}:user/ebs-controller`
const PLACEHOLDERS: Record<string, string> = {
  CONTROLLER_ACCOUNT_ID: BACKUP, WORKER_ACCOUNT_ID: BACKUP, TARGET_ACCOUNT_ID: TARGET, SOURCE_ACCOUNT_ID: PROD, CONTROLLER_PRINCIPAL_ARN: CONTROLLER_ARN,
  SOURCE_ROLE_NAME: ROLE_NAMES.source, RESTORE_ROLE_NAME: ROLE_NAMES.restore, WORKER_ROLE_NAME: ROLE_NAMES.worker,
}

/** A document of packaging/iam/ with its placeholders filled in. */
export function iamDocument<T = PolicyDocument>(name: string): T {
  let text = readFileSync(join(ROOT, 'packaging/iam', name), 'utf8')
  for (const [k, v] of Object.entries(PLACEHOLDERS)) text = text.replaceAll(k, v)
  return JSON.parse(text) as T
}

/** The fleet's stack name: the worker instance carries it as its ebs-worker:fleet tag. */
export const FLEET_STACK = 'ebs-worker-fleet'

/**
 * packaging/iam/worker-policy.json as CloudFormation fills it in for a stack in the backup
 * account (packaging/cloudformation/fleet.yaml embeds it): pseudo parameters, the queues, the
 * repository and KmsKeyArns, a list of key ARNs.
 */
export function fleetWorkerPolicy(kmsKeyArns: string[]): PolicyDocument {
  const values: Record<string, string> = {
    'AWS::Partition': 'aws', 'AWS::URLSuffix': 'amazonaws.com', 'AWS::Region': REGION, 'AWS::AccountId': BACKUP, 'AWS::StackName': FLEET_STACK,
    'AWS::StackId': `arn:aws:cloudformation:${REGION}:${BACKUP}:stack/${FLEET_STACK}/1f5a3c70-0000-11f0-8000-0a1b2c3d4e5f`,
    'TaskQueue.Arn': `arn:aws:sqs:${REGION}:${BACKUP}:tasks`, 'ReplyQueue.Arn': `arn:aws:sqs:${REGION}:${BACKUP}:replies`,
    RepositoryBucket: 'ebs-worker-repository', RepositoryPrefix: 'backups',
  }
  let text = readFileSync(join(ROOT, 'packaging/iam/worker-policy.json'), 'utf8').replaceAll('"${KmsKeyArns}"', JSON.stringify(kmsKeyArns))
  text = text.replace(/\$\{([^}]+)\}/g, (whole, name: string) => {
    if (!(name in values)) throw new Error(`worker-policy.json: no value for ${whole}`)
    return values[name]!
  })
  return JSON.parse(text) as PolicyDocument
}

export interface ControllerRun {
  code: number | null
  stdout: string
  stderr: string
  json: Record<string, any> | null
  /** Empty when it succeeded; else its stderr and the worker's log, for assertion messages. */
  said: string
}

export async function controllerWorld(t: Teardown) {
  const dir = await tempDir(t)
  const world = new AwsWorld(BACKUP)
  world.addCredentials('AKIACONTROLLER', { arn: CONTROLLER_ARN, accountId: BACKUP, policy: iamDocument('controller-policy.json') })

  const roles = {
    // Its policy, the fleet's, once the keys exist (below).
    worker: world.addRole({ accountId: BACKUP, name: ROLE_NAMES.worker, trust: [BACKUP] }),
    source: world.addRole({ accountId: PROD, name: ROLE_NAMES.source, trust: [], trustPolicy: iamDocument('source-role-trust.json'), policy: iamDocument('source-role-policy.json') }),
    localSource: world.addRole({ accountId: BACKUP, name: ROLE_NAMES.source, trust: [], trustPolicy: iamDocument('source-role-trust.json'), policy: iamDocument('source-role-policy.json') }),
    restore: world.addRole({ accountId: TARGET, name: ROLE_NAMES.restore, trust: [], trustPolicy: iamDocument('restore-role-trust.json'), policy: iamDocument('restore-role-policy.json') }),
    localRestore: world.addRole({ accountId: BACKUP, name: ROLE_NAMES.restore, trust: [], trustPolicy: iamDocument('restore-role-trust.json'), policy: iamDocument('restore-role-policy.json') }),
  }

  const kms = await new KmsStandIn([], { world }).start()
  t.teardown(() => kms.close())
  const withStatement = (accountId: string, file: string): PolicyDocument => ({
    Version: '2012-10-17', Statement: [...KmsStandIn.rootPolicy(accountId).Statement, iamDocument<PolicyStatement>(file)],
  })
  const keys = {
    /** Production's customer managed key, usable by the worker account (key-policy-source-key.json). */
    prod: kms.addKey({ accountId: PROD, region: REGION, aliases: ['alias/prod-ebs'], policy: withStatement(PROD, 'key-policy-source-key.json') }),
    /** A production key the worker account may not use. */
    prodPrivate: kms.addKey({ accountId: PROD, region: REGION, aliases: ['alias/prod-private'] }),
    /** The backup account's own key (same-account flows). */
    backup: kms.addKey({ accountId: BACKUP, region: REGION, aliases: ['alias/backup-ebs'] }),
    /** A customer managed key the backup account can make its default EBS key (cross-account restore). */
    workerDefault: kms.addKey({ accountId: BACKUP, region: REGION, aliases: ['alias/worker-default'], policy: withStatement(BACKUP, 'key-policy-worker-default-key.json') }),
    /** The restore target's key. */
    target: kms.addKey({ accountId: TARGET, region: REGION, aliases: ['alias/restored'] }),
  }
  // The fleet's KmsKeyArns: the keys its workers use (source keys, restores' keys, and the Region's
  // default EBS key, aws/ebs or the customer managed one it may be given).
  roles.worker.policy = fleetWorkerPolicy([keys.prod, keys.backup, keys.workerDefault, KmsStandIn.arn(kms.awsEbsKey(BACKUP, REGION))])
  const sts = await new StsStandIn(world).start()
  t.teardown(() => sts.close())
  const iam = await new IamStandIn(world).start()
  t.teardown(() => iam.close())

  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  await mkdir(roots.byIdDir, { recursive: true })
  // EC2's eventual consistency is on: ids just created are missed by the next requests (standin/ec2.ts).
  const ec2 = await new Ec2StandIn({ instance: WORKER, dir: join(dir, 'volumes'), roots, bytesPerGiB: BYTES_PER_GIB, delayMs: 30, visibilityLag: 2, world, kms }).start()
  t.teardown(() => ec2.close())
  // The instances' image: a public AMI of the Region (as Amazon's own are), launchable by every account there.
  ec2.addImage({ imageId: PUBLIC_IMAGE, ownerId: '137112412989', region: REGION, public: true, name: 'al2023-ami-2023.6-x86_64' })
  // The fleet's instances carry its name, which the worker policy's attach and detach statements ask for.
  ec2.instances.get(WORKER.instanceId)!.tags['ebs-worker:fleet'] = FLEET_STACK
  const ebs = await new EbsStandIn({ ec2, world }).start()
  t.teardown(() => ebs.close())
  const imds = await startImds(WORKER)
  t.teardown(() => imds.close())

  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: REGION, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!

  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const config = join(dir, 'worker.json')
  await writeFile(config, JSON.stringify({
    queueUrl, replyQueueUrl, repository: repo, concurrency: 4, waitTimeSeconds: 1, visibilityTimeoutSeconds: 30,
    shutdownGraceSeconds: 5, deviceTimeoutSeconds: 10, deviceRoots: roots, imdsEndpoint: imds.endpoint,
  }))
  const endpoints = { AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_ENDPOINT_URL_EC2: ec2.endpoint, AWS_ENDPOINT_URL_KMS: kms.endpoint, AWS_ENDPOINT_URL_STS: sts.endpoint, AWS_ENDPOINT_URL_EBS: ebs.endpoint, AWS_ENDPOINT_URL_IAM: iam.endpoint, AWS_REGION: REGION }
  const log = { worker: '' }
  let workerRunning = false
  /** The worker fleet: one daemon with the worker role's credentials (its instance profile). */
  const startWorker = (): void => {
    const session = world.sessionFor(roles.worker, WORKER.instanceId)
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
      env: { ...process.env, ...endpoints, AWS_ACCESS_KEY_ID: session.accessKeyId, AWS_SECRET_ACCESS_KEY: session.secretAccessKey, AWS_SESSION_TOKEN: session.sessionToken },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    workerRunning = true
    daemon.stderr.on('data', (d) => (log.worker += d))
    t.teardown(() => {
      daemon.kill('SIGKILL')
    })
  }

  /** Runs ebs-controller as the controller's user would, against this world. */
  const controller = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<ControllerRun> => new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CONTROLLER_CLI, ...args, '--json', ...(args[0] === 'list' ? [] : ['--poll-ms', '50'])], {
      env: {
        ...process.env, ...endpoints, AWS_ACCESS_KEY_ID: 'AKIACONTROLLER', AWS_SECRET_ACCESS_KEY: 'x', AWS_SESSION_TOKEN: '',
        EBS_CONTROLLER_QUEUE_URL: queueUrl, EBS_CONTROLLER_REPLY_QUEUE_URL: replyQueueUrl, EBS_CONTROLLER_REPO: repo, ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => {
      const json = lastJsonLine(stdout)
      const all = stderr + (workerRunning ? `\n--- worker log ---\n${log.worker}` : '')
      resolve({ code, stdout, stderr: all, json, said: code === 0 ? '' : `: ${all}` })
    })
  })

  /**
   * Runs ebs-controller on a terminal (a pseudo-terminal from script(1), which stdout and stderr
   * share), without --json: what a person at a terminal sees.
   */
  const controllerOnTerminal = (args: string[]): Promise<{ code: number | null; output: string }> => new Promise((resolve, reject) => {
    const quote = (a: string): string => `'${a.replace(/'/g, `'\\''`)}'`
    const command = [process.execPath, CONTROLLER_CLI, ...args, '--poll-ms', '50'].map(quote).join(' ')
    const child = spawn('script', ['-qefc', command, '/dev/null'], {
      env: {
        ...process.env, ...endpoints, AWS_ACCESS_KEY_ID: 'AKIACONTROLLER', AWS_SECRET_ACCESS_KEY: 'x', AWS_SESSION_TOKEN: '',
        EBS_CONTROLLER_QUEUE_URL: queueUrl, EBS_CONTROLLER_REPLY_QUEUE_URL: replyQueueUrl, EBS_CONTROLLER_REPO: repo,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout.on('data', (d) => (output += d))
    child.stderr.on('data', (d) => (output += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, output: output.replace(/\r\n/g, '\n') }))
  })

  /** An instance whose volumes hold random data at distinct places (each one unique); tagged `Name: app-1` unless `options.tags` says otherwise. */
  const instance = async (accountId: string, az: string, volumes: Array<{ device: string; kmsKeyId?: string; encrypted?: boolean; volumeType?: string }>, options: { tags?: Record<string, string>; imageId?: string } = {}) => {
    const specs = []
    for (const [i, v] of volumes.entries()) {
      const image = join(dir, `src-${accountId}-${i}-${Math.random().toString(16).slice(2, 8)}.img`)
      await makeImage(image, 2 * BYTES_PER_GIB, [
        { kind: 'random', offset: (i + 1) * MiB, length: 3 * MiB },
        { kind: 'text', offset: 9 * MiB, length: MiB + 4096 * (i + 1) },
      ])
      specs.push({ device: v.device, image, sizeGiB: 2, encrypted: v.encrypted ?? true, ...(v.kmsKeyId ? { kmsKeyId: v.kmsKeyId } : {}), ...(v.volumeType ? { volumeType: v.volumeType } : {}) })
    }
    return ec2.addInstance({ accountId, region: REGION, availabilityZone: az, instanceType: 'm6i.xlarge', imageId: options.imageId ?? PUBLIC_IMAGE, tags: options.tags ?? { Name: 'app-1' }, volumes: specs })
  }

  return { dir, world, roles, kms, keys, ec2, repo, startWorker, controller, controllerOnTerminal, instance, log, endpoints }
}
