// A repository's further keys (`ebs-worker key add|list|remove`, agent/cli/key.ts): the master
// secret stays the same and each key wraps it separately, the config's in the config and the others
// in keys/<id>. Through the CLI as a child process: a key file added to a KMS repository (the
// break-glass key) and a KMS key to a key-file one against the KMS stand-in (test/standin/kms.ts),
// on file:// and on the test bed's S3, and under S3 Object Lock.
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { HeadObjectCommand, ListObjectVersionsCommand, S3Client } from '@aws-sdk/client-s3'
import { cli, makeImage, MiB, runCli, s3Available, s3RepoUrl, sha256File, tempDir } from './helpers.ts'
import { AwsWorld } from './standin/iam.ts'
import { KmsStandIn } from './standin/kms.ts'

const ACCOUNT = '111122223333'
const REGION = 'eu-west-1'
const KEY_ARN = `arn:aws:kms:${REGION}:${ACCOUNT}:key/repo-key-1`
const OTHER_ARN = `arn:aws:kms:${REGION}:${ACCOUNT}:key/other-key`

/** A KMS stand-in with two keys, an operator who may use them and an auditor who may not decrypt. */
async function kmsWorld(t: Test) {
  const world = new AwsWorld(ACCOUNT)
  world.addCredentials('AKIAOPERATOR', { arn: `arn:aws:iam::${ACCOUNT}:user/operator`, accountId: ACCOUNT })
  world.addCredentials('AKIANODECRYPT', {
    arn: `arn:aws:iam::${ACCOUNT}:user/auditor`, accountId: ACCOUNT,
    policy: { Statement: [{ Effect: 'Allow', Action: ['kms:DescribeKey'], Resource: '*' }] },
  })
  const kms = await new KmsStandIn([
    { keyId: 'repo-key-1', accountId: ACCOUNT, region: REGION, keyManager: 'CUSTOMER' },
    { keyId: 'other-key', accountId: ACCOUNT, region: REGION, keyManager: 'CUSTOMER' },
  ], { world }).start()
  t.teardown(() => kms.close())
  // KMS for the stand-in; S3 (when the test bed runs) keeps its own credentials.
  const as = (accessKeyId: string): NodeJS.ProcessEnv => ({
    AWS_ENDPOINT_URL_KMS: kms.endpoint, AWS_REGION: REGION, AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: 'x',
  })
  return { kms, as }
}

async function image(dir: string): Promise<string> {
  const path = join(dir, 'vol.img')
  await makeImage(path, 6 * MiB, [{ kind: 'random', offset: MiB, length: 2 * MiB }])
  return path
}

