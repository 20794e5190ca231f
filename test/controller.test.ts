// The seeds' four flows end to end (shared/seeds/, DESIGN.md §2): ebs-controller as a child
// process, a real ebs-worker daemon on fauxqs, the EC2/KMS/STS stand-ins with three accounts and
// the IAM documents of packaging/iam/. Each flow checks the restored instance's volumes byte for
// byte against the source and the KMS keys each role used against the seed's list.
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { cli, MiB, sha256File } from './helpers.ts'
import { BACKUP, controllerWorld, PROD, REGION, TARGET } from './controller-world.ts'
import { KmsStandIn } from './standin/kms.ts'
import { wildcard, type PolicyDocument } from './standin/iam.ts'
import { iamDocument } from './controller-world.ts'

/** What each role did across the flows of this file: its API calls and what EBS asked of KMS for it. */
const seen = new Map<string, Set<string>>()
function record(w: World): void {
  const roles = { worker: w.roles.worker.arn, source: w.roles.source.arn, localSource: w.roles.localSource.arn, restore: w.roles.restore.arn, localRestore: w.roles.localRestore.arn, controller: `arn:aws:iam::${BACKUP}:user/ebs-controller` }
  for (const [name, arn] of Object.entries(roles)) {
    const label = name.replace(/^local(\w)/, (_, c: string) => c.toLowerCase())
    const set = seen.get(label) ?? new Set<string>()
    for (const a of w.world.actionsOf(arn)) set.add(a)
    for (const u of w.world.keyUses.filter((x) => x.role === arn)) set.add(u.action)
    seen.set(label, set)
  }
}

type World = Awaited<ReturnType<typeof controllerWorld>>

/** Each volume of the restored instance, in device order, holds the source volume's bytes. */
async function sameData(t: any, w: World, sourceInstance: string, restoredInstance: string): Promise<void> {
  const source = w.ec2.attachedTo(sourceInstance)
  const restored = w.ec2.attachedTo(restoredInstance)
  t.same(restored.map((v) => v.attachment!.device), source.map((v) => v.attachment!.device), 'the restored instance has the original devices, in order')
  for (const [i, v] of source.entries()) {
    t.equal(await sha256File(restored[i]!.file), await sha256File(v.file), `${v.attachment!.device}: the restored volume holds the source's bytes`)
  }
}

/** An instance in the worker's account, in another AZ, its root under aws/ebs and a data volume under the account's key. */
function sameAccountInstance(w: World): Promise<string> {
  return w.instance(BACKUP, 'eu-west-1b', [{ device: '/dev/xvda' }, { device: '/dev/sdf', kmsKeyId: w.keys.backup }])
}

/** backup-instance of a same-account instance (`what` succeeds, or the test says so): its restore point. */
async function backupSameAccount(t: Test, w: World, instanceId: string, what: string, ...extra: string[]) {
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn, ...extra])
  t.equal(b.code, 0, `${what} succeeds${b.said}`)
  return b.json!.restorePoint
}

/** Writes a MiB of new random data into a volume's file at `offset`. */
async function change(file: string, offset: number): Promise<void> {
  const fh = await open(file, 'r+')
  await fh.write(randomBytes(MiB), 0, MiB, offset)
  await fh.close()
}

