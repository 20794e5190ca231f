// preflight: every permission a flow will need, checked before anything is created, as a table of
// role × KMS key × action → ok / missing. Nothing is created: EC2 actions are asked with DryRun
// (DryRunOperation = allowed, UnauthorizedOperation = not; EC2 API Reference, "DryRun"), KMS
// grant and cryptographic actions with KMS's DryRun (DryRunOperationException = allowed,
// AccessDeniedException = not; KMS Developer Guide, "Testing your permissions"), and only
// read-only calls are made for real (DescribeInstances, DescribeVolumes, DescribeKey,
// GetEbsDefaultKmsKeyId). The aws/ebs rule shows as a row of its own.
import {
  CopySnapshotCommand, CreateSnapshotsCommand, CreateVolumeCommand, DeleteSnapshotCommand, GetEbsDefaultKmsKeyIdCommand, ModifySnapshotAttributeCommand,
  RunInstancesCommand, type EC2Client,
} from '@aws-sdk/client-ec2'
import { DescribeKeyCommand } from '@aws-sdk/client-kms'
import { assumeRole, ownSession, type Session } from './aws.ts'
import { inspectInstance } from './backup.ts'
import { kmsDryRun } from './ec2.ts'
import { describe } from '../agent/core/errors.ts'
import { awsErrorName } from '../agent/aws/errors.ts'
import { RestorePointStore } from './restore-point.ts'
import type { RestoreOptions } from './restore.ts'

export interface Check {
  role: string
  key: string
  action: string
  ok: boolean
  detail?: string
}

const PLACEHOLDER_SNAPSHOT = 'snap-00000000000000000'

async function ec2DryRun(ec2: EC2Client, send: (ec2: EC2Client) => Promise<unknown>): Promise<{ ok: boolean; detail?: string }> {
  try {
    await send(ec2)
    return { ok: true }
  } catch (err) {
    const name = awsErrorName(err)
    if (name === 'DryRunOperation') return { ok: true }
    return { ok: false, detail: `${name}: ${describe(err)}` }
  }
}

async function describeKeyCheck(s: Session, region: string, key: string): Promise<{ ok: boolean; detail?: string; manager?: string; arn?: string }> {
  try {
    const meta = (await s.kms(region).send(new DescribeKeyCommand({ KeyId: key }))).KeyMetadata!
    return { ok: true, manager: meta.KeyManager!, arn: meta.Arn! }
  } catch (err) {
    return { ok: false, detail: `${awsErrorName(err)}: ${describe(err)}` }
  }
}

async function tryAssume(role: string, region: string, checks: Check[]): Promise<Session | null> {
  try {
    const s = await assumeRole(role, region, 'ebs-controller-preflight')
    checks.push({ role, key: '-', action: 'sts:AssumeRole', ok: true })
    return s
  } catch (err) {
    checks.push({ role, key: '-', action: 'sts:AssumeRole', ok: false, detail: describe(err) })
    return null
  }
}

