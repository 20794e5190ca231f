// A stand-in for the part of Amazon EC2 the worker and the controller use, speaking the EC2 Query
// protocol (form-encoded POST, XML answers, version 2016-11-15) so that the real
// @aws-sdk/client-ec2 runs against it unchanged. No EC2 emulator can be installed here.
//
// It follows the EC2 API Reference (CreateVolume, DescribeVolumes, AttachVolume, DetachVolume,
// DeleteVolume, CreateSnapshot, CreateSnapshots, CopySnapshot, DeleteSnapshot, DescribeSnapshots,
// ModifySnapshotAttribute, CreateTags, GetEbsDefaultKmsKeyId, ModifyEbsDefaultKmsKeyId, RunInstances,
// DescribeInstances, StopInstances, StartInstances, TerminateInstances; "Common client error
// codes"; the DryRun parameter) and the EBS User Guide ("Amazon EBS encryption", "How Amazon EBS
// encryption works", "Encryption by default", "Share an Amazon EBS snapshot", "Copy an Amazon EBS
// snapshot"):
//   - a volume from an encrypted snapshot is encrypted; KmsKeyId requires Encrypted=true;
//   - without KmsKeyId it takes the snapshot's key when the snapshot is this account's, and the
//     Region's default EBS key when it was shared from another account (or when it is new and
//     Encrypted=true); the default key is aws/ebs until ModifyEbsDefaultKmsKeyId changes it;
//   - a snapshot neither owned by nor shared with this account does not exist for it; resources
//     belong to one account and one Region (the request's, from its SigV4 credential scope);
//   - CreateVolume with a ClientToken already used returns the volume it made then;
//   - Iops and Throughput by volume type (CreateVolume: Iops "Required for io1 and io2 volumes.
//     Optional for gp3 volumes. Omit for all other volume types"; Throughput "Supported for gp3
//     volumes only"): anything else is InvalidParameterCombination, with the messages EC2 gives
//     ("The parameter iops is not supported for gp2 volumes.", kubernetes-retired/kube-aws#1208;
//     "throughput can only be specified for volumeType gp3.", runs-on/runs-on#426; "The parameter
//     iops must be specified for io2 volumes.", velero-io/velero-plugin-for-aws#119); the type
//     defaults to gp2; DescribeVolumes reports gp2's baseline Iops (3 per GiB, 100 to 16,000; EBS
//     User Guide, "Amazon EBS volume types") and gp3's defaults (3,000 IOPS, 125 MiB/s);
//   - creating → available, then in-use while attached (attaching → attached), with delays;
//   - a volume attaches to one instance, in its own Availability Zone; an attached volume cannot
//     be deleted; the root volume of a running instance cannot be detached;
//   - a snapshot of a volume keeps its encryption and key; one encrypted with an AWS managed key
//     (aws/ebs) cannot be shared with another account (ModifySnapshotAttribute: "Snapshots
//     encrypted with your default KMS key cannot be shared with other accounts"; EC2 answers
//     OperationNotPermitted "Encrypted snapshots with EBS default key cannot be shared",
//     hashicorp/packer#7499 and #8271; ModifyImageAttribute says InvalidParameter instead);
//     CopySnapshot with KmsKeyId re-encrypts;
//   - KMS is authenticated asynchronously: CreateVolume with a key the caller cannot use answers
//     "creating" and the volume is then silently rolled back (DescribeVolumes: InvalidVolume.
//     NotFound), as the CreateVolume KmsKeyId documentation says ("the action can appear to
//     complete, but eventually fails") and as seen in aws/aws-cli#2604 and
//     kubernetes-sigs/aws-ebs-csi-driver#3010; a CopySnapshot under such a key ends in state
//     "error";
//   - with DryRun=true, an allowed call answers DryRunOperation, a refused one UnauthorizedOperation;
//     EC2 also validates the request's parameters as for the call itself (a DryRun CreateVolume
//     with Iops on gp2 is refused with InvalidParameterCombination, kubernetes-retired/kube-aws#1208),
//     so here, once the permission is granted, a DryRun naming a snapshot that does not exist
//     answers InvalidSnapshot.NotFound, and a DryRun CreateVolume is checked like CreateVolume;
//   - eventual consistency (EC2 Developer Guide, "Eventual consistency in the Amazon EC2 API": "if
//     you run a command to modify or describe the resource that you just created, its ID might not
//     have propagated throughout the system, and you will get an error responding that the resource
//     does not exist"): with `visibilityLag` N, the first N requests that name an id just made by
//     CreateVolume, CreateSnapshot(s), CopySnapshot or RunInstances (or whose answer would list it)
//     answer as if it did not exist (Invalid….NotFound, left out of lists). Off (0) by default. A
//     volume KMS refuses is then rolled back only after it was first seen (a real rollback takes
//     seconds, the lag usually less), so waits see "creating, then gone".
//   - IAM authorizes a call on each resource it touches, with the resource's tags (aws:ResourceTag/…)
//     and the request's (aws:RequestTag/…, aws:TagKeys), ModifySnapshotAttribute with the accounts
//     and groups it adds or removes (ec2:Add/userId, ec2:Add/group, ec2:Remove/userId,
//     ec2:Remove/group, each the list of the request's) and ec2:Attribute/<name>, and the tags of a create call as
//     ec2:CreateTags with ec2:CreateAction (Service Authorization Reference, "Actions, resources,
//     and condition keys for Amazon EC2"; EC2 User Guide, "Grant permission to tag resources during
//     creation"): CreateVolume the new volume and its snapshot, Attach/DetachVolume the volume and
//     the instance, CreateSnapshot(s) the volume(s), the instance and the new snapshot, RunInstances
//     the instance, its image, subnet, security groups, network interface and root volume; snapshot
//     and image ARNs have no account (arn:aws:ec2:<region>::snapshot/<id>); Describe* calls and the
//     account's EBS default key are "*". A new resource is named with "*" for its id;
//   - tags (EC2 User Guide, "Tag your Amazon EC2 resources", Tag restrictions): "Maximum number of
//     tags per resource – 50"; "The aws: prefix is reserved for AWS use […] Tags with the aws:
//     prefix do not count against your tags per resource limit." A request setting a key with that
//     prefix (in any case: "Tagging AWS resources", "Don't use aws:, AWS:, or any upper or lowercase
//     combination") is InvalidParameterValue ("Tag keys starting with 'aws:' are reserved for
//     internal use"), one leaving a resource more than 50 other tags TagLimitExceeded ("Error codes
//     for the Amazon EC2 API": "You've reached the limit on the number of tags that you can assign
//     to the specified resource"); AWS's own (addInstance's tags) may carry the prefix;
//   - launching (RunInstances, "Find an AMI", "Default VPCs", "Error codes for the Amazon EC2 API"):
//     an AMI lives in one Region and is usable by its owner, the accounts it is shared with and,
//     when public, everyone; any other is InvalidAMIID.NotFound ("Check the AMI ID, and ensure
//     that you specify the AWS Region in which the AMI is located"), also from DescribeImages; an
//     instance goes into the given subnet (and its AZ), or without one into the default VPC, and
//     an account without a default VPC in that Region is VPCIdNotSpecified ("You have no default
//     VPC in which to carry out the request. Specify a VPC or subnet ID"; its message: "No default
//     VPC for this user"); security groups must be of the instance's VPC (InvalidParameter: "you
//     can't specify a security group and subnet that are in different VPCs"). DescribeAccountAttributes
//     says default-vpc: its id, or "none". Images are registered with addImage (addInstance
//     registers its own, private to its account, when unknown).
// What EBS asks of KMS for the caller ("Amazon EBS encryption" / required KMS permissions:
// kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext,
// kms:ReEncrypt*): a new volume or copy under key K needs K's DescribeKey, CreateGrant and
// GenerateDataKeyWithoutPlaintext; reading a snapshot under key S needs S's DescribeKey and
// Decrypt (and ReEncryptFrom/ReEncryptTo when S and K differ). With a KMS stand-in and an AwsWorld
// these are checked (key policies, grants, identity policies) and recorded; EC2 actions are checked
// against the caller's identity policy and recorded.
//
// Volumes are sparse files; a volume attached to the worker instance becomes a loop device with an
// NVMe identity (serial = volume id without the dash) in a device tree of the test's own, which is
// what the agent's device discovery reads; other instances only record their attachments. Sizes
// are in GiB as in the API, each "GiB" being `bytesPerGiB` bytes (default 1 GiB) so tests can keep
// volumes small: a documented departure.
// Pages: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateVolume.html (KmsKeyId),
//   …/API_CreateSnapshots.html, …/API_CopySnapshot.html, …/API_ModifySnapshotAttribute.html,
//   …/API_GetEbsDefaultKmsKeyId.html, …/API_ModifyEbsDefaultKmsKeyId.html, …/API_RunInstances.html,
//   …/errors-overview.html; https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html;
//   https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption.html,
//   …/ebs-modifying-snapshot-permissions.html (share), …/ebs-copy-snapshot.html,
//   …/encryption-by-default.html; https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions,
//   https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html, …/AWSEC2/latest/UserGuide/finding-an-ami.html,
//   https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html (ModifySnapshotAttribute's
//   condition keys), https://docs.aws.amazon.com/vpc/latest/userguide/default-vpc.html, …/APIReference/API_DescribeImages.html,
//   …/APIReference/API_DescribeAccountAttributes.html, …/APIReference/API_DescribeSubnets.html.
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { copyFile, mkdir, open, rm, symlink, unlink } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { EBS_MODEL, serialOf } from '../../agent/device/ebs-device.ts'
import { credentialScope, type AuthorizationRequest, type AwsWorld, type ConditionContext, type Principal } from './iam.ts'
import { KmsStandIn } from './kms.ts'
import { fakeNvme } from './nvme.ts'

