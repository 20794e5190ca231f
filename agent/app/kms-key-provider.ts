// A repository master secret wrapped by AWS KMS: the worker fleet opens an encrypted repository
// with its IAM role alone, no key file on the AMI. The secret is encrypted with KMS Encrypt under
// a customer managed key, with an encryption context naming the repository, and unwrapped with
// KMS Decrypt (same context, same key id: KMS refuses any other). AWS KMS API Reference, Encrypt
// and Decrypt; KMS Developer Guide, "Encryption context".
import { DecryptCommand, EncryptCommand, type KMSClient } from '@aws-sdk/client-kms'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsCall } from '../aws/errors.ts'
import type { AwsClients } from '../aws/clients.ts'
import type { KeyProvider, WrappedKey } from '../repo/keys.ts'

export const KMS_PROVIDER = 'aws-kms'

/** Binds the wrapped secret to its purpose: KMS refuses to decrypt it under another context. */
const CONTEXT = { purpose: 'ebs-worker-repository-key', format: 'ebs-worker/v1' }

export class KmsKeyProvider implements KeyProvider {
  readonly name = KMS_PROVIDER
  readonly #keyId: string | null
  readonly #aws: AwsClients

  /**
   * `keyId` (key id, ARN or alias) is needed to wrap; to unwrap, the key recorded in the
   * repository is used. The KMS client is the program's for the key ARN's Region (else its
   * default Region).
   */
  constructor(options: { aws: AwsClients; keyId?: string | undefined }) {
    this.#keyId = options.keyId ?? null
    this.#aws = options.aws
  }

  #clientFor(keyId: string): KMSClient {
    return this.#aws.kms(/^arn:aws[\w-]*:kms:([\w-]+):/.exec(keyId)?.[1])
  }

  async wrap(secret: Buffer): Promise<WrappedKey> {
    if (!this.#keyId) throw new EbsWorkerError(ErrorCode.BadInput, 'wrapping a repository key with KMS needs a KMS key (--kms-key)')
    const out = await this.#call('Encrypt', this.#keyId, () =>
      this.#clientFor(this.#keyId!).send(new EncryptCommand({ KeyId: this.#keyId!, Plaintext: secret, EncryptionContext: CONTEXT })))
    // KMS answers with the key's ARN whatever alias named it: that is what Decrypt is held to.
    return { provider: this.name, keyId: out.KeyId ?? this.#keyId, ciphertext: Buffer.from(out.CiphertextBlob!).toString('base64') }
  }

  async unwrap(wrapped: WrappedKey): Promise<Buffer> {
    if (wrapped.provider !== this.name) {
      throw new EbsWorkerError(ErrorCode.WrongKey, `repository key is wrapped by "${wrapped.provider}", not by AWS KMS`)
    }
    const out = await this.#call('Decrypt', wrapped.keyId, () => this.#clientFor(wrapped.keyId).send(new DecryptCommand({
      KeyId: wrapped.keyId, CiphertextBlob: Buffer.from(wrapped.ciphertext, 'base64'), EncryptionContext: CONTEXT,
    })))
    return Buffer.from(out.Plaintext!)
  }

  /** KMS errors as ours (aws/errors.ts): denied and wrong-key are permanent, throttling and outages are not. */
  #call<T>(action: string, keyId: string, call: () => Promise<T>): Promise<T> {
    return awsCall({ service: 'KMS', operation: `${action} with ${keyId}` }, call, { kmsKeyId: keyId })
  }
}