async function keyChecks(s: Session, region: string, key: string, actions: Array<'CreateGrant' | 'Decrypt' | 'GenerateDataKeyWithoutPlaintext'>, checks: Check[], label = key): Promise<void> {
  const d = await describeKeyCheck(s, region, key)
  checks.push({ role: s.role, key: label, action: 'kms:DescribeKey', ok: d.ok, ...(d.detail ? { detail: d.detail } : {}) })
  for (const a of actions) {
    const r = await kmsDryRun(s, region, key, a)
    checks.push({ role: s.role, key: label, action: `kms:${a}`, ok: r.ok, ...(r.detail ? { detail: r.detail } : {}) })
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
  let inspected
  try {
    inspected = await inspectInstance(source, o.region, o.instanceId)
    checks.push({ role: o.sourceRole, key: '-', action: 'ec2:DescribeInstances, ec2:DescribeVolumes', ok: true })
  } catch (err) {
    checks.push({ role: o.sourceRole, key: '-', action: 'ec2:DescribeInstances, ec2:DescribeVolumes, kms:DescribeKey', ok: false, detail: describe(err) })
    return checks
  }
  const workerAccount = o.workerAccount ?? source.accountId
  const cross = workerAccount !== source.accountId
  const dry = async (action: string, send: (ec2: EC2Client) => Promise<unknown>): Promise<void> => {
    const r = await ec2DryRun(ec2, send)
    checks.push({ role: o.sourceRole, key: '-', action, ok: r.ok, ...(r.detail ? { detail: r.detail } : {}) })
  }
  await dry('ec2:CreateSnapshots', (c) => c.send(new CreateSnapshotsCommand({ InstanceSpecification: { InstanceId: o.instanceId }, DryRun: true })))
  await dry('ec2:DeleteSnapshot', (c) => c.send(new DeleteSnapshotCommand({ SnapshotId: PLACEHOLDER_SNAPSHOT, DryRun: true })))
  const keys = [...new Set(inspected.volumes.filter((v) => v.kmsKeyId).map((v) => v.kmsKeyId!))]
  for (const key of keys) {
    const managed = inspected.volumes.find((v) => v.kmsKeyId === key)!.awsManaged
    checks.push({ role: o.sourceRole, key, action: 'kms:DescribeKey', ok: true })
    if (cross && managed) {
      const names = inspected.volumes.filter((v) => v.kmsKeyId === key).map((v) => `${v.volumeId} (${v.deviceName})`).join(', ')
      checks.push({
        role: o.sourceRole, key, action: `share snapshots with ${workerAccount}`, ok: Boolean(o.reencryptWith),
        detail: o.reencryptWith ? `aws/ebs: copies re-encrypted with ${o.reencryptWith} are shared instead` : `aws/ebs (AWS managed) encrypts ${names}: snapshots cannot be shared; run the worker in ${source.accountId} or pass --reencrypt-with`,
      })
    }
  }
  if (cross) {
    await dry('ec2:ModifySnapshotAttribute', (c) => c.send(new ModifySnapshotAttributeCommand({ SnapshotId: PLACEHOLDER_SNAPSHOT, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: workerAccount }] }, DryRun: true })))
    if (o.reencryptWith) {
      await dry('ec2:CopySnapshot', (c) => c.send(new CopySnapshotCommand({ SourceSnapshotId: PLACEHOLDER_SNAPSHOT, SourceRegion: o.region, Encrypted: true, KmsKeyId: o.reencryptWith, DryRun: true })))
      // Reading the aws/ebs snapshots needs no more: that key is usable through EBS by every
      // principal of its account (a direct DryRun would be refused by its kms:ViaService condition).
      await keyChecks(source, o.region, o.reencryptWith, ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'], checks)
    }
  }
  if (o.workerRole) {
    const worker = await tryAssume(o.workerRole, o.region, checks)
    if (worker) {
      const readKeys = cross ? keys.map((k) => (inspected.volumes.find((v) => v.kmsKeyId === k)!.awsManaged ? o.reencryptWith : k)).filter((k): k is string => Boolean(k)) : keys
      for (const key of [...new Set(readKeys)]) await keyChecks(worker, o.region, key, ['CreateGrant', 'Decrypt'], checks)
      if (cross && keys.length) {
        // One real call (GetEbsDefaultKmsKeyId has no DryRun): its answer is the key to check next.
        let def: string | null = null
        try {
          def = (await worker.ec2(o.region).send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId!
        } catch (err) {
          checks.push({ role: o.workerRole, key: '-', action: 'ec2:GetEbsDefaultKmsKeyId', ok: false, detail: `${awsErrorName(err)}: ${describe(err)}` })
        }
        if (def) {
          const d = await describeKeyCheck(worker, o.region, def)
          // aws/ebs is usable through EBS by every principal of its account (its key policy is
          // conditioned on kms:ViaService, so a direct DryRun would be refused): DescribeKey only.
          if (d.manager === 'AWS') checks.push({ role: o.workerRole, key: `${def} (default EBS key)`, action: 'kms:DescribeKey', ok: true, detail: 'AWS managed: usable through EBS by the account' })
          else await keyChecks(worker, o.region, def, ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'], checks, `${def} (default EBS key)`)
        }
      }
      const r = await ec2DryRun(worker.ec2(o.region), (c) => c.send(new CreateVolumeCommand({ AvailabilityZone: `${o.region}a`, Size: 1, DryRun: true })))
      checks.push({ role: o.workerRole, key: '-', action: 'ec2:CreateVolume', ok: r.ok, ...(r.detail ? { detail: r.detail } : {}) })
    }
  }
  return checks
}

/** What a restore-instance preflight checks: the restore's own options. */
export type RestorePreflightOptions = Pick<RestoreOptions, 'restorePointId' | 'repo' | 'targetAccount' | 'targetRegion' | 'targetKmsKey' | 'restoreRole' | 'workerRole'>

export async function preflightRestore(o: RestorePreflightOptions): Promise<Check[]> {
  const checks: Check[] = []
  const rp = await new RestorePointStore(o.repo).load(o.restorePointId)
  const me = await ownSession(o.targetRegion)
  const cross = me.accountId !== o.targetAccount
  const restore = await tryAssume(o.restoreRole, o.targetRegion, checks)
  let workerDefault: string | undefined
  if (cross) {
    const def = (await me.ec2(o.targetRegion).send(new GetEbsDefaultKmsKeyIdCommand({}))).KmsKeyId!
    const d = await describeKeyCheck(me, o.targetRegion, def)
    workerDefault = d.arn ?? def
    checks.push({
      role: `worker account ${me.accountId}`, key: `${workerDefault} (default EBS key of ${o.targetRegion})`, action: `share snapshots with ${o.targetAccount}`,
      ok: d.ok && d.manager !== 'AWS',
      ...(d.manager === 'AWS' ? { detail: `aws/ebs (AWS managed): the restored volumes' snapshots (${rp.volumes.map((v) => v.deviceName).join(', ')}) could not be shared; make a customer managed key the default EBS key of ${o.targetRegion} in ${me.accountId}, or run a worker in ${o.targetAccount}` } : d.detail ? { detail: d.detail } : {}),
    })
  }
  if (restore) {
    await keyChecks(restore, o.targetRegion, o.targetKmsKey, ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'], checks)
    if (workerDefault) await keyChecks(restore, o.targetRegion, workerDefault, ['CreateGrant', 'Decrypt'], checks, `${workerDefault} (worker default EBS key)`)
    const ec2 = restore.ec2(o.targetRegion)
    for (const [action, send] of [
      ['ec2:RunInstances', (c: EC2Client) => c.send(new RunInstancesCommand({ ImageId: rp.instance.imageId, InstanceType: rp.instance.instanceType as never, MinCount: 1, MaxCount: 1, DryRun: true }))],
      ['ec2:CreateVolume', (c: EC2Client) => c.send(new CreateVolumeCommand({ AvailabilityZone: `${o.targetRegion}a`, Size: 1, Encrypted: true, KmsKeyId: o.targetKmsKey, DryRun: true }))],
    ] as const) {
      const r = await ec2DryRun(ec2, send)
      checks.push({ role: o.restoreRole, key: '-', action, ok: r.ok, ...(r.detail ? { detail: r.detail } : {}) })
    }
  }
  if (o.workerRole) {
    const worker = await tryAssume(o.workerRole, o.targetRegion, checks)
    if (worker) {
      if (cross && workerDefault) await keyChecks(worker, o.targetRegion, workerDefault, ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'], checks, `${workerDefault} (default EBS key)`)
      else await keyChecks(worker, o.targetRegion, o.targetKmsKey, ['CreateGrant', 'GenerateDataKeyWithoutPlaintext'], checks)
    }
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

