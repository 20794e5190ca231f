// A lean ranged GET for restores and verifies: the bytes of a pack range go from the socket
// straight into the caller's (pooled) buffer. The SDK's GetObject path costs about 2 CPU-s per
// GiB received (middleware stack, stream wrappers, a fresh buffer per piece kept alive until the
// body is read), against about 0.5 for a plain request; on a small instance that shares its CPUs
// with everything else, that is most of a restore's CPU besides decrypting and hashing.
//
// Nothing of the S3 configuration is reimplemented: the endpoint (virtual-hosted or path-style,
// Region, FIPS/dual-stack, custom endpoint) comes from the S3 client's own endpoint rules, the
// credentials from its provider chain (session tokens included, refreshed as the SDK does), the
// signature from @smithy/signature-v4 as the SDK signs. Only the outcome that matters for speed
// is handled here: a 206/200 with a body. Anything else (an endpoint scheme other than plain
// SigV4, a 3xx/4xx other than 404/416, a clock skew…) is left to the SDK path, by the caller.
import { request as httpRequest, type Agent as HttpAgent, type IncomingMessage } from 'node:http'
import { request as httpsRequest, type Agent as HttpsAgent } from 'node:https'
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { getEndpointFromInstructions } from '@smithy/core/endpoints'
import { SignatureV4 } from '@smithy/signature-v4'
import { RawHttpPool, UnexpectedLengthError } from './raw-http.ts'

/** sha256 of an empty body: a GET has none. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'

/** The request could not take the lean path or its answer is for the SDK to interpret. */
export class UseSdk extends Error {
  constructor(why: string) {
    super(why)
    this.name = 'UseSdk'
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
  hostname: string
  port: string
  /** Path up to the object key, ending in "/" (path-style: "/bucket/"). */
  basePath: string
  headers: Record<string, string>
  signer: SignatureV4
}

export interface RangeGetterOptions {
  client: S3Client
  bucket: string
  httpAgent: HttpAgent
  httpsAgent: HttpsAgent
  connectionTimeout: number
  socketTimeout: number
  /** Plain-http endpoints through raw-http.ts (else node:http). */
  rawHttp: boolean
}

export class RangeGetter {
  readonly #options: RangeGetterOptions
  #target: Promise<Target> | null = null
  /** Plain-http endpoints (S3-compatible servers nearby) skip node:http altogether. */
  readonly #raw: RawHttpPool | null

  constructor(options: RangeGetterOptions) {
    this.#options = options
    this.#raw = options.rawHttp ? new RawHttpPool(options) : null
  }

  /** Resolved once: S3's endpoint rules do not depend on the key. */
  #resolve(): Promise<Target> {
    this.#target ??= (async (): Promise<Target> => {
      const { client, bucket } = this.#options
      const config = client.config
      const endpoint = await getEndpointFromInstructions({ Bucket: bucket, Key: 'k' }, GetObjectCommand, config as never)
      const schemes = (endpoint.properties?.authSchemes ?? []) as Array<{ name?: string; signingName?: string; signingRegion?: string }>
      const scheme = schemes[0]
      if (scheme && scheme.name !== 'sigv4') throw new UseSdk(`auth scheme ${scheme.name}`)
      const url = endpoint.url
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UseSdk(`protocol ${url.protocol}`)
      if (url.search) throw new UseSdk('endpoint with a query')
      const headers: Record<string, string> = {}
      for (const [name, values] of Object.entries(endpoint.headers ?? {})) headers[name.toLowerCase()] = values.join(',')
      return {
        protocol: url.protocol,
        hostname: url.hostname,
        port: url.port,
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
    let signed: { headers: Record<string, string> }
    const path = (target: Target): string => target.basePath + key.split('/').map(encodeSegment).join('/')
    try {
      t = await this.#resolve()
      signed = await t.signer.sign(
      {
        method: 'GET',
        protocol: t.protocol,
        hostname: t.hostname,
        port: t.port ? Number(t.port) : undefined,
        path: path(t),
        query: {},
        headers: {
          ...t.headers,
          host: t.hostname + (t.port ? `:${t.port}` : ''),
          range: `bytes=${offset}-${offset + length - 1}`,
          'x-amz-content-sha256': EMPTY_SHA256,
        },
      },
      // The SDK's clock skew correction, learnt from earlier answers.
      { signingDate: new Date(Date.now() + (client.config.systemClockOffset ?? 0)) },
      )
    } catch (err) {
      // No credentials, an endpoint the rules refuse…: the SDK path reports it in its words.
      throw err instanceof UseSdk ? err : new UseSdk(`signing: ${(err as Error)?.message ?? err}`)
    }
    return await this.#send(t, path(t), signed.headers, length, out)
  }

