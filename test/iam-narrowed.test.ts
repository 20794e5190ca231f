// The narrowed statements of packaging/iam/ (issue 14), as the stand-ins enforce them: each
// still allows what the flows do (test/controller*.test.ts run them with these documents) and
// refuses the misuse it is there to stop. Every call here is made with a role's own session, as
// the controller or a worker would make it, through the real AWS SDK clients.
import t from 'tap'
import { join } from 'node:path'
import { DeleteSnapshotCommand, EC2Client, ModifySnapshotAttributeCommand, StartInstancesCommand, StopInstancesCommand, TerminateInstancesCommand } from '@aws-sdk/client-ec2'
import { DecryptCommand, EncryptCommand, GenerateDataKeyWithoutPlaintextCommand, KMSClient } from '@aws-sdk/client-kms'
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts'
import { BACKUP, controllerWorld, iamDocument, PROD, REGION, ROLE_NAMES, TARGET } from './controller-world.ts'
import { makeImage, MiB } from './helpers.ts'
import type { Role } from './standin/iam.ts'
import { CONTROLLER_TAG } from '../controller/backup.ts'
import { fleetWorkerPolicy } from './controller-world.ts'
import { evaluate } from './standin/iam.ts'
import { backup } from '../agent/pipeline/backup.ts'
import { taskBackup } from '../agent/daemon/task-records.ts'
import { Repository } from '../agent/repo/repository.ts'
import { FileBackend } from '../agent/storage/file.ts'
import { CONFIG, keyObject, KEYS, LOCKS, manifestObject, PACKS } from '../agent/repo/layout.ts'
import { prune } from '../agent/maintenance/prune.ts'
import { tempDir } from './helpers.ts'
import { RESTORE_TAG } from '../controller/restore.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>

/** Clients signed as a session of `role` (or, with a string, as those access keys: the controller's 'AKIACONTROLLER'). */
function as(t: any, w: World, who: Role | string) {
  const credentials = typeof who === 'string' ? { accessKeyId: who, secretAccessKey: 'x' } : (({ accessKeyId, secretAccessKey, sessionToken }) => ({ accessKeyId, secretAccessKey, sessionToken }))(w.world.sessionFor(who, 'test'))
  const ec2 = new EC2Client({ endpoint: w.endpoints.AWS_ENDPOINT_URL_EC2, region: REGION, credentials, maxAttempts: 1 })
  const kms = new KMSClient({ endpoint: w.endpoints.AWS_ENDPOINT_URL_KMS, region: REGION, credentials, maxAttempts: 1 })
  const sts = new STSClient({ endpoint: w.endpoints.AWS_ENDPOINT_URL_STS, region: REGION, credentials, maxAttempts: 1 })
  t.teardown(() => { ec2.destroy(); kms.destroy(); sts.destroy() })
  return { ec2, kms, sts }
}

/** The AWS error name a call ended with, or 'ok'. */
async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call
    return 'ok'
  } catch (err) {
    return (err as { name?: string }).name ?? String(err)
  }
}

/** A production snapshot under the production key, with the controller's tag when `tagged`. */
async function snapshot(w: World, tagged: boolean): Promise<string> {
  const image = join(w.dir, `snap-${Math.random().toString(16).slice(2)}.img`)
  await makeImage(image, MiB, [])
  const id = w.ec2.addSnapshot({ image, sizeGiB: 1, encrypted: true, kmsKeyId: w.keys.prod, ownerId: PROD, region: REGION })
  if (tagged) w.ec2.snapshots.get(id)!.tags[CONTROLLER_TAG] = 'rp-1'
  return id
}