t.test('same account: backup of an instance, then restore it with a chosen key', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await sameAccountInstance(w)
  const rp = await backupSameAccount(t, w, instanceId, 'backup-instance')
  t.match(rp, { instance: { instanceId, accountId: BACKUP, instanceType: 'm6i.xlarge', rootDeviceName: '/dev/xvda', availabilityZone: 'eu-west-1b', tags: { Name: 'app-1' } } })
  t.same(rp.volumes.map((v: any) => v.deviceName), ['/dev/xvda', '/dev/sdf'], 'every volume, in device order')
  const awsEbs = KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION))
  // Seed: "The IAM role [of the workers] must have permissions to access the KMS keys with which
  // EBS volumes of the EC2 instance are encrypted (source KMS keys)."
  t.same(w.world.keysUsedBy(w.roles.worker.arn), [awsEbs, w.keys.backup].sort(), 'the worker used the source keys, and only them')
  t.same([...w.ec2.snapshots.values()].filter((s) => !s.deleted && s.ownerId === BACKUP).length, 0, 'the instance snapshots were deleted after the backup')
  t.notOk([...w.ec2.volumes.values()].some((v) => v.tags['ebs-worker:task-id'] && v.state !== 'deleted'), 'and the worker\'s volumes')

  const usesBefore = w.world.keyUses.length
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', 'alias/backup-ebs', '--restore-role', w.roles.localRestore.arn])
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  const restored = w.ec2.instances.get(r.json!.instanceId)!
  t.match(restored, { ownerId: BACKUP, instanceType: 'm6i.xlarge', state: 'running', availabilityZone: 'eu-west-1a' }, 'a running instance of the same type, in the workers\' AZ')
  await sameData(t, w, instanceId, restored.instanceId)
  t.ok(w.ec2.attachedTo(restored.instanceId).every((v) => v.kmsKeyId === w.keys.backup), 'every volume under the chosen key')
  // Seed: "The IAM role must have permissions to access to the KMS key with which you want to encrypt EBS volumes of the restored EC2 instance."
  const restoreUses = w.world.keyUses.slice(usesBefore)
  t.same([...new Set(restoreUses.filter((u) => u.role === w.roles.worker.arn && u.allowed).map((u) => u.key))], [w.keys.backup], 'the worker used the chosen key, and only it')
  record(w)
})

t.test('same account: the next backup is incremental from the instance\'s latest restore point', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await sameAccountInstance(w)
  const rp = await backupSameAccount(t, w, instanceId, 'backup-instance')
  // Each volume's parent is its backup in the latest restore point, and it holds the volume as it is now.
  const changed = w.ec2.attachedTo(instanceId)[1]!
  await change(changed.file, 12 * MiB)
  const rp2 = await backupSameAccount(t, w, instanceId, 'the second backup-instance')
  const backups = (await cli(['list', '--repo', w.repo])).backups as Array<{ id: string; parent: string | null }>
  t.same(rp2.volumes.map((v: any) => backups.find((x) => x.id === v.backupId)?.parent), rp.volumes.map((v: any) => v.backupId), 'each volume\'s parent is its previous backup')
  const out = join(w.dir, 'changed-restored.img')
  await cli(['restore', '--repo', w.repo, '--backup', rp2.volumes[1].backupId, '--device', out])
  t.equal(await sha256File(out), await sha256File(changed.file), 'the incremental backup holds the changed volume, byte for byte')
  const list = (await w.controller(['list'])).json!
  t.same(list.restorePoints.map((x: any) => x.id), [rp.id, rp2.id].sort(), 'list shows both restore points')
  t.same(list.restorePoints.map((x: any) => x.instanceId), [instanceId, instanceId], 'of the instance')
  t.same(list.restorePoints[1].volumes.map((v: any) => v.backupId), rp2.volumes.map((v: any) => v.backupId), 'with their volumes\' backups')
  record(w)
})

t.test('on a terminal the flows say each step on stderr; with --json, or through a pipe, nothing but the JSON', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await sameAccountInstance(w)
  const piped = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(piped.code, 0, `a backup through pipes${piped.said}`)
  t.same(JSON.parse(piped.stdout), piped.json, 'its stdout is the one JSON object')
  t.notMatch(piped.stderr, /snapshotting/, 'and no steps through a pipe')
  const tty = await w.controllerOnTerminal(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(tty.code, 0, `a backup on a terminal${tty.code ? `: ${tty.output}` : ''}`)
  t.match(tty.output, /^\[\d\d:\d\d\] inspecting i-[0-9a-f]+ with the source role$/m, 'steps with the time since the start')
  for (const step of [/snapshotting 2 volumes of i-/, /waiting for the snapshots to complete: snap-/, /workers backing up 2 volumes \(2 incremental\)/,
    /backed up \/dev\/\S+ vol-\S+ \(1\/2\): backup /, /backed up \/dev\/\S+ vol-\S+ \(2\/2\)/, /recording restore point rp-/]) {
    t.match(tty.output, step, `says ${step.source}`)
  }
  t.match(tty.output, /^restore point rp-\S+ of i-/m, 'then its summary')
  const json = await w.controllerOnTerminal(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn, '--json'])
  t.equal(json.code, 0, `a backup with --json on a terminal${json.code ? `: ${json.output}` : ''}`)
  t.equal(JSON.parse(json.output).ok, true, 'prints its JSON only, no steps (stdout and stderr are the one terminal here)')
  record(w)
})

