// The AWS Query protocol as the STS and IAM stand-ins speak it: a form-encoded POST naming the
// Action (and Version), answered with XML, <ActionResponse><ActionResult>…</ActionResult>
// <ResponseMetadata><RequestId>…</RequestId></ResponseMetadata></ActionResponse>, or an error,
// <ErrorResponse><Error><Type>Sender|Receiver</Type><Code>…</Code><Message>…</Message></Error>
// <RequestId>…</RequestId></ErrorResponse> with its HTTP status (STS and IAM API References,
// "Common errors"). The caller is who the request's SigV4 credential names (test/standin/iam.ts).
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AwsWorld, Principal } from './iam.ts'

export const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** An error answer: its HTTP status and AWS error code. */
export class QueryError extends Error {
  readonly status: number
  readonly code: string
  constructor(status: number, code: string, message: string) {
    super(message)
    this.status = status
    this.code = code
  }
}

export interface QueryRequest {
  action: string
  params: URLSearchParams
  principal: Principal
  region: string
}

/** A Query-protocol stand-in: `handle` returns the inner XML of the result, or throws a QueryError. */
export abstract class QueryServer {
  readonly world: AwsWorld
  endpoint = ''
  readonly #namespace: string
  #server: Server | null = null

  constructor(world: AwsWorld, namespace: string) {
    this.world = world
    this.#namespace = namespace
  }

  protected abstract handle(r: QueryRequest): string

  async start(): Promise<this> {
    this.#server = createServer((req, res) => {
      let body = ''
      req.on('data', (d) => (body += d))
      req.on('end', () => {
        const params = new URLSearchParams(body)
        const action = params.get('Action') ?? ''
        const requestId = randomUUID()
        const { principal, region } = this.world.callerOf(req.headers.authorization, 'us-east-1')
        try {
          const inner = this.handle({ action, params, principal, region })
          res.writeHead(200, { 'Content-Type': 'text/xml' }).end(
            `<${action}Response xmlns="${this.#namespace}"><${action}Result>${inner}</${action}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`)
        } catch (err) {
          const e = err instanceof QueryError ? err : new QueryError(500, 'ServiceFailure', String(err))
          res.writeHead(e.status, { 'Content-Type': 'text/xml' }).end(
            `<ErrorResponse xmlns="${this.#namespace}"><Error><Type>${e.status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${e.code}</Code>` +
            `<Message>${xmlEscape(e.message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`)
        }
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }
}