t.test('source role: it shares and deletes only the controller\'s snapshots, and shares them only with the worker accounts', async (t) => {
  const w = await controllerWorld(t)
  const { ec2 } = as(t, w, w.roles.source)
  const share = (SnapshotId: string, add: { UserId?: string; Group?: 'all' }) => ec2.send(new ModifySnapshotAttributeCommand({ SnapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [add] } }))
  const ours = await snapshot(w, true)
  const theirs = await snapshot(w, false)
  t.equal(await outcome(share(ours, { UserId: BACKUP })), 'ok', 'a tagged snapshot, shared with the worker account: allowed')
  t.same(w.ec2.snapshots.get(ours)!.sharedWith, [BACKUP])
  t.equal(await outcome(share(ours, { UserId: TARGET })), 'UnauthorizedOperation', 'with an account that is not a worker account: refused')
  t.equal(await outcome(share(ours, { Group: 'all' })), 'UnauthorizedOperation', 'made public: refused')
  t.equal(await outcome(share(theirs, { UserId: BACKUP })), 'UnauthorizedOperation', 'a snapshot the controller did not make, even with the worker account: refused')
  t.same(w.ec2.snapshots.get(ours)!.sharedWith, [BACKUP], 'nothing else was shared')
  t.equal(await outcome(ec2.send(new ModifySnapshotAttributeCommand({ SnapshotId: ours, Attribute: 'createVolumePermission', CreateVolumePermission: { Remove: [{ UserId: BACKUP }] } }))), 'ok', 'unsharing its own: allowed')
  t.equal(await outcome(ec2.send(new DeleteSnapshotCommand({ SnapshotId: theirs }))), 'UnauthorizedOperation', 'deleting a snapshot the controller did not make: refused')
  t.notOk(w.ec2.snapshots.get(theirs)!.deleted, 'it is still there')
  t.equal(await outcome(ec2.send(new DeleteSnapshotCommand({ SnapshotId: ours }))), 'ok', 'deleting its own: allowed')
})

t.test('controller: in its own account it unshares and deletes only the workers\' snapshots, and shares none', async (t) => {
  const w = await controllerWorld(t)
  const { ec2 } = as(t, w, 'AKIACONTROLLER')
  const image = join(w.dir, 'worker-snap.img')
  await makeImage(image, MiB, [])
  const made = (tags: Record<string, string>) => {
    const id = w.ec2.addSnapshot({ image, sizeGiB: 1, encrypted: true, kmsKeyId: w.keys.workerDefault, ownerId: BACKUP, region: REGION, sharedWith: [TARGET] })
    Object.assign(w.ec2.snapshots.get(id)!.tags, tags)
    return id
  }
  const workers = made({ 'ebs-worker:task-id': 'rst-1/0/restore' })
  const other = made({})
  const modify = (SnapshotId: string, change: 'Add' | 'Remove') => ec2.send(new ModifySnapshotAttributeCommand({ SnapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { [change]: [{ UserId: TARGET }] } }))
  t.equal(await outcome(modify(workers, 'Add')), 'UnauthorizedOperation', 'sharing even a worker\'s snapshot: refused')
  t.equal(await outcome(modify(other, 'Remove')), 'UnauthorizedOperation', 'unsharing another snapshot: refused')
  t.equal(await outcome(ec2.send(new DeleteSnapshotCommand({ SnapshotId: other }))), 'UnauthorizedOperation', 'deleting another snapshot: refused')
  t.equal(await outcome(modify(workers, 'Remove')), 'ok', 'unsharing a worker\'s snapshot: allowed')
  t.equal(await outcome(ec2.send(new DeleteSnapshotCommand({ SnapshotId: workers }))), 'ok', 'deleting it: allowed')
})

t.test('restore role: it stops, starts and terminates only the instances it launched', async (t) => {
  const w = await controllerWorld(t)
  const { ec2 } = as(t, w, w.roles.restore)
  const other = await w.instance(TARGET, 'eu-west-1a', [{ device: '/dev/xvda' }], { tags: { Name: 'production-db' } })
  const launched = await w.instance(TARGET, 'eu-west-1a', [{ device: '/dev/xvda' }], { tags: { Name: 'app-1', [RESTORE_TAG]: 'rp-1 run-1' } })
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['StopInstances', () => ec2.send(new StopInstancesCommand({ InstanceIds: [other] }))],
    ['StartInstances', () => ec2.send(new StartInstancesCommand({ InstanceIds: [other] }))],
    ['TerminateInstances', () => ec2.send(new TerminateInstancesCommand({ InstanceIds: [other] }))],
  ]
  for (const [name, call] of calls) t.equal(await outcome(call()), 'UnauthorizedOperation', `${name} of an instance it did not launch: refused`)
  t.equal(w.ec2.instances.get(other)!.state, 'running', 'that instance runs on')
  t.equal(await outcome(ec2.send(new TerminateInstancesCommand({ InstanceIds: [launched] }))), 'ok', 'terminating one it launched (tagged at launch): allowed')
})