t.test('same account: with --keep-snapshots the next backup reads only the changed blocks', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await sameAccountInstance(w)
  const changed = w.ec2.attachedTo(instanceId)[1]!
  // The snapshots stay; the next backup then has the worker ask EBS ListChangedBlocks between
  // the kept snapshot and the new one, and read only what changed.
  await backupSameAccount(t, w, instanceId, 'a backup keeping its snapshots', '--keep-snapshots')
  await change(changed.file, 3 * MiB)
  const rp4 = await backupSameAccount(t, w, instanceId, 'and the next one too', '--keep-snapshots')
  const listed = (await cli(['list', '--repo', w.repo])).backups as Array<{ id: string; stats: { bytesRead: number } }>
  const readOf = (i: number): number | undefined => listed.find((x) => x.id === rp4.volumes[i].backupId)?.stats.bytesRead
  t.equal(readOf(1), MiB, 'the changed volume: only the changed MiB was read')
  t.equal(readOf(0), 0, 'the unchanged one: nothing')
  const out4 = join(w.dir, 'changed-restored-4.img')
  await cli(['restore', '--repo', w.repo, '--backup', rp4.volumes[1].backupId, '--device', out4])
  t.equal(await sha256File(out4), await sha256File(changed.file), 'and the backup holds the volume as it is now, byte for byte')
  record(w)
})

t.test('another account: backup shared with the worker account, then restore into a third account', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: 'alias/prod-ebs' }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--worker-role', w.roles.worker.arn])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  const rp = b.json!.restorePoint
  t.match(rp, { instance: { instanceId, accountId: PROD }, worker: { accountId: BACKUP } })
  const backupDefault = KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION))
  // Seed: the worker role needs the source KMS keys and its Region's default key; the source role the source keys.
  t.same(w.world.keysUsedBy(w.roles.worker.arn), [w.keys.prod, backupDefault].sort(), 'the worker used the source key and its Region\'s default key')
  t.same(w.world.keysUsedBy(w.roles.source.arn), [w.keys.prod], 'the source role used the source key')
  const workerVolumes = [...w.ec2.volumes.values()].filter((v) => v.tags['ebs-worker:task-id']?.startsWith(rp.id))
  t.equal(workerVolumes.length, 2, 'the worker made one volume per snapshot')
  t.ok(workerVolumes.every((v) => v.ownerId === BACKUP && v.kmsKeyId === backupDefault && v.state === 'deleted'), 'in its account, under its default key, deleted after')
  const leftover = [...w.ec2.snapshots.values()].filter((s) => s.ownerId === PROD && !s.deleted)
  t.same(leftover, [], 'the shared snapshots were unshared and deleted')

  // Restore into the target account: the worker account's default key must be a customer managed key it may share.
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  const before = w.world.keyUses.length
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target, '--restore-role', w.roles.restore.arn])
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  const restored = w.ec2.instances.get(r.json!.instanceId)!
  t.match(restored, { ownerId: TARGET, instanceType: 'm6i.xlarge', state: 'running', availabilityZone: 'eu-west-1b' }, 'a running instance in the target account, in the original AZ')
  await sameData(t, w, instanceId, restored.instanceId)
  t.ok(w.ec2.attachedTo(restored.instanceId).every((v) => v.kmsKeyId === w.keys.target && v.ownerId === TARGET), 'its volumes are the target account\'s, under the target key')
  const uses = w.world.keyUses.slice(before).filter((u) => u.allowed)
  const keysOf = (role: string) => [...new Set(uses.filter((u) => u.role === role).map((u) => u.key))].sort()
  // Seed "Restore to Another AWS Account": worker role: the default key of the target Region in the
  // source account; restore role: that default key and the target key.
  t.same(keysOf(w.roles.worker.arn), [w.keys.workerDefault], 'the worker used its default key for the target Region')
  t.same(keysOf(w.roles.restore.arn), [w.keys.workerDefault, w.keys.target].sort(), 'the restore role used that default key and the target key')
  t.same([...w.ec2.snapshots.values()].filter((s) => s.ownerId === BACKUP && !s.deleted), [], 'the intermediate snapshots are gone')
  t.same([...w.ec2.volumes.values()].filter((v) => v.ownerId === BACKUP && v.state !== 'deleted'), [], 'and the worker-side volumes')
  t.same([...w.ec2.volumes.values()].filter((v) => v.ownerId === TARGET && v.state !== 'deleted').length, 2, 'the target account holds the two volumes (the launch root was removed)')
  record(w)
})

