// preflight: every permission a flow will need, checked before anything is created, as a table of
// role × KMS key × action → ok / missing. Nothing is created: EC2 actions are asked with DryRun
// (DryRunOperation = allowed, UnauthorizedOperation = not; EC2 API Reference, "DryRun"), KMS
// grant and cryptographic actions with KMS's DryRun (DryRunOperationException = allowed,
// AccessDeniedException = not; KMS Developer Guide, "Testing your permissions"), the worker role's
// kms:CreateGrant as EBS makes the grant (grants.ts: IAM policy simulation and the key policy),
// and only read-only calls are made for real (DescribeInstances, DescribeVolumes, DescribeKey,
// GetEbsDefaultKmsKeyId, GetKeyPolicy, DescribeImages…). The aws/ebs rule shows as a row of its own.
// Calls on a snapshot that does not exist yet are asked about a placeholder id: EC2 validates a
// DryRun request's parameters too, so InvalidSnapshot.NotFound there means the permission was not
// refused; those the source role may make only on the controller's own (tagged) snapshots are
// simulated instead (snapshotRightsRows).
import {
  CopySnapshotCommand, CreateSnapshotsCommand, CreateVolumeCommand, RunInstancesCommand, type EC2Client,
} from '@aws-sdk/client-ec2'
import { SimulatePrincipalPolicyCommand, type ContextEntry } from '@aws-sdk/client-iam'
import { assumeRole, ownSession, type Session } from './aws.ts'
import { CONTROLLER_TAG, surveyInstance } from './backup.ts'
import { describeKey, dryRun, type Outcome } from './ec2.ts'
import { backupUsesWorkerDefaultKey, backupWorkerNeeds, CREATE, defaultEbsKey, restoreRoleNeeds, restoreWorkerNeed, tryAction, type DefaultKey, type KeyNeed } from './keys.ts'
import { KEY_ARN, type GrantCheck } from './grants.ts'
import { describe } from '../agent/core/errors.ts'
import { awsErrorName } from '../agent/aws/errors.ts'
import { newVolumeTags } from '../agent/aws/volumes.ts'
import { RestorePointStore } from './restore-point.ts'
import { checkImage, checkNetwork, type RestoreOptions } from './restore.ts'

export interface Check {
  role: string
  key: string
  action: string
  ok: boolean
  detail?: string
}

const PLACEHOLDER_SNAPSHOT = 'snap-00000000000000000'

/**
 * A DryRun about PLACEHOLDER_SNAPSHOT: EC2 checks a DryRun request's parameters as well as the
 * permission (EC2 API Reference, "DryRun"; a DryRun CreateVolume with bad parameters is refused
 * with their error, kubernetes-retired/kube-aws#1208), and the placeholder does not exist:
 * InvalidSnapshot.NotFound is the permission not refused, said so in the row's detail.
 */
async function placeholderDryRun(send: () => Promise<unknown>): Promise<Outcome> {
  const outcome = await dryRun(send)
  if (outcome.awsError !== 'InvalidSnapshot.NotFound') return outcome
  return { ok: true, detail: `not refused: EC2 checked the request and found no snapshot ${PLACEHOLDER_SNAPSHOT} (a placeholder; ${outcome.detail})` }
}

/**
 * The source role's ec2:DeleteSnapshot and ec2:ModifySnapshotAttribute (sharing with
 * `workerAccount`, when given) on the backup's own snapshots. Those do not exist before the backup,
 * and packaging/iam/source-role-policy.json allows both only on snapshots carrying the
 * controller's tag (and sharing only with the worker accounts): a DryRun about a placeholder
 * snapshot, which has no tags, would be refused whatever the policy. So the source role simulates
 * its own identity policies (IAM SimulatePrincipalPolicy, which works in the caller's own account)
 * for a snapshot with that tag, with the account added as ec2:Add/userId. The simulation does not
 * see service control policies or permission boundaries, which a DryRun would.
 */
