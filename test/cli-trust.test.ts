// The command lines a person can trust (issue 14): repository URLs that are not one are refused,
// option values are checked, a restore does not overwrite an image file unasked, a missing
// repository and a wrong key have their own exit statuses, and --region, --profile and
// --endpoint-url mean what the AWS CLI's do. Both CLIs run as child processes.
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage } from 'node:http'
import { join } from 'node:path'
import { backedUpImage, cli, lastJsonLine, makeImage, MiB, ROOT, runCli, s3Available, s3RepoUrl, sha256File, tempDir, type CliResult, type Teardown } from './helpers.ts'

const CONTROLLER = join(ROOT, 'controller/bin/ebs-controller.ts')

/** Runs ebs-controller as a child process, in `cwd` when given. */
function controller(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CONTROLLER, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, json: lastJsonLine(stdout) }))
  })
}

/** Runs ebs-worker in `cwd` (to see what a relative path would have made there). */
function workerIn(cwd: string, args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'agent/bin/ebs-worker.ts'), ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, json: lastJsonLine(stdout) }))
  })
}

t.test('a repository URL that is neither s3://bucket/… nor file:///… (nor an absolute path) is refused, and nothing is made', async (t) => {
  const dir = await tempDir(t)
  const cases: Array<[string, RegExp]> = [
    ['s3:/bucket/x', /did you mean s3:\/\/bucket\/x\?/],
    ['S3:bucket/x', /did you mean s3:\/\/bucket\/x\?/],
    ['backups/repo', /relative path: give it absolute .* file:\/\/\/.*backups\/repo/],
    ['./repo', /relative path/],
    ['file://repo/x', /names the host "repo": a file URL is file:\/\/\/absolute\/path, with three slashes/],
    ['file:repo', /a file URL is file:\/\/\/absolute\/path/],
    ['http://example.com/repo', /unsupported repository URL/],
  ]
  for (const [url, message] of cases) {
    const r = await workerIn(dir, ['init', '--repo', url, '--json'])
    t.equal(r.code, 2, `${url}: exit 2`)
    t.equal(r.json?.error.code, 'BAD_INPUT', `${url}: BAD_INPUT`)
    t.match(r.json?.error.message, message, `${url}: ${message}`)
  }
  t.notOk(existsSync(join(dir, 's3:')), 'no directory "s3:" was made')
  t.notOk(existsSync(join(dir, 'backups')) || existsSync(join(dir, 'repo')), 'nor any other')
  const r = await controller(['list', '--repo', 'file://repo/x', '--json'])
  t.equal(r.code, 2, 'the controller refuses it too')
  t.equal(r.json?.error.code, 'BAD_INPUT')
  // An absolute path is a local directory, the same as its file:// URL.
  const abs = join(dir, 'abs')
  await cli(['init', '--repo', abs])
  t.same((await cli(['list', '--repo', `file://${abs}`])).backups, [], 'an absolute path and its file:// URL are one repository')
})