export interface StandInInstance {
  instanceId: string
  accountId: string
  region: string
  availabilityZone: string
}

export interface SnapshotSpec {
  /** Image whose bytes the snapshot holds. */
  image: string
  sizeGiB: number
  encrypted?: boolean
  kmsKeyId?: string
  /** Account that owns it (default: the instance's); another account's must be shared. */
  ownerId?: string
  sharedWith?: string[]
  /** The volume it was taken of, if it is to share a lineage with other snapshots of it. */
  volumeId?: string
  region?: string
}

export interface Snapshot {
  snapshotId: string
  image: string
  sizeGiB: number
  encrypted: boolean
  kmsKeyId: string | null
  ownerId: string
  region: string
  sharedWith: string[]
  state: 'pending' | 'completed' | 'error'
  statusMessage: string | null
  volumeId: string | null
  tags: Record<string, string>
  startTime: string
  description: string
  deleted: boolean
}

export interface Volume {
  volumeId: string
  ownerId: string
  region: string
  sizeGiB: number
  snapshotId: string | null
  availabilityZone: string
  state: 'creating' | 'available' | 'in-use' | 'deleting' | 'deleted'
  /** Why a volume ended as it did (the KMS rollback), for tests; EC2 does not report it. */
  stateReason: string | null
  volumeType: string
  iops: number | null
  throughput: number | null
  encrypted: boolean
  kmsKeyId: string | null
  tags: Record<string, string>
  createTime: string
  file: string
  attachment: {
    instanceId: string; device: string; state: 'attaching' | 'attached' | 'detaching'; time: string; loop: string | null; name: string | null
    deleteOnTermination: boolean; seq: number
  } | null
}

export interface Instance {
  instanceId: string
  ownerId: string
  region: string
  availabilityZone: string
  instanceType: string
  imageId: string
  rootDeviceName: string
  state: 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated'
  tags: Record<string, string>
  launchTime: string
  architecture: string
  /** Attachments become loop devices (the worker instance). */
  plugged: boolean
  /** Where RunInstances put it. */
  subnetId?: string
  vpcId?: string
  securityGroupIds?: string[]
}

/** An AMI: in one Region, usable by its owner, the accounts in launchPermissions, everyone when public. */
export interface Image {
  imageId: string
  ownerId: string
  region: string
  public: boolean
  launchPermissions: string[]
  name: string
  architecture: string
  rootDeviceName: string
}

export interface Subnet {
  subnetId: string
  ownerId: string
  region: string
  availabilityZone: string
  vpcId: string
}

export interface SecurityGroup {
  groupId: string
  ownerId: string
  region: string
  vpcId: string
  groupName: string
}

export interface InstanceSpec {
  accountId: string
  region: string
  availabilityZone: string
  instanceType?: string
  imageId?: string
  rootDeviceName?: string
  tags?: Record<string, string>
  /** Attached in this order; the first whose device is rootDeviceName is the root volume. */
  volumes: Array<{ device: string; image: string; sizeGiB: number; encrypted?: boolean; kmsKeyId?: string; volumeType?: string; iops?: number; deleteOnTermination?: boolean }>
}

export interface Ec2StandInOptions {
  instance: StandInInstance
  /** Where volume files live. */
  dir: string
  roots: { sysBlock: string; devDir: string; byIdDir: string }
  bytesPerGiB?: number
  /** Delay of each state change (creating → available, attaching → attached, detaching). */
  delayMs?: number
  /** Requests that find an id just created not there yet (eventual consistency; default 0). */
  visibilityLag?: number
  /** The worker Region's default EBS key (an AWS-managed key unless a customer key is configured). */
  defaultKmsKeyId?: string
  /** Whether a key reference names an AWS managed key (default: the KMS stand-in's answer, or it mentions alias/aws/ebs). */
  isAwsManagedKey?: (ref: string) => boolean
  /** Callers, identity policies and the record of calls (without it, every caller is the instance's account). */
  world?: AwsWorld
  /** Keys EBS checks and records its use of (with `world`). */
  kms?: KmsStandIn
  /**
   * How an attached volume (as loop device `loop`) shows up as NVMe device `name` in the device
   * tree (default: fakeNvme with its identity). Tests replace it to model a tree that lies.
   */
  exposeDevice?: (volume: Volume, name: string, loop: string) => Promise<void>
}

interface Ctx {
  principal: Principal
  accountId: string
  region: string
}

/** Filter.N.Name / Filter.N.Value.M of a Describe* request. */
function filtersOf(p: URLSearchParams): Array<{ name: string; values: string[] }> {
  const filters: Array<{ name: string; values: string[] }> = []
  for (let i = 1; p.has(`Filter.${i}.Name`); i++) {
    const values: string[] = []
    for (let j = 1; p.has(`Filter.${i}.Value.${j}`); j++) values.push(p.get(`Filter.${i}.Value.${j}`)!)
    filters.push({ name: p.get(`Filter.${i}.Name`)!, values })
  }
  return filters
}

/** Name.1, Name.2, … of a request. */
function listOf(p: URLSearchParams, name: string): string[] {
  const out: string[] = []
  for (let i = 1; p.has(`${name}.${i}`); i++) out.push(p.get(`${name}.${i}`)!)
  return out
}

class Ec2Error extends Error {
  readonly code: string
  constructor(code: string, message: string) {
    super(message)
    this.code = code
  }
}

const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const el = (name: string, value: string | number | boolean | null | undefined): string =>
  value === null || value === undefined ? '' : `<${name}>${xmlEscape(String(value))}</${name}>`
const tagSet = (tags: Record<string, string>): string => {
  const items = Object.entries(tags).map(([k, val]) => `<item>${el('key', k)}${el('value', val)}</item>`).join('')
  return items ? `<tagSet>${items}</tagSet>` : ''
}
/**
 * A new volume's Iops and Throughput as DescribeVolumes reports them, or CreateVolume's error for
 * a combination EC2 refuses (see the header). Sizes are the API's GiB.
 */
function volumePerformance(type: string, sizeGiB: number, iops: string | null, throughput: string | null): { iops: number | null; throughput: number | null } {
  if (!['gp2', 'gp3', 'io1', 'io2', 'st1', 'sc1', 'standard'].includes(type)) throw new Ec2Error('InvalidParameterValue', `Value (${type}) for parameter volumeType is invalid.`)
  if (iops !== null && !['io1', 'io2', 'gp3'].includes(type)) throw new Ec2Error('InvalidParameterCombination', `The parameter iops is not supported for ${type} volumes.`)
  if (iops === null && (type === 'io1' || type === 'io2')) throw new Ec2Error('InvalidParameterCombination', `The parameter iops must be specified for ${type} volumes.`)
  if (throughput !== null && type !== 'gp3') throw new Ec2Error('InvalidParameterCombination', 'throughput can only be specified for volumeType gp3.')
  if (type === 'gp2') return { iops: Math.min(16_000, Math.max(100, 3 * sizeGiB)), throughput: null }
  if (type === 'gp3') return { iops: iops === null ? 3000 : Number(iops), throughput: throughput === null ? 125 : Number(throughput) }
  return { iops: iops === null ? null : Number(iops), throughput: null }
}

const hexId = (prefix: string): string => `${prefix}-${randomBytes(9).toString('hex').slice(0, 17)}`
/** The AWS managed EBS key of an account and Region, by its alias. */
const awsEbs = (region: string, accountId: string): string => `arn:aws:kms:${region}:${accountId}:alias/aws/ebs`
/** instanceState.code of each instance state (EC2 API Reference, InstanceState). */
const STATE_CODES: Record<Instance['state'], number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 }

/** EC2's tag rules (Tag restrictions): reserved keys, and how many others one resource may have. */
const RESERVED_TAG = /^aws:/i
const MAX_TAGS = 50

/** Refuses tags no caller may set: a reserved key, or more than MAX_TAGS on one resource (reserved ones do not count). */
function checkTags(tags: Record<string, string>, adding: string[]): void {
  const reserved = adding.find((k) => RESERVED_TAG.test(k))
  if (reserved !== undefined) throw new Ec2Error('InvalidParameterValue', `Tag keys starting with 'aws:' are reserved for internal use (${reserved})`)
  if (Object.keys(tags).filter((k) => !RESERVED_TAG.test(k)).length > MAX_TAGS) {
    throw new Ec2Error('TagLimitExceeded', `You've reached the limit on the number of tags that you can assign to the specified resource (${MAX_TAGS})`)
  }
}

/** What EBS asks of KMS for the caller. */
const NEW_KEY = ['kms:DescribeKey', 'kms:CreateGrant', 'kms:GenerateDataKeyWithoutPlaintext']
const READ_KEY = ['kms:DescribeKey', 'kms:Decrypt']

export class Ec2StandIn {
  readonly volumes = new Map<string, Volume>()
  readonly snapshots = new Map<string, Snapshot>()
  readonly instances = new Map<string, Instance>()
  /** Default EBS key per "account/region" (ModifyEbsDefaultKmsKeyId). */
  readonly defaultKeys = new Map<string, string>()
  /** While true, new snapshots stay pending (a snapshot that never completes). */
  holdSnapshots = false
  /** How many of the first requests naming an id just created find it missing (eventual consistency); 0: none. */
  visibilityLag: number
  /** Per id just created: how many requests were answered as if it did not exist yet (for tests). */
  readonly missed = new Map<string, number>()
  /** Ids just created and not visible yet: requests left that miss them, and what waits for their first sighting. */
  readonly #lag = new Map<string, { left: number; onSeen: Array<() => void> }>()
  readonly images = new Map<string, Image>()
  readonly subnets = new Map<string, Subnet>()
  readonly securityGroups = new Map<string, SecurityGroup>()
  /** "account/region" pairs whose default VPC was deleted (every other one has its default VPC). */
  readonly withoutDefaultVpc = new Set<string>()
  readonly #clientTokens = new Map<string, string>()
  readonly #options: Required<Omit<Ec2StandInOptions, 'world' | 'kms' | 'visibilityLag'>> & Pick<Ec2StandInOptions, 'world' | 'kms'>
  #server: Server | null = null
  #nvmeIndex = 1
  #attachSeq = 0
  endpoint = ''

