// A minimal HTTP/1.1 client for one job: GET a byte range whose size is known, over plain http or
// TLS, straight into the caller's buffer. Node's own client reads every socket chunk into a fresh
// buffer, parses it and passes it through a stream, which is then copied once more; here the body
// is written where it belongs (`onread` with a buffer chosen per read: the kernel writes into it
// over plain http, and over TLS Node decrypts into it), so receiving costs the syscalls and the
// decryption and little else. Keep-alive connections are pooled per scheme, host and port.
//
// TLS is Node's, with its defaults, as node:https sets it up for the SDK: the certificate chain is
// checked against Node's CA store (its bundled roots, NODE_EXTRA_CA_CERTS, --use-system-ca…) and
// the host name against the certificate (tls.checkServerIdentity); SNI for host names, not for IP
// addresses. No ALPN: without it a server speaks HTTP/1.1, the only protocol spoken here. The
// session of the last handshake with a host is offered to the next connection to it (a resumed
// handshake skips the certificate's transfer and checks, which the session already passed).
//
// Deliberately narrow: responses must announce a Content-Length; anything else (chunked 2xx
// bodies, 1xx, a header block over 16 KiB, a 2xx longer than asked for) fails the request with a
// RawHttpUnsupported, and a TLS handshake that the server or the certificate check refuses with a
// TlsRefused: both say that another client must do the job. Network failures (a connection refused,
// dropped or silent, a body cut short) are other errors: the same request may well succeed.
import { connect, isIP, type OnReadOpts, type Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'

const HEAD_BYTES = 16 * 1024
const ERROR_BODY_BYTES = 64 * 1024

export interface RawResponse {
  status: number
  /** Body bytes received into `out` (2xx), or the body itself (other statuses, when small). */
  received: number
  errorBody: string
}

export class RawHttpError extends Error {
  readonly beforeResponse: boolean
  constructor(message: string, beforeResponse: boolean) {
    super(message)
    this.name = 'RawHttpError'
    this.beforeResponse = beforeResponse
  }
}

/** An answer this client does not handle (or a Node that no longer reads into the chosen buffer): not for a retry here. */
export class RawHttpUnsupported extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RawHttpUnsupported'
  }
}

/** A 2xx answer longer than asked for (a server that ignored the Range header). */
export class UnexpectedLengthError extends RawHttpUnsupported {
  constructor(message: string) {
    super(message)
    this.name = 'UnexpectedLengthError'
  }
}

/**
 * A TLS handshake that failed for another reason than the network: a certificate the CA store
 * does not vouch for, one for another host, expired, a protocol or cipher the server refused, a
 * server that does not speak TLS. Trying again changes nothing.
 */
export class TlsRefused extends Error {
  /** Node's or OpenSSL's code: UNABLE_TO_VERIFY_LEAF_SIGNATURE, ERR_TLS_CERT_ALTNAME_INVALID, ERR_SSL_WRONG_VERSION_NUMBER… */
  readonly code: string
  constructor(endpoint: string, cause: NodeJS.ErrnoException) {
    super(`TLS handshake with ${endpoint} refused: ${cause.code}: ${cause.message.trim()}`, { cause })
    this.name = 'TlsRefused'
    this.code = cause.code ?? 'TLS'
  }
}

/**
 * A handshake error that is not the network's. System errors (ECONNRESET, ETIMEDOUT, ENOTFOUND…)
 * carry the failing syscall or an errno-style code; certificate checks (X509 codes, Node's
 * ERR_TLS_*) and OpenSSL's alerts (ERR_SSL_*) neither.
 */
function isTlsRefusal(err: NodeJS.ErrnoException): boolean {
  return err.syscall === undefined && typeof err.code === 'string' && !/^E[A-Z]+$/.test(err.code)
}

interface Exchange {
  out: Buffer
  limit: number
  status: number
  phase: 'head' | 'body' | 'error-body'
  bodyLength: number
  bodyAt: number
  errorBody: Buffer | null
  keepAlive: boolean
  resolve: (r: RawResponse) => void
  reject: (err: Error) => void
}

interface Endpoint {
  host: string
  port: number
  tls: boolean
}

class Connection {
  readonly socket: Socket
  readonly head = Buffer.allocUnsafe(HEAD_BYTES)
  headAt = 0
  ex: Exchange | null = null
  closed = false