t.test('option values are checked against their bounds (core/tuning.ts) before anything runs', async (t) => {
  const dir = await tempDir(t)
  const { repo, image, backupId } = await backedUpImage(dir, 2 * MiB)
  const cases: Array<[string[], RegExp]> = [
    [['backup', '--repo', repo, '--device', image, '--compression-level', '40'], /--compression-level must be an integer from 1 to 19/],
    [['backup', '--repo', repo, '--device', image, '--compression-level', '2.5'], /--compression-level must be an integer/],
    [['backup', '--repo', repo, '--device', image, '--read-concurrency', '0'], /--read-concurrency must be an integer from 1 to 256/],
    [['backup', '--repo', repo, '--device', image, '--upload-concurrency', '65'], /--upload-concurrency must be an integer from 1 to 64/],
    [['backup', '--repo', repo, '--device', image, '--pack-size', '2GiB'], /--pack-size must be from/],
    [['backup', '--repo', repo, '--device', image, '--pack-size', 'big'], /is not a size/],
    [['restore', '--repo', repo, '--backup', backupId, '--device', join(dir, 'o.img'), '--concurrency', '1000'], /--concurrency must be an integer from 1 to 256/],
    [['verify', '--repo', repo, '--backup', backupId, '--concurrency', 'x'], /--concurrency must be an integer/],
    [['prune', '--repo', repo, '--max-wait', '-1'], /--max-wait must be a whole number/],
    [['prune', '--repo', repo, '--max-unused', ''], /--max-unused must be a percentage/],
    [['prune', '--repo', repo, '--grace', 'soon'], /--grace must be a whole number/],
    [['forget', '--repo', repo, '--keep-last', '1', '--prune', '--grace', '1h'], /--grace must be a whole number/],
    [['init', '--repo', join(dir, 'r'), '--chunk-size', 'lots'], /is not a size/],
  ]
  for (const [args, message] of cases) {
    const r = await runCli([...args, '--json'])
    t.equal(r.code, 2, `${args.slice(-2).join(' ')}: exit 2`)
    t.equal(r.json?.error.code, 'BAD_INPUT', `${args.slice(-2).join(' ')}: BAD_INPUT`)
    t.match(r.json?.error.message, message, `${args.slice(-2).join(' ')}: says why`)
  }
  t.same((await cli(['list', '--repo', repo])).backups.map((b: { id: string }) => b.id), [backupId], 'nothing was backed up')
  for (const [args, message] of [
    [['sweep-snapshots', '--source-role', 'arn:aws:iam::111111111111:role/x', '--repo', repo, '--older-than-hours', '-1'], /--older-than-hours must be a number ≥ 0/],
    [['backup-instance', '--instance', 'i-0123456789abcdef0', '--source-role', 'arn:aws:iam::111111111111:role/x', '--repo', repo, '--task-timeout', '0'], /--task-timeout must be a positive integer/],
  ] as Array<[string[], RegExp]>) {
    const r = await controller([...args, '--json'])
    t.equal(r.code, 2, `controller ${args[0]}: exit 2`)
    t.match(r.json?.error.message, message, `controller ${args[0]}: says why`)
  }
})

t.test('a restore onto an image file that is not empty needs --force', async (t) => {
  const dir = await tempDir(t)
  const { repo, image, backupId } = await backedUpImage(dir, 4 * MiB)
  const other = join(dir, 'other.img')
  await makeImage(other, 4 * MiB, [{ kind: 'random', offset: MiB, length: MiB }])
  const before = await sha256File(other)
  const r = await runCli(['restore', '--repo', repo, '--backup', backupId, '--device', other, '--json'])
  t.equal(r.code, 2, 'refused: exit 2')
  t.equal(r.json?.error.code, 'BAD_INPUT')
  t.match(r.json?.error.message, /is an image file that is not empty .* pass --force/)
  t.equal(await sha256File(other), before, 'the file is untouched')
  await cli(['restore', '--repo', repo, '--backup', backupId, '--device', other, '--force'])
  t.equal(await sha256File(other), await sha256File(image), 'with --force: overwritten with the backup')
  const fresh = join(dir, 'new.img')
  await cli(['restore', '--repo', repo, '--backup', backupId, '--device', fresh])
  t.equal(await sha256File(fresh), await sha256File(image), 'a new file needs no --force')
})

