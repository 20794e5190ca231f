// Which KMS keys each role needs, and for which actions: said once, for the flows' checks before
// anything is created and for preflight's table. EBS uses a key on the caller's behalf ("Amazon
// EBS encryption", required KMS permissions): reading a snapshot under it needs a grant and
// Decrypt, creating a volume under it a grant and GenerateDataKeyWithoutPlaintext. An AWS managed
// key (aws/ebs) is usable through EBS by every principal of its account, and its key policy
// (conditioned on kms:ViaService) refuses direct calls: it is never dry-run. The worker role uses
// volume keys only through EBS, and its policy (packaging/iam/worker-policy.json) allows nothing
// else (grants for AWS resources, the rest with kms:ViaService): each of its actions is checked
// as EBS would ask (grants.ts), the other roles' with KMS DryRun.
import { GetEbsDefaultKmsKeyIdCommand } from '@aws-sdk/client-ec2'
import type { Session } from './aws.ts'
import { call, describeKey, kmsDryRun, type KmsAction, type Outcome } from './ec2.ts'
import { KEY_ARN, useByEbs, type GrantCheck } from './grants.ts'
import { describe } from '../agent/core/errors.ts'

/** Reading a snapshot encrypted under the key. */
export const READ: readonly KmsAction[] = ['CreateGrant', 'Decrypt']
/** Creating a volume (or a copy) encrypted under the key. */
export const CREATE: readonly KmsAction[] = ['CreateGrant', 'GenerateDataKeyWithoutPlaintext']

export interface KeyNeed {
  key: string
  /** How messages and the preflight table name it ("<key> (default EBS key)"). */
  label: string
  /** What to dry-run: none for an AWS managed key. */
  actions: readonly KmsAction[]
}

/** A Region's default EBS key, as an ARN, and whether it is AWS managed (aws/ebs). */
export interface DefaultKey {
  arn: string
  awsManaged: boolean
}

/** The default EBS key of `region` for `s`'s account: GetEbsDefaultKmsKeyId (no DryRun exists), then DescribeKey. */
export async function defaultEbsKey(s: Session, region: string, who: string): Promise<DefaultKey> {
  const id = (await call(who, `GetEbsDefaultKmsKeyId ${region}`, () => s.ec2(region).send(new GetEbsDefaultKmsKeyIdCommand({})))).KmsKeyId!
  const meta = await describeKey(s.kms(region), who, id)
  return { arn: meta.Arn ?? id, awsManaged: meta.KeyManager === 'AWS' }
}

interface BackupVolume {
  encrypted: boolean
  kmsKeyId?: string
  awsManaged: boolean
}

/** Whether a backup's workers need their Region's default key: across accounts, the volumes they make from encrypted snapshots are under it. */
export function backupUsesWorkerDefaultKey(volumes: BackupVolume[], cross: boolean): boolean {
  return cross && volumes.some((v) => v.encrypted)
}

/**
 * What the worker role needs for a backup: READ on the key of each snapshot it reads (an aws/ebs
 * one only in its own account, where it needs nothing; across accounts the re-encrypted copy's
 * key instead, `reencryptWith`) and, across accounts, CREATE on its Region's default key.
 */
export function backupWorkerNeeds(volumes: BackupVolume[], cross: boolean, reencryptWith: string | undefined, defaultKey?: DefaultKey): KeyNeed[] {
  const read = volumes.filter((v) => v.kmsKeyId && (!v.awsManaged || cross)).map((v) => (v.awsManaged ? reencryptWith : v.kmsKeyId))
  const needs: KeyNeed[] = [...new Set(read.filter((k): k is string => Boolean(k)))].map((key) => ({ key, label: key, actions: READ }))
  if (defaultKey) needs.push({ key: defaultKey.arn, label: `${defaultKey.arn} (default EBS key)`, actions: defaultKey.awsManaged ? [] : CREATE })
  return needs
}

/** What the worker role needs for a restore: CREATE on the key its volumes are under, the target key or, across accounts, its Region's default key. */
export function restoreWorkerNeed(targetKey: string, workerDefault?: string): KeyNeed {
  return workerDefault ? { key: workerDefault, label: `${workerDefault} (default EBS key)`, actions: CREATE } : { key: targetKey, label: targetKey, actions: CREATE }
}

/** What the restore role needs: CREATE on the target key and, across accounts, READ on the workers' default key the shared snapshots are under. */
export function restoreRoleNeeds(targetKey: string, workerDefault?: string): KeyNeed[] {
  return [
    { key: targetKey, label: targetKey, actions: CREATE },
    ...(workerDefault ? [{ key: workerDefault, label: `${workerDefault} (worker default EBS key)`, actions: READ }] : []),
  ]
}

/**
 * One action of a need as `s`: KMS DryRun, or with `grants` (the worker role) the action as EBS asks
 * for it (grants.ts; `keyArn`: the key's ARN, when the caller knows it already).
 */
export async function tryAction(s: Session, region: string, key: string, action: KmsAction, grants?: GrantCheck, keyArn?: string): Promise<Outcome> {
  if (!grants) return kmsDryRun(s, region, key, action)
  let arn = keyArn ?? (KEY_ARN.test(key) ? key : undefined)
  if (!arn) {
    try {
      arn = (await describeKey(s.kms(region), s.role, key)).Arn!
    } catch (err) {
      return { ok: false, detail: describe(err) }
    }
  }
  return useByEbs(grants, s.role, region, arn, action)
}

/** Each action of each need as `s` (tryAction). */
export async function tryNeeds(s: Session, region: string, needs: KeyNeed[], grants?: GrantCheck): Promise<Array<{ need: KeyNeed; action: KmsAction } & Outcome>> {
  const out: Array<{ need: KeyNeed; action: KmsAction } & Outcome> = []
  for (const need of needs) for (const action of need.actions) out.push({ need, action, ...(await tryAction(s, region, need.key, action, grants)) })
  return out
}
