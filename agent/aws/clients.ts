// Every AWS SDK client of a program, built from one AwsSettings (aws/config.ts): on first use,
// once per service and Region, shared by whoever needs it, destroyed together. A session of an
// assumed role (the controller's) is its own AwsClients with that role's credentials.
//
// The SDK packages are loaded when a client of theirs is first asked for, not when this module
// is: EC2's alone takes 0.6 s to load, which `ebs-worker backup` of a file never needs. They
// are CommonJS, so `require` loads them synchronously, and the same instance an `import` of the
// package elsewhere gets (commands, error classes).
import { Agent as HttpAgent } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import { createRequire } from 'node:module'
import { Readable } from 'node:stream'
import type { AutoScalingClient } from '@aws-sdk/client-auto-scaling'
import type { EBSClient } from '@aws-sdk/client-ebs'
import type { EC2Client } from '@aws-sdk/client-ec2'
import type { IAMClient } from '@aws-sdk/client-iam'
import type { KMSClient } from '@aws-sdk/client-kms'
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3'
import type { SQSClient } from '@aws-sdk/client-sqs'
import type { STSClient } from '@aws-sdk/client-sts'
import type { AwsCredentialIdentityProvider } from '@aws-sdk/types'
import type { NodeHttpHandler } from '@smithy/node-http-handler'
import type { BuildMiddleware, HttpHandlerOptions, MetadataBearer } from '@smithy/types'
import { S3_MAX_ATTEMPTS, type AwsServiceId, type AwsSettings, type S3Checksums } from './config.ts'

const require = createRequire(import.meta.url)

/** Where an S3 client points: a repository URL's own options, else the settings'. */
export interface S3Target {
  region?: string | undefined
  endpoint?: string | undefined
  /** Path-style addressing; on by default when an endpoint override is set. */
  forcePathStyle?: boolean | undefined
  checksums?: S3Checksums | undefined
}

/** An S3 client with what the lean ranged GET (storage/s3-range.ts) shares with it: its timeouts and attempts. */
export interface S3Connection {
  client: S3Client
  connectionTimeout: number
  socketTimeout: number
  maxAttempts: number
  checksums: S3Checksums
  /** Restores' ranged GETs may skip the SDK (settings.s3.leanGet). */
  leanGet: boolean
}

interface Destroyable {
  destroy(): void
}

export class AwsClients {
  readonly settings: AwsSettings
  readonly #credentials: AwsCredentialIdentityProvider | undefined
  readonly #clients = new Map<string, Destroyable>()
  #profileRegion: Promise<string | undefined> | null = null

  /** `credentials`: another identity's (an assumed role); otherwise the SDK's default chain. */
  constructor(settings: AwsSettings, options: { credentials?: AwsCredentialIdentityProvider } = {}) {
    this.settings = settings
    this.#credentials = options.credentials
  }

  /** The Region clients get when the caller names none (undefined: the SDK's own). */
  get region(): string | undefined {
    return this.settings.region
  }

