// s3://bucket/prefix backend on the AWS SDK v3. Its client comes built from the program's AWS
// settings (aws/clients.ts: Region, endpoint, path style, checksums, attempts, sockets); the
// SDK's retry strategy (exponential backoff with jitter, bounded attempts) covers throttling and
// dropped connections, and socket timeouts make a silent network fail instead of hang.
import {
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  S3ServiceException,
  paginateListObjectsV2,
  type ObjectLockMode,
} from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import { copyInto } from '../core/copy.ts'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsError } from '../aws/errors.ts'
import type { S3Connection } from '../aws/clients.ts'
import { RangeGetter, S3Status, UseSdk } from './s3-range.ts'
import { log } from '../core/log.ts'
import {
  AlreadyExistsError, InterruptedTransfer, type Backend, type BucketLock, type ListOptions, type LockMode, type ObjectInfo, type ObjectVersion,
  type PutOptions, type Retention, type Versions,
} from './types.ts'

export interface S3BackendOptions {
  bucket: string
  /** Key prefix without leading or trailing slash ("" for the bucket root). */
  prefix: string
  /** The client, from AwsClients.s3() for the repository URL's target. */
  connection: S3Connection
  /** Multipart part size for large objects (packs). */
  partSize?: number
  /** Parts of one object uploaded at once. */
  partConcurrency?: number
}

// A default pack (8 MiB, plus its last blob and trailer) goes up as one PutObject.
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024
const MIN_PART_SIZE = 5 * 1024 * 1024

export class S3Backend implements Backend {
  readonly url: string
  readonly usesBodySha256 = true
  readonly client: S3Client
  /** Attempts per request (the SDK's), and per read whose body broke (storage/retry.ts). */
  readonly maxAttempts: number
  readonly #bucket: string
  readonly #prefix: string
  readonly #partSize: number
  readonly #partConcurrency: number
  /** The lean ranged GET; null once it proved unusable here (then the SDK does every GET). */
  #ranges: RangeGetter | null
  readonly versions: S3Versions
  readonly #checksums: S3Connection['checksums']
  /**
   * Whether the server locks a multipart upload's object as CreateMultipartUpload asked (AWS
   * does; Ceph RGW Pacific ignores those headers): null until the first locked upload shows it.
   */
  #multipartLocks: boolean | null = null