async function snapshotRightsRows(source: Session, region: string, workerAccount: string | undefined): Promise<Check[]> {
  const resource = `arn:aws:ec2:${region}::snapshot/${PLACEHOLDER_SNAPSHOT}`
  const tagged = { ContextKeyName: `aws:ResourceTag/${CONTROLLER_TAG}`, ContextKeyType: 'string' as const, ContextKeyValues: ['ebs-controller-preflight'] }
  const asks: Array<[string, ContextEntry[]]> = [['ec2:DeleteSnapshot', [tagged]]]
  if (workerAccount) asks.push(['ec2:ModifySnapshotAttribute', [tagged, { ContextKeyName: 'ec2:Add/userId', ContextKeyType: 'stringList', ContextKeyValues: [workerAccount] }]])
  const rows: Check[] = []
  for (const [action, context] of asks) {
    let outcome: Outcome
    try {
      const out = await source.iam(region).send(new SimulatePrincipalPolicyCommand({ PolicySourceArn: source.role, ActionNames: [action], ResourceArns: [resource], ContextEntries: context }))
      const decision = out.EvaluationResults?.[0]?.EvalDecision ?? 'implicitDeny'
      const what = `on a snapshot tagged ${CONTROLLER_TAG}${workerAccount && action.endsWith('Attribute') ? `, sharing it with ${workerAccount}` : ''}`
      outcome = decision === 'allowed' ? { ok: true, detail: `IAM policy simulator: allowed ${what}` } : { ok: false, detail: `IAM policy simulator: ${decision} ${what}` }
    } catch (err) {
      outcome = { ok: false, detail: `cannot check ${action} on the backup's snapshots (they do not exist yet) without the IAM policy simulator: ${awsErrorName(err)}: ${describe(err)} ` +
        '(the source role needs iam:SimulatePrincipalPolicy on itself, packaging/iam/source-role-policy.json)' }
    }
    rows.push(row(source.role, '-', action, outcome))
  }
  return rows
}

function row(role: string, key: string, action: string, outcome: Outcome): Check {
  return { role, key, action, ok: outcome.ok, ...(outcome.detail ? { detail: outcome.detail } : {}) }
}

/** Whatever a call threw, as a refusal with its reason. */
const refused = (err: unknown): Outcome => ({ ok: false, detail: describe(err) })

async function tryAssume(role: string, region: string, checks: Check[]): Promise<Session | null> {
  try {
    const s = await assumeRole(role, region, 'ebs-controller-preflight')
    checks.push(row(role, '-', 'sts:AssumeRole', { ok: true }))
    return s
  } catch (err) {
    checks.push(row(role, '-', 'sts:AssumeRole', refused(err)))
    return null
  }
}

/** The rows of one key need (keys.ts): DescribeKey, for real, then each action with DryRun (with `grants`, CreateGrant as EBS makes it). */
async function needChecks(s: Session, region: string, need: KeyNeed, grants?: GrantCheck): Promise<Check[]> {
  let arn = KEY_ARN.test(need.key) ? need.key : undefined
  const described = await describeKey(s.kms(region), s.role, need.key).then((meta): Outcome => ((arn = meta.Arn ?? arn), { ok: true }), refused)
  // An AWS managed key is usable through EBS by its account; nothing else to try (keys.ts).
  const rows = [row(s.role, need.label, 'kms:DescribeKey', need.actions.length || !described.ok ? described : { ok: true, detail: 'AWS managed: usable through EBS by the account' })]
  for (const action of need.actions) rows.push(row(s.role, need.label, `kms:${action}`, await tryAction(s, region, need.key, action, grants, arn)))
  return rows
}

/** A Region's default EBS key for `s`'s account, or null with a row saying why it could not be had. */
async function defaultKeyOrRow(s: Session, region: string, checks: Check[]): Promise<DefaultKey | null> {
  try {
    return await defaultEbsKey(s, region, s.role)
  } catch (err) {
    checks.push(row(s.role, '(default EBS key)', 'ec2:GetEbsDefaultKmsKeyId, kms:DescribeKey', refused(err)))
    return null
  }
}

export interface BackupPreflightOptions {
  instanceId: string
  sourceRole: string
  region: string
  workerAccount?: string
  workerRole?: string
  reencryptWith?: string
}