  /**
   * The Region of the calls when the caller names none: the settings' (--region, AWS_REGION),
   * else the profile's, as the SDK resolves it from the shared config file; undefined if neither says.
   */
  async resolveRegion(): Promise<string | undefined> {
    return this.settings.region ?? (await this.#regionOfProfile())
  }

  /** The profile's Region, as the SDK reads it (a client built without a Region resolves it so). */
  #regionOfProfile(): Promise<string | undefined> {
    this.#profileRegion ??= (async () => {
      const { STSClient } = require('@aws-sdk/client-sts') as typeof import('@aws-sdk/client-sts')
      const probe = new STSClient(this.settings.profile ? { profile: this.settings.profile } : {})
      try {
        return await probe.config.region()
      } catch {
        return undefined
      } finally {
        probe.destroy()
      }
    })()
    return this.#profileRegion
  }

  /**
   * SQS. With an endpoint override (a local SQS) the override must win over the host in the
   * queue URL, which the SDK would otherwise send to.
   */
  sqs(region?: string): SQSClient {
    return this.#get('sqs', region, (config) => {
      const { SQSClient } = require('@aws-sdk/client-sqs') as typeof import('@aws-sdk/client-sqs')
      return new SQSClient({ ...config, ...(this.settings.endpoints.sqs ? { useQueueUrlAsEndpoint: false } : {}) })
    })
  }

  ec2(region?: string): EC2Client {
    return this.#get('ec2', region, (config) => new (require('@aws-sdk/client-ec2') as typeof import('@aws-sdk/client-ec2')).EC2Client(config))
  }

  kms(region?: string): KMSClient {
    return this.#get('kms', region, (config) => new (require('@aws-sdk/client-kms') as typeof import('@aws-sdk/client-kms')).KMSClient(config))
  }

  ebs(region?: string): EBSClient {
    return this.#get('ebs', region, (config) => new (require('@aws-sdk/client-ebs') as typeof import('@aws-sdk/client-ebs')).EBSClient(config))
  }

  sts(region?: string): STSClient {
    return this.#get('sts', region, (config) => new (require('@aws-sdk/client-sts') as typeof import('@aws-sdk/client-sts')).STSClient(config))
  }

  /** Auto Scaling: the worker's own lifecycle hook and health (daemon/auto-scaling.ts). */
  autoScaling(region?: string): AutoScalingClient {
    return this.#get('auto_scaling', region, (config) => new (require('@aws-sdk/client-auto-scaling') as typeof import('@aws-sdk/client-auto-scaling')).AutoScalingClient(config))
  }

  /** IAM, a global service: the Region only says which partition's endpoint (the controller's policy simulation). */
  iam(region?: string): IAMClient {
    return this.#get('iam', region, (config) => new (require('@aws-sdk/client-iam') as typeof import('@aws-sdk/client-iam')).IAMClient(config))
  }

  /**
   * S3 for a repository: one client (and connection pool) per target, since a repository URL may
   * name its own Region and endpoint. With an endpoint override and no Region, the profile's, else
   * us-east-1 (what S3-compatible servers expect); path-style addressing unless the target says otherwise.
   */
  s3(target: S3Target = {}): S3Connection {
    const endpoint = target.endpoint ?? this.settings.endpoints.s3
    const named = target.region ?? this.settings.region
    const region = named ?? (endpoint ? async () => (await this.#regionOfProfile()) ?? 'us-east-1' : undefined)
    const checksums = target.checksums ?? this.settings.s3.checksums
    const forcePathStyle = target.forcePathStyle ?? endpoint !== undefined
    const key = `s3 ${JSON.stringify([endpoint, named ?? (endpoint ? '(profile or us-east-1)' : null), checksums, forcePathStyle])}`
    const known = this.#clients.get(key) as (S3Connection & Destroyable) | undefined
    if (known) return known
    const { S3Client } = require('@aws-sdk/client-s3') as typeof import('@aws-sdk/client-s3')
    const { NodeHttpHandler } = require('@smithy/node-http-handler') as typeof import('@smithy/node-http-handler')
    const maxSockets = 64
    const httpAgent = new HttpAgent({ keepAlive: true, maxSockets })
    const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets })
    const connectionTimeout = 10_000
    // Socket inactivity, not total time: a large part may take long, a dead peer must not.
    const socketTimeout = 60_000
    const maxAttempts = this.settings.maxAttempts ?? S3_MAX_ATTEMPTS
    const config: S3ClientConfig = {
      requestHandler: new (slicingHandler(NodeHttpHandler))({ connectionTimeout, socketTimeout, httpAgent, httpsAgent }),
      forcePathStyle,
      maxAttempts,
      ...(region ? { region } : {}),
      ...(endpoint ? { endpoint } : {}),
      ...(this.settings.profile ? { profile: this.settings.profile } : {}),
      ...(this.#credentials ? { credentials: this.#credentials } : {}),
      ...(checksums === 'when-required' ? { requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' } : {}),
    }
    const client = new S3Client(config)
    if (checksums !== 'when-required') client.middlewareStack.add(unsignedPayloadOverTls, UNSIGNED_PAYLOAD_STEP)
    const connection: S3Connection & Destroyable = {
      client, connectionTimeout, socketTimeout, maxAttempts, checksums, leanGet: this.settings.s3.leanGet,
      destroy: () => {
        client.destroy()
        httpAgent.destroy()
        httpsAgent.destroy()
      },
    }
    this.#clients.set(key, connection)
    return connection
  }

  /** Closes every client built so far (their sockets); asking again builds new ones. */
  destroy(): void {
    for (const client of this.#clients.values()) client.destroy()
    this.#clients.clear()
  }

  #get<C extends Destroyable>(service: AwsServiceId, region: string | undefined, make: (config: ClientConfig) => C): C {
    const r = region ?? this.settings.region
    const key = `${service} ${r ?? ''}`
    let client = this.#clients.get(key) as C | undefined
    if (!client) {
      const endpoint = this.settings.endpoints[service]
      const maxAttempts = this.settings.maxAttempts
      client = make({
        ...(r ? { region: r } : {}),
        ...(endpoint ? { endpoint } : {}),
        ...(maxAttempts ? { maxAttempts } : {}),
        ...(this.settings.profile ? { profile: this.settings.profile } : {}),
        ...(this.#credentials ? { credentials: this.#credentials } : {}),
      })
      this.#clients.set(key, client)
    }
    return client
  }
}

interface ClientConfig {
  region?: string
  endpoint?: string
  maxAttempts?: number
  profile?: string
  credentials?: AwsCredentialIdentityProvider
}

/**
 * Uploads over https are sent with x-amz-content-sha256: UNSIGNED-PAYLOAD instead of a SHA-256
 * of the body, which the signature would otherwise need: one pass over every stored byte less
 * (~0.6 CPU-s per GiB). The body is still protected: TLS guards it in transit and the SDK's
 * default flexible checksum (CRC32, checked by S3) covers every PutObject and UploadPart, hence
 * only with checksums left at their default. Over plain http (test beds) bodies stay signed.
 */
const unsignedPayloadOverTls: BuildMiddleware<object, MetadataBearer> = (next, context) => async (args) => {
  const request = args.request as { protocol?: string; headers?: Record<string, string> } | undefined
  const command = (context as { commandName?: string }).commandName
  if (request?.headers && request.protocol === 'https:' && (command === 'PutObjectCommand' || command === 'UploadPartCommand')) {
    request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD'
  }
  return next(args)
}
const UNSIGNED_PAYLOAD_STEP = { step: 'build', name: 'ebsWorkerUnsignedPayload', priority: 'low' } as const

/** Slices of a large body written over TLS (see slicingHandler). */
const BODY_SLICE = 256 * 1024

/**
 * Over TLS a body handed over whole (the SDK's `end(buffer)`) is encrypted whole at once and
 * waits in memory, encrypted, until the socket drains: a pack's size again per upload in flight
 * (measured: 70–85 MiB more peak RSS for a backup over https than over http). Large bodies are
 * sent as a stream of slices instead (views of the buffer, no copy), which TLS encrypts as the
 * socket takes them. Each attempt gets a stream of its own, so the SDK's retries still send the
 * whole body. Over plain http the kernel takes the buffer as it is: nothing to gain.
 */
function slicingHandler(Base: typeof NodeHttpHandler): typeof NodeHttpHandler {
  return class SlicingHandler extends Base {
    override handle(request: Parameters<NodeHttpHandler['handle']>[0], options?: HttpHandlerOptions): ReturnType<NodeHttpHandler['handle']> {
      const body: unknown = request.body
      if (request.protocol !== 'https:' || !(body instanceof Uint8Array) || body.byteLength <= 4 * BODY_SLICE) return super.handle(request, options)
      const sliced = Object.assign(Object.create(Object.getPrototypeOf(request) as object) as typeof request, request)
      sliced.body = Readable.from(slices(body), { objectMode: false, highWaterMark: BODY_SLICE })
      return super.handle(sliced, options)
    }
  }
}

function* slices(body: Uint8Array): Generator<Buffer> {
  for (let at = 0; at < body.byteLength; at += BODY_SLICE) {
    yield Buffer.from(body.buffer, body.byteOffset + at, Math.min(BODY_SLICE, body.byteLength - at))
  }
}