  async #send(t: Target, path: string, headers: Record<string, string>, length: number, out: Buffer): Promise<number> {
    if (this.#raw && t.protocol === 'http:') {
      const res = await this.#raw
        .get({ host: t.hostname, port: t.port ? Number(t.port) : 80, path, headers, out, limit: Math.min(length, out.length) })
        .catch((err: unknown) => {
          throw err instanceof UnexpectedLengthError ? new UseSdk(err.message) : err
        })
      if (res.status === 206 || res.status === 200) return res.received
      const code = /<Code>([^<]*)<\/Code>/.exec(res.errorBody)?.[1] ?? (res.status === 404 ? 'NotFound' : `HTTP${res.status}`)
      throw statusError(res.status, code)
    }
    return await this.#sendNode(t, path, headers, length, out)
  }

  #sendNode(t: Target, path: string, headers: Record<string, string>, length: number, out: Buffer): Promise<number> {
    const { httpAgent, httpsAgent, connectionTimeout, socketTimeout } = this.#options
    const send = t.protocol === 'https:' ? httpsRequest : httpRequest
    return new Promise<number>((resolve, reject) => {
      let settled = false
      const fail = (err: Error): void => {
        if (settled) return
        settled = true
        req.destroy()
        reject(err)
      }
      const req = send({
        protocol: t.protocol,
        hostname: t.hostname,
        port: t.port || undefined,
        path,
        method: 'GET',
        headers,
        agent: t.protocol === 'https:' ? httpsAgent : httpAgent,
      })
      const connectTimer = setTimeout(() => fail(new Error(`no connection to ${t.hostname} within ${connectionTimeout} ms`)), connectionTimeout)
      req.on('socket', (socket) => {
        if (!socket.connecting) clearTimeout(connectTimer)
        else socket.once('connect', () => clearTimeout(connectTimer))
      })
      req.setTimeout(socketTimeout, () => fail(new Error(`socket idle for ${socketTimeout} ms`)))
      req.on('error', (err) => {
        clearTimeout(connectTimer)
        fail(err)
      })
      req.on('response', (res: IncomingMessage) => {
        clearTimeout(connectTimer)
        const status = res.statusCode ?? 0
        if (status !== 206 && status !== 200) {
          collectError(res).then((code) => fail(statusError(status, code)), fail)
          return
        }
        const announced = Number(res.headers['content-length'])
        if (!Number.isSafeInteger(announced) || announced > length || announced > out.length) {
          res.resume()
          fail(new UseSdk(`unexpected Content-Length ${res.headers['content-length']}`))
          return
        }
        let at = 0
        res.on('data', (piece: Buffer) => {
          if (at + piece.length > announced) {
            fail(new Error(`response body longer than its Content-Length (${announced})`))
            return
          }
          at += piece.copy(out, at)
        })
        res.on('end', () => {
          if (at !== announced) fail(new Error(`response body ended after ${at} of ${announced} bytes`))
          else if (!settled) {
            settled = true
            resolve(at)
          }
        })
        res.on('close', () => fail(new Error(`response body ended after ${at} of ${announced} bytes`)))
        res.on('error', fail)
      })
      req.end()
    })
  }
}

/** Server errors and throttling are retried like a dropped connection; the rest is mapped or left to the SDK. */
function statusError(status: number, code: string): Error {
  if (status >= 500 || status === 429) return new Error(`HTTP ${status} ${code}`)
  if (status === 404 || status === 416) return new S3Status(status, code)
  return new UseSdk(`HTTP ${status} ${code}`)
}

/** The S3 error code of an error answer (a short XML document). */
async function collectError(res: IncomingMessage): Promise<string> {
  let text = ''
  for await (const piece of res) if (text.length < 8192) text += (piece as Buffer).toString('utf8')
  return /<Code>([^<]*)<\/Code>/.exec(text)?.[1] ?? (res.statusCode === 404 ? 'NotFound' : `HTTP${res.statusCode}`)
}

/** Like the SDK's extendedEncodeURIComponent, for one path segment. */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase())
}