t.test('exit statuses: 10 when there is no repository, 12 for a wrong key (restic\'s)', async (t) => {
  const dir = await tempDir(t)
  const none = await runCli(['list', '--repo', join(dir, 'nothing-here'), '--json'])
  t.equal(none.code, 10, 'ebs-worker: no repository, exit 10')
  t.equal(none.json?.error.code, 'REPO_NOT_FOUND')
  const repo = join(dir, 'repo')
  const key = join(dir, 'key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', key])
  const wrongKey = join(dir, 'wrong.key')
  await writeFile(wrongKey, randomBytes(32).toString('base64'))
  const wrong = await runCli(['list', '--repo', repo, '--key-file', wrongKey, '--json'])
  t.equal(wrong.code, 12, 'ebs-worker: wrong key, exit 12')
  t.equal(wrong.json?.error.code, 'WRONG_KEY')
  const c = await controller(['list', '--repo', `file://${join(dir, 'nothing-here')}`, '--json'])
  t.equal(c.code, 10, 'ebs-controller list: no repository is an error (exit 10), not an empty list')
  t.equal(c.json?.error.code, 'REPO_NOT_FOUND')
  t.same(JSON.parse(c.stdout), c.json, 'and its --json output is that one JSON object only')
  t.match(c.stderr, /REPO_NOT_FOUND: no ebs-worker repository at/, 'stderr says why')
  const forget = await controller(['forget', '--repo', `file://${join(dir, 'nothing-here')}`, '--keep-last', '1', '--json'])
  t.equal(forget.code, 10, 'ebs-controller forget: no repository, exit 10')
  const empty = await controller(['list', '--repo', `file://${repo}`])
  t.equal(empty.code, 0, 'a repository without restore points: an empty list')
  t.equal(empty.stdout, 'no restore points\n')
})