  constructor(options: Ec2StandInOptions) {
    const { instance } = options
    this.#options = {
      bytesPerGiB: 1024 ** 3, delayMs: 100, defaultKmsKeyId: awsEbs(instance.region, instance.accountId),
      isAwsManagedKey: (ref) => (options.kms ? options.kms.resolve(ref)?.keyManager === 'AWS' : ref.includes('alias/aws/ebs')),
      exposeDevice: (v, name, loop) => fakeNvme(options.roots, name, loop, serialOf(v.volumeId), EBS_MODEL, v.sizeGiB * this.bytesPerGiB),
      ...options,
    }
    this.visibilityLag = options.visibilityLag ?? 0
    if (options.defaultKmsKeyId) this.defaultKeys.set(`${instance.accountId}/${instance.region}`, options.defaultKmsKeyId)
    this.instances.set(instance.instanceId, {
      instanceId: instance.instanceId, ownerId: instance.accountId, region: instance.region, availabilityZone: instance.availabilityZone,
      instanceType: 'c6i.large', imageId: 'ami-0e0b0b0b0b0b0b0b0', rootDeviceName: '/dev/xvda', state: 'running', tags: {},
      launchTime: new Date().toISOString(), architecture: 'x86_64', plugged: true,
    })
  }

  /** Bytes per "GiB" of volume and snapshot sizes. */
  get bytesPerGiB(): number {
    return this.#options.bytesPerGiB
  }

  /** The account the worker instance runs in. */
  get accountId(): string {
    return this.#options.instance.accountId
  }

  /** An id just created: not visible to the next `visibilityLag` requests. */
  #born(id: string): void {
    if (this.visibilityLag > 0) this.#lag.set(id, { left: this.visibilityLag, onSeen: [] })
  }

  /** Whether this request misses `id` (counting it); its first sighting runs what waited for it. */
  #hidden(id: string): boolean {
    const lag = this.#lag.get(id)
    if (!lag) return false
    if (lag.left > 0) {
      lag.left--
      this.missed.set(id, (this.missed.get(id) ?? 0) + 1)
      return true
    }
    this.#lag.delete(id)
    for (const fn of lag.onSeen) fn()
    return false
  }

  /** Runs `fn` once `id` has been seen by a request (at once when it is not lagging). */
  #onceSeen(id: string, fn: () => void): void {
    const lag = this.#lag.get(id)
    if (lag) lag.onSeen.push(fn)
    else fn()
  }

  /** Makes an id visible at once, as if the time of its lag had passed (a test's setup). */
  settle(id: string): void {
    const lag = this.#lag.get(id)
    if (lag) lag.left = 0
  }

  async start(): Promise<this> {
    await mkdir(this.#options.dir, { recursive: true })
    for (const d of Object.values(this.#options.roots)) await mkdir(d, { recursive: true })
    this.#server = createServer((req, res) => {
      let body = ''
      req.on('data', (d) => (body += d))
      req.on('end', () => {
        const params = new URLSearchParams(body)
        const action = params.get('Action') ?? ''
        const requestId = randomUUID()
        const ctx = this.#ctx(req.headers.authorization)
        this.#run(action, params, ctx)
          .then((inner) => {
            const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${requestId}</requestId>${inner}</${action}Response>`
            res.writeHead(200, { 'Content-Type': 'text/xml;charset=UTF-8', 'x-amzn-RequestId': requestId }).end(xml)
          })
          .catch((err: unknown) => {
            const e = err instanceof Ec2Error ? err : new Ec2Error('InternalError', String(err))
            const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${e.code}</Code><Message>${xmlEscape(e.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`
            const status = e.code === 'InternalError' ? 500 : e.code === 'UnauthorizedOperation' || e.code === 'DryRunOperation' ? (e.code === 'DryRunOperation' ? 412 : 403) : 400
            // EC2 gives the request id in the body and, as its other APIs do, in x-amzn-RequestId.
            res.writeHead(status, { 'Content-Type': 'text/xml;charset=UTF-8', 'x-amzn-RequestId': requestId }).end(xml)
          })
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  /** Detaches every loop device it made and stops answering. */
  async close(): Promise<void> {
    for (const v of this.volumes.values()) await this.#unplug(v)
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }

  #ctx(authorization: string | undefined): Ctx {
    const { instance, world } = this.#options
    if (world) {
      const { principal, region } = world.callerOf(authorization, instance.region)
      return { principal, accountId: principal.accountId, region }
    }
    const region = credentialScope(authorization)?.region ?? instance.region
    return { principal: { arn: `arn:aws:iam::${instance.accountId}:root`, accountId: instance.accountId }, accountId: instance.accountId, region }
  }

  /** The key reference as the volume will show it: the key ARN when the KMS stand-in knows it. */
  #keyArn(ref: string, ctx: { accountId: string; region: string }): string {
    const key = this.#options.kms?.resolve(ref, ctx)
    return key ? KmsStandIn.arn(key) : ref
  }

  /**
   * The encryption of a new volume or snapshot copy (Encrypted, KmsKeyId) made from `source`:
   * encrypted when asked or when the source is; under KmsKeyId, else the source's key when the
   * source is the caller's, else the Region's default EBS key (also for a shared source).
   */
  #newKey(p: URLSearchParams, source: Snapshot | null, ctx: Ctx): { encrypted: boolean; keyRef: string | null; key: string | null } {
    const kmsKeyId = p.get('KmsKeyId')
    const encryptedParam = p.get('Encrypted') === 'true'
    if (kmsKeyId && !encryptedParam) throw new Ec2Error('InvalidParameterDependency', 'The parameter KmsKeyId requires the parameter Encrypted to be set.')
    const encrypted = encryptedParam || Boolean(source?.encrypted)
    const shared = source !== null && source.ownerId !== ctx.accountId
    const keyRef = !encrypted ? null : (kmsKeyId ?? (source?.encrypted && !shared ? source.kmsKeyId! : this.#defaultKey(ctx.accountId, ctx.region)))
    return { encrypted, keyRef, key: keyRef ? this.#keyArn(keyRef, ctx) : null }
  }

  #defaultKey(accountId: string, region: string): string {
    return this.defaultKeys.get(`${accountId}/${region}`) ?? awsEbs(region, accountId)
  }

  /** EBS's use of keys for the caller: the actions refused, with their key (empty: all allowed). */
  #useKeys(ctx: Ctx, uses: Array<{ ref: string; actions: string[] }>, via: string): string[] {
    const { kms, world } = this.#options
    if (!kms || !world) return []
    const refused: string[] = []
    for (const u of uses) {
      const r = kms.check(ctx.principal, u.ref, u.actions, { region: ctx.region, via, viaService: `ec2.${ctx.region}.amazonaws.com` })
      if (!r.key) refused.push(`${u.ref} (no such key in ${ctx.region})`)
      else refused.push(...r.denied.map((a) => `${a} on ${KmsStandIn.arn(r.key!)}`))
    }
    return refused
  }

  /** Adds an instance with volumes made from images (the production instance of a test). */
  async addInstance(spec: InstanceSpec): Promise<string> {
    const instanceId = hexId('i')
    const rootDeviceName = spec.rootDeviceName ?? spec.volumes[0]?.device ?? '/dev/xvda'
    const imageId = spec.imageId ?? 'ami-0123456789abcdef0'
    if (!this.images.has(imageId)) this.addImage({ imageId, ownerId: spec.accountId, region: spec.region, rootDeviceName })
    this.instances.set(instanceId, {
      instanceId, ownerId: spec.accountId, region: spec.region, availabilityZone: spec.availabilityZone, instanceType: spec.instanceType ?? 'm6i.large',
      imageId, rootDeviceName, state: 'running', tags: spec.tags ?? {}, launchTime: new Date().toISOString(),
      architecture: 'x86_64', plugged: false,
    })
    for (const v of spec.volumes) {
      const volumeId = hexId('vol')
      const file = join(this.#options.dir, `${volumeId}.img`)
      await copyFile(v.image, file)
      const handle = await open(file, 'r+')
      await handle.truncate(v.sizeGiB * this.#options.bytesPerGiB)
      await handle.close()
      const ctx = { accountId: spec.accountId, region: spec.region }
      this.volumes.set(volumeId, {
        volumeId, ownerId: spec.accountId, region: spec.region, sizeGiB: v.sizeGiB, snapshotId: null, availabilityZone: spec.availabilityZone,
        state: 'in-use', stateReason: null, volumeType: v.volumeType ?? 'gp3', ...volumePerformance(v.volumeType ?? 'gp3', v.sizeGiB, v.iops === undefined ? null : String(v.iops), null),
        encrypted: v.encrypted ?? false,
        kmsKeyId: v.encrypted ? this.#keyArn(v.kmsKeyId ?? this.#defaultKey(spec.accountId, spec.region), ctx) : null, tags: {},
        createTime: new Date().toISOString(), file,
        attachment: { instanceId, device: v.device, state: 'attached', time: new Date().toISOString(), loop: null, name: null, deleteOnTermination: v.deleteOnTermination ?? true, seq: ++this.#attachSeq },
      })
    }
    return instanceId
  }

  /** Registers an AMI (private to its owner unless public or shared); returns its id. */
  addImage(spec: Partial<Image> & { ownerId: string; region: string }): string {
    const imageId = spec.imageId ?? hexId('ami')
    this.images.set(imageId, {
      imageId, public: false, launchPermissions: [], name: `image-${imageId}`, architecture: 'x86_64', rootDeviceName: '/dev/xvda', ...spec,
    })
    return imageId
  }

  /** A subnet of a VPC (of its own unless `vpcId` says), in one AZ; returns its id. */
  addSubnet(spec: { ownerId: string; region: string; availabilityZone: string; vpcId?: string }): string {
    const subnetId = hexId('subnet')
    this.subnets.set(subnetId, { subnetId, vpcId: spec.vpcId ?? hexId('vpc'), ...spec })
    return subnetId
  }

  addSecurityGroup(spec: { ownerId: string; region: string; vpcId: string; groupName?: string }): string {
    const groupId = hexId('sg')
    this.securityGroups.set(groupId, { groupId, groupName: spec.groupName ?? groupId, ...spec })
    return groupId
  }

  /** The default VPC of an account in a Region, or null when it has none. */
  defaultVpc(accountId: string, region: string): string | null {
    if (this.withoutDefaultVpc.has(`${accountId}/${region}`)) return null
    return `vpc-${createHash('sha256').update(`${accountId}/${region}`).digest('hex').slice(0, 17)}`
  }

  /** An image the caller may launch in the request's Region, or InvalidAMIID.NotFound. */
  #visibleImage(id: string | null, ctx: { accountId: string; region: string }): Image {
    const i = id ? this.images.get(id) : undefined
    if (!i || i.region !== ctx.region || !(i.ownerId === ctx.accountId || i.public || i.launchPermissions.includes(ctx.accountId))) {
      throw new Ec2Error('InvalidAMIID.NotFound', `The image id '[${id}]' does not exist`)
    }
    return i
  }

  #subnet(id: string | null, ctx: Ctx): Subnet {
    const s = id ? this.subnets.get(id) : undefined
    if (!s || s.ownerId !== ctx.accountId || s.region !== ctx.region) throw new Ec2Error('InvalidSubnetID.NotFound', `The subnet ID '${id}' does not exist`)
    return s
  }

  #securityGroup(id: string, ctx: Ctx): SecurityGroup {
    const g = this.securityGroups.get(id)
    if (!g || g.ownerId !== ctx.accountId || g.region !== ctx.region) throw new Ec2Error('InvalidGroup.NotFound', `The security group '${id}' does not exist`)
    return g
  }

  addSnapshot(spec: SnapshotSpec): string {
    const snapshotId = `snap-${randomBytes(8).toString('hex').slice(0, 17)}`
    const ownerId = spec.ownerId ?? this.#options.instance.accountId
    const region = spec.region ?? this.#options.instance.region
    this.snapshots.set(snapshotId, {
      snapshotId, image: spec.image, sizeGiB: spec.sizeGiB, encrypted: spec.encrypted ?? false,
      kmsKeyId: spec.encrypted ? (spec.kmsKeyId ?? awsEbs(region, ownerId)) : null,
      ownerId, region, sharedWith: spec.sharedWith ?? [], state: 'completed', statusMessage: null, volumeId: spec.volumeId ?? null,
      tags: {}, startTime: new Date().toISOString(), description: '', deleted: false,
    })
    return snapshotId
  }

  /**
   * Takes a device name of the worker instance: an empty volume of its own attached there (not
   * exposed as a device), as the instance's data volumes or another program's would be; with
   * `volumeId`, under that id (a test that exposes the device itself, as an attached volume).
   */
  async occupyDevice(device: string, volumeId = hexId('vol')): Promise<string> {
    const { instance, dir } = this.#options
    const file = join(dir, `${volumeId}.img`)
    await (await open(file, 'w')).close()
    const now = new Date().toISOString()
    this.volumes.set(volumeId, {
      volumeId, ownerId: instance.accountId, region: instance.region, sizeGiB: 1, snapshotId: null, availabilityZone: instance.availabilityZone, state: 'in-use',
      stateReason: null, volumeType: 'gp3', ...volumePerformance('gp3', 1, null, null), encrypted: false, kmsKeyId: null, tags: {}, createTime: now, file,
      attachment: { instanceId: instance.instanceId, device, state: 'attached', time: now, loop: null, name: null, deleteOnTermination: false, seq: ++this.#attachSeq },
    })
    return volumeId
  }

  /** Detaches a volume (as someone else's DetachVolume would): its device name is free again. */
  freeDevice(volumeId: string): void {
    this.#finishDetach(this.volumes.get(volumeId)!)
  }

  /** The volumes attached to an instance, in the order they were attached (its block device mapping). */
  attachedTo(instanceId: string): Volume[] {
    return [...this.volumes.values()].filter((v) => v.attachment?.instanceId === instanceId && v.state !== 'deleted').sort((a, b) => a.attachment!.seq - b.attachment!.seq)
  }

  async #run(action: string, p: URLSearchParams, ctx: Ctx): Promise<string> {
    const { world } = this.#options
    const refused = world ? world.authorizeAll(ctx.principal, 'ec2', action, ctx.region, this.#authorizationOf(action, p, ctx)) : null
    if (refused) {
      throw new Ec2Error('UnauthorizedOperation', `You are not authorized to perform this operation. User: ${ctx.principal.arn} is not authorized to perform: ` +
        `${refused.action} on resource: ${refused.resource} because no identity-based policy allows the ${refused.action} action`)
    }
    if (p.get('DryRun') === 'true') {
      this.#validate(action, p, ctx)
      throw new Ec2Error('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.')
    }
    return this.#dispatch(action, p, ctx)
  }

  /** What a DryRun request is checked for besides the permission: the snapshot it names, CreateVolume's parameters. */
  #validate(action: string, p: URLSearchParams, ctx: Ctx): void {
    if (action === 'DeleteSnapshot' || action === 'ModifySnapshotAttribute') this.#visibleSnapshot(p.get('SnapshotId'), ctx)
    if (action === 'CopySnapshot') this.#visibleSnapshot(p.get('SourceSnapshotId'), { accountId: ctx.accountId, region: p.get('SourceRegion') ?? ctx.region })
    if (action === 'CreateVolume') {
      const snapshot = p.get('SnapshotId') ? this.#visibleSnapshot(p.get('SnapshotId'), ctx) : null
      volumePerformance(p.get('VolumeType') ?? 'gp2', Number(p.get('Size') ?? snapshot?.sizeGiB ?? 1), p.get('Iops'), p.get('Throughput'))
    }
  }

  /** What IAM decides for an EC2 call: each resource it touches, with its context (see the top). */
  #authorizationOf(action: string, p: URLSearchParams, ctx: Ctx): AuthorizationRequest[] {
    const arn = (type: string, id: string, account = ctx.accountId): string => `arn:aws:ec2:${ctx.region}:${account}:${type}/${id}`
    const requestTags: Record<string, string> = {}
    for (let i = 1; p.has(`TagSpecification.${i}.ResourceType`); i++) {
      for (let j = 1; p.has(`TagSpecification.${i}.Tag.${j}.Key`); j++) requestTags[p.get(`TagSpecification.${i}.Tag.${j}.Key`)!] = p.get(`TagSpecification.${i}.Tag.${j}.Value`) ?? ''
    }
    if (action === 'CreateTags') for (let j = 1; p.has(`Tag.${j}.Key`); j++) requestTags[p.get(`Tag.${j}.Key`)!] = p.get(`Tag.${j}.Value`) ?? ''
    const request: ConditionContext = {
      ...Object.fromEntries(Object.entries(requestTags).map(([k, v]) => [`aws:RequestTag/${k}`, v])),
      ...(Object.keys(requestTags).length ? { 'aws:TagKeys': Object.keys(requestTags) } : {}),
    }
    const withTags = (tags: Record<string, string> | undefined): ConditionContext => ({
      ...request, ...Object.fromEntries(Object.entries(tags ?? {}).flatMap(([k, v]) => [[`aws:ResourceTag/${k}`, v], [`ec2:ResourceTag/${k}`, v]])),
    })
    const volume = (id: string | null) => ({ resource: arn('volume', id ?? '*'), context: withTags(id ? this.volumes.get(id)?.tags : undefined) })
    const snapshot = (id: string | null) => ({ resource: arn('snapshot', id ?? '*', ''), context: withTags(id ? this.snapshots.get(id)?.tags : undefined) })
    const instance = (id: string | null) => ({ resource: arn('instance', id ?? '*'), context: withTags(id ? this.instances.get(id)?.tags : undefined) })
    let resources: Array<{ resource: string; context: ConditionContext }>
    switch (action) {
      case 'CreateVolume':
        resources = [volume(null), ...(p.get('SnapshotId') ? [snapshot(p.get('SnapshotId'))] : [])]
        break
      case 'AttachVolume':
      case 'DetachVolume': {
        const id = p.get('VolumeId')
        resources = [volume(id), instance(p.get('InstanceId') ?? (id ? this.volumes.get(id)?.attachment?.instanceId ?? null : null))]
        break
      }
      case 'DeleteVolume':
        resources = [volume(p.get('VolumeId'))]
        break
      case 'CreateSnapshot':
        resources = [volume(p.get('VolumeId')), snapshot(null)]
        break
      case 'CreateSnapshots': {
        const id = p.get('InstanceSpecification.InstanceId')
        resources = [instance(id), ...(id ? this.attachedTo(id).map((v) => volume(v.volumeId)) : []), snapshot(null)]
        break
      }
      case 'CopySnapshot':
        resources = [snapshot(null), snapshot(p.get('SourceSnapshotId'))]
        break
      case 'DeleteSnapshot':
        resources = [snapshot(p.get('SnapshotId'))]
        break
      case 'ModifySnapshotAttribute': {
        // Who the request adds or removes, as condition keys (see the top).
        const change = (op: 'Add' | 'Remove', field: 'UserId' | 'Group'): string[] => {
          const out: string[] = []
          for (let i = 1; p.has(`CreateVolumePermission.${op}.${i}.${field}`); i++) out.push(p.get(`CreateVolumePermission.${op}.${i}.${field}`)!)
          if ((p.get('OperationType') ?? 'add') === op.toLowerCase()) out.push(...listOf(p, field))
          return out
        }
        const keys: ConditionContext = {}
        for (const op of ['Add', 'Remove'] as const) {
          const users = change(op, 'UserId')
          const groups = change(op, 'Group')
          if (users.length) keys[`ec2:${op}/userId`] = users
          if (groups.length) keys[`ec2:${op}/group`] = groups
        }
        if (p.get('Attribute')) keys[`ec2:Attribute/${p.get('Attribute')}`] = p.get('Attribute')!
        const target = snapshot(p.get('SnapshotId'))
        resources = [{ ...target, context: { ...target.context, ...keys } }]
        break
      }
      case 'CreateTags':
        resources = listOf(p, 'ResourceId').map((id) => (id.startsWith('vol-') ? volume(id) : id.startsWith('i-') ? instance(id) : snapshot(id)))
        break
      case 'RunInstances':
        resources = [instance(null), { resource: arn('image', p.get('ImageId') ?? '*', ''), context: request }, volume(null),
          { resource: arn('network-interface', '*'), context: request },
          ...(p.get('SubnetId') ? [{ resource: arn('subnet', p.get('SubnetId')!), context: request }] : []),
          ...listOf(p, 'SecurityGroupId').map((id) => ({ resource: arn('security-group', id), context: request }))]
        break
      case 'StopInstances':
      case 'StartInstances':
      case 'TerminateInstances':
        resources = listOf(p, 'InstanceId').map(instance)
        break
      default: // Describe*, the account's EBS default key
        resources = [{ resource: '*', context: request }]
    }
    const requests: AuthorizationRequest[] = resources.map((r) => ({ action: `ec2:${action}`, ...r }))
    // Tags on creation: ec2:CreateTags on each new resource of a tagged type, with ec2:CreateAction.
    const types: Record<string, string> = { volume: 'volume', snapshot: 'snapshot', instance: 'instance' }
    for (let i = 1; p.has(`TagSpecification.${i}.ResourceType`); i++) {
      const type = types[p.get(`TagSpecification.${i}.ResourceType`)!]
      if (!type || !p.has(`TagSpecification.${i}.Tag.1.Key`)) continue
      requests.push({ action: 'ec2:CreateTags', resource: arn(type, '*', type === 'snapshot' ? '' : ctx.accountId), context: { ...request, 'ec2:CreateAction': action } })
    }
    return requests
  }

  async #dispatch(action: string, p: URLSearchParams, ctx: Ctx): Promise<string> {
    this.#checkTagSpecifications(p)
    switch (action) {
      case 'CreateVolume':
        return this.#volumeXml(await this.#createVolume(p, ctx), false)
      case 'DescribeVolumes':
        return `<volumeSet>${this.#describe(p, ctx).map((v) => `<item>${this.#volumeXml(v, true)}</item>`).join('')}</volumeSet>`
      case 'AttachVolume':
        return this.#attachmentXml(this.#attach(p, ctx))
      case 'DetachVolume':
        return this.#attachmentXml(this.#detach(p, ctx))
      case 'DeleteVolume':
        await this.#delete(p, ctx)
        return '<return>true</return>'
      case 'GetEbsDefaultKmsKeyId':
        return el('kmsKeyId', this.#defaultKey(ctx.accountId, ctx.region))
      case 'ModifyEbsDefaultKmsKeyId': {
        const ref = p.get('KmsKeyId')
        if (!ref) throw new Ec2Error('MissingParameter', 'The request must contain the parameter KmsKeyId')
        const key = this.#options.kms?.resolve(ref, ctx) ?? this.#options.kms?.resolve(ref)
        if (this.#options.kms && (!key || key.region !== ctx.region)) throw new Ec2Error('InvalidParameterValue', `Invalid KMS key: ${ref}`)
        const arn = key ? KmsStandIn.arn(key) : ref
        this.defaultKeys.set(`${ctx.accountId}/${ctx.region}`, arn)
        return el('kmsKeyId', arn)
      }
      case 'CreateSnapshot':
        return this.#snapshotXml(await this.#createSnapshot(this.#volume(p.get('VolumeId'), ctx), this.#tagsOf(p, 'snapshot'), p.get('Description') ?? '', ctx))
      case 'CreateSnapshots':
        return this.#createSnapshots(p, ctx)
      case 'CopySnapshot':
        return this.#copySnapshot(p, ctx)
      case 'DeleteSnapshot':
        this.#deleteSnapshot(p, ctx)
        return '<return>true</return>'
      case 'DescribeSnapshots':
        return `<snapshotSet>${this.#describeSnapshots(p, ctx).map((x) => `<item>${this.#snapshotXml(x)}</item>`).join('')}</snapshotSet>`
      case 'ModifySnapshotAttribute':
        this.#share(p, ctx)
        return '<return>true</return>'
      case 'CreateTags':
        this.#createTags(p, ctx)
        return '<return>true</return>'
      case 'DescribeInstances':
        return this.#describeInstances(p, ctx)
      case 'RunInstances':
        return this.#runInstances(p, ctx)
      case 'DescribeImages':
        return this.#describeImages(p, ctx)
      case 'DescribeSubnets': {
        const ids = listOf(p, 'SubnetId')
        const found = ids.length ? ids.map((id) => this.#subnet(id, ctx)) : [...this.subnets.values()].filter((x) => x.ownerId === ctx.accountId && x.region === ctx.region)
        return `<subnetSet>${found.map((x) => `<item>${el('subnetId', x.subnetId)}${el('state', 'available')}${el('vpcId', x.vpcId)}${el('availabilityZone', x.availabilityZone)}` +
          `${el('ownerId', x.ownerId)}${el('defaultForAz', false)}</item>`).join('')}</subnetSet>`
      }
      case 'DescribeSecurityGroups': {
        const ids = listOf(p, 'GroupId')
        const found = ids.length ? ids.map((id) => this.#securityGroup(id, ctx)) : [...this.securityGroups.values()].filter((x) => x.ownerId === ctx.accountId && x.region === ctx.region)
        return `<securityGroupInfo>${found.map((x) => `<item>${el('ownerId', x.ownerId)}${el('groupId', x.groupId)}${el('groupName', x.groupName)}` +
          `${el('groupDescription', x.groupName)}${el('vpcId', x.vpcId)}</item>`).join('')}</securityGroupInfo>`
      }
      case 'DescribeAccountAttributes': {
        const names = listOf(p, 'AttributeName')
        const attributes: Record<string, string> = { 'default-vpc': this.defaultVpc(ctx.accountId, ctx.region) ?? 'none', 'supported-platforms': 'VPC' }
        return `<accountAttributeSet>${(names.length ? names : Object.keys(attributes)).filter((n) => n in attributes).map((n) => `<item>${el('attributeName', n)}` +
          `<attributeValueSet><item>${el('attributeValue', attributes[n])}</item></attributeValueSet></item>`).join('')}</accountAttributeSet>`
      }
      case 'StopInstances':
      case 'StartInstances':
      case 'TerminateInstances':
        return this.#changeInstances(action, p, ctx)
      default:
        throw new Ec2Error('InvalidAction', `The action ${action} is not valid for this web service.`)
    }
  }

  #volume(id: string | null, ctx: Ctx): Volume {
    const v = id ? this.volumes.get(id) : undefined
    if (!v || v.state === 'deleted' || v.ownerId !== ctx.accountId || v.region !== ctx.region || this.#hidden(v.volumeId)) throw new Ec2Error('InvalidVolume.NotFound', `The volume '${id}' does not exist.`)
    return v
  }

  #instance(id: string | null, ctx: Ctx): Instance {
    const i = id ? this.instances.get(id) : undefined
    if (!i || i.ownerId !== ctx.accountId || i.region !== ctx.region || i.state === 'terminated' || this.#hidden(i.instanceId)) {
      throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`)
    }
    return i
  }

  #visibleSnapshot(id: string | null, ctx: { accountId: string; region: string }): Snapshot {
    const s = id ? this.snapshots.get(id) : undefined
    const visible = s && !s.deleted && s.region === ctx.region && (s.ownerId === ctx.accountId || s.sharedWith.includes(ctx.accountId))
    if (!s || !visible || this.#hidden(s.snapshotId)) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
    return s
  }

  async #createVolume(p: URLSearchParams, ctx: Ctx): Promise<Volume> {
    const token = p.get('ClientToken')
    if (token && this.#clientTokens.has(`${ctx.accountId}/${token}`)) return this.volumes.get(this.#clientTokens.get(`${ctx.accountId}/${token}`)!)!
    const az = p.get('AvailabilityZone')
    if (!az) throw new Ec2Error('MissingParameter', 'The request must contain the parameter AvailabilityZone')
    if (!az.startsWith(ctx.region)) throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${az}]`)
    const snapshotId = p.get('SnapshotId')
    const snapshot = snapshotId ? this.#visibleSnapshot(snapshotId, ctx) : null
    if (snapshot && snapshot.state !== 'completed') throw new Ec2Error('IncorrectState', `Snapshot '${snapshotId}' is not 'completed'.`)
    const size = p.get('Size') ? Number(p.get('Size')) : snapshot?.sizeGiB
    if (!size) throw new Ec2Error('MissingParameter', 'The request must contain the parameter size or snapshotId')
    if (snapshot && size < snapshot.sizeGiB) {
      throw new Ec2Error('InvalidParameterValue', `Volume of ${size}GiB is too small; minimum is ${snapshot.sizeGiB}GiB.`)
    }
    const volumeType = p.get('VolumeType') ?? 'gp2'
    const performance = volumePerformance(volumeType, size, p.get('Iops'), p.get('Throughput'))
    const { encrypted, keyRef, key } = this.#newKey(p, snapshot, ctx)
    // What EBS asks KMS for, on the caller's behalf: read the snapshot's key, write under the new one.
    const uses: Array<{ ref: string; actions: string[] }> = []
    if (snapshot?.encrypted && snapshot.kmsKeyId) {
      const same = key === this.#keyArn(snapshot.kmsKeyId, { accountId: snapshot.ownerId, region: snapshot.region })
      uses.push({ ref: snapshot.kmsKeyId, actions: same ? [...READ_KEY, 'kms:CreateGrant'] : [...READ_KEY, 'kms:ReEncryptFrom'] })
      if (!same && keyRef) uses.push({ ref: keyRef, actions: [...NEW_KEY, 'kms:ReEncryptTo'] })
    } else if (keyRef) {
      uses.push({ ref: keyRef, actions: NEW_KEY })
    }
    const refused = this.#useKeys(ctx, uses, 'ec2:CreateVolume')
    const volumeId = hexId('vol')
    const tags = this.#tagsOf(p, 'volume')
    const file = join(this.#options.dir, `${volumeId}.img`)
    if (snapshot && !refused.length) await copyFile(snapshot.image, file)
    const handle = await open(file, snapshot && !refused.length ? 'r+' : 'w')
    await handle.truncate(refused.length ? 0 : size * this.#options.bytesPerGiB)
    await handle.close()
    const volume: Volume = {
      volumeId, ownerId: ctx.accountId, region: ctx.region, sizeGiB: size, snapshotId, availabilityZone: az, state: 'creating', stateReason: null,
      volumeType, ...performance,
      encrypted, kmsKeyId: key, tags, createTime: new Date().toISOString(), file, attachment: null,
    }
    this.volumes.set(volumeId, volume)
    this.#born(volumeId)
    if (token) this.#clientTokens.set(`${ctx.accountId}/${token}`, volumeId)
    if (refused.length) {
      // KMS refused EBS: the volume is rolled back and simply disappears (once it was seen, with a lag).
      this.#onceSeen(volumeId, () => setTimeout(() => {
        if (volume.state !== 'creating') return
        volume.state = 'deleted'
        volume.stateReason = `KMS refused: ${refused.join(', ')}`
        void rm(file, { force: true })
      }, this.#options.delayMs))
    } else {
      setTimeout(() => {
        if (volume.state === 'creating') volume.state = 'available'
      }, this.#options.delayMs)
    }
    return volume
  }

  #describe(p: URLSearchParams, ctx: Ctx): Volume[] {
    const ids = listOf(p, 'VolumeId')
    for (const id of ids) this.#volume(id, ctx)
    const filters = filtersOf(p)
    return [...this.volumes.values()].filter((v) => {
      if (v.state === 'deleted' || v.ownerId !== ctx.accountId || v.region !== ctx.region || (ids.length && !ids.includes(v.volumeId))) return false
      return filters.every((f) => {
        if (f.name.startsWith('tag:')) return f.values.includes(v.tags[f.name.slice(4)] ?? '\u0000')
        if (f.name === 'status') return f.values.includes(v.state)
        if (f.name === 'attachment.instance-id') return f.values.includes(v.attachment?.instanceId ?? '')
        if (f.name === 'volume-id') return f.values.includes(v.volumeId)
        throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`)
      }) && (ids.length > 0 || !this.#hidden(v.volumeId)) // named ones were looked up (and counted) above
    })
  }

  #attach(p: URLSearchParams, ctx: Ctx): Volume {
    const v = this.#volume(p.get('VolumeId'), ctx)
    const instanceId = p.get('InstanceId')
    const device = p.get('Device')
    if (!device) throw new Ec2Error('MissingParameter', 'The request must contain the parameter device')
    const instance = this.#instance(instanceId, ctx)
    if (v.attachment) throw new Ec2Error('VolumeInUse', `${v.volumeId} is already attached to an instance`)
    if (v.state !== 'available') throw new Ec2Error('IncorrectState', `The volume '${v.volumeId}' is '${v.state}'`)
    if (instance.state !== 'running' && instance.state !== 'stopped') throw new Ec2Error('IncorrectInstanceState', `The instance '${instanceId}' is not in a valid state for this operation.`)
    if (v.availabilityZone !== instance.availabilityZone) {
      throw new Ec2Error('InvalidVolume.ZoneMismatch', `The volume '${v.volumeId}' is not in the same availability zone as instance '${instanceId}'`)
    }
    if (this.attachedTo(instance.instanceId).some((x) => x.attachment!.device === device)) {
      throw new Ec2Error('InvalidParameterValue', `Invalid value '${device}' for unixDevice. Attachment point ${device} is already in use`)
    }
    v.state = 'in-use'
    v.attachment = { instanceId: instance.instanceId, device, state: 'attaching', time: new Date().toISOString(), loop: null, name: null, deleteOnTermination: false, seq: ++this.#attachSeq }
    setTimeout(() => {
      if (!instance.plugged) {
        if (v.attachment?.state === 'attaching') v.attachment.state = 'attached'
        return
      }
      void this.#plug(v)
    }, this.#options.delayMs)
    return v
  }

  /** The volume shows up as an NVMe device: a loop device with the EBS identity. */
  async #plug(v: Volume): Promise<void> {
    if (!v.attachment || v.attachment.state !== 'attaching') return
    const { roots } = this.#options
    const loop = execFileSync('losetup', ['--find', '--show', v.file], { encoding: 'utf8' }).trim()
    const name = `nvme${this.#nvmeIndex++}n1`
    const serial = serialOf(v.volumeId)
    await this.#options.exposeDevice(v, name, loop)
    await symlink(join(roots.devDir, name), join(roots.byIdDir, `nvme-Amazon_Elastic_Block_Store_${serial}`))
    v.attachment.loop = loop
    v.attachment.name = name
    v.attachment.state = 'attached'
  }

  async #unplug(v: Volume): Promise<void> {
    const a = v.attachment
    if (!a?.loop || !a.name) return
    const { roots } = this.#options
    await unlink(join(roots.byIdDir, `nvme-Amazon_Elastic_Block_Store_${serialOf(v.volumeId)}`)).catch(() => {})
    await unlink(join(roots.devDir, a.name)).catch(() => {})
    await rm(join(roots.sysBlock, a.name), { recursive: true, force: true })
    execFileSync('losetup', ['-d', a.loop])
    a.loop = null
    a.name = null
  }

  #detach(p: URLSearchParams, ctx: Ctx): Volume {
    const v = this.#volume(p.get('VolumeId'), ctx)
    if (!v.attachment) throw new Ec2Error('IncorrectState', `Volume '${v.volumeId}' is in the 'available' state.`)
    const instance = this.instances.get(v.attachment.instanceId)
    if (instance && v.attachment.device === instance.rootDeviceName && instance.state !== 'stopped' && instance.state !== 'terminated') {
      throw new Ec2Error('IncorrectState', `Unable to detach root volume '${v.volumeId}' from instance '${instance.instanceId}': the instance must be stopped`)
    }
    v.attachment.state = 'detaching'
    const snapshot = { ...v, attachment: { ...v.attachment } }
    setTimeout(() => this.#finishDetach(v), this.#options.delayMs)
    return snapshot
  }

  #finishDetach(v: Volume): void {
    void this.#unplug(v).then(() => {
      v.attachment = null
      if (v.state === 'in-use') v.state = 'available'
    })
  }

  async #delete(p: URLSearchParams, ctx: Ctx): Promise<void> {
    const v = this.#volume(p.get('VolumeId'), ctx)
    if (v.attachment || v.state === 'in-use') throw new Ec2Error('VolumeInUse', `Volume ${v.volumeId} is currently attached to ${v.attachment?.instanceId}`)
    v.state = 'deleted'
    await rm(v.file, { force: true })
  }

  /** CreateTags on the caller's volumes and snapshots; an unknown id fails the whole call. */
  #createTags(p: URLSearchParams, ctx: Ctx): void {
    const ids: string[] = []
    for (let i = 1; p.has(`ResourceId.${i}`); i++) ids.push(p.get(`ResourceId.${i}`)!)
    const targets = ids.map((id) => {
      if (id.startsWith('vol-')) return this.#volume(id, ctx)
      const snap = this.snapshots.get(id)
      if (!snap || snap.deleted || snap.ownerId !== ctx.accountId || snap.region !== ctx.region || this.#hidden(snap.snapshotId)) {
        throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
      }
      return snap
    })
    const adding: Record<string, string> = {}
    for (let j = 1; p.has(`Tag.${j}.Key`); j++) adding[p.get(`Tag.${j}.Key`)!] = p.get(`Tag.${j}.Value`) ?? ''
    for (const target of targets) checkTags({ ...target.tags, ...adding }, Object.keys(adding))
    for (const target of targets) Object.assign(target.tags, adding)
  }

  /** Every TagSpecification of a create request, before anything is created: the tag rules. */
  #checkTagSpecifications(p: URLSearchParams): void {
    for (let i = 1; p.has(`TagSpecification.${i}.ResourceType`); i++) {
      const tags: Record<string, string> = {}
      for (let j = 1; p.has(`TagSpecification.${i}.Tag.${j}.Key`); j++) tags[p.get(`TagSpecification.${i}.Tag.${j}.Key`)!] = p.get(`TagSpecification.${i}.Tag.${j}.Value`) ?? ''
      checkTags(tags, Object.keys(tags))
    }
  }

  #tagsOf(p: URLSearchParams, resourceType: string): Record<string, string> {
    const tags: Record<string, string> = {}
    for (let i = 1; p.has(`TagSpecification.${i}.ResourceType`); i++) {
      if (p.get(`TagSpecification.${i}.ResourceType`) !== resourceType) continue
      for (let j = 1; p.has(`TagSpecification.${i}.Tag.${j}.Key`); j++) {
        tags[p.get(`TagSpecification.${i}.Tag.${j}.Key`)!] = p.get(`TagSpecification.${i}.Tag.${j}.Value`) ?? ''
      }
    }
    return tags
  }

  async #createSnapshot(v: Volume, tags: Record<string, string>, description: string, ctx: Ctx): Promise<Snapshot> {
    const snapshotId = hexId('snap')
    const image = join(this.#options.dir, `${snapshotId}.img`)
    await copyFile(v.file, image)
    const snap: Snapshot = {
      snapshotId, image, sizeGiB: v.sizeGiB, encrypted: v.encrypted, kmsKeyId: v.kmsKeyId, ownerId: ctx.accountId, region: ctx.region,
      sharedWith: [], state: 'pending', statusMessage: null, volumeId: v.volumeId, tags, startTime: new Date().toISOString(), description, deleted: false,
    }
    this.snapshots.set(snapshotId, snap)
    this.#born(snapshotId)
    if (!this.holdSnapshots) setTimeout(() => (snap.state = 'completed'), this.#options.delayMs)
    return snap
  }

  /** CreateSnapshots: crash-consistent snapshots of every EBS volume of an instance. */
  async #createSnapshots(p: URLSearchParams, ctx: Ctx): Promise<string> {
    const instance = this.#instance(p.get('InstanceSpecification.InstanceId'), ctx)
    const excludeBoot = p.get('InstanceSpecification.ExcludeBootVolume') === 'true'
    const tags = this.#tagsOf(p, 'snapshot')
    const items: string[] = []
    for (const v of this.attachedTo(instance.instanceId)) {
      if (excludeBoot && v.attachment!.device === instance.rootDeviceName) continue
      const s = await this.#createSnapshot(v, { ...(p.get('CopyTagsFromSource') === 'volume' ? v.tags : {}), ...tags }, p.get('Description') ?? '', ctx)
      items.push(`<item>${el('description', s.description)}${tagSet(s.tags)}${el('encrypted', s.encrypted)}${el('volumeId', s.volumeId)}${el('state', s.state)}` +
        `${el('volumeSize', s.sizeGiB)}${el('startTime', s.startTime)}${el('progress', '0%')}${el('ownerId', s.ownerId)}${el('snapshotId', s.snapshotId)}</item>`)
    }
    return `<snapshotSet>${items.join('')}</snapshotSet>`
  }

  /** CopySnapshot into the request's Region, re-encrypted with KmsKeyId when given. */
  async #copySnapshot(p: URLSearchParams, ctx: Ctx): Promise<string> {
    const source = this.#visibleSnapshot(p.get('SourceSnapshotId'), { accountId: ctx.accountId, region: p.get('SourceRegion') ?? ctx.region })
    if (source.state !== 'completed') throw new Ec2Error('IncorrectState', `Snapshot '${source.snapshotId}' is not 'completed'.`)
    const { encrypted, keyRef, key } = this.#newKey(p, source, ctx)
    const uses: Array<{ ref: string; actions: string[] }> = []
    if (source.encrypted && source.kmsKeyId) uses.push({ ref: source.kmsKeyId, actions: [...READ_KEY, 'kms:ReEncryptFrom'] })
    if (keyRef) uses.push({ ref: keyRef, actions: [...NEW_KEY, 'kms:ReEncryptTo'] })
    const refused = this.#useKeys(ctx, uses, 'ec2:CopySnapshot')
    const snapshotId = hexId('snap')
    const image = join(this.#options.dir, `${snapshotId}.img`)
    await copyFile(source.image, image)
    const snap: Snapshot = {
      snapshotId, image, sizeGiB: source.sizeGiB, encrypted, kmsKeyId: key, ownerId: ctx.accountId, region: ctx.region, sharedWith: [],
      state: 'pending', statusMessage: null, volumeId: source.volumeId, tags: this.#tagsOf(p, 'snapshot'), startTime: new Date().toISOString(),
      description: p.get('Description') ?? `Copied for DestinationAmi from ${source.snapshotId}`, deleted: false,
    }
    this.snapshots.set(snapshotId, snap)
    this.#born(snapshotId)
    setTimeout(() => {
      if (refused.length) {
        snap.state = 'error'
        snap.statusMessage = `Given key ID is not accessible: ${refused.join(', ')}`
      } else {
        snap.state = 'completed'
      }
    }, this.#options.delayMs)
    return `${el('snapshotId', snapshotId)}${tagSet(snap.tags)}`
  }

  #deleteSnapshot(p: URLSearchParams, ctx: Ctx): void {
    const s = this.#visibleSnapshot(p.get('SnapshotId'), ctx)
    if (s.ownerId !== ctx.accountId) throw new Ec2Error('UnauthorizedOperation', `You do not own snapshot ${s.snapshotId}`)
    s.deleted = true
    void rm(s.image, { force: true }).catch(() => {})
  }

  #describeSnapshots(p: URLSearchParams, ctx: Ctx): Snapshot[] {
    const ids = listOf(p, 'SnapshotId')
    const owners = listOf(p, 'Owner').map((o) => (o === 'self' ? ctx.accountId : o))
    const visible = [...this.snapshots.values()].filter((x) => !x.deleted && x.region === ctx.region && (x.ownerId === ctx.accountId || x.sharedWith.includes(ctx.accountId)))
    for (const id of ids) {
      if (!visible.some((x) => x.snapshotId === id) || this.#hidden(id)) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
    }
    const filters = filtersOf(p)
    return visible.filter((x) => (!ids.length || ids.includes(x.snapshotId)) && (!owners.length || owners.includes(x.ownerId)) && filters.every((f) => {
      if (f.name.startsWith('tag:')) return f.values.includes(x.tags[f.name.slice(4)] ?? '\u0000')
      if (f.name === 'status') return f.values.includes(x.state)
      if (f.name === 'owner-id') return f.values.includes(x.ownerId)
      if (f.name === 'snapshot-id') return f.values.includes(x.snapshotId)
      if (f.name === 'tag-key') return f.values.some((k) => k in x.tags)
      throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`)
    }) && (ids.length > 0 || !this.#hidden(x.snapshotId))) // named ones were counted above
  }

  /** ModifySnapshotAttribute createVolumePermission add/remove: sharing, refused for AWS managed keys. */
  #share(p: URLSearchParams, ctx: Ctx): void {
    const id = p.get('SnapshotId')
    const snap = id ? this.snapshots.get(id) : undefined
    if (!snap || snap.deleted || snap.ownerId !== ctx.accountId || snap.region !== ctx.region || this.#hidden(snap.snapshotId)) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
    const adds: string[] = []
    const removes: string[] = []
    for (let i = 1; p.has(`CreateVolumePermission.Add.${i}.UserId`); i++) adds.push(p.get(`CreateVolumePermission.Add.${i}.UserId`)!)
    for (let i = 1; p.has(`CreateVolumePermission.Remove.${i}.UserId`); i++) removes.push(p.get(`CreateVolumePermission.Remove.${i}.UserId`)!)
    const userIds = listOf(p, 'UserId')
    if (p.get('OperationType') === 'remove') removes.push(...userIds)
    else adds.push(...userIds)
    if (!adds.length && !removes.length) throw new Ec2Error('MissingParameter', 'no account to share with')
    if (adds.length && snap.encrypted && snap.kmsKeyId && this.#options.isAwsManagedKey(snap.kmsKeyId)) {
      throw new Ec2Error('OperationNotPermitted', 'Encrypted snapshots with EBS default key cannot be shared')
    }
    for (const a of adds) if (!snap.sharedWith.includes(a)) snap.sharedWith.push(a)
    snap.sharedWith = snap.sharedWith.filter((a) => !removes.includes(a))
  }

  #instanceXml(i: Instance): string {
    const mappings = this.attachedTo(i.instanceId).map((v) => `<item>${el('deviceName', v.attachment!.device)}<ebs>${el('volumeId', v.volumeId)}` +
      `${el('status', v.attachment!.state)}${el('attachTime', v.attachment!.time)}${el('deleteOnTermination', v.attachment!.deleteOnTermination)}</ebs></item>`).join('')
    return `<item>${el('instanceId', i.instanceId)}${el('imageId', i.imageId)}<instanceState>${el('code', STATE_CODES[i.state])}${el('name', i.state)}</instanceState>` +
      `${el('instanceType', i.instanceType)}${el('launchTime', i.launchTime)}<placement>${el('availabilityZone', i.availabilityZone)}${el('tenancy', 'default')}</placement>` +
      `${el('architecture', i.architecture)}${el('rootDeviceType', 'ebs')}${el('rootDeviceName', i.rootDeviceName)}<blockDeviceMapping>${mappings}</blockDeviceMapping>` +
      `${el('virtualizationType', 'hvm')}${el('subnetId', i.subnetId)}${el('vpcId', i.vpcId)}` +
      `${i.securityGroupIds?.length ? `<groupSet>${i.securityGroupIds.map((g) => `<item>${el('groupId', g)}</item>`).join('')}</groupSet>` : ''}${tagSet(i.tags)}</item>`
  }

  #reservationXml(instances: Instance[], ownerId: string): string {
    return `${el('reservationId', `r-${randomBytes(8).toString('hex').slice(0, 17)}`)}${el('ownerId', ownerId)}<groupSet/><instancesSet>${instances.map((i) => this.#instanceXml(i)).join('')}</instancesSet>`
  }

  #describeInstances(p: URLSearchParams, ctx: Ctx): string {
    const ids = listOf(p, 'InstanceId')
    for (const id of ids) this.#instance(id, ctx)
    const filters = filtersOf(p)
    const found = [...this.instances.values()].filter((i) => i.ownerId === ctx.accountId && i.region === ctx.region && (!ids.length || ids.includes(i.instanceId)) &&
      filters.every((f) => {
        if (f.name.startsWith('tag:')) return f.values.includes(i.tags[f.name.slice(4)] ?? '\u0000')
        if (f.name === 'instance-state-name') return f.values.includes(i.state)
        if (f.name === 'instance-id') return f.values.includes(i.instanceId)
        throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`)
      }) && (ids.length > 0 || !this.#hidden(i.instanceId))) // named ones were counted above
    return `<reservationSet>${found.map((i) => `<item>${this.#reservationXml([i], i.ownerId)}</item>`).join('')}</reservationSet>`
  }

  /** RunInstances: one instance from an image (any ami-… id), with an empty root volume of the image's. */
  async #runInstances(p: URLSearchParams, ctx: Ctx): Promise<string> {
    const token = p.get('ClientToken')
    if (token && this.#clientTokens.has(`${ctx.accountId}/run/${token}`)) {
      return this.#reservationXml([this.instances.get(this.#clientTokens.get(`${ctx.accountId}/run/${token}`)!)!], ctx.accountId)
    }
    const imageId = p.get('ImageId')
    if (!imageId || !/^ami-[0-9a-f]{8,17}$/.test(imageId)) throw new Ec2Error('InvalidAMIID.Malformed', `Invalid id: "${imageId}"`)
    if (p.get('MinCount') !== '1' || p.get('MaxCount') !== '1') throw new Ec2Error('InvalidParameterValue', 'this stand-in launches one instance at a time (MinCount = MaxCount = 1)')
    const image = this.#visibleImage(imageId, ctx)
    const subnet = p.has('SubnetId') ? this.#subnet(p.get('SubnetId'), ctx) : null
    const vpcId = subnet?.vpcId ?? this.defaultVpc(ctx.accountId, ctx.region)
    if (!vpcId) throw new Ec2Error('VPCIdNotSpecified', 'No default VPC for this user')
    const groups = listOf(p, 'SecurityGroupId').map((id) => this.#securityGroup(id, ctx))
    const stray = groups.find((g) => g.vpcId !== vpcId)
    if (stray) throw new Ec2Error('InvalidParameter', `Security group ${stray.groupId} and ${subnet ? `subnet ${subnet.subnetId}` : 'the default VPC'} belong to different networks.`)
    const placement = p.get('Placement.AvailabilityZone')
    // The stand-in's choice: EC2 documents no error for a Placement AZ other than the subnet's.
    if (subnet && placement && placement !== subnet.availabilityZone) throw new Ec2Error('InvalidParameterValue', `The subnet ${subnet.subnetId} is in ${subnet.availabilityZone}, not ${placement}`)
    const az = subnet?.availabilityZone ?? placement ?? `${ctx.region}a`
    if (!az.startsWith(ctx.region)) throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${az}]`)
    const instanceId = hexId('i')
    const instance: Instance = {
      instanceId, ownerId: ctx.accountId, region: ctx.region, availabilityZone: az, instanceType: p.get('InstanceType') ?? 'm1.small', imageId,
      rootDeviceName: image.rootDeviceName, state: 'pending', tags: this.#tagsOf(p, 'instance'), launchTime: new Date().toISOString(), architecture: image.architecture, plugged: false,
      ...(subnet ? { subnetId: subnet.subnetId } : {}), vpcId, securityGroupIds: groups.map((g) => g.groupId),
    }
    this.instances.set(instanceId, instance)
    this.#born(instanceId)
    if (token) this.#clientTokens.set(`${ctx.accountId}/run/${token}`, instanceId)
    // The image's root volume: 1 "GiB", unencrypted, deleted on termination.
    const volumeId = hexId('vol')
    const file = join(this.#options.dir, `${volumeId}.img`)
    const handle = await open(file, 'w')
    await handle.truncate(this.#options.bytesPerGiB)
    await handle.close()
    this.volumes.set(volumeId, {
      volumeId, ownerId: ctx.accountId, region: ctx.region, sizeGiB: 1, snapshotId: null, availabilityZone: az, state: 'in-use', stateReason: null,
      volumeType: 'gp3', ...volumePerformance('gp3', 1, null, null), encrypted: false, kmsKeyId: null, tags: this.#tagsOf(p, 'volume'), createTime: instance.launchTime, file,
      attachment: { instanceId, device: image.rootDeviceName, state: 'attached', time: instance.launchTime, loop: null, name: null, deleteOnTermination: true, seq: ++this.#attachSeq },
    })
    setTimeout(() => {
      if (instance.state === 'pending') instance.state = 'running'
    }, this.#options.delayMs)
    return this.#reservationXml([instance], ctx.accountId)
  }

  /** DescribeImages of ImageId.N (each must be visible: InvalidAMIID.NotFound), else those of Owner.N. */
  #describeImages(p: URLSearchParams, ctx: Ctx): string {
    const ids = listOf(p, 'ImageId')
    const owners = listOf(p, 'Owner').map((o) => (o === 'self' ? ctx.accountId : o))
    const found = ids.length ? ids.map((id) => this.#visibleImage(id, ctx))
      : [...this.images.values()].filter((i) => i.region === ctx.region && (!owners.length || owners.includes(i.ownerId)) && (i.ownerId === ctx.accountId || i.public || i.launchPermissions.includes(ctx.accountId)))
    return `<imagesSet>${found.map((i) => `<item>${el('imageId', i.imageId)}${el('imageLocation', `${i.ownerId}/${i.name}`)}${el('imageState', 'available')}` +
      `${el('imageOwnerId', i.ownerId)}${el('isPublic', i.public)}${el('architecture', i.architecture)}${el('imageType', 'machine')}${el('name', i.name)}` +
      `${el('rootDeviceType', 'ebs')}${el('rootDeviceName', i.rootDeviceName)}${el('virtualizationType', 'hvm')}</item>`).join('')}</imagesSet>`
  }

  #changeInstances(action: string, p: URLSearchParams, ctx: Ctx): string {
    const ids = listOf(p, 'InstanceId')
    const items = ids.map((id) => {
      const i = this.#instance(id, ctx)
      const previous = i.state
      const [now, then] = action === 'StopInstances' ? (['stopping', 'stopped'] as const)
        : action === 'StartInstances' ? (['pending', 'running'] as const)
        : (['shutting-down', 'terminated'] as const)
      if (action === 'StopInstances' && previous !== 'running' && previous !== 'pending') return { i, previous }
      if (action === 'StartInstances' && previous !== 'stopped') return { i, previous }
      i.state = now
      setTimeout(() => {
        i.state = then
        if (then === 'terminated') {
          for (const v of this.attachedTo(i.instanceId)) {
            const doomed = v.attachment!.deleteOnTermination
            this.#finishDetach(v)
            if (doomed) setTimeout(() => { v.state = 'deleted'; void rm(v.file, { force: true }) }, 0)
          }
        }
      }, this.#options.delayMs)
      return { i, previous }
    })
    return `<instancesSet>${items.map(({ i, previous }) => `<item>${el('instanceId', i.instanceId)}<currentState>${el('code', STATE_CODES[i.state])}${el('name', i.state)}</currentState>` +
      `<previousState>${el('code', STATE_CODES[previous])}${el('name', previous)}</previousState></item>`).join('')}</instancesSet>`
  }

  #snapshotXml(x: Snapshot): string {
    return (
      el('snapshotId', x.snapshotId) + el('volumeId', x.volumeId ?? '') + el('status', x.state) + el('statusMessage', x.statusMessage) + el('startTime', x.startTime) +
      el('progress', x.state === 'completed' ? '100%' : '0%') + el('ownerId', x.ownerId) + el('volumeSize', x.sizeGiB) + el('description', x.description) +
      el('encrypted', x.encrypted) + el('kmsKeyId', x.kmsKeyId) + tagSet(x.tags)
    )
  }

  #attachmentXml(v: Volume): string {
    const a = v.attachment!
    return el('attachTime', a.time) + el('device', a.device) + el('instanceId', a.instanceId) + el('status', a.state) + el('volumeId', v.volumeId)
  }

  #volumeXml(v: Volume, withAttachments: boolean): string {
    const attachments = withAttachments && v.attachment
      ? `<attachmentSet><item>${this.#attachmentXml(v)}${el('deleteOnTermination', v.attachment.deleteOnTermination)}</item></attachmentSet>`
      : withAttachments ? '<attachmentSet/>' : ''
    return (
      el('volumeId', v.volumeId) + el('size', v.sizeGiB) + el('snapshotId', v.snapshotId ?? '') + el('availabilityZone', v.availabilityZone) +
      el('status', v.state) + el('createTime', v.createTime) + attachments + el('volumeType', v.volumeType) + el('iops', v.iops) + el('throughput', v.throughput) +
      el('encrypted', v.encrypted) + el('kmsKeyId', v.kmsKeyId) + tagSet(v.tags)
    )
  }
}
