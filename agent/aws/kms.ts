// KMS checks the flows need before they create anything. The one rule so far: an EBS snapshot
// encrypted with an AWS managed key (aws/ebs) cannot be shared with another account, so a
// cross-account restore under such a key must fail before any volume is made, and say why.
import { DescribeKeyCommand, type KMSClient } from '@aws-sdk/client-kms'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall } from './errors.ts'

export async function assertShareableKey(kms: KMSClient, keyRef: string): Promise<void> {
  const out = await awsCall({ service: 'KMS', operation: `DescribeKey ${keyRef}` }, () => kms.send(new DescribeKeyCommand({ KeyId: keyRef })), { kmsKeyId: keyRef })
  const manager = out.KeyMetadata?.KeyManager
  if (manager === 'AWS') {
    throw new EbsWorkerError(
      ErrorCode.DefaultKeyNotShareable,
      `the volume would be encrypted with ${keyRef}, an AWS managed key (aws/ebs), and snapshots encrypted with it ` +
        'cannot be shared with another account. Restore with a customer managed key (volume.kmsKeyId), make a ' +
        "customer managed key this Region's default EBS key, or run the worker in the target account.",
    )
  }
}
