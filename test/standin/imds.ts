// A stand-in for the EC2 Instance Metadata Service, version 2 only, speaking the protocol the
// real one does, for tests and the demo (no IMDS can run off EC2). Follows the EC2 User Guide,
// "Use the Instance Metadata Service to access instance metadata" / "How IMDSv2 works":
//   - PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds: 1–21600 returns a token;
//     a missing or out-of-range TTL is 400; a PUT carrying X-Forwarded-For is refused (403);
//   - every GET needs X-aws-ec2-metadata-token with a valid, unexpired token, else 401;
//   - unknown paths are 404; meta-data values are plain text, the identity document is JSON.
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'

export interface InstanceIdentity {
  instanceId: string
  region: string
  availabilityZone: string
  accountId: string
  instanceType?: string
}

export interface ImdsStandIn {
  endpoint: string
  /** Requests seen, for tests that check the client used tokens. */
  requests: Array<{ method: string; path: string; token: boolean }>
  /**
   * An instance in an Auto Scaling group: /latest/meta-data/autoscaling/target-lifecycle-state
   * (EC2 Auto Scaling User Guide, "Retrieve the target lifecycle state through instance
   * metadata": InService, then Terminated once scale-in picks it). 404 until set.
   */
  setTargetLifecycleState(state: string): void
  close(): Promise<void>
}

/**
 * `tags`: the instance's tags as IMDS serves them when instance metadata tags are enabled
 * (EC2 User Guide, "View tags for your EC2 instances using instance metadata"):
 * /latest/meta-data/tags/instance lists the keys one a line, /latest/meta-data/tags/instance/KEY
 * is the value. Without tags those paths are 404, as when the option is off.
 */
export async function startImds(identity: InstanceIdentity, options: { tags?: Record<string, string> } = {}): Promise<ImdsStandIn> {
  const tokens = new Map<string, number>() // token -> expiry (ms)
  const requests: ImdsStandIn['requests'] = []
  const document = {
    accountId: identity.accountId,
    architecture: 'x86_64',
    availabilityZone: identity.availabilityZone,
    imageId: 'ami-0123456789abcdef0',
    instanceId: identity.instanceId,
    instanceType: identity.instanceType ?? 'c6i.large',
    pendingTime: new Date().toISOString(),
    privateIp: '10.0.0.10',
    region: identity.region,
    version: '2017-09-30',
  }
  const values: Record<string, string> = {
    '/latest/meta-data/instance-id': identity.instanceId,
    '/latest/meta-data/instance-type': document.instanceType,
    '/latest/meta-data/placement/availability-zone': identity.availabilityZone,
    '/latest/meta-data/placement/region': identity.region,
    '/latest/dynamic/instance-identity/document': JSON.stringify(document, null, 2),
  }
  if (options.tags) {
    values['/latest/meta-data/tags/instance'] = Object.keys(options.tags).join('\n')
    for (const [key, value] of Object.entries(options.tags)) values[`/latest/meta-data/tags/instance/${key}`] = value
  }
  const reply = (res: ServerResponse, status: number, body = ''): void => {
    res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) })
    res.end(body)
  }
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!
    const token = req.headers['x-aws-ec2-metadata-token']
    requests.push({ method: req.method ?? '', path, token: typeof token === 'string' })
    if (req.method === 'PUT' && path === '/latest/api/token') {
      if (req.headers['x-forwarded-for']) return reply(res, 403)
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds'])
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) return reply(res, 400)
      const value = randomBytes(32).toString('base64')
      tokens.set(value, Date.now() + ttl * 1000)
      res.setHeader('X-aws-ec2-metadata-token-ttl-seconds', String(ttl))
      return reply(res, 200, value)
    }
    if (req.method !== 'GET') return reply(res, 405)
    const expiry = typeof token === 'string' ? tokens.get(token) : undefined
    if (expiry === undefined || expiry < Date.now()) return reply(res, 401)
    const value = values[path]
    return value === undefined ? reply(res, 404) : reply(res, 200, value)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    setTargetLifecycleState: (state) => (values['/latest/meta-data/autoscaling/target-lifecycle-state'] = state),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}