/** An HTTP server that records each request's Authorization header and refuses it (403), as AWS would a bad signature. */
async function recorder(t: Teardown): Promise<{ endpoint: string; seen: Array<{ path: string; credential: string }> }> {
  const seen: Array<{ path: string; credential: string }> = []
  const server = createServer((req: IncomingMessage, res) => {
    req.resume()
    const credential = /Credential=([^,]+)/.exec(req.headers.authorization ?? '')?.[1] ?? ''
    seen.push({ path: req.url ?? '', credential })
    res.writeHead(403, { 'Content-Type': 'text/xml' })
    res.end('<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>recorded</Message></Error>')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}`, seen }
}

/** Shared config and credentials files with a profile "tb", and an environment that has no other AWS settings. */
async function profiles(t: Teardown, o: { accessKeyId: string; secretAccessKey: string; region?: string }): Promise<NodeJS.ProcessEnv> {
  const dir = await tempDir(t)
  await writeFile(join(dir, 'config'), `[default]\nregion = us-west-2\n\n[profile tb]\n${o.region ? `region = ${o.region}\n` : ''}`)
  await writeFile(join(dir, 'credentials'), `[tb]\naws_access_key_id = ${o.accessKeyId}\naws_secret_access_key = ${o.secretAccessKey}\n`)
  return {
    AWS_CONFIG_FILE: join(dir, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(dir, 'credentials'),
    // Unset (spawn leaves out what is undefined): the SDK takes an empty AWS_REGION for a Region.
    AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined, AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined, AWS_PROFILE: undefined,
    AWS_ENDPOINT_URL: undefined, AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9', AWS_ENDPOINT_URL_STS: 'http://127.0.0.1:9', AWS_EC2_METADATA_DISABLED: 'true',
  }
}

t.test('--profile: its credentials and Region; --region and --endpoint-url win, as with the AWS CLI', async (t) => {
  const s3 = await recorder(t)
  const env = await profiles(t, { accessKeyId: 'AKIDPROFILETB', secretAccessKey: 'secret', region: 'eu-test-1' })
  // AWS_ENDPOINT_URL_S3 points nowhere (port 9): --endpoint-url must win over it.
  const r = await runCli(['--profile', 'tb', '--endpoint-url', s3.endpoint, 'list', '--repo', 's3://some-bucket/x', '--json'], env)
  t.not(r.code, 0, 'the recorder refuses it')
  t.match(s3.seen[0]?.credential, /^AKIDPROFILETB\/\d{8}\/eu-test-1\/s3\/aws4_request$/, 'signed with the profile\'s key, for the profile\'s Region, sent to --endpoint-url')
  s3.seen.length = 0
  await runCli(['list', '--repo', 's3://some-bucket/x', '--region', 'eu-other-2', '--profile', 'tb', '--endpoint-url', s3.endpoint], env)
  t.match(s3.seen[0]?.credential, /^AKIDPROFILETB\/\d{8}\/eu-other-2\/s3\//, 'options after the command too; --region wins over the profile\'s')
  s3.seen.length = 0
  await runCli(['list', '--repo', 's3://some-bucket/x', '--profile', 'tb', '--endpoint-url', s3.endpoint], { ...env, AWS_REGION: 'eu-env-3' })
  t.match(s3.seen[0]?.credential, /\/eu-env-3\/s3\//, 'AWS_REGION wins over the profile\'s Region (as the AWS CLI has it)')

  // The controller: the profile's Region is the Region of its calls (here STS AssumeRole of the source role).
  const sts = await recorder(t)
  const c = await controller(['preflight', 'backup-instance', '--instance', 'i-0123456789abcdef0', '--source-role', 'arn:aws:iam::111111111111:role/src',
    '--profile', 'tb', '--endpoint-url', sts.endpoint, '--json'], env)
  t.equal(c.code, 1, 'the recorder refuses it')
  t.match(sts.seen[0]?.credential, /^AKIDPROFILETB\/\d{8}\/eu-test-1\/sts\/aws4_request$/, 'controller: the profile\'s key and Region')
  t.same(JSON.parse(c.stdout), c.json, 'controller --json: only the JSON on stdout')
  const noRegion = await controller(['preflight', 'backup-instance', '--instance', 'i-0123456789abcdef0', '--source-role', 'arn:aws:iam::111111111111:role/src',
    '--endpoint-url', sts.endpoint, '--json'], { ...env, AWS_CONFIG_FILE: join(ROOT, 'no-such-config') })
  t.equal(noRegion.code, 2, 'no Region anywhere: exit 2')
  t.match(noRegion.json?.error.message, /no Region: pass --region, set AWS_REGION, or use a profile/)
})

t.test('bad --region, --profile, --endpoint-url are refused clearly', async (t) => {
  const env = await profiles(t, { accessKeyId: 'AKIDPROFILETB', secretAccessKey: 'secret' })
  for (const [args, message] of [
    [['--profile', 'nope'], /the profile nope is in neither .*config nor .*credentials/],
    [['--region', 'eu west 1'], /--region "eu west 1" is not a Region name/],
    [['--endpoint-url', 'ftp://x'], /--endpoint-url "ftp:\/\/x" is not an http:\/\/ or https:\/\/ URL/],
  ] as Array<[string[], RegExp]>) {
    const w = await runCli(['list', '--repo', 's3://some-bucket/x', ...args, '--json'], env)
    t.equal(w.code, 2, `ebs-worker ${args.join(' ')}: exit 2`)
    t.match(w.json?.error.message, message)
    const c = await controller(['list', '--repo', 's3://some-bucket/x', ...args, '--json'], env)
    t.equal(c.code, 2, `ebs-controller ${args.join(' ')}: exit 2`)
    t.match(c.json?.error.message, message)
  }
})

t.test('--profile against the test bed: the profile\'s keys open the repository, with no keys in the environment', { skip: !s3Available && 'no S3 test bed' }, async (t) => {
  const url = await s3RepoUrl()
  const env = { ...(await profiles(t, { accessKeyId: process.env.AWS_ACCESS_KEY_ID!, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY! })), AWS_ENDPOINT_URL_S3: process.env.AWS_ENDPOINT_URL_S3 }
  const bare = await runCli(['init', '--repo', url, '--json'], env)
  t.not(bare.code, 0, 'without the profile there are no credentials')
  const init = await runCli(['--profile', 'tb', 'init', '--repo', url, '--json'], env)
  t.equal(init.code, 0, `with --profile tb: created${init.code ? `: ${init.stderr}` : ''}`)
  const list = await runCli(['list', '--repo', url, '--profile', 'tb', '--json'], env)
  t.same(list.json?.backups, [], 'and listed')
  const c = await controller(['--profile', 'tb', 'list', '--repo', url, '--json'], env)
  t.same(JSON.parse(c.stdout), { ok: true, repository: url, restorePoints: [] }, `the controller too${c.code ? `: ${c.stderr}` : ''}`)
})