/** A production instance whose root volume is under aws/ebs and whose data volume under the production key. */
function awsEbsRootInstance(w: World): Promise<string> {
  return w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda' }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
}

/** A backup of it for a worker in the backup account, re-encrypting the aws/ebs snapshot with the production key. */
async function reencryptedBackup(t: Test, w: World, instanceId: string) {
  w.startWorker()
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP, '--reencrypt-with', 'alias/prod-ebs'])
  t.equal(b.code, 0, `with --reencrypt-with it succeeds${b.said}`)
  return b.json!.restorePoint
}

t.test('the aws/ebs rule: a backup for a worker in another account is refused before anything is created', async (t) => {
  const w = await controllerWorld(t)
  const instanceId = await awsEbsRootInstance(w)
  const rootVolume = w.ec2.attachedTo(instanceId)[0]!.volumeId
  const snapshotsBefore = w.ec2.snapshots.size
  const refused = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(refused.code, 1, 'backup-instance fails')
  t.equal(refused.json!.error.code, 'DEFAULT_KEY_NOT_SHAREABLE')
  const message: string = refused.json!.error.message
  t.match(message, rootVolume, 'naming the volume')
  t.match(message, '/dev/xvda', 'and its device')
  t.match(message, KmsStandIn.arn(w.kms.awsEbsKey(PROD, REGION)), 'the key')
  t.match(message, `--worker-account ${PROD}`, 'the first way out: a worker in the production account')
  t.match(message, '--reencrypt-with', 'the second: a re-encrypted copy')
  t.equal(w.ec2.snapshots.size, snapshotsBefore, 'and nothing was created')
  record(w)
})

t.test('the aws/ebs rule: --reencrypt-with shares a re-encrypted copy instead', async (t) => {
  const w = await controllerWorld(t)
  const rp = await reencryptedBackup(t, w, await awsEbsRootInstance(w))
  t.equal(rp.worker.reencryptedWith, w.keys.prod, 'the restore point says how')
  const copies = [...w.ec2.snapshots.values()].filter((s) => s.description.includes('re-encrypted'))
  t.equal(copies.length, 1, 'one copy: of the aws/ebs snapshot only')
  t.match(copies[0], { kmsKeyId: w.keys.prod, deleted: true, sharedWith: [] }, 'under the customer managed key, unshared and deleted after')
  t.notOk(w.world.keyUses.some((u) => u.role === w.roles.worker.arn && u.key === KmsStandIn.arn(w.kms.awsEbsKey(PROD, REGION))), 'the worker never touched the production aws/ebs key')
  record(w)
})

t.test('the aws/ebs rule: a restore into another account while the worker account\'s default key is aws/ebs is refused up front', async (t) => {
  const w = await controllerWorld(t)
  const rp = await reencryptedBackup(t, w, await awsEbsRootInstance(w))
  const volumesBefore = w.ec2.volumes.size
  const instancesBefore = w.ec2.instances.size
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target, '--restore-role', w.roles.restore.arn])
  t.equal(r.code, 1, 'restore-instance fails')
  t.equal(r.json!.error.code, 'DEFAULT_KEY_NOT_SHAREABLE')
  t.match(r.json!.error.message, KmsStandIn.arn(w.kms.awsEbsKey(BACKUP, REGION)), 'naming the key')
  t.match(r.json!.error.message, /\/dev\/xvda.*\/dev\/sdf/, 'the volumes')
  t.match(r.json!.error.message, /customer managed key the default EBS key.*or run a worker in the target account/, 'and both ways out')
  t.equal(w.ec2.volumes.size, volumesBefore, 'before anything was created')
  t.equal(w.ec2.instances.size, instancesBefore, 'no instance either')
  t.equal(instancesBefore, 2, 'the worker\'s and the production instance only')
  record(w)
})

