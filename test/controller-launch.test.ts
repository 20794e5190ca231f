// restore-instance in real accounts (issue 13): the new instance takes the original's tags that
// RunInstances accepts; the image and the network it launches into are checked before anything
// is created. The controller and a worker daemon as child processes against the stand-ins
// (test/controller-world.ts).
import t, { type Test } from 'tap'
import { BACKUP, controllerWorld, PROD, PUBLIC_IMAGE, REGION, TARGET } from './controller-world.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>
type Check = { role: string; key: string; action: string; ok: boolean; detail?: string }

const live = (w: World) => ({
  volumes: [...w.ec2.volumes.values()].filter((v) => v.state !== 'deleted').length,
  instances: [...w.ec2.instances.values()].filter((i) => i.state !== 'terminated' && i.state !== 'shutting-down').length,
  snapshots: [...w.ec2.snapshots.values()].filter((s) => !s.deleted).length,
})

/** A production instance (launched from `imageId`) backed up by a worker in the backup account, whose default key the target may use: its restore point id. */
async function crossBackup(t: Test, w: World, imageId = PUBLIC_IMAGE): Promise<string> {
  w.startWorker()
  const instanceId = await w.instance(PROD, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.prod }], { imageId })
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.source.arn, '--worker-account', BACKUP])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  w.ec2.defaultKeys.set(`${BACKUP}/${REGION}`, w.keys.workerDefault)
  return b.json!.restorePoint.id
}

const crossArgs = (w: World, rp: string, ...extra: string[]) =>
  ['restore-instance', '--backup', rp, '--target-account', TARGET, '--target-region', REGION, '--target-kms-key', w.keys.target, '--restore-role', w.roles.restore.arn, ...extra]

/** A same-account instance with these tags, backed up: its restore point id. */
async function backedUp(t: Test, w: World, tags: Record<string, string>): Promise<string> {
  w.startWorker()
  const instanceId = await w.instance(BACKUP, 'eu-west-1b', [{ device: '/dev/xvda', kmsKeyId: w.keys.backup }], { tags })
  const b = await w.controller(['backup-instance', '--instance', instanceId, '--source-role', w.roles.localSource.arn])
  t.equal(b.code, 0, `backup-instance succeeds${b.said}`)
  return b.json!.restorePoint.id
}

const restoreArgs = (w: World, rp: string, ...extra: string[]) =>
  ['restore-instance', '--backup', rp, '--target-account', BACKUP, '--target-region', REGION, '--target-kms-key', w.keys.backup, '--restore-role', w.roles.localRestore.arn, ...extra]

t.test('tags: an instance launched by CloudFormation (aws: tags) is restored without the reserved keys', async (t) => {
  const w = await controllerWorld(t)
  const rp = await backedUp(t, w, { Name: 'app-1', team: 'db', 'aws:cloudformation:stack-name': 'app', 'aws:autoscaling:groupName': 'app-asg', 'aws:ec2launchtemplate:id': 'lt-0123' })
  const r = await w.controller(restoreArgs(w, rp))
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  const tags = w.ec2.instances.get(r.json!.instanceId)!.tags
  t.same(Object.keys(tags).sort(), ['Name', 'ebs-controller:restore', 'team'], 'the original\'s own tags and ours, no aws: key')
  t.same(r.json!.droppedTags, ['aws:cloudformation:stack-name', 'aws:autoscaling:groupName', 'aws:ec2launchtemplate:id'], 'the reserved ones are reported as not copied')
})