t.test('the controller assumes only the configured roles, and they only let the controller\'s principal in', async (t) => {
  const w = await controllerWorld(t)
  const assume = (sts: STSClient, RoleArn: string, ExternalId?: string) => outcome(sts.send(new AssumeRoleCommand({ RoleArn, RoleSessionName: 'test', ...(ExternalId ? { ExternalId } : {}) })))
  const controller = as(t, w, 'AKIACONTROLLER').sts
  for (const role of [w.roles.source, w.roles.localSource, w.roles.restore, w.roles.localRestore, w.roles.worker]) t.equal(await assume(controller, role.arn), 'ok', `${role.arn}: assumed`)
  // A role of another name that trusts the controller's account: the controller's policy does not reach it.
  const admin = w.world.addRole({ accountId: PROD, name: 'OrganizationAccountAccessRole', trust: [BACKUP] })
  t.equal(await assume(controller, admin.arn), 'AccessDenied', 'another role trusting the controller\'s account: refused by the controller\'s own policy')
  // Another principal of the controller's account (an administrator: its identity policy allows everything) is not the one the trust policies name.
  w.world.addCredentials('AKIAOTHER', { arn: `arn:aws:iam::${BACKUP}:user/someone-else`, accountId: BACKUP })
  const other = as(t, w, 'AKIAOTHER').sts
  t.equal(await assume(other, w.roles.source.arn), 'AccessDenied', 'the source role, by another principal of the controller\'s account: refused by its trust policy (aws:PrincipalArn)')
  t.equal(await assume(other, w.roles.restore.arn), 'AccessDenied', 'the restore role likewise')

  // A source role in an account run by a third party: its trust policy asks for an external id too.
  const trust = iamDocument('source-role-trust.json')
  trust.Statement[0]!.Condition = { ...trust.Statement[0]!.Condition, StringEquals: { 'sts:ExternalId': 'ebs-controller-7f3a' } }
  const thirdParty = w.world.addRole({ accountId: TARGET, name: ROLE_NAMES.source, trust: [], trustPolicy: trust, policy: iamDocument('source-role-policy.json') })
  t.equal(await assume(controller, thirdParty.arn), 'AccessDenied', 'without the external id: refused')
  t.equal(await assume(controller, thirdParty.arn, 'ebs-controller-wrong'), 'AccessDenied', 'with another one: refused')
  t.equal(await assume(controller, thirdParty.arn, 'ebs-controller-7f3a'), 'ok', 'with it: assumed')
  // The controller passes it from EBS_CONTROLLER_EXTERNAL_ID (here through preflight's AssumeRole row).
  const instanceId = await w.instance(TARGET, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.target }])
  const args = ['preflight', 'backup-instance', '--instance', instanceId, '--source-role', thirdParty.arn]
  const row = (r: Awaited<ReturnType<World['controller']>>) => (r.json?.checks as Array<{ action: string; ok: boolean }> | undefined)?.find((c) => c.action === 'sts:AssumeRole')
  t.equal(row(await w.controller(args))?.ok, false, 'ebs-controller without EBS_CONTROLLER_EXTERNAL_ID cannot assume it')
  t.equal(row(await w.controller(args, { EBS_CONTROLLER_EXTERNAL_ID: 'ebs-controller-7f3a' }))?.ok, true, 'with it, it can')
})