t.test('break-glass: a key file added to a KMS repository opens it without KMS; either key removes the other, never the last', async (t) => {
  const dir = await tempDir(t)
  const { kms, as } = await kmsWorld(t)
  const repo = join(dir, 'repo')
  const operator = as('AKIAOPERATOR')
  await cli(['init', '--repo', repo, '--kms-key', KEY_ARN], operator)
  const img = await image(dir)
  const { backupId } = await cli(['backup', '--repo', repo, '--device', img], operator)
  const config = await readFile(join(repo, 'config'), 'utf8')

  const glass = join(dir, 'break-glass.key')
  const add = await runCli(['key', 'add', '--repo', repo, '--new-key-file', glass, '--json'], operator)
  t.equal(add.code, 0, `key add --new-key-file succeeds, opened with the KMS key ${add.stderr}`)
  t.equal(add.json?.keyFileCreated, true, 'it made the key file')
  t.equal((await stat(glass)).mode & 0o777, 0o600, 'mode 0600')
  const id = add.json?.key.id as string
  t.match(id, /^[0-9a-f]{16}$/, 'the new key has an id')
  t.equal(await readFile(join(repo, 'config'), 'utf8'), config, 'the config is not rewritten')
  const stored = JSON.parse(await readFile(join(repo, 'keys', id), 'utf8'))
  t.match(stored, { format: 'ebs-worker-key', version: 1, id, key: { provider: 'local-file', keyId: add.json?.key.fingerprint } }, `keys/${id} holds the wrapped key`)

  const listed = await cli(['key', 'list', '--repo', repo], operator)
  t.match(listed.keys, [
    { id: 'config', kind: 'kms', keyArn: KEY_ARN, current: true },
    { id, kind: 'key-file', fingerprint: add.json?.key.fingerprint, current: false },
  ], 'key list: the config\'s KMS key (used now) and the key file')

  // KMS lost: the key disabled, and a principal that may not decrypt anyway.
  kms.keys.find((k) => k.keyId === 'repo-key-1')!.enabled = false
  t.equal((await runCli(['list', '--repo', repo, '--json'], operator)).json?.error?.code, 'KEY_UNUSABLE', 'without its KMS key the repository does not open…')
  const auditor = as('AKIANODECRYPT')
  const out = join(dir, 'restored.img')
  const r = await runCli(['restore', '--repo', repo, '--key-file', glass, '--backup', backupId, '--device', out, '--json'], auditor)
  t.equal(r.code, 0, `…but the break-glass key file restores it, with no KMS access ${r.stderr}`)
  t.equal(await sha256File(out), await sha256File(img), 'byte for byte')
  const withFile = await cli(['key', 'list', '--repo', repo, '--key-file', glass], auditor)
  t.same(withFile.keys.map((k: { id: string; current: boolean }) => [k.id, k.current]), [['config', false], [id, true]], 'key list marks the key file as the one used')

  const wrong = join(dir, 'wrong.key')
  await writeFile(wrong, randomBytes(32).toString('base64'))
  const w = await runCli(['list', '--repo', repo, '--key-file', wrong, '--json'], auditor)
  t.equal(w.json?.error?.code, 'WRONG_KEY', 'another key file is WRONG_KEY')
  t.match(w.json?.error?.message, new RegExp(`fingerprint ${add.json?.key.fingerprint}`), 'naming the fingerprint of the key file that fits')

  const inUse = await runCli(['key', 'remove', '--repo', repo, '--key-file', glass, id, '--json'], auditor)
  t.match(inUse.json?.error, { code: 'BAD_INPUT', message: /opened the repository now/ }, 'the key in use is not removed')
  t.equal(inUse.code, 2)
  const missing = await runCli(['key', 'remove', '--repo', repo, '--key-file', glass, '0123456789abcdef', '--json'], auditor)
  t.match(missing.json?.error, { code: 'BAD_INPUT', message: /has no key 0123456789abcdef/ }, 'nor one it does not have')

  // The KMS key retired: removed with the key file; the config loses its key.
  const rm = await runCli(['key', 'remove', '--repo', repo, '--key-file', glass, 'config', '--json'], auditor)
  t.equal(rm.code, 0, `the config's key is removed with the key file ${rm.stderr}`)
  t.equal(JSON.parse(await readFile(join(repo, 'config'), 'utf8')).encryption.key, null, 'the config has no key any more')
  kms.keys.find((k) => k.keyId === 'repo-key-1')!.enabled = true
  t.equal((await runCli(['list', '--repo', repo, '--json'], operator)).json?.error?.code, 'KEY_REQUIRED', 'the KMS key opens it no more: KEY_REQUIRED')
  t.equal((await cli(['list', '--repo', repo, '--key-file', glass], auditor)).backups.length, 1, 'the key file still does')
  const last = await runCli(['key', 'remove', '--repo', repo, '--key-file', glass, id, '--json'], auditor)
  t.match(last.json?.error, { code: 'BAD_INPUT', message: /last key/ }, 'the last key is not removed')
  t.ok(await stat(join(repo, 'keys', id)), 'and stays')
})