  constructor(options: S3BackendOptions) {
    this.#bucket = options.bucket
    this.#prefix = options.prefix ? options.prefix + '/' : ''
    this.url = `s3://${options.bucket}/${options.prefix}`
    this.#partSize = Math.max(MIN_PART_SIZE, options.partSize ?? DEFAULT_PART_SIZE)
    this.#partConcurrency = options.partConcurrency ?? 4
    const c = options.connection
    this.client = c.client
    this.maxAttempts = c.maxAttempts
    this.#checksums = c.checksums
    this.versions = new S3Versions(this.client, this.#bucket, this.#prefix, (op, name, err) => this.#error(op, name, err))
    this.#ranges = c.leanGet
      ? new RangeGetter({ client: c.client, bucket: this.#bucket, connectionTimeout: c.connectionTimeout, socketTimeout: c.socketTimeout })
      : null
  }

  #key(name: string): string {
    return this.#prefix + name
  }

  async get(name: string): Promise<Buffer | null> {
    let out
    try {
      out = await this.client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }))
    } catch (err) {
      if (isNotFound(err)) return null
      throw this.#error('GetObject', name, err)
    }
    return await interrupted(`GetObject ${name}`, () => readBody(out.Body, out.ContentLength))
  }

  async getRange(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0)
    const ranges = this.#ranges
    if (ranges) {
      const out = into && into.length >= length ? into : Buffer.allocUnsafe(length)
      try {
        return out.subarray(0, await ranges.get(this.#key(name), offset, length, out))
      } catch (err) {
        if (!(err instanceof UseSdk)) {
          if (status(err) === 416) return Buffer.alloc(0)
          if (isNotFound(err)) throw this.#notFound(name)
          // Dropped connections and server errors: retried (storage/retry.ts) like a cut SDK body.
          if (!(err instanceof S3Status)) throw new InterruptedTransfer(`GetObject ${name}`, err)
          throw this.#error('GetObject', name, err)
        }
        // Any other answer (a 403, a redirect, a clock skew…) goes through the SDK, which knows
        // every shape of them and words the error; an endpoint the lean path cannot serve (its
        // auth scheme, a TLS handshake refused, a server raw-http.ts cannot talk to), for good.
        if (err.permanent) {
          this.#ranges = null
          log.warn({ repository: this.url, error: err }, 'the lean ranged GET cannot be used with this endpoint; every GET goes through the SDK from now on')
        } else {
          log.debug({ repository: this.url, object: name, error: err }, 'lean ranged GET answered otherwise; this GET goes through the SDK')
        }
      }
    }
    let out
    try {
      out = await this.client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(name), Range: `bytes=${offset}-${offset + length - 1}` }))
    } catch (err) {
      if (status(err) === 416) return Buffer.alloc(0)
      if (isNotFound(err)) throw this.#notFound(name)
      throw this.#error('GetObject', name, err)
    }
    return await interrupted(`GetObject ${name}`, () => readBody(out.Body, out.ContentLength, into))
  }

  async put(name: string, data: Buffer, options: PutOptions = {}): Promise<void> {
    const r = options.retention
    // S3 takes a locked put only with Content-MD5 or a checksum (S3 User Guide, "Object Lock
    // considerations": uploading objects to an Object Lock enabled bucket); the SDK sends CRC32
    // by default, and with checksums "when-required" only if asked.
    const lock = r
      ? { ObjectLockMode: s3Mode(r.mode), ObjectLockRetainUntilDate: r.until, ...(this.#checksums === 'when-required' ? { ChecksumAlgorithm: 'CRC32' as const } : {}) }
      : {}
    const params = { Bucket: this.#bucket, Key: this.#key(name), Body: data, ...lock }
    try {
      if (options.ifAbsent || data.length <= this.#partSize) {
        const command = new PutObjectCommand(options.ifAbsent ? { ...params, IfNoneMatch: '*' } : params)
        const sha256 = options.sha256
        // SigV4 takes a body hash given in x-amz-content-sha256 as it is (UNSIGNED-PAYLOAD over
        // TLS, set after this, wins: then nothing is hashed).
        if (sha256) {
          command.middlewareStack.add((next) => async (args) => {
            const headers = (args.request as { headers?: Record<string, string> }).headers
            if (headers) headers['x-amz-content-sha256'] = sha256
            return next(args)
          }, { step: 'build', name: 'ebsWorkerBodySha256', priority: 'high' })
        }
        await this.client.send(command)
        return
      }
      // Explicit part size: lib-storage's default (5 MiB) would mean many small requests per
      // pack; parts of one pack go up in parallel and a failed upload is aborted, not leaked.
      const partSize = partSizeFor(data.length, this.#partSize)
      const out = await new Upload({
        client: this.client,
        params,
        partSize,
        queueSize: this.#partConcurrency,
        leavePartsOnError: false,
      }).done()
      // One part goes up as a PutObject (lib-storage), which every server locks as asked.
      if (r && data.length > partSize) await this.#lockUploaded(name, r, out.VersionId)
    } catch (err) {
      if (options.ifAbsent && status(err) === 412) throw new AlreadyExistsError(name)
      throw this.#error('PutObject', name, err)
    }
  }

  /**
   * A multipart upload's object gets its retention from CreateMultipartUpload on AWS; a server
   * that drops it (RGW Pacific) gets it set on the version just made. The first locked upload
   * tells which kind of server this is.
   */
  async #lockUploaded(name: string, r: Retention, versionId: string | undefined): Promise<void> {
    if (this.#multipartLocks === true) return
    if (this.#multipartLocks === null) {
      const got = await this.versions.retention(name, versionId)
      this.#multipartLocks = got !== null && got.until.getTime() >= r.until.getTime() - 1000
      if (this.#multipartLocks) return
    }
    await this.versions.extend(name, r, versionId)
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    try {
      const pages = paginateListObjectsV2(
        { client: this.client },
        { Bucket: this.#bucket, Prefix: this.#key(prefix), ...(options.startAfter !== undefined ? { StartAfter: this.#key(options.startAfter) } : {}) },
      )
      for await (const page of pages) {
        for (const obj of page.Contents ?? []) {
          if (obj.Key) yield { name: obj.Key.slice(this.#prefix.length), size: obj.Size ?? 0, modified: obj.LastModified ?? new Date(0) }
        }
      }
    } catch (err) {
      throw this.#error('ListObjectsV2', prefix, err)
    }
  }

  async delete(name: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#key(name) }))
    } catch (err) {
      if (!isNotFound(err)) throw this.#error('DeleteObject', name, err)
    }
  }

  #notFound(name: string): EbsWorkerError {
    return new EbsWorkerError(ErrorCode.ObjectNotFound, `object ${name} is missing from ${this.url}`, { context: { object: name } })
  }

  /** S3 failures as ours (aws/errors.ts), naming the object. */
  #error(operation: string, name: string, err: unknown): EbsWorkerError {
    return awsError(err, { service: 'S3', operation: `${operation} s3://${this.#bucket}/${this.#key(name)}` }, { object: name })
  }
}

const s3Mode = (mode: LockMode): ObjectLockMode => (mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE')
const ourMode = (mode: string | undefined): LockMode => (mode === 'COMPLIANCE' ? 'compliance' : 'governance')

/** Versions, delete markers and Object Lock of an S3 bucket, under the repository's prefix. */
class S3Versions implements Versions {
  readonly #client: S3Client
  readonly #bucket: string
  readonly #prefix: string
  readonly #error: (operation: string, name: string, err: unknown) => Error

  constructor(client: S3Client, bucket: string, prefix: string, error: (operation: string, name: string, err: unknown) => Error) {
    this.#client = client
    this.#bucket = bucket
    this.#prefix = prefix
    this.#error = error
  }

  async lockConfiguration(): Promise<BucketLock> {
    try {
      const out = await this.#client.send(new GetObjectLockConfigurationCommand({ Bucket: this.#bucket }))
      const c = out.ObjectLockConfiguration
      const d = c?.Rule?.DefaultRetention
      const seconds = (d?.Days ?? 0) * 86_400 + (d?.Years ?? 0) * 365 * 86_400
      return { enabled: c?.ObjectLockEnabled === 'Enabled', defaultRetention: d && seconds ? { mode: ourMode(d.Mode), seconds } : null }
    } catch (err) {
      // A bucket made without Object Lock has no configuration to show.
      if (errorName(err) === 'ObjectLockConfigurationNotFoundError') return { enabled: false, defaultRetention: null }
      throw this.#error('GetObjectLockConfiguration', '', err)
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectVersion> {
    let marker: { KeyMarker?: string; VersionIdMarker?: string } = {}
    for (;;) {
      let page
      try {
        page = await this.#client.send(new ListObjectVersionsCommand({ Bucket: this.#bucket, Prefix: this.#prefix + prefix, ...marker }))
      } catch (err) {
        throw this.#error('ListObjectVersions', prefix, err)
      }
      // A page is one stretch of the listing (by name, a name's newest first), split into
      // versions and delete markers: put back together by name.
      const entries: ObjectVersion[] = []
      for (const v of page.Versions ?? []) entries.push(this.#version(v.Key, v.VersionId, v.IsLatest, false, v.Size, v.LastModified, v.ETag))
      for (const m of page.DeleteMarkers ?? []) entries.push(this.#version(m.Key, m.VersionId, m.IsLatest, true, 0, m.LastModified, ''))
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : Number(b.latest) - Number(a.latest)))
      yield* entries
      if (!page.IsTruncated) return
      marker = { KeyMarker: page.NextKeyMarker!, ...(page.NextVersionIdMarker ? { VersionIdMarker: page.NextVersionIdMarker } : {}) }
    }
  }

  #version(key: string | undefined, versionId: string | undefined, latest: boolean | undefined, deleteMarker: boolean, size: number | undefined, modified: Date | undefined, etag: string | undefined): ObjectVersion {
    return {
      name: (key ?? '').slice(this.#prefix.length), versionId: versionId ?? 'null', latest: latest === true, deleteMarker, size: size ?? 0,
      modified: modified ?? new Date(0), etag: (etag ?? '').replace(/"/g, ''),
    }
  }

  async retention(name: string, versionId?: string): Promise<Retention | null> {
    try {
      const out = await this.#client.send(new GetObjectRetentionCommand({ Bucket: this.#bucket, Key: this.#prefix + name, ...(versionId ? { VersionId: versionId } : {}) }))
      const r = out.Retention
      return r?.RetainUntilDate ? { mode: ourMode(r.Mode), until: r.RetainUntilDate } : null
    } catch (err) {
      // 404: no such object or version, or none of retention (NoSuchObjectLockConfiguration on
      // AWS, ObjectLockConfigurationNotFoundError on RGW); 405: a delete marker.
      if (status(err) === 404 || status(err) === 405) return null
      throw this.#error('GetObjectRetention', name, err)
    }
  }

  async extend(name: string, r: Retention, versionId?: string): Promise<boolean> {
    try {
      await this.#client.send(new PutObjectRetentionCommand({
        Bucket: this.#bucket, Key: this.#prefix + name, ...(versionId ? { VersionId: versionId } : {}),
        Retention: { Mode: s3Mode(r.mode), RetainUntilDate: r.until },
      }))
      return true
    } catch (err) {
      if (status(err) === 404 || status(err) === 405) return false
      throw this.#error('PutObjectRetention', name, err)
    }
  }

  async delete(name: string, versionId: string): Promise<void> {
    try {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + name, VersionId: versionId }))
    } catch (err) {
      if (!isNotFound(err)) throw this.#error('DeleteObject', name, err)
    }
  }
}

/**
 * The part size for an object of `length` bytes: `partSize`, unless that would leave a last part
 * of less than an eighth of it, which is then spread over the others. Packs are sealed once they
 * pass their target size, so a 16 MiB pack is 16 MiB and a blob: 8 + 8 + a few KiB with 8 MiB
 * parts, one request and its server-side bookkeeping for nothing.
 */
export function partSizeFor(length: number, partSize: number): number {
  const whole = Math.floor(length / partSize)
  const tail = length - whole * partSize
  if (whole === 0 || tail === 0 || tail >= partSize / 8) return partSize
  return Math.ceil(length / whole)
}

/** A body that breaks as it streams is an interrupted transfer: the request may be tried again. */
async function interrupted<T>(what: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read()
  } catch (err) {
    throw new InterruptedTransfer(what, err)
  }
}

/**
 * Reads a response body into one buffer of the announced length as the bytes arrive: one copy,
 * where the SDK's transformToByteArray() collects the pieces and joins them afterwards.
 */
async function readBody(body: unknown, length: number | undefined, into?: Buffer): Promise<Buffer> {
  const stream = body as AsyncIterable<Buffer>
  if (length === undefined) {
    const pieces: Buffer[] = []
    for await (const piece of stream) pieces.push(piece)
    return Buffer.concat(pieces)
  }
  const out = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length)
  let at = 0
  for await (const piece of stream) {
    if (at + piece.length > length) throw new Error(`response body longer than its Content-Length (${length})`)
    at += copyInto(out, piece, at) // memcpy, also into a shared buffer (core/copy.ts)
  }
  if (at !== length) throw new Error(`response body ended after ${at} of ${length} bytes`)
  return out
}

function status(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
}

function errorName(err: unknown): string {
  return err instanceof S3ServiceException ? err.name : err instanceof Error ? err.name : 'Error'
}

function isNotFound(err: unknown): boolean {
  const name = errorName(err)
  return name === 'NoSuchKey' || name === 'NotFound' || (status(err) === 404 && name !== 'NoSuchBucket')
}
