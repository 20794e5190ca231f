// Who am I: the SDK's IMDSv2 client against the IMDS stand-in (test/standin/imds.ts).
import t from 'tap'
import { createServer } from 'node:net'
import { whoAmI } from '../agent/aws/identity.ts'
import { startImds } from './standin/imds.ts'

const identity = { instanceId: 'i-0123456789abcdef0', region: 'eu-west-1', availabilityZone: 'eu-west-1b', accountId: '111122223333' }

t.test('identity comes from IMDSv2, with a session token', async (t) => {
  const imds = await startImds(identity)
  t.teardown(() => imds.close())
  t.match(await whoAmI({ endpoint: imds.endpoint }), identity)
  t.ok(imds.requests.some((r) => r.method === 'PUT' && r.path === '/latest/api/token'), 'a token was requested')
  t.ok(imds.requests.filter((r) => r.method === 'GET').every((r) => r.token), 'every GET carried the token')
})

t.test('the stand-in refuses what IMDSv2 refuses', async (t) => {
  const imds = await startImds(identity)
  t.teardown(() => imds.close())
  const url = `${imds.endpoint}/latest/meta-data/instance-id`
  t.equal((await fetch(url)).status, 401, 'no token: 401')
  t.equal((await fetch(url, { headers: { 'X-aws-ec2-metadata-token': 'forged' } })).status, 401, 'unknown token: 401')
  const tokenUrl = `${imds.endpoint}/latest/api/token`
  t.equal((await fetch(tokenUrl, { method: 'PUT' })).status, 400, 'no TTL: 400')
  t.equal((await fetch(tokenUrl, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '21601' } })).status, 400, 'TTL too long: 400')
  t.equal((await fetch(tokenUrl, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '60', 'X-Forwarded-For': '1.2.3.4' } })).status, 403, 'forwarded: 403')
  const token = await (await fetch(tokenUrl, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '60' } })).text()
  t.equal(await (await fetch(url, { headers: { 'X-aws-ec2-metadata-token': token } })).text(), identity.instanceId, 'with a token: the value')
})

t.test('no IMDS: a clear error, quickly', async (t) => {
  // A port that accepts nothing: grab a free one and close it.
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port
      s.close(() => resolve(p))
    })
  })
  const started = Date.now()
  await t.rejects(whoAmI({ endpoint: `http://127.0.0.1:${port}`, retries: 1 }), { code: 'IMDS_UNAVAILABLE', message: /IMDSv2/ })
  t.ok(Date.now() - started < 20_000, 'fails within the timeout budget')
})