  constructor(to: Endpoint, session: Buffer | undefined, onClose: (c: Connection) => void) {
    const onread: OnReadOpts = {
      buffer: () => this.#nextBuffer(),
      callback: (n: number, buf: Uint8Array) => {
        this.#onRead(n, buf)
        return true
      },
    }
    // tls.connect takes `onread` as net.connect does (Node's documentation says so; @types/node
    // does not list it).
    const secure: ConnectionOptions & { onread: OnReadOpts } = {
      host: to.host,
      port: to.port,
      onread,
      ...(isIP(to.host) ? {} : { servername: to.host }),
      ...(session ? { session } : {}),
    }
    this.socket = to.tls ? tlsConnect(secure) : connect({ host: to.host, port: to.port, onread })
    this.socket.setNoDelay(true)
    const gone = (err?: Error): void => {
      if (this.closed) return
      this.closed = true
      onClose(this)
      const ex = this.ex
      if (ex) {
        this.ex = null
        const before = ex.phase === 'head' && this.headAt === 0
        ex.reject(new RawHttpError(err?.message ?? (ex.phase === 'head'
          ? 'connection closed before the response'
          : `response body ended after ${ex.bodyAt} of ${ex.bodyLength} bytes`), before))
      }
      this.socket.destroy()
    }
    this.socket.on('error', gone)
    this.socket.on('close', () => gone())
    this.socket.on('end', () => gone())
    this.socket.on('timeout', () => gone(new Error(`socket idle for ${this.socket.timeout} ms`)))
  }

  #nextBuffer(): Uint8Array {
    const ex = this.ex
    if (ex && ex.phase === 'body' && ex.bodyAt < ex.bodyLength) return ex.out.subarray(ex.bodyAt, ex.bodyLength)
    if (this.headAt >= this.head.length) this.headAt = 0 // only reached on protocol errors, which close the connection
    return this.head.subarray(this.headAt)
  }

  #fail(err: Error): void {
    const ex = this.ex
    this.ex = null
    this.closed = true
    this.socket.destroy()
    ex?.reject(err)
  }

  #onRead(n: number, buf: Uint8Array): void {
    const ex = this.ex
    if (!ex) return this.#fail(new Error('data from the server while idle'))
    if (ex.phase === 'body') {
      ex.bodyAt += n
      if (buf.buffer !== ex.out.buffer) return this.#fail(new RawHttpUnsupported('read landed outside the body buffer'))
      if (ex.bodyAt >= ex.bodyLength) this.#done()
      return
    }
    this.headAt += n
    if (ex.phase === 'error-body') {
      if (this.headAt >= ex.bodyLength) {
        ex.errorBody = this.head.subarray(0, ex.bodyLength)
        this.#done()
      }
      return
    }
    const end = this.head.subarray(0, this.headAt).indexOf('\r\n\r\n')
    if (end < 0) {
      if (this.headAt >= this.head.length) this.#fail(new RawHttpUnsupported('response header block too large'))
      return
    }
    const lines = this.head.toString('latin1', 0, end).split('\r\n')
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')
    if (!m) return this.#fail(new RawHttpUnsupported(`not an HTTP response: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`))
    ex.status = Number(m[1])
    let contentLength = -1
    let chunked = false
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!
      const colon = line.indexOf(':')
      if (colon < 0) continue
      const name = line.slice(0, colon).trim().toLowerCase()
      const value = line.slice(colon + 1).trim()
      if (name === 'content-length') contentLength = /^\d+$/.test(value) ? Number(value) : -2
      else if (name === 'transfer-encoding') chunked = value.toLowerCase() !== 'identity'
      else if (name === 'connection') ex.keepAlive = !/close/i.test(value)
    }
    if (ex.status < 200) return this.#fail(new RawHttpUnsupported(`unexpected HTTP ${ex.status}`))
    const rest = this.head.subarray(end + 4, this.headAt)
    const ok = ex.status >= 200 && ex.status < 300
    if (chunked || contentLength < 0) {
      // Only error answers come without a length here; their status is what counts.
      if (ok) return this.#fail(new RawHttpUnsupported('response without a Content-Length'))
      ex.keepAlive = false
      ex.errorBody = Buffer.from(rest)
      return this.#done()
    }
    ex.bodyLength = contentLength
    if (ok) {
      if (contentLength > ex.limit) return this.#fail(new UnexpectedLengthError(`response of ${contentLength} bytes where at most ${ex.limit} were asked for`))
      if (rest.length > contentLength) return this.#fail(new RawHttpUnsupported('more bytes than the Content-Length'))
      ex.phase = 'body'
      ex.bodyAt = rest.copy(ex.out, 0)
      this.headAt = 0
      if (ex.bodyAt >= ex.bodyLength) this.#done()
      return
    }
    if (contentLength > ERROR_BODY_BYTES) {
      ex.keepAlive = false
      ex.errorBody = Buffer.from(rest)
      return this.#done()
    }
    ex.phase = 'error-body'
    this.head.copy(this.head, 0, end + 4, this.headAt)
    this.headAt = rest.length
    if (this.headAt >= contentLength) {
      ex.errorBody = this.head.subarray(0, contentLength)
      this.#done()
    }
  }

  #done(): void {
    const ex = this.ex!
    this.ex = null
    this.headAt = 0
    const response: RawResponse = {
      status: ex.status,
      received: ex.phase === 'body' ? ex.bodyAt : 0,
      errorBody: ex.errorBody ? ex.errorBody.toString('utf8') : '',
    }
    if (!ex.keepAlive) {
      this.closed = true
      this.socket.destroy()
    }
    ex.resolve(response)
  }

  request(head: string, out: Buffer, limit: number, timeoutMs: number): Promise<RawResponse> {
    return new Promise<RawResponse>((resolve, reject) => {
      this.ex = {
        out, limit, status: 0, phase: 'head', bodyLength: 0, bodyAt: 0, errorBody: null, keepAlive: true,
        resolve: (r) => {
          this.socket.setTimeout(0)
          resolve(r)
        },
        reject,
      }
      this.socket.setTimeout(timeoutMs)
      this.socket.write(head)
    })
  }
}

