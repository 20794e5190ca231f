// restore-instance in real accounts (issue 13): the new instance takes the original's tags that
// RunInstances accepts; the image and the network it launches into are checked before anything
// is created. The controller and a worker daemon as child processes against the stand-ins
// (test/controller-world.ts).
import t, { type Test } from 'tap'
import { BACKUP, controllerWorld, REGION } from './controller-world.ts'

type World = Awaited<ReturnType<typeof controllerWorld>>

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
