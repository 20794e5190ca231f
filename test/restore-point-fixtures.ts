// Restore points for tests that need some in a repository without running a backup, and the old
// layout as controllers before restore points were keyed by instance wrote it (docs/FORMAT.md).
import type { Backend } from '../agent/storage/types.ts'
import type { RestorePoint } from '../controller/restore-point.ts'

/** A valid restore point `id` of `instanceId`, of one volume. */
export function sampleRestorePoint(id: string, instanceId = 'i-0123456789abcdef0'): RestorePoint {
  return {
    format: 'ebs-worker-restore-point', version: 1, id, createdAt: new Date().toISOString(),
    instance: { instanceId, accountId: '111111111111', region: 'eu-west-1', availabilityZone: 'eu-west-1b', instanceType: 'm6i.large', imageId: 'ami-0123456789abcdef0', rootDeviceName: '/dev/xvda', tags: {} },
    volumes: [{ deviceName: '/dev/xvda', volumeId: `vol-${instanceId.slice(2)}`, sizeGiB: 8, volumeType: 'gp3', encrypted: true, kmsKeyId: 'arn:aws:kms:eu-west-1:111111111111:key/k', deleteOnTermination: true, snapshotId: 'snap-0123456789abcdef0', backupId: '20261123T071200Z-0a1b2c3d' }],
    worker: { accountId: '222222222222' },
  }
}

/** Stores `rp` as a controller of the old layout did: restore-points/<id>.json (docs/FORMAT.md). Returns the object's name. */
export async function saveOldLayout(backend: Backend, rp: RestorePoint): Promise<string> {
  const name = `restore-points/${rp.id}.json`
  await backend.put(name, Buffer.from(JSON.stringify(rp, null, 2) + '\n'), { ifAbsent: true })
  return name
}