export interface RawRequest {
  host: string
  port: number
  /** Over TLS (https), else plain http. */
  tls?: boolean
  path: string
  headers: Record<string, string>
  /** Where a 2xx body goes; at most `limit` bytes of it are accepted. */
  out: Buffer
  limit: number
}

export interface RawHttpPoolOptions {
  /** Until the connection is up (TCP, and the TLS handshake), in ms. */
  connectionTimeout: number
  /** Longest silence of the peer while a request is under way, in ms. */
  socketTimeout: number
}

export class RawHttpPool {
  readonly #idle = new Map<string, Connection[]>()
  /** Per TLS endpoint, the session of the last handshake, offered to the next connection. */
  readonly #sessions = new Map<string, Buffer>()
  readonly #connectionTimeout: number
  readonly #socketTimeout: number

  constructor(options: RawHttpPoolOptions) {
    this.#connectionTimeout = options.connectionTimeout
    this.#socketTimeout = options.socketTimeout
  }

  async get(req: RawRequest): Promise<RawResponse> {
    let head = `GET ${req.path} HTTP/1.1\r\n`
    for (const [name, value] of Object.entries(req.headers)) {
      if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new Error(`header ${name} holds a line break`)
      head += `${name}: ${value}\r\n`
    }
    head += '\r\n'
    const to: Endpoint = { host: req.host, port: req.port, tls: req.tls ?? false }
    const key = `${to.tls ? 'https' : 'http'}://${to.host}:${to.port}`
    // A pooled connection the server closed meanwhile fails before any answer: take another.
    for (;;) {
      const reused = this.#take(key)
      const conn = reused ?? (await this.#open(key, to))
      try {
        const res = await conn.request(head, req.out, req.limit, this.#socketTimeout)
        if (!conn.closed) this.#release(key, conn)
        return res
      } catch (err) {
        if (reused && err instanceof RawHttpError && err.beforeResponse) continue
        throw err
      }
    }
  }

  #take(key: string): Connection | null {
    const list = this.#idle.get(key)
    while (list && list.length) {
      const conn = list.pop()!
      if (!conn.closed) {
        conn.socket.ref()
        return conn
      }
    }
    return null
  }

  #release(key: string, conn: Connection): void {
    conn.socket.unref()
    let list = this.#idle.get(key)
    if (!list) this.#idle.set(key, (list = []))
    list.push(conn)
  }

  #open(key: string, to: Endpoint): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const conn = new Connection(to, this.#sessions.get(key), (c) => {
        const list = this.#idle.get(key)
        const at = list?.indexOf(c) ?? -1
        if (at >= 0) list!.splice(at, 1)
      })
      const socket = conn.socket
      let up = false
      const timer = setTimeout(() => {
        socket.destroy()
        reject(new Error(`no connection to ${key} within ${this.#connectionTimeout} ms`))
      }, this.#connectionTimeout)
      // A session is kept only from a handshake that passed the checks (TLS 1.2 hands it over
      // before they run, TLS 1.3 after): a resumed session skips the host name check.
      let session: Buffer | undefined
      if (to.tls) socket.on('session', (s: Buffer) => (up ? this.#sessions.set(key, s) : (session = s)))
      socket.once(to.tls ? 'secureConnect' : 'connect', () => {
        up = true
        clearTimeout(timer)
        if (session) this.#sessions.set(key, session)
        resolve(conn)
      })
      socket.once('error', (err: NodeJS.ErrnoException) => {
        if (up) return // the connection's own handler takes it from here
        clearTimeout(timer)
        if (to.tls && isTlsRefusal(err)) {
          this.#sessions.delete(key)
          reject(new TlsRefused(key, err))
        } else reject(err)
      })
    })
  }
}
