// A lean ranged GET for restores and verifies: the bytes of a pack range go from the socket
// straight into the caller's (pooled) buffer. The SDK's GetObject path costs about 4 CPU-s per
// GiB received over https, 3 over plain http (middleware stack, stream wrappers, Node's HTTP
// parser, a fresh buffer per piece kept alive until the body is read), against 1.5 and 0.8 here
// (BENCHMARKS.md, "GET paths over HTTPS"); on a small instance that shares its CPUs with
// everything else, that is most of a restore's CPU besides decrypting and hashing.
//
// Nothing of the S3 configuration is reimplemented: the endpoint (virtual-hosted or path-style,
// Region, FIPS/dual-stack, custom endpoint) comes from the S3 client's own endpoint rules, the
// credentials from its provider chain (session tokens included, refreshed as the SDK does), the
// signature from @smithy/signature-v4 as the SDK signs. The request goes out through raw-http.ts,
// over TLS for https endpoints (as S3 is reached) or plain http (test beds), on its own keep-alive
// connections. Only the outcome that matters for speed is handled here: a 206/200 with a body.
// Anything else is left to the SDK path, by the caller (UseSdk): for that request (a 3xx/4xx other
// than 404/416, a clock skew, no credentials yet…) or for good (`permanent`: an endpoint scheme
// other than plain SigV4, a TLS handshake refused, an answer raw-http.ts does not handle).
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { getEndpointFromInstructions } from '@smithy/core/endpoints'
import { SignatureV4 } from '@smithy/signature-v4'
import { RawHttpPool, RawHttpUnsupported, TlsRefused } from './raw-http.ts'

/** sha256 of an empty body: a GET has none. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'

/**
 * The request could not take the lean path or its answer is for the SDK to interpret. With
 * `permanent`, no later request can take it either (the endpoint, its TLS, its server): the caller
 * sends every GET through the SDK from then on.
 */
export class UseSdk extends Error {
  readonly permanent: boolean
  constructor(why: string, options: { permanent?: boolean; cause?: unknown } = {}) {
    super(why, options.cause === undefined ? {} : { cause: options.cause })
    this.name = 'UseSdk'
    this.permanent = options.permanent ?? false
  }
}

/** An S3 answer the caller maps like the SDK's: NoSuchKey, NoSuchBucket, InvalidRange… */
export class S3Status extends Error {
  readonly $metadata: { httpStatusCode: number }
  constructor(status: number, code: string) {
    super(`HTTP ${status} ${code}`)
    this.name = code
    this.$metadata = { httpStatusCode: status }
  }
}

interface Target {
  protocol: 'http:' | 'https:'
  /** Where to connect: the endpoint's host (an IPv6 address without its brackets) and port. */
  host: string
  port: number
  /** The Host header, as the SDK sends and signs it. */
  hostHeader: string
  /** Path up to the object key, ending in "/" (path-style: "/bucket/"). */
  basePath: string
  headers: Record<string, string>
  signer: SignatureV4
}

export interface RangeGetterOptions {
  client: S3Client
  bucket: string
  /** The S3 client's: until a connection is up (TLS handshake included), and the longest silence of a peer, in ms. */
  connectionTimeout: number
  socketTimeout: number
}

export class RangeGetter {
  readonly #options: RangeGetterOptions
  #target: Promise<Target> | null = null
  readonly #raw: RawHttpPool

  constructor(options: RangeGetterOptions) {
    this.#options = options
    this.#raw = new RawHttpPool(options)
  }

  /** Resolved once: S3's endpoint rules do not depend on the key. */
  #resolve(): Promise<Target> {
    this.#target ??= (async (): Promise<Target> => {
      const { client, bucket } = this.#options
      const config = client.config
      const endpoint = await getEndpointFromInstructions({ Bucket: bucket, Key: 'k' }, GetObjectCommand, config as never)
      const schemes = (endpoint.properties?.authSchemes ?? []) as Array<{ name?: string; signingName?: string; signingRegion?: string }>
      const scheme = schemes[0]
      if (scheme && scheme.name !== 'sigv4') throw new UseSdk(`auth scheme ${scheme.name}`, { permanent: true })
      const url = endpoint.url
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UseSdk(`protocol ${url.protocol}`, { permanent: true })
      if (url.search) throw new UseSdk('endpoint with a query', { permanent: true })
      const headers: Record<string, string> = {}
      for (const [name, values] of Object.entries(endpoint.headers ?? {})) headers[name.toLowerCase()] = values.join(',')
      return {
        protocol: url.protocol,
        host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
        hostHeader: url.host,
        basePath: url.pathname.endsWith('/') ? url.pathname : url.pathname + '/',
        headers,
        signer: new SignatureV4({
          service: scheme?.signingName ?? 's3',
          region: scheme?.signingRegion ?? config.region,
          credentials: config.credentials,
          sha256: config.sha256,
          // S3 signs the path as sent, without the second encoding other services use.
          uriEscapePath: false,
          applyChecksum: false,
        }),
      }
    })()
    // A failed resolution (no credentials yet, say) is tried again next time.
    this.#target.catch(() => {
      this.#target = null
    })
    return this.#target
  }

  /**
   * Bytes [offset, offset + length) of `key` into `out` (at least `length` bytes long): the
   * number of bytes received, fewer only when the object is shorter.
   */
  async get(key: string, offset: number, length: number, out: Buffer): Promise<number> {
    const { client } = this.#options
    let t: Target
    let path: string
    let signed: { headers: Record<string, string> }
    try {
      t = await this.#resolve()
      path = t.basePath + key.split('/').map(encodeSegment).join('/')
      signed = await t.signer.sign(
        {
          method: 'GET',
          protocol: t.protocol,
          hostname: t.host,
          port: t.port,
          path,
          query: {},
          headers: {
            ...t.headers,
            host: t.hostHeader,
            range: `bytes=${offset}-${offset + length - 1}`,
            'x-amz-content-sha256': EMPTY_SHA256,
          },
        },
        // The SDK's clock skew correction, learnt from earlier answers.
        { signingDate: new Date(Date.now() + (client.config.systemClockOffset ?? 0)) },
      )
    } catch (err) {
      // No credentials, an endpoint the rules refuse…: the SDK path reports it in its words.
      throw err instanceof UseSdk ? err : new UseSdk(`signing: ${(err as Error)?.message ?? err}`, { cause: err })
    }
    let res
    try {
      res = await this.#raw.get({
        host: t.host, port: t.port, tls: t.protocol === 'https:', path, headers: signed.headers, out, limit: Math.min(length, out.length),
      })
    } catch (err) {
      // A refused handshake (the SDK, on the same CA store, then reports it in its words) or a
      // server this client cannot talk to: the SDK does every GET from now on.
      if (err instanceof TlsRefused || err instanceof RawHttpUnsupported) throw new UseSdk(err.message, { permanent: true, cause: err })
      throw err
    }
    if (res.status === 206 || res.status === 200) return res.received
    const code = /<Code>([^<]*)<\/Code>/.exec(res.errorBody)?.[1] ?? (res.status === 404 ? 'NotFound' : `HTTP${res.status}`)
    throw statusError(res.status, code)
  }
}

/** Server errors and throttling are retried like a dropped connection; the rest is mapped or left to the SDK. */
function statusError(status: number, code: string): Error {
  if (status >= 500 || status === 429) return new Error(`HTTP ${status} ${code}`)
  if (status === 404 || status === 416) return new S3Status(status, code)
  return new UseSdk(`HTTP ${status} ${code}`)
}

/** Like the SDK's extendedEncodeURIComponent, for one path segment. */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase())
}
