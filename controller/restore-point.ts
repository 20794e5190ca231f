// The instance-level restore point: what the controller stores in the repository next to the
// volume backups, so that an instance can be rebuilt from them (docs/RESTORE-POINTS.md).
// One JSON object per restore point at restore-points/<id>.json under the repository's root, written
// once, after every volume's backup exists. It holds metadata only (no volume data), in clear,
// so any controller can read it without the repository key.
import { TIMESTAMPED, timestampedId } from '../agent/core/ids.ts'
import { link, mkdir, readFile, readdir, unlink, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { z } from 'zod'
import { EbsWorkerError, ErrorCode, describe } from '../agent/core/errors.ts'

export const RESTORE_POINT_VERSION = 1
const ID = new RegExp(`^rp-${TIMESTAMPED}$`)

export const restorePointSchema = z.strictObject({
  format: z.literal('ebs-worker-restore-point'),
  version: z.literal(RESTORE_POINT_VERSION),
  id: z.string().regex(ID),
  createdAt: z.iso.datetime(),
  instance: z.strictObject({
    instanceId: z.string(),
    accountId: z.string(),
    region: z.string(),
    availabilityZone: z.string(),
    instanceType: z.string(),
    imageId: z.string(),
    architecture: z.string().optional(),
    rootDeviceName: z.string(),
    tags: z.record(z.string(), z.string()),
  }),
  /** In the instance's block device order (root first when it was). */
  volumes: z.array(z.strictObject({
    deviceName: z.string(),
    volumeId: z.string(),
    sizeGiB: z.number().int().positive(),
    volumeType: z.string(),
    iops: z.number().int().optional(),
    throughput: z.number().int().optional(),
    encrypted: z.boolean(),
    kmsKeyId: z.string().optional(),
    deleteOnTermination: z.boolean(),
    snapshotId: z.string(),
    backupId: z.string(),
  })).min(1),
  /** How the data left the account: the worker account, and a re-encryption key if one was used. */
  worker: z.strictObject({ accountId: z.string(), reencryptedWith: z.string().optional() }),
})
export type RestorePoint = z.infer<typeof restorePointSchema>

export function newRestorePointId(now = new Date()): string {
  return timestampedId('rp', now)
}

/** Reads and writes restore points under a repository URL (file:// or s3://, as the agent names them). */
export class RestorePointStore {
  readonly #url: string

  constructor(url: string) {
    if (!/^(s3|file):\/\//.test(url)) throw new EbsWorkerError(ErrorCode.BadInput, `a repository URL is s3://bucket/prefix or file:///path, not ${url}`)
    this.#url = url
  }

  async save(rp: RestorePoint): Promise<void> {
    const body = JSON.stringify(restorePointSchema.parse(rp), null, 2) + '\n'
    await this.#io('write', async () => {
      if (this.#url.startsWith('file://')) {
        const path = join(fileURLToPath(this.#url), 'restore-points', `${rp.id}.json`)
        await mkdir(dirname(path), { recursive: true })
        // Written whole, then linked into place: link(2) refuses an existing name (never overwritten).
        const tmp = `${path}.${process.pid}.tmp`
        await writeFile(tmp, body, { flag: 'wx' })
        try {
          await link(tmp, path)
        } finally {
          await unlink(tmp)
        }
        return
      }
      const { client, bucket, prefix } = this.#s3()
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}restore-points/${rp.id}.json`, Body: body, ContentType: 'application/json', IfNoneMatch: '*' }))
      client.destroy()
    })
  }

  async load(id: string): Promise<RestorePoint> {
    if (!ID.test(id)) throw new EbsWorkerError(ErrorCode.BadInput, `${id} is not a restore point id (rp-20261123T071200Z-1a2b3c4d)`)
    const text = await this.#io('read', async () => {
      try {
        if (this.#url.startsWith('file://')) return await readFile(join(fileURLToPath(this.#url), 'restore-points', `${id}.json`), 'utf8')
        const { client, bucket, prefix } = this.#s3()
        const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: `${prefix}restore-points/${id}.json` }))
        const s = await out.Body!.transformToString()
        client.destroy()
        return s
      } catch (err) {
        const name = (err as { name?: string; code?: string }).name
        if ((err as { code?: string }).code === 'ENOENT' || name === 'NoSuchKey') return null
        throw err
      }
    })
    if (text === null) throw new EbsWorkerError(ErrorCode.RestorePointNotFound, `restore point ${id} does not exist in ${this.#url}`)
    const parsed = restorePointSchema.safeParse(JSON.parse(text))
    if (!parsed.success) throw new EbsWorkerError(ErrorCode.Storage, `restore point ${id} in ${this.#url} is not valid: ${z.prettifyError(parsed.error)}`)
    return parsed.data
  }

  async list(): Promise<string[]> {
    return this.#io('list', async () => {
      if (this.#url.startsWith('file://')) {
        const names = await readdir(join(fileURLToPath(this.#url), 'restore-points')).catch(() => [] as string[])
        return names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).sort()
      }
      const { client, bucket, prefix } = this.#s3()
      const ids: string[] = []
      let token: string | undefined
      do {
        const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}restore-points/`, ContinuationToken: token }))
        for (const o of out.Contents ?? []) if (o.Key?.endsWith('.json')) ids.push(o.Key.slice(`${prefix}restore-points/`.length, -5))
        token = out.NextContinuationToken
      } while (token)
      client.destroy()
      return ids.sort()
    })
  }

  /** An S3 client as the agent configures one for the same URL (region, endpoint, path style, checksums). */
  #s3(): { client: S3Client; bucket: string; prefix: string } {
    const u = new URL(this.#url)
    const q = u.searchParams
    const prefix = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, '')
    const endpoint = q.get('endpoint') ?? undefined
    const pathStyle = q.get('path-style')
    const whenRequired = (q.get('checksums') ?? process.env.EBS_WORKER_S3_CHECKSUMS) === 'when-required'
    const client = new S3Client({
      ...(q.get('region') ? { region: q.get('region')! } : {}),
      ...(endpoint ? { endpoint } : {}),
      forcePathStyle: pathStyle !== null ? pathStyle === 'true' : Boolean(endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL),
      ...(whenRequired ? { requestChecksumCalculation: 'WHEN_REQUIRED' as const, responseChecksumValidation: 'WHEN_REQUIRED' as const } : {}),
    })
    return { client, bucket: u.hostname, prefix: prefix ? `${prefix}/` : '' }
  }

  async #io<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof EbsWorkerError) throw err
      throw new EbsWorkerError(ErrorCode.Storage, `cannot ${what} restore points in ${this.#url}: ${describe(err)}`, { cause: err })
    }
  }
}
