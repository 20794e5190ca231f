// A stand-in for the part of Amazon EC2 the worker uses on its own volumes, speaking the EC2
// Query protocol (form-encoded POST, XML answers, version 2016-11-15) so that the real
// @aws-sdk/client-ec2 runs against it unchanged. No EC2 emulator can be installed here.
//
// It follows the EC2 API Reference (CreateVolume, DescribeVolumes, AttachVolume, DetachVolume,
// DeleteVolume, CreateSnapshot, DescribeSnapshots, ModifySnapshotAttribute, GetEbsDefaultKmsKeyId,
// CreateTags;
// "Common client error codes") and the EBS User Guide ("Amazon EBS encryption", "Share an Amazon
// EBS snapshot"):
//   - a volume from an encrypted snapshot is encrypted; KmsKeyId requires Encrypted=true;
//   - without KmsKeyId it takes the snapshot's key when the snapshot is this account's, and the
//     Region's default EBS key when it was shared from another account;
//   - a snapshot neither owned by nor shared with this account does not exist for it;
//   - CreateVolume with a ClientToken already used returns the volume it made then;
//   - creating → available, then in-use while attached (attaching → attached), with delays;
//   - a volume attaches to one instance, in its own Availability Zone; an attached volume cannot
//     be deleted;
//   - a snapshot of a volume keeps its encryption and key; one encrypted with an AWS managed key
//     (aws/ebs) cannot be shared with another account.
// Volumes are sparse files; an attached volume becomes a loop device with an NVMe identity
// (serial = volume id without the dash) in a device tree of the test's own, which is what the
// agent's device discovery reads. Sizes are in GiB as in the API, each "GiB" being
// `bytesPerGiB` bytes (default 1 GiB) so tests can keep volumes small: a documented departure.
import { execFileSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { copyFile, mkdir, open, rm, symlink, unlink } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { EBS_MODEL, serialOf } from '../../agent/ebs-device.ts'
import { fakeNvme } from '../helpers.ts'

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
}

interface Snapshot extends Required<Omit<SnapshotSpec, 'kmsKeyId' | 'volumeId'>> {
  snapshotId: string
  kmsKeyId: string | null
  state: 'pending' | 'completed'
  volumeId: string | null
  tags: Record<string, string>
  startTime: string
}

export interface Volume {
  volumeId: string
  sizeGiB: number
  snapshotId: string | null
  availabilityZone: string
  state: 'creating' | 'available' | 'in-use' | 'deleting' | 'deleted'
  volumeType: string
  encrypted: boolean
  kmsKeyId: string | null
  tags: Record<string, string>
  createTime: string
  file: string
  attachment: { instanceId: string; device: string; state: 'attaching' | 'attached' | 'detaching'; time: string; loop: string | null; name: string | null } | null
}

export interface Ec2StandInOptions {
  instance: StandInInstance
  /** Where volume files live. */
  dir: string
  roots: { sysBlock: string; devDir: string; byIdDir: string }
  bytesPerGiB?: number
  /** Delay of each state change (creating → available, attaching → attached, detaching). */
  delayMs?: number
  /** The Region's default EBS key (an AWS-managed key unless a customer key is configured). */
  defaultKmsKeyId?: string
  /**
   * How an attached volume (as loop device `loop`) shows up as NVMe device `name` in the device
   * tree (default: fakeNvme with its identity). Tests replace it to model a tree that lies.
   */
  exposeDevice?: (volume: Volume, name: string, loop: string) => Promise<void>
  /** Whether a key reference names an AWS managed key (default: it mentions alias/aws/ebs). */
  isAwsManagedKey?: (ref: string) => boolean
}

export interface SnapshotState {
  snapshotId: string
  volumeId: string
  state: 'pending' | 'completed'
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

export class Ec2StandIn {
  readonly volumes = new Map<string, Volume>()
  readonly snapshots = new Map<string, Snapshot>()
  readonly #clientTokens = new Map<string, string>()
  readonly #options: Required<Ec2StandInOptions>
  #server: Server | null = null
  #nvmeIndex = 1
  endpoint = ''