t.test('another account without a default VPC: restore into a subnet with a security group, from an image given with --image-id', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }, { device: '/dev/sdf', kmsKeyId: w.keys.prod }])
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  w.ec2.withoutDefaultVpc.add(`${TARGET}/${REGION}`)
  const subnet = w.ec2.addSubnet({ ownerId: TARGET, region: REGION, availabilityZone: 'eu-west-1c' })
  const group = w.ec2.addSecurityGroup({ ownerId: TARGET, region: REGION, vpcId: w.ec2.subnets.get(subnet)!.vpcId })
  const image = w.ec2.addImage({ ownerId: TARGET, region: REGION })
  const r = await w.controller(['restore-instance', '--backup', b.json!.restorePoint.id, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target,
    '--restore-role', w.roles.restore.arn, '--subnet-id', subnet, '--security-group-ids', group, '--image-id', image])
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  const restored = w.ec2.instances.get(r.json!.instanceId)!
  t.match(restored, { ownerId: TARGET, state: 'running', subnetId: subnet, securityGroupIds: [group], imageId: image, availabilityZone: 'eu-west-1c' }, 'in the subnet and its AZ, with the group, from the image')
  await sameData(t, w, instanceId, restored.instanceId)
  record(w)
})

t.test('same account: restore with --worker-role checks the worker role\'s grant on the target key as EBS makes it, then restores', async (t) => {
  const w = await controllerWorld(t)
  w.startWorker()
  const instanceId = await sameAccountInstance(w)
  const rp = await backupSameAccount(t, w, instanceId, 'backup-instance')
  const r = await w.controller(['restore-instance', '--backup', rp.id, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', w.keys.backup,
    '--restore-role', w.roles.localRestore.arn, '--worker-role', w.roles.worker.arn])
  t.equal(r.code, 0, `restore-instance succeeds with the fleet's worker policy${r.said}`)
  const controller = `arn:aws:iam::${BACKUP}:user/ebs-controller`
  // Once for each action the worker role needs on the key: the grant and GenerateDataKeyWithoutPlaintext, both as EBS asks for them.
  t.same(w.world.calls.filter((c) => c.principal === controller && ['SimulatePrincipalPolicy', 'SimulateCustomPolicy', 'GetKeyPolicy'].includes(c.action)).map((c) => c.action).sort(),
    ['GetKeyPolicy', 'GetKeyPolicy', 'SimulateCustomPolicy', 'SimulateCustomPolicy', 'SimulatePrincipalPolicy', 'SimulatePrincipalPolicy'], 'the controller simulated the worker role and read the target key\'s policy')
  t.notOk(w.world.calls.some((c) => c.role === w.roles.worker.arn && ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'].includes(c.action)), 'no direct CreateGrant or GenerateDataKeyWithoutPlaintext')
  await sameData(t, w, instanceId, r.json!.instanceId)
  record(w)
})

t.test('packaging/iam/ matches what the code calls, exactly', async (t) => {
  // Tagging on creation is authorized as ec2:CreateTags with ec2:CreateAction (EC2 User Guide,
  // "Grant permission to tag resources during creation"); the stand-in folds it into the create
  // call, so it is never recorded on its own. TerminateInstances is the restore's cleanup
  // (test/controller-failures.test.ts).
  const notRecorded = new Set(['ec2:CreateTags', 'ec2:TerminateInstances'])
  const documents: Record<string, string> = { worker: 'worker-ebs-statements.json', source: 'source-role-policy.json', restore: 'restore-role-policy.json', controller: 'controller-policy.json' }
  for (const [role, file] of Object.entries(documents)) {
    const policy = iamDocument<PolicyDocument>(file)
    const did = [...(seen.get(role) ?? [])].filter((a) => !a.startsWith('sts:GetCallerIdentity'))
    t.ok(did.length > 0, `${role}: the flows ran`)
    // Whether on these resources and with these conditions: the stand-ins enforced the documents
    // during the flows, which succeeded; here, that no action is missing from them.
    const refused = did.filter((a) => !policy.Statement.some((s) => s.Effect === 'Allow' && [s.Action].flat().some((x) => wildcard(x, a, true))))
    t.same(refused, [], `${role}: ${file} allows every call the code made`)
    const granted = policy.Statement.filter((s) => s.Effect === 'Allow').flatMap((s) => [s.Action].flat())
      .filter((a) => a.startsWith('ec2:') || a.startsWith('kms:') || a.startsWith('sts:')).filter((a) => !notRecorded.has(a))
    // The worker's volume sweep calls DescribeInstances only when there are old orphan candidates,
    // which these flows leave none of (test/volume-sweep.test.ts runs it).
    const unused = granted.filter((g) => !did.some((a) => wildcard(g, a, true)) && !(role === 'worker' && g === 'ec2:DescribeInstances'))
    t.same(unused, [], `${role}: ${file} allows nothing (EC2, KMS, STS) the code does not call`)
  }
})
