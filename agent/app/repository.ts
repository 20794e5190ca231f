// A repository opened with its key, for every command and the daemon and doctor alike: the one
// place that decides which key provider unlocks a repository. A key file when one is given;
// otherwise AWS KMS for a key KMS wrapped (`init --kms-key`: the caller's AWS identity opens it,
// or is refused), and for any other encrypted repository the request for its key file.
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { DEFAULT_TUNING, type Tuning } from '../core/tuning.ts'
import type { AwsClients } from '../aws/clients.ts'
import { openBackend } from '../storage/open.ts'
import type { Backend } from '../storage/types.ts'
import { LocalKeyFileProvider, type KeyProvider, type WrappedKey } from '../repo/keys.ts'
import { DEFAULT_CHUNK_SIZE, Repository } from '../repo/repository.ts'
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
  const backend = openBackend(url, { aws: access.aws })
  const keyProvider = access.keyFile ? await LocalKeyFileProvider.open(access.keyFile) : new KeyWithoutFile(backend, access.aws)
  return Repository.open(backend, { keyProvider, compressionLevel: access.tuning?.compressionLevel ?? DEFAULT_TUNING.compressionLevel })
}

export interface NewRepository {
  aws: AwsClients
  chunkSize?: number
  /** Encrypt, with the key wrapped by this KMS key (id, ARN or alias)… */
  kmsKey?: string | undefined
  /** …or else kept in this file (created if missing). */
  keyFile?: string | undefined
}

/** Creates a repository: not encrypted, or with a new key in a key file or wrapped by KMS. */
export async function initRepository(url: string, o: NewRepository): Promise<Repository> {
  const keyProvider = o.kmsKey ? new KmsKeyProvider({ aws: o.aws, keyId: o.kmsKey })
    : o.keyFile ? await LocalKeyFileProvider.open(o.keyFile, { create: true }) : undefined
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE
  return Repository.init(openBackend(url, { aws: o.aws }), keyProvider ? { chunkSize, keyProvider } : { chunkSize })
}

/** No key file: a key KMS wrapped opens with KMS; any other needs its file. */
class KeyWithoutFile implements KeyProvider {
  readonly name = 'none'
  readonly #backend: Backend
  readonly #aws: AwsClients

  constructor(backend: Backend, aws: AwsClients) {
    this.#backend = backend
    this.#aws = aws
  }

  async wrap(): Promise<WrappedKey> {
    throw new EbsWorkerError(ErrorCode.BadInput, 'a new repository key needs a key file or a KMS key')
  }

  async unwrap(wrapped: WrappedKey): Promise<Buffer> {
    if (wrapped.provider === KMS_PROVIDER) return new KmsKeyProvider({ aws: this.#aws }).unwrap(wrapped)
    throw new EbsWorkerError(ErrorCode.KeyRequired, `repository ${this.#backend.url} is encrypted: give its key (--key-file)`)
  }
}
