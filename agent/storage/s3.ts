// s3://bucket/prefix backend on the AWS SDK v3. Its client comes built from the program's AWS
// settings (aws/clients.ts: Region, endpoint, path style, checksums, attempts, sockets); the
// SDK's retry strategy (exponential backoff with jitter, bounded attempts) covers throttling and
// dropped connections, and socket timeouts make a silent network fail instead of hang.
import {
  DeleteObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  paginateListObjectsV2,
} from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsError } from '../aws/errors.ts'
import type { S3Connection } from '../aws/clients.ts'
import { RangeGetter, S3Status, UseSdk } from './s3-range.ts'
import { AlreadyExistsError, InterruptedTransfer, type Backend, type ListOptions, type ObjectInfo, type PutOptions } from './types.ts'

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

export const DEFAULT_PART_SIZE = 8 * 1024 * 1024
const MIN_PART_SIZE = 5 * 1024 * 1024

export class S3Backend implements Backend {
  readonly url: string
  readonly client: S3Client
  /** Attempts per request (the SDK's), and per read whose body broke (storage/retry.ts). */
  readonly maxAttempts: number
  readonly #bucket: string
  readonly #prefix: string
  readonly #partSize: number
  readonly #partConcurrency: number
  /** The lean ranged GET; null once it proved unusable here (then the SDK does every GET). */
  #ranges: RangeGetter | null

  constructor(options: S3BackendOptions) {
    this.#bucket = options.bucket
    this.#prefix = options.prefix ? options.prefix + '/' : ''
    this.url = `s3://${options.bucket}/${options.prefix}`
    this.#partSize = Math.max(MIN_PART_SIZE, options.partSize ?? DEFAULT_PART_SIZE)
    this.#partConcurrency = options.partConcurrency ?? 4
    const c = options.connection
    this.client = c.client
    this.maxAttempts = c.maxAttempts
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
        if (err.permanent) this.#ranges = null
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
    const params = { Bucket: this.#bucket, Key: this.#key(name), Body: data }
    try {
      if (options.ifAbsent || data.length <= this.#partSize) {
        await this.client.send(new PutObjectCommand(options.ifAbsent ? { ...params, IfNoneMatch: '*' } : params))
        return
      }
      // Explicit part size: lib-storage's default (5 MiB) would mean many small requests per
      // pack; parts of one pack go up in parallel and a failed upload is aborted, not leaked.
      await new Upload({
        client: this.client,
        params,
        partSize: partSizeFor(data.length, this.#partSize),
        queueSize: this.#partConcurrency,
        leavePartsOnError: false,
      }).done()
    } catch (err) {
      if (options.ifAbsent && status(err) === 412) throw new AlreadyExistsError(name)
      throw this.#error('PutObject', name, err)
    }
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
    at += piece.copy(out, at)
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
