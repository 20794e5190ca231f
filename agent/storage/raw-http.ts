// A minimal HTTP/1.1 client for one job: GET a byte range whose size is known, over plain http,
// straight into the caller's buffer. Node's own client reads every socket chunk into a fresh
// buffer, parses it and passes it through a stream, which is then copied once more; here the
// kernel writes the body where it belongs (net's `onread` with a buffer chosen per read), so
// receiving costs the syscalls and little else. Keep-alive connections are pooled per host.
//
// Deliberately narrow: responses must announce a Content-Length; anything unexpected (chunked
// bodies, 1xx, a header block over 16 KiB) fails the request with an error the caller may
// retry elsewhere. TLS is not handled (node:https does it).
import { connect, type Socket } from 'node:net'

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

/** A 2xx answer longer than asked for (a server that ignored the Range header). */
export class UnexpectedLengthError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UnexpectedLengthError'
  }
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

class Connection {
  readonly socket: Socket
  readonly head = Buffer.allocUnsafe(HEAD_BYTES)
  headAt = 0
  ex: Exchange | null = null
  closed = false
  /** Responses completed on it: a failure on a reused connection before any answer is a stale keep-alive. */
  uses = 0

  constructor(host: string, port: number, onClose: (c: Connection) => void) {
    this.socket = connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: () => this.#nextBuffer(),
        callback: (n: number, buf: Uint8Array) => {
          this.#onRead(n, buf)
          return true
        },
      },
    })
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
    this.socket.on('timeout', () => gone(new Error('socket idle too long')))
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
      if (buf.buffer !== ex.out.buffer) return this.#fail(new Error('read landed outside the body buffer'))
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
      if (this.headAt >= this.head.length) this.#fail(new Error('response header block too large'))
      return
    }
    const lines = this.head.toString('latin1', 0, end).split('\r\n')
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')
    if (!m) return this.#fail(new Error(`not an HTTP response: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`))
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
    if (ex.status < 200) return this.#fail(new Error(`unexpected HTTP ${ex.status}`))
    const rest = this.head.subarray(end + 4, this.headAt)
    const ok = ex.status >= 200 && ex.status < 300
    if (chunked || contentLength < 0) {
      // Only error answers come without a length here; their status is what counts.
      if (ok) return this.#fail(new Error('response without a Content-Length'))
      ex.keepAlive = false
      ex.errorBody = Buffer.from(rest)
      return this.#done()
    }
    ex.bodyLength = contentLength
    if (ok) {
      if (contentLength > ex.limit) return this.#fail(new UnexpectedLengthError(`response of ${contentLength} bytes where at most ${ex.limit} were asked for`))
      if (rest.length > contentLength) return this.#fail(new Error('more bytes than the Content-Length'))
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
    this.uses++
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
  path: string
  headers: Record<string, string>
  /** Where a 2xx body goes; at most `limit` bytes of it are accepted. */
  out: Buffer
  limit: number
}

export class RawHttpPool {
  readonly #idle = new Map<string, Connection[]>()
  readonly #connectionTimeout: number
  readonly #socketTimeout: number

  constructor(options: { connectionTimeout: number; socketTimeout: number }) {
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
    const key = `${req.host}:${req.port}`
    // A pooled connection the server closed meanwhile fails before any answer: take another.
    for (;;) {
      const reused = this.#take(key)
      const conn = reused ?? (await this.#open(key, req.host, req.port))
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

  #open(key: string, host: string, port: number): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const conn = new Connection(host, port, (c) => {
        const list = this.#idle.get(key)
        const at = list?.indexOf(c) ?? -1
        if (at >= 0) list!.splice(at, 1)
      })
      const timer = setTimeout(() => {
        conn.socket.destroy()
        reject(new Error(`no connection to ${host}:${port} within ${this.#connectionTimeout} ms`))
      }, this.#connectionTimeout)
      conn.socket.once('connect', () => {
        clearTimeout(timer)
        resolve(conn)
      })
      conn.socket.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
    })
  }
}