  constructor(options: Ec2StandInOptions) {
    const defaultKey = `arn:aws:kms:${options.instance.region}:${options.instance.accountId}:alias/aws/ebs`
    this.#options = {
      bytesPerGiB: 1024 ** 3, delayMs: 100, defaultKmsKeyId: defaultKey, isAwsManagedKey: (ref) => ref.includes('alias/aws/ebs'),
      exposeDevice: (v, name, loop) => fakeNvme(options.roots, name, loop, serialOf(v.volumeId), EBS_MODEL, v.sizeGiB * this.bytesPerGiB),
      ...options,
    }
  }

  /** Bytes per "GiB" of volume and snapshot sizes. */
  get bytesPerGiB(): number {
    return this.#options.bytesPerGiB
  }

  /** The account the worker instance runs in. */
  get accountId(): string {
    return this.#options.instance.accountId
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
        this.#dispatch(action, params)
          .then((inner) => {
            const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${requestId}</requestId>${inner}</${action}Response>`
            res.writeHead(200, { 'Content-Type': 'text/xml;charset=UTF-8' }).end(xml)
          })
          .catch((err: unknown) => {
            const e = err instanceof Ec2Error ? err : new Ec2Error('InternalError', String(err))
            const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${e.code}</Code><Message>${xmlEscape(e.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`
            res.writeHead(e.code === 'InternalError' ? 500 : 400, { 'Content-Type': 'text/xml;charset=UTF-8' }).end(xml)
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

  addSnapshot(spec: SnapshotSpec): string {
    const snapshotId = `snap-${randomBytes(8).toString('hex').slice(0, 17)}`
    this.snapshots.set(snapshotId, {
      snapshotId,
      image: spec.image,
      sizeGiB: spec.sizeGiB,
      encrypted: spec.encrypted ?? false,
      kmsKeyId: spec.encrypted ? (spec.kmsKeyId ?? `arn:aws:kms:${this.#options.instance.region}:${spec.ownerId ?? this.#options.instance.accountId}:alias/aws/ebs`) : null,
      ownerId: spec.ownerId ?? this.#options.instance.accountId,
      sharedWith: spec.sharedWith ?? [],
      state: 'completed',
      volumeId: spec.volumeId ?? null,
      tags: {},
      startTime: new Date().toISOString(),
    })
    return snapshotId
  }

  async #dispatch(action: string, p: URLSearchParams): Promise<string> {
    switch (action) {
      case 'CreateVolume':
        return this.#volumeXml(await this.#createVolume(p), false)
      case 'DescribeVolumes':
        return `<volumeSet>${this.#describe(p).map((v) => `<item>${this.#volumeXml(v, true)}</item>`).join('')}</volumeSet>`
      case 'AttachVolume':
        return this.#attachmentXml(this.#attach(p))
      case 'DetachVolume':
        return this.#attachmentXml(this.#detach(p))
      case 'DeleteVolume':
        await this.#delete(p)
        return '<return>true</return>'
      case 'GetEbsDefaultKmsKeyId':
        return el('kmsKeyId', this.#options.defaultKmsKeyId)
      case 'CreateSnapshot':
        return this.#snapshotXml(await this.#createSnapshot(p))
      case 'DescribeSnapshots':
        return `<snapshotSet>${this.#describeSnapshots(p).map((x) => `<item>${this.#snapshotXml(x)}</item>`).join('')}</snapshotSet>`
      case 'ModifySnapshotAttribute':
        this.#share(p)
        return '<return>true</return>'
      case 'CreateTags':
        this.#createTags(p)
        return '<return>true</return>'
      default:
        throw new Ec2Error('InvalidAction', `The action ${action} is not valid for this web service.`)
    }
  }

  #volume(id: string | null): Volume {
    const v = id ? this.volumes.get(id) : undefined
    if (!v || v.state === 'deleted') throw new Ec2Error('InvalidVolume.NotFound', `The volume '${id}' does not exist.`)
    return v
  }

  async #createVolume(p: URLSearchParams): Promise<Volume> {
    const token = p.get('ClientToken')
    if (token && this.#clientTokens.has(token)) return this.volumes.get(this.#clientTokens.get(token)!)!
    const { instance } = this.#options
    const az = p.get('AvailabilityZone')
    if (!az) throw new Ec2Error('MissingParameter', 'The request must contain the parameter AvailabilityZone')
    if (!az.startsWith(instance.region)) throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${az}]`)
    const encryptedParam = p.get('Encrypted') === 'true'
    const kmsKeyId = p.get('KmsKeyId')
    if (kmsKeyId && !encryptedParam) {
      throw new Ec2Error('InvalidParameterDependency', 'The parameter KmsKeyId requires the parameter Encrypted to be set.')
    }
    const snapshotId = p.get('SnapshotId')
    let snapshot: Snapshot | null = null
    if (snapshotId) {
      snapshot = this.snapshots.get(snapshotId) ?? null
      const visible = snapshot && (snapshot.ownerId === instance.accountId || snapshot.sharedWith.includes(instance.accountId))
      if (!snapshot || !visible) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${snapshotId}' does not exist.`)
    }
    const size = p.get('Size') ? Number(p.get('Size')) : snapshot?.sizeGiB
    if (!size) throw new Ec2Error('MissingParameter', 'The request must contain the parameter size or snapshotId')
    if (snapshot && size < snapshot.sizeGiB) {
      throw new Ec2Error('InvalidParameterValue', `Volume of ${size}GiB is too small; minimum is ${snapshot.sizeGiB}GiB.`)
    }
    const encrypted = encryptedParam || Boolean(snapshot?.encrypted)
    const shared = snapshot !== null && snapshot.ownerId !== instance.accountId
    const key = !encrypted ? null : (kmsKeyId ?? (snapshot?.encrypted && !shared ? snapshot.kmsKeyId : this.#options.defaultKmsKeyId))
    const volumeId = `vol-${randomBytes(9).toString('hex').slice(0, 17)}`
    const tags = this.#tagsOf(p, 'volume')
    const file = join(this.#options.dir, `${volumeId}.img`)
    if (snapshot) await copyFile(snapshot.image, file)
    const handle = await open(file, snapshot ? 'r+' : 'w')
    await handle.truncate(size * this.#options.bytesPerGiB)
    await handle.close()
    const volume: Volume = {
      volumeId, sizeGiB: size, snapshotId, availabilityZone: az, state: 'creating', volumeType: p.get('VolumeType') ?? 'gp2',
      encrypted, kmsKeyId: key, tags, createTime: new Date().toISOString(), file, attachment: null,
    }
    this.volumes.set(volumeId, volume)
    if (token) this.#clientTokens.set(token, volumeId)
    setTimeout(() => {
      if (volume.state === 'creating') volume.state = 'available'
    }, this.#options.delayMs)
    return volume
  }

  #describe(p: URLSearchParams): Volume[] {
    const ids: string[] = []
    for (let i = 1; p.has(`VolumeId.${i}`); i++) ids.push(p.get(`VolumeId.${i}`)!)
    for (const id of ids) this.#volume(id)
    const filters = filtersOf(p)
    return [...this.volumes.values()].filter((v) => {
      if (v.state === 'deleted' || (ids.length && !ids.includes(v.volumeId))) return false
      return filters.every((f) => {
        if (f.name.startsWith('tag:')) return f.values.includes(v.tags[f.name.slice(4)] ?? '\u0000')
        if (f.name === 'status') return f.values.includes(v.state)
        if (f.name === 'attachment.instance-id') return f.values.includes(v.attachment?.instanceId ?? '')
        throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`)
      })
    })
  }

  #attach(p: URLSearchParams): Volume {
    const v = this.#volume(p.get('VolumeId'))
    const instanceId = p.get('InstanceId')
    const device = p.get('Device')
    if (!device) throw new Ec2Error('MissingParameter', 'The request must contain the parameter device')
    if (instanceId !== this.#options.instance.instanceId) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${instanceId}' does not exist`)
    if (v.attachment) throw new Ec2Error('VolumeInUse', `${v.volumeId} is already attached to an instance`)
    if (v.state !== 'available') throw new Ec2Error('IncorrectState', `The volume '${v.volumeId}' is '${v.state}'`)
    if (v.availabilityZone !== this.#options.instance.availabilityZone) {
      throw new Ec2Error('InvalidVolume.ZoneMismatch', `The volume '${v.volumeId}' is not in the same availability zone as instance '${instanceId}'`)
    }
    v.state = 'in-use'
    v.attachment = { instanceId, device, state: 'attaching', time: new Date().toISOString(), loop: null, name: null }
    setTimeout(() => void this.#plug(v), this.#options.delayMs)
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
    await unlink(join(roots.byIdDir, `nvme-Amazon_Elastic_Block_Store_${v.volumeId.replace('-', '')}`)).catch(() => {})
    await unlink(join(roots.devDir, a.name)).catch(() => {})
    await rm(join(roots.sysBlock, a.name), { recursive: true, force: true })
    execFileSync('losetup', ['-d', a.loop])
    a.loop = null
    a.name = null
  }

  #detach(p: URLSearchParams): Volume {
    const v = this.#volume(p.get('VolumeId'))
    if (!v.attachment) throw new Ec2Error('IncorrectState', `Volume '${v.volumeId}' is in the 'available' state.`)
    v.attachment.state = 'detaching'
    const snapshot = { ...v, attachment: { ...v.attachment } }
    setTimeout(() => {
      void this.#unplug(v).then(() => {
        v.attachment = null
        v.state = 'available'
      })
    }, this.#options.delayMs)
    return snapshot
  }

  async #delete(p: URLSearchParams): Promise<void> {
    const v = this.#volume(p.get('VolumeId'))
    if (v.attachment || v.state === 'in-use') throw new Ec2Error('VolumeInUse', `Volume ${v.volumeId} is currently attached to ${v.attachment?.instanceId}`)
    v.state = 'deleted'
    await rm(v.file, { force: true })
  }

  /** CreateTags on this account's volumes and snapshots; an unknown id fails the whole call. */
  #createTags(p: URLSearchParams): void {
    const ids: string[] = []
    for (let i = 1; p.has(`ResourceId.${i}`); i++) ids.push(p.get(`ResourceId.${i}`)!)
    const targets = ids.map((id) => {
      if (id.startsWith('vol-')) return this.#volume(id)
      const snap = this.snapshots.get(id)
      if (!snap || snap.ownerId !== this.#options.instance.accountId) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
      return snap
    })
    for (const target of targets) {
      for (let j = 1; p.has(`Tag.${j}.Key`); j++) target.tags[p.get(`Tag.${j}.Key`)!] = p.get(`Tag.${j}.Value`) ?? ''
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

  async #createSnapshot(p: URLSearchParams): Promise<Snapshot> {
    const v = this.#volume(p.get('VolumeId'))
    const snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`
    const image = join(this.#options.dir, `${snapshotId}.img`)
    await copyFile(v.file, image)
    const snap: Snapshot = {
      snapshotId, image, sizeGiB: v.sizeGiB, encrypted: v.encrypted, kmsKeyId: v.kmsKeyId, ownerId: this.#options.instance.accountId,
      sharedWith: [], state: 'pending', volumeId: v.volumeId, tags: this.#tagsOf(p, 'snapshot'), startTime: new Date().toISOString(),
    }
    this.snapshots.set(snapshotId, snap)
    setTimeout(() => (snap.state = 'completed'), this.#options.delayMs)
    return snap
  }

  #describeSnapshots(p: URLSearchParams): Snapshot[] {
    const ids: string[] = []
    for (let i = 1; p.has(`SnapshotId.${i}`); i++) ids.push(p.get(`SnapshotId.${i}`)!)
    const account = this.#options.instance.accountId
    const visible = [...this.snapshots.values()].filter((x) => x.ownerId === account || x.sharedWith.includes(account))
    for (const id of ids) {
      if (!visible.some((x) => x.snapshotId === id)) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
    }
    const filters = filtersOf(p)
    return visible.filter((x) => (!ids.length || ids.includes(x.snapshotId)) && filters.every((f) => {
      if (f.name.startsWith('tag:')) return f.values.includes(x.tags[f.name.slice(4)] ?? '\u0000')
      throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`)
    }))
  }

  /** ModifySnapshotAttribute createVolumePermission add: sharing, refused for AWS managed keys. */
  #share(p: URLSearchParams): void {
    const id = p.get('SnapshotId')
    const snap = id ? this.snapshots.get(id) : undefined
    if (!snap || snap.ownerId !== this.#options.instance.accountId) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`)
    const accounts: string[] = []
    for (let i = 1; p.has(`CreateVolumePermission.Add.${i}.UserId`); i++) accounts.push(p.get(`CreateVolumePermission.Add.${i}.UserId`)!)
    for (let i = 1; p.has(`UserId.${i}`); i++) accounts.push(p.get(`UserId.${i}`)!)
    if (!accounts.length) throw new Ec2Error('MissingParameter', 'no account to share with')
    if (snap.encrypted && snap.kmsKeyId && this.#options.isAwsManagedKey(snap.kmsKeyId)) {
      throw new Ec2Error('InvalidParameter', 'Snapshots encrypted with the AWS Managed CMK can\'t be shared. Try again with a customer managed CMK.')
    }
    for (const a of accounts) if (!snap.sharedWith.includes(a)) snap.sharedWith.push(a)
  }

  #snapshotXml(x: Snapshot): string {
    const tags = Object.entries(x.tags).map(([k, val]) => `<item>${el('key', k)}${el('value', val)}</item>`).join('')
    return (
      el('snapshotId', x.snapshotId) + el('volumeId', x.volumeId ?? '') + el('status', x.state) + el('startTime', x.startTime) +
      el('progress', x.state === 'completed' ? '100%' : '0%') + el('ownerId', x.ownerId) + el('volumeSize', x.sizeGiB) +
      el('encrypted', x.encrypted) + el('kmsKeyId', x.kmsKeyId) + (tags ? `<tagSet>${tags}</tagSet>` : '')
    )
  }

  #attachmentXml(v: Volume): string {
    const a = v.attachment!
    return el('attachTime', a.time) + el('device', a.device) + el('instanceId', a.instanceId) + el('status', a.state) + el('volumeId', v.volumeId)
  }

  #volumeXml(v: Volume, withAttachments: boolean): string {
    const tags = Object.entries(v.tags).map(([k, val]) => `<item>${el('key', k)}${el('value', val)}</item>`).join('')
    const attachments = withAttachments && v.attachment
      ? `<attachmentSet><item>${this.#attachmentXml(v)}${el('deleteOnTermination', false)}</item></attachmentSet>`
      : withAttachments ? '<attachmentSet/>' : ''
    return (
      el('volumeId', v.volumeId) + el('size', v.sizeGiB) + el('snapshotId', v.snapshotId ?? '') + el('availabilityZone', v.availabilityZone) +
      el('status', v.state) + el('createTime', v.createTime) + attachments + el('volumeType', v.volumeType) +
      el('encrypted', v.encrypted) + el('kmsKeyId', v.kmsKeyId) + (tags ? `<tagSet>${tags}</tagSet>` : '')
    )
  }
}