t.test('a KMS key added to a key-file repository opens it with no key file; the same key twice is refused', async (t) => {
  const dir = await tempDir(t)
  const { as } = await kmsWorld(t)
  const operator = as('AKIAOPERATOR')
  const repo = join(dir, 'repo')
  const keyFile = join(dir, 'repo.key')
  await cli(['init', '--repo', repo, '--encrypt', '--key-file', keyFile], operator)
  t.equal((await runCli(['list', '--repo', repo, '--json'], operator)).json?.error?.code, 'KEY_REQUIRED', 'before: no key file, KEY_REQUIRED')
  const add = await cli(['key', 'add', '--repo', repo, '--key-file', keyFile, '--new-kms-key', OTHER_ARN], operator)
  t.match(add.key, { kind: 'kms', keyArn: OTHER_ARN }, 'key add --new-kms-key')
  const again = await runCli(['key', 'add', '--repo', repo, '--key-file', keyFile, '--new-kms-key', OTHER_ARN, '--json'], operator)
  t.match(again.json?.error, { code: 'BAD_INPUT', message: /already/ }, 'the same KMS key again is refused')
  const sameFile = await runCli(['key', 'add', '--repo', repo, '--key-file', keyFile, '--new-key-file', keyFile, '--json'], operator)
  t.match(sameFile.json?.error, { code: 'BAD_INPUT', message: /already/ }, 'so is the key file it has')
  const both = await runCli(['key', 'add', '--repo', repo, '--key-file', keyFile, '--json'], operator)
  t.match(both.json?.error, { code: 'BAD_INPUT', message: /--new-key-file or --new-kms-key/ }, 'key add without a key to add is refused')

  const img = await image(dir)
  const b = await runCli(['backup', '--repo', repo, '--device', img, '--json'], operator)
  t.equal(b.code, 0, `a backup opened with the added KMS key, no key file ${b.stderr}`)
  t.equal((await cli(['list', '--repo', repo, '--key-file', keyFile], operator)).backups.length, 1, 'which the key file reads too: one master secret')
  t.equal((await runCli(['list', '--repo', repo, '--json'], as('AKIANODECRYPT'))).json?.error?.code, 'ACCESS_DENIED', 'a principal that may not decrypt with it: ACCESS_DENIED')

  // A key object planted by someone who may write keys/: their own key file wrapping another secret (another repository's).
  const otherKey = join(dir, 'other.key')
  await cli(['init', '--repo', join(dir, 'other'), '--encrypt', '--key-file', otherKey])
  const theirs = JSON.parse(await readFile(join(dir, 'other', 'config'), 'utf8')).encryption.key
  await writeFile(join(repo, 'keys', '00000000000000aa'), JSON.stringify({ format: 'ebs-worker-key', version: 1, id: '00000000000000aa', createdAt: new Date().toISOString(), key: theirs }))
  const planted = await runCli(['list', '--repo', repo, '--key-file', otherKey, '--json'], operator)
  t.match(planted.json?.error, { code: 'WRONG_KEY', message: /00000000000000aa.*does not decrypt the repository's backups/ }, 'a key of another secret does not open it: WRONG_KEY')
  t.equal((await cli(['list', '--repo', repo, '--key-file', keyFile], operator)).backups.length, 1, 'the repository\'s own keys still do')
  await cli(['key', 'remove', '--repo', repo, '--key-file', keyFile, '00000000000000aa'], operator)
  const rm = await cli(['key', 'remove', '--repo', repo, '--key-file', keyFile, add.key.id], operator)
  t.equal(rm.key.id, add.key.id, 'key remove of the KMS key')
  t.equal((await runCli(['list', '--repo', repo, '--json'], operator)).json?.error?.code, 'KEY_REQUIRED', 'after: no key file, KEY_REQUIRED again')
})

t.test('an unencrypted repository has no keys to add', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const r = await runCli(['key', 'add', '--repo', repo, '--new-key-file', join(dir, 'k'), '--json'])
  t.match(r.json?.error, { code: 'BAD_INPUT', message: /not encrypted/ })
})

const s3 = (): S3Client => new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })

