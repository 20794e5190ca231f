// A repository opened with its key, for every command and the daemon and doctor alike: the one
// place that decides which key provider unlocks a repository. A key file when one is given;
// otherwise AWS KMS for a key KMS wrapped (`init --kms-key`: the caller's AWS identity opens it,
// or is refused), and for any other encrypted repository the request for its key file.
import { DEFAULT_TUNING, type Tuning } from '../core/tuning.ts'
import type { AwsClients } from '../aws/clients.ts'
import { openBackend } from '../storage/open.ts'
import { access } from 'node:fs/promises'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { LocalKeyFileProvider, type KeyProvider } from '../repo/keys.ts'
import { DEFAULT_CHUNK_SIZE, Repository, type ObjectLock } from '../repo/repository.ts'
import { KMS_PROVIDER, KmsKeyProvider } from './kms-key-provider.ts'

export interface RepositoryAccess {
  /** The program's AWS clients: S3 for s3:// repositories, KMS for KMS-wrapped keys. */
  aws: AwsClients
  /** The key file of a repository whose key is in a file. */
  keyFile?: string | undefined
  /** Only the zstd level of what this opening stores matters here. */
  tuning?: Partial<Pick<Tuning, 'compressionLevel'>>
}

export async function openRepository(url: string, access: RepositoryAccess): Promise<Repository> {
  return Repository.open(openBackend(url, { aws: access.aws }), {
    ...(access.keyFile ? { keyProvider: await LocalKeyFileProvider.open(access.keyFile) } : {}),
    keyProviderFor: (wrapped) => (wrapped.provider === KMS_PROVIDER ? new KmsKeyProvider({ aws: access.aws }) : null),
    compressionLevel: access.tuning?.compressionLevel ?? DEFAULT_TUNING.compressionLevel,
  })
}

export interface NewRepository {
  aws: AwsClients
  chunkSize?: number
  /** Encrypt, with the key wrapped by this KMS key (id, ARN or alias)… */
  kmsKey?: string | undefined
  /** …or else kept in this file (created if missing). */
  keyFile?: string | undefined
  /** Lock every object the repository relies on (a bucket with Object Lock only). */
  objectLock?: ObjectLock | undefined
}

/**
 * Creates a repository: not encrypted, or with a new key in a key file or wrapped by KMS; under
 * Object Lock or not.
 */
export async function initRepository(url: string, o: NewRepository): Promise<Repository> {
  const keyProvider = o.kmsKey ? new KmsKeyProvider({ aws: o.aws, keyId: o.kmsKey })
    : o.keyFile ? await LocalKeyFileProvider.open(o.keyFile, { create: true }) : undefined
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE
  return Repository.init(openBackend(url, { aws: o.aws }), {
    chunkSize, ...(keyProvider ? { keyProvider } : {}), ...(o.objectLock ? { objectLock: o.objectLock } : {}),
  })
}

/**
 * The provider of a key to add to a repository (`key add`): a KMS key (id, ARN or alias), or a
 * key file, made with a new random key when the file does not exist.
 */
export async function newKeyProvider(o: { aws: AwsClients; kmsKey?: string | undefined; keyFile?: string | undefined }): Promise<{ provider: KeyProvider; created: boolean }> {
  if (o.kmsKey) return { provider: new KmsKeyProvider({ aws: o.aws, keyId: o.kmsKey }), created: false }
  if (!o.keyFile) throw new EbsWorkerError(ErrorCode.BadInput, 'a new key is a key file or a KMS key')
  const existed = await access(o.keyFile).then(() => true, () => false)
  return { provider: await LocalKeyFileProvider.open(o.keyFile, { create: true }), created: !existed }
}
