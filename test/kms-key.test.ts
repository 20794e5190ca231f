// Repositories whose key is wrapped by KMS (agent/app/kms-key-provider.ts): made with `init --kms-key`, opened
// with KMS Decrypt and no key file, through the real @aws-sdk/client-kms and the CLI as a child
// process, against the KMS stand-in (test/standin/kms.ts) with accounts and policies.
import t, { type Test } from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { makeImage, MiB, runCli, sha256File, tempDir } from './helpers.ts'
import { AwsWorld } from './standin/iam.ts'
import { KmsStandIn } from './standin/kms.ts'

const ACCOUNT = '111122223333'
const REGION = 'eu-west-1'
const KEY_ARN = `arn:aws:kms:${REGION}:${ACCOUNT}:key/repo-key-1`

/** A KMS stand-in with the repository key, another key, and an operator and an auditor (who may not decrypt). */
async function kmsWorld(t: Test) {
  const dir = await tempDir(t)
  const world = new AwsWorld(ACCOUNT)
  world.addCredentials('AKIAOPERATOR', { arn: `arn:aws:iam::${ACCOUNT}:user/operator`, accountId: ACCOUNT })
  // A principal whose own policy lets it describe keys but not decrypt with them.
  world.addCredentials('AKIANODECRYPT', {
    arn: `arn:aws:iam::${ACCOUNT}:user/auditor`, accountId: ACCOUNT,
    policy: { Statement: [{ Effect: 'Allow', Action: ['kms:DescribeKey'], Resource: '*' }] },
  })
  const kms = await new KmsStandIn([
    { keyId: 'repo-key-1', accountId: ACCOUNT, region: REGION, keyManager: 'CUSTOMER', aliases: ['alias/ebs-worker-repo'] },
    { keyId: 'other-key', accountId: ACCOUNT, region: REGION, keyManager: 'CUSTOMER' },
  ], { world }).start()
  t.teardown(() => kms.close())
  const as = (accessKeyId: string): NodeJS.ProcessEnv => ({
    AWS_ENDPOINT_URL_KMS: kms.endpoint, AWS_REGION: REGION, AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: 'x',
  })
  const repo = join(dir, 'repo')
  const made = await runCli(['init', '--repo', repo, '--kms-key', `arn:aws:kms:${REGION}:${ACCOUNT}:alias/ebs-worker-repo`, '--json'], as('AKIAOPERATOR'))
  const config = JSON.parse(await readFile(join(repo, 'config'), 'utf8'))
  return { dir, kms, as, repo, made, config }
}

t.test('init --kms-key wraps the repository key with KMS, recording the key ARN KMS answered with', async (t) => {
  const { made, config } = await kmsWorld(t)
  t.equal(made.code, 0, `init --kms-key succeeds ${made.stderr}`)
  t.match(config.encryption.key, { provider: 'aws-kms', keyId: KEY_ARN }, 'the wrapped key records the key ARN KMS answered with, not the alias')
})

t.test('backups and restores of a KMS-wrapped repository need no key file', async (t) => {
  const { dir, as, repo } = await kmsWorld(t)
  const image = join(dir, 'vol.img')
  await makeImage(image, 8 * MiB, [{ kind: 'random', offset: MiB, length: 3 * MiB }])
  const b = await runCli(['backup', '--repo', repo, '--device', image, '--json'], as('AKIAOPERATOR'))
  t.equal(b.code, 0, `a backup needs no key file ${b.stderr}`)
  const out = join(dir, 'restored.img')
  const r = await runCli(['restore', '--repo', repo, '--backup', b.json!.backupId, '--device', out, '--json'], as('AKIAOPERATOR'))
  t.equal(r.code, 0, `nor does a restore ${r.stderr}`)
  t.equal(await sha256File(out), await sha256File(image), 'which gives the image back, byte for byte')
})

t.test('a principal that may not decrypt with the key cannot open the repository: ACCESS_DENIED', async (t) => {
  const { as, repo } = await kmsWorld(t)
  const denied = await runCli(['list', '--repo', repo, '--json'], as('AKIANODECRYPT'))
  t.match(denied.json?.error, { code: 'ACCESS_DENIED', message: /Decrypt.*repo-key-1/ }, 'a principal that may not decrypt with the key cannot open it')
  t.not(denied.code, 0)
})

t.test('a config naming another key is WRONG_KEY', async (t) => {
  const { as, repo, config } = await kmsWorld(t)
  // The config names another key: KMS refuses to decrypt the secret with it.
  await writeFile(join(repo, 'config'), JSON.stringify({ ...config, encryption: { ...config.encryption, key: { ...config.encryption.key, keyId: `arn:aws:kms:${REGION}:${ACCOUNT}:key/other-key` } } }))
  t.match((await runCli(['list', '--repo', repo, '--json'], as('AKIAOPERATOR'))).json?.error, { code: 'WRONG_KEY' }, 'another key is WRONG_KEY')
})

t.test('a disabled key is KEY_UNUSABLE, and the repository opens again once it is enabled', async (t) => {
  const { kms, as, repo } = await kmsWorld(t)
  kms.keys.find((k) => k.keyId === 'repo-key-1')!.enabled = false
  t.match((await runCli(['list', '--repo', repo, '--json'], as('AKIAOPERATOR'))).json?.error, { code: 'KEY_UNUSABLE', message: /Disabled/ }, 'a disabled key is KEY_UNUSABLE')
  kms.keys.find((k) => k.keyId === 'repo-key-1')!.enabled = true
  t.equal((await runCli(['list', '--repo', repo, '--json'], as('AKIAOPERATOR'))).json?.backups?.length, 0, 'and it opens again once enabled')
})

t.test('a key file and a KMS key at once are refused', async (t) => {
  const { dir, as } = await kmsWorld(t)
  const both = await runCli(['init', '--repo', join(dir, 'r2'), '--kms-key', KEY_ARN, '--key-file', join(dir, 'k'), '--json'], as('AKIAOPERATOR'))
  t.match(both.json?.error, { code: 'BAD_INPUT', message: /not both/ }, 'a key file and a KMS key at once is refused')
})