t.test('on S3: key files added and removed; check and prune leave keys/ alone', { skip: !s3Available && 'no S3 test bed' }, async (t) => {
  const dir = await tempDir(t)
  const url = await s3RepoUrl('keys')
  const a = join(dir, 'a.key')
  const b = join(dir, 'b.key')
  await cli(['init', '--repo', url, '--encrypt', '--key-file', a])
  const added = await cli(['key', 'add', '--repo', url, '--key-file', a, '--new-key-file', b])
  const { backupId } = await cli(['backup', '--repo', url, '--key-file', b, '--device', await image(dir)])
  t.ok(backupId, 'a backup opened with the added key')
  await cli(['forget', '--repo', url, '--key-file', a, backupId])
  await cli(['prune', '--repo', url, '--key-file', a, '--grace', '0'])
  const c = await runCli(['check', '--repo', url, '--key-file', b, '--json'])
  t.equal(c.code, 0, `check with the added key after a prune: clean ${c.stderr}`)
  t.equal((await cli(['key', 'list', '--repo', url, '--key-file', b])).keys.length, 2, 'prune left both keys')
  await cli(['key', 'remove', '--repo', url, '--key-file', a, added.key.id])
  t.equal((await runCli(['list', '--repo', url, '--key-file', b, '--json'])).json?.error?.code, 'WRONG_KEY', 'a removed key opens it no more')
})

t.test('under S3 Object Lock: keys/ written locked, the config\'s key kept, a removed key\'s version left to prune', { skip: !s3Available && 'no S3 test bed' }, async (t) => {
  const dir = await tempDir(t)
  const url = await s3RepoUrl('keys-locked', { objectLock: true })
  const u = new URL(url)
  const Bucket = u.hostname
  const prefix = u.pathname.slice(1) + '/'
  const client = s3()
  t.teardown(() => client.destroy())
  const a = join(dir, 'a.key')
  const b = join(dir, 'b.key')
  const PERIOD = 15
  await cli(['init', '--repo', url, '--encrypt', '--key-file', a, '--object-lock-period', `${PERIOD}s`])
  const added = await cli(['key', 'add', '--repo', url, '--key-file', a, '--new-key-file', b])
  const name = `keys/${added.key.id}`
  const head = await client.send(new HeadObjectCommand({ Bucket, Key: prefix + name }))
  t.equal(head.ObjectLockMode, 'GOVERNANCE', `${name} is written locked`)
  // Past half its period, a prune extends its lock like the config's: the key stays while it is a key.
  await new Promise((resolve) => setTimeout(resolve, (PERIOD / 2 + 1) * 1000))
  await cli(['prune', '--repo', url, '--key-file', a, '--grace', '0'])
  const later = await client.send(new HeadObjectCommand({ Bucket, Key: prefix + name }))
  t.ok(later.ObjectLockRetainUntilDate!.getTime() > head.ObjectLockRetainUntilDate!.getTime(),
    `prune extended its lock (${head.ObjectLockRetainUntilDate!.toISOString()} → ${later.ObjectLockRetainUntilDate!.toISOString()})`)
  const cfg = await runCli(['key', 'remove', '--repo', url, '--key-file', b, 'config', '--json'])
  t.match(cfg.json?.error, { code: 'BAD_INPUT', message: /Object Lock/ }, 'the config\'s key stays: its config is written once')

  const rm = await runCli(['key', 'remove', '--repo', url, '--key-file', a, added.key.id, '--json'])
  t.equal(rm.code, 0, `key remove ${rm.stderr}`)
  t.equal((await runCli(['list', '--repo', url, '--key-file', b, '--json'])).json?.error?.code, 'WRONG_KEY', 'the removed key opens it no more')
  const versions = async () => {
    const out = await client.send(new ListObjectVersionsCommand({ Bucket, Prefix: prefix + name }))
    return { versions: out.Versions?.length ?? 0, markers: out.DeleteMarkers?.length ?? 0 }
  }
  t.same(await versions(), { versions: 1, markers: 1 }, 'its data stays as an older version under a delete marker')
  const early = await cli(['prune', '--repo', url, '--key-file', a, '--grace', '0'])
  t.ok(early.kept.some((k: { object: string }) => k.object === name), 'a prune within its lock leaves it, and says so')
  await new Promise((resolve) => setTimeout(resolve, (PERIOD + 2) * 1000))
  await cli(['prune', '--repo', url, '--key-file', a, '--grace', '0'])
  t.same(await versions(), { versions: 0, markers: 0 }, 'once its lock has run out, prune deletes it for good')
  t.equal((await cli(['list', '--repo', url, '--key-file', a])).backups.length, 0, 'and the config\'s key opens the repository')
})