export async function preflightBackup(o: BackupPreflightOptions): Promise<Check[]> {
  const checks: Check[] = []
  const source = await tryAssume(o.sourceRole, o.region, checks)
  if (!source) return checks
  const ec2 = source.ec2(o.region)
  let survey
  try {
    survey = await surveyInstance(source, o.region, o.instanceId)
    checks.push(row(o.sourceRole, '-', 'ec2:DescribeInstances, ec2:DescribeVolumes', { ok: true }))
  } catch (err) {
    checks.push(row(o.sourceRole, '-', 'ec2:DescribeInstances, ec2:DescribeVolumes', refused(err)))
    return checks
  }
  const { volumes } = survey
  const workerAccount = o.workerAccount ?? source.accountId
  const cross = workerAccount !== source.accountId
  const dry = async (action: string, send: (ec2: EC2Client) => Promise<unknown>): Promise<void> => {
    checks.push(row(o.sourceRole, '-', action, await placeholderDryRun(() => send(ec2))))
  }
  await dry('ec2:CreateSnapshots', (c) => c.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: o.instanceId }, DryRun: true })))
  for (const [key, lookup] of survey.keys) {
    // What DescribeKey answered while the volumes were looked at.
    checks.push(row(o.sourceRole, key, 'kms:DescribeKey', lookup.ok ? { ok: true } : refused(lookup.error)))
    const managed = volumes.filter((v) => v.kmsKeyId === key && v.awsManaged)
    if (cross && managed.length) {
      const names = managed.map((v) => `${v.volumeId} (${v.deviceName})`).join(', ')
      checks.push({
        role: o.sourceRole, key, action: `share snapshots with ${workerAccount}`, ok: Boolean(o.reencryptWith),
        detail: o.reencryptWith ? `aws/ebs: copies re-encrypted with ${o.reencryptWith} are shared instead` : `aws/ebs (AWS managed) encrypts ${names}: snapshots cannot be shared; run the worker in ${source.accountId} or pass --reencrypt-with`,
      })
    }
  }
  checks.push(...await snapshotRightsRows(source, o.region, cross ? workerAccount : undefined))
  if (cross) {
    if (o.reencryptWith) {
      await dry('ec2:CopySnapshot', (c) => c.send(new CopySnapshotCommand({ SourceSnapshotId: PLACEHOLDER_SNAPSHOT, SourceRegion: o.region, Encrypted: true, KmsKeyId: o.reencryptWith, DryRun: true })))
      // Reading the aws/ebs snapshots needs no more: that key is usable through EBS by every
      // principal of its account (a direct DryRun would be refused by its kms:ViaService condition).
      checks.push(...await needChecks(source, o.region, { key: o.reencryptWith, label: o.reencryptWith, actions: CREATE }))
    }
  }
  if (o.workerRole) {
    const worker = await tryAssume(o.workerRole, o.region, checks)
    if (worker) {
      const defaultKey = backupUsesWorkerDefaultKey(volumes, cross) ? await defaultKeyOrRow(worker, o.region, checks) : null
      const me = await ownSession(o.region)
      const grants: GrantCheck = { simulator: me, readers: [me, source] }
      for (const need of backupWorkerNeeds(volumes, cross, o.reencryptWith, defaultKey ?? undefined)) checks.push(...await needChecks(worker, o.region, need, grants))
      // As the worker asks: its volumes carry their task's and worker's tags, as transient, which the fleet's policy requires.
      checks.push(row(o.workerRole, '-', 'ec2:CreateVolume', await dryRun(() => worker.ec2(o.region).send(new CreateVolumeCommand({
        AvailabilityZone: `${o.region}a`, Size: 1, DryRun: true, TagSpecifications: [{ ResourceType: 'volume', Tags: newVolumeTags('ebs-controller-preflight', 'ebs-controller-preflight') }],
      })))))
    }
  }
  return checks
}

/** What a restore-instance preflight checks: the restore's own options. */
export type RestorePreflightOptions = Pick<RestoreOptions, 'restorePointId' | 'repo' | 'targetAccount' | 'targetRegion' | 'targetKmsKey' | 'restoreRole' | 'workerRole'
  | 'instanceType' | 'imageId' | 'subnetId' | 'securityGroupIds'>