t.test('tags: an instance with 50 tags keeps Name and ours, and the others by key up to EC2\'s 50', async (t) => {
  const w = await controllerWorld(t)
  const many: Record<string, string> = { 'aws:cloudformation:stack-name': 'app' }
  for (let i = 48; i >= 0; i--) many[`t${String(i).padStart(2, '0')}`] = `v${i}`
  many.Name = 'app-1'
  const rp = await backedUp(t, w, many)
  const r = await w.controller(restoreArgs(w, rp))
  t.equal(r.code, 0, `restore-instance succeeds${r.said}`)
  const tags = w.ec2.instances.get(r.json!.instanceId)!.tags
  t.equal(Object.keys(tags).length, 50, 'EC2\'s limit')
  t.equal(tags.Name, 'app-1', 'Name kept')
  t.match(tags['ebs-controller:restore'], new RegExp(`^${rp} `), 'ours kept')
  t.notOk('t48' in tags, 'the last by key left out')
  t.ok('t47' in tags, 'the others kept')
  t.same(r.json!.droppedTags, ['aws:cloudformation:stack-name', 't48'], 'and reported')
})

t.test('image: the original\'s AMI, private to its account, is IMAGE_NOT_FOUND in the target account before anything is created', async (t) => {
  const w = await controllerWorld(t)
  const privateImage = w.ec2.addImage({ ownerId: PROD, region: REGION })
  const rp = await crossBackup(t, w, privateImage)
  const before = live(w)
  const r = await w.controller(crossArgs(w, rp))
  t.match(r, { code: 1, json: { error: { code: 'IMAGE_NOT_FOUND' } } }, 'refused')
  t.match(r.json!.error.message, new RegExp(`${privateImage} is not available to account ${TARGET} in ${REGION}.*share it with ${TARGET}.*--image-id.*Nothing was created`), 'naming the image, where, and the ways out')
  t.same(live(w), before, 'nothing was created')
})

t.test('image: preflight names an image of another Region as missing, with EC2\'s reason', async (t) => {
  const w = await controllerWorld(t)
  const rp = await crossBackup(t, w)
  const elsewhere = w.ec2.addImage({ ownerId: TARGET, region: 'us-east-1' })
  const p = await w.controller(['preflight', ...crossArgs(w, rp, '--image-id', elsewhere)])
  const checks = p.json!.checks as Check[]
  t.equal(p.code, 1, 'a missing row: exit status 1')
  t.same(checks.filter((c) => !c.ok).map((c) => `${c.role} | ${c.action}`), [`${w.roles.restore.arn} | launch from ${elsewhere}`], 'the image row, and only it')
  t.match(checks.find((c) => !c.ok)!.detail, /InvalidAMIID\.NotFound/, 'with EC2\'s reason')
  t.ok(checks.find((c) => c.action === 'launch into the default VPC')?.ok, 'the default VPC is there')
})

t.test('network: a target account without a default VPC, and no --subnet-id: BAD_INPUT before anything is created', async (t) => {
  const w = await controllerWorld(t)
  const rp = await crossBackup(t, w)
  w.ec2.withoutDefaultVpc.add(`${TARGET}/${REGION}`)
  const before = live(w)
  const r = await w.controller(crossArgs(w, rp))
  t.match(r, { code: 2, json: { error: { code: 'BAD_INPUT', message: new RegExp(`account ${TARGET} has no default VPC in ${REGION}.*--subnet-id.*Nothing was created`) } } }, 'refused')
  t.same(live(w), before, 'nothing was created')
})

t.test('network: a subnet of another AZ than the workers\' volumes (same account): BAD_INPUT, and the workers\' volumes are removed', async (t) => {
  const w = await controllerWorld(t)
  const rp = await backedUp(t, w, { Name: 'app-1' })
  const subnet = w.ec2.addSubnet({ ownerId: BACKUP, region: REGION, availabilityZone: 'eu-west-1c' })
  const before = live(w)
  const r = await w.controller(restoreArgs(w, rp, '--subnet-id', subnet))
  t.match(r, { code: 2, json: { error: { code: 'BAD_INPUT', message: new RegExp(`restored the volumes in eu-west-1a, and the subnet ${subnet} is in eu-west-1c`) } } }, 'refused')
  t.same(live(w), before, 'no instance, and the workers\' volumes are gone again')
})