t.test('worker role: volume keys only through EBS; a direct Decrypt only of the repository key', async (t) => {
  const w = await controllerWorld(t)
  const admin = as(t, w, 'AKIAADMIN').kms // the backup account's administrator (plain credentials)
  const { kms } = as(t, w, w.roles.worker)
  const seal = async (context: Record<string, string>) => (await admin.send(new EncryptCommand({ KeyId: w.keys.backup, Plaintext: Buffer.from('secret'), EncryptionContext: context }))).CiphertextBlob!
  const repositoryContext = { purpose: 'ebs-worker-repository-key', format: 'ebs-worker/v1' }
  const other = await seal({ purpose: 'payroll' })
  const bare = await seal({})
  const repositoryKey = await seal(repositoryContext)
  t.equal(await outcome(kms.send(new DecryptCommand({ KeyId: w.keys.backup, CiphertextBlob: other, EncryptionContext: { purpose: 'payroll' } }))), 'AccessDeniedException', 'a direct Decrypt of another secret under a volume key: refused')
  t.equal(await outcome(kms.send(new DecryptCommand({ KeyId: w.keys.backup, CiphertextBlob: bare }))), 'AccessDeniedException', 'nor one without an encryption context')
  t.equal(await outcome(kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: w.keys.backup, KeySpec: 'AES_256', DryRun: true }))), 'AccessDeniedException', 'a direct GenerateDataKeyWithoutPlaintext: refused')
  t.equal(await outcome(kms.send(new DecryptCommand({ KeyId: w.keys.backup, CiphertextBlob: repositoryKey, EncryptionContext: repositoryContext }))), 'ok', 'the repository key (ebs-worker init --kms-key), directly: allowed')
  // Through EBS (kms:ViaService) the worker reads snapshots under these keys: the flows of test/controller.test.ts, with this policy.
})

t.test('worker role: s3:DeleteObject on what backups and the prune task delete, never the config', async (t) => {
  // What a daemon's tasks delete, as the real code does it: two task backups (a lease each, a
  // checkpoint at every chance, task-records.ts), then what the prune task does (the first backup
  // forgotten, prune with repacking), into a repository whose backend reports each deletion.
  const dir = await tempDir(t)
  const repo = await Repository.init(new FileBackend(join(dir, 'repo')))
  const deleted: string[] = []
  const remove = repo.backend.delete.bind(repo.backend)
  repo.backend.delete = async (name: string) => { deleted.push(name); return remove(name) }
  const image = join(dir, 'volume.img')
  await makeImage(image, 12 * MiB, [{ kind: 'random', offset: 0, length: 10 * MiB }])
  const first = await backup(repo, { device: image, packSize: MiB, uploadConcurrency: 1, readConcurrency: 1, ...taskBackup(repo, 'policy-1/i-0abc/xvdf', 0) })
  await makeImage(image, 12 * MiB, [{ kind: 'random', offset: 0, length: 6 * MiB }])
  const second = await backup(repo, { device: image, packSize: MiB, uploadConcurrency: 1, readConcurrency: 1, ...taskBackup(repo, 'policy-2/i-0abc/xvdf', 0) })
  t.ok(deleted.some((n) => n.startsWith(LOCKS)), `the backups' leases were deleted (${deleted.join(', ')})`)
  t.ok(deleted.some((n) => n.startsWith('checkpoints/')), 'and the tasks\' checkpoints')
  await repo.forgetBackup(first.id)
  const pruned = await prune(repo, { graceMs: 0, maxUnusedPercent: 0 })
  t.ok(pruned.packs.deleted + pruned.packs.repacked > 0, 'prune deleted packs')
  t.ok(deleted.some((n) => n.startsWith(PACKS)) && deleted.includes(manifestObject(first.id)), 'the forgotten backup\'s manifest and its packs went')
  const policy = fleetWorkerPolicy([])
  const object = (name: string) => `arn:aws:s3:::ebs-worker-repository/backups/${name}`
  for (const name of new Set(deleted)) t.equal(evaluate(policy, 's3:DeleteObject', object(name), {}), 'allow', `worker-policy.json lets the worker delete ${name}`)
  t.equal(evaluate(policy, 's3:DeleteObject', object(CONFIG), {}), 'implicit', 'but not the config, which nothing deletes')
  t.notOk(deleted.some((n) => n.startsWith(KEYS)), 'nor did anything delete a key')
  for (const action of ['s3:DeleteObject', 's3:PutObject']) {
    t.equal(evaluate(policy, action, object(keyObject('9c1e0b7d4a613f2a')), {}), 'deny', `${action} of the repository's keys (ebs-worker key add|remove, an administrator's) is denied`)
  }
  t.equal(evaluate(policy, 's3:DeleteObject', 'arn:aws:s3:::ebs-worker-repository/other/x', {}), 'implicit', 'nor anything outside the repository')
  t.equal(evaluate(policy, 's3:PutObject', object(manifestObject(second.id)), {}), 'allow', 'which it writes')
})