export async function preflightRestore(o: RestorePreflightOptions): Promise<Check[]> {
  const checks: Check[] = []
  const rp = await new RestorePointStore(o.repo).load(o.restorePointId)
  const me = await ownSession(o.targetRegion)
  const cross = me.accountId !== o.targetAccount
  const restore = await tryAssume(o.restoreRole, o.targetRegion, checks)
  let workerDefault: string | undefined
  if (cross) {
    const role = `worker account ${me.accountId}`
    const def = await defaultEbsKey(me, o.targetRegion, 'controller').catch((err: unknown) => {
      checks.push(row(role, `(default EBS key of ${o.targetRegion})`, `share snapshots with ${o.targetAccount}`, refused(err)))
      return null
    })
    if (def) {
      workerDefault = def.arn
      checks.push(row(role, `${def.arn} (default EBS key of ${o.targetRegion})`, `share snapshots with ${o.targetAccount}`, def.awsManaged ? {
        ok: false, detail: `aws/ebs (AWS managed): the restored volumes' snapshots (${rp.volumes.map((v) => v.deviceName).join(', ')}) could not be shared; make a customer managed key the default EBS key of ${o.targetRegion} in ${me.accountId}, or run a worker in ${o.targetAccount}`,
      } : { ok: true }))
    }
  }
  if (restore) {
    for (const need of restoreRoleNeeds(o.targetKmsKey, workerDefault)) checks.push(...await needChecks(restore, o.targetRegion, need))
    const ec2 = restore.ec2(o.targetRegion)
    // Where the instance would launch: the image, and the subnet or default VPC (restore.ts).
    const imageId = o.imageId ?? rp.instance.imageId
    checks.push(row(o.restoreRole, '-', `launch from ${imageId}`, await checkImage(ec2, o.restoreRole, o, rp).then((): Outcome => ({ ok: true }), refused)))
    checks.push(row(o.restoreRole, '-', `launch into ${o.subnetId ?? 'the default VPC'}${o.securityGroupIds?.length ? ` with ${o.securityGroupIds.join(', ')}` : ''}`,
      await checkNetwork(ec2, o.restoreRole, o).then((): Outcome => ({ ok: true }), refused)))
    for (const [action, send] of [
      ['ec2:RunInstances', (c: EC2Client) => c.send(new RunInstancesCommand({
        ImageId: imageId, InstanceType: (o.instanceType ?? rp.instance.instanceType) as never, MinCount: 1, MaxCount: 1, DryRun: true,
        ...(o.subnetId ? { SubnetId: o.subnetId } : {}), ...(o.securityGroupIds?.length ? { SecurityGroupIds: o.securityGroupIds } : {}),
      }))],
      ['ec2:CreateVolume', (c: EC2Client) => c.send(new CreateVolumeCommand({ AvailabilityZone: `${o.targetRegion}a`, Size: 1, Encrypted: true, KmsKeyId: o.targetKmsKey, DryRun: true }))],
    ] as const) {
      checks.push(row(o.restoreRole, '-', action, await dryRun(() => send(ec2))))
    }
  }
  if (o.workerRole) {
    const worker = await tryAssume(o.workerRole, o.targetRegion, checks)
    if (worker) checks.push(...await needChecks(worker, o.targetRegion, restoreWorkerNeed(o.targetKmsKey, workerDefault), { simulator: me, readers: [me, ...(restore ? [restore] : [])] }))
  }
  return checks
}

/** The table: role × key × action → ok / missing, with the reason of each missing one. */
export function formatChecks(checks: Check[]): string {
  const rows = checks.map((c) => [c.role, c.key, c.action, c.ok ? 'ok' : 'MISSING'])
  const head = ['role', 'KMS key', 'action', 'result']
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (r: string[]) => r.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd()
  const missing = checks.filter((c) => !c.ok && c.detail).map((c) => `  - ${c.role} / ${c.key} / ${c.action}: ${c.detail}`)
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line), ...(missing.length ? ['', 'missing:', ...missing] : [])].join('\n')
}

