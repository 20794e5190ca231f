// Repository keys. A repository with encryption has one random 64-byte master secret. It is
// stored only wrapped by a key provider (a local key file here, AWS KMS in app/kms-key-provider.ts), and two
// keys are derived from it with HKDF:
//   - the AES-256-GCM key for every blob,
//   - the HMAC-SHA256 key for chunk ids, so an id reveals nothing about the plaintext.
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'

export interface WrappedKey {
  /** Which provider can unwrap it: "local-file" or "aws-kms". */
  provider: string
  /** Provider-specific identity of the wrapping key (a fingerprint, a KMS key ARN). */
  keyId: string
  /** Base64 of the provider's ciphertext. */
  ciphertext: string
}

export interface KeyProvider {
  readonly name: string
  wrap(secret: Buffer): Promise<WrappedKey>
  /** Throws WRONG_KEY when this provider's key is not the one that wrapped it. */
  unwrap(wrapped: WrappedKey): Promise<Buffer>
}

export interface RepositoryKeys {
  encryption: Buffer
  chunkId: Buffer
}

export const MASTER_SECRET_BYTES = 64

export function newMasterSecret(): Buffer {
  return randomBytes(MASTER_SECRET_BYTES)
}

export function deriveKeys(secret: Buffer): RepositoryKeys {
  const derive = (info: string): Buffer =>
    Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), `ebs-worker/v1/${info}`, 32))
  return { encryption: derive('blob-encryption'), chunkId: derive('chunk-id') }
}

const WRAP_AAD = Buffer.from('ebs-worker/v1/key-wrap')

/**
 * A 32-byte key kept in a local file (base64 text, mode 0600): for local repositories, tests
 * and air-gapped use. The file's fingerprint is recorded so a wrong file is named as such.
 */
export class LocalKeyFileProvider implements KeyProvider {
  readonly name = 'local-file'
  readonly #key: Buffer
  readonly #path: string

  private constructor(path: string, key: Buffer) {
    this.#path = path
    this.#key = key
  }

  /** Loads the key file; with `create`, makes a new random key when the file does not exist. */
  static async open(path: string, options: { create?: boolean } = {}): Promise<LocalKeyFileProvider> {
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && options.create) {
        const key = randomBytes(32)
        await writeFile(path, key.toString('base64') + '\n', { mode: 0o600, flag: 'wx' })
        return new LocalKeyFileProvider(path, key)
      }
      throw new EbsWorkerError(ErrorCode.BadInput, `cannot read key file ${path}: ${describe(err)}`)
    }
    const key = Buffer.from(text.trim(), 'base64')
    if (key.length !== 32) {
      throw new EbsWorkerError(ErrorCode.BadInput, `key file ${path} must hold 32 bytes in base64 (found ${key.length})`)
    }
    return new LocalKeyFileProvider(path, key)
  }

  get fingerprint(): string {
    return createHash('sha256').update(this.#key).digest('hex').slice(0, 16)
  }

  async wrap(secret: Buffer): Promise<WrappedKey> {
    const nonce = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#key, nonce)
    cipher.setAAD(WRAP_AAD)
    const body = Buffer.concat([cipher.update(secret), cipher.final()])
    return {
      provider: this.name,
      keyId: this.fingerprint,
      ciphertext: Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64'),
    }
  }

  async unwrap(wrapped: WrappedKey): Promise<Buffer> {
    if (wrapped.provider !== this.name) {
      throw new EbsWorkerError(ErrorCode.WrongKey, `repository key is wrapped by "${wrapped.provider}", not a local key file`)
    }
    const raw = Buffer.from(wrapped.ciphertext, 'base64')
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#key, raw.subarray(0, 12))
      decipher.setAAD(WRAP_AAD)
      decipher.setAuthTag(raw.subarray(raw.length - 16))
      return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()])
    } catch {
      throw new EbsWorkerError(
        ErrorCode.WrongKey,
        `key file ${this.#path} (fingerprint ${this.fingerprint}) does not open this repository, ` +
          `which expects the key with fingerprint ${wrapped.keyId}`,
      )
    }
  }
}

/**
 * The config's own wrapped key (`encryption.key`), as `ebs-worker key` names it beside the keys
 * under keys/ (docs/FORMAT.md, "Keys").
 */
export const CONFIG_KEY_ID = 'config'

/** An id of a key under keys/: 16 random hex digits. */
export const KEY_ID_PATTERN = /^[0-9a-f]{16}$/

export function newKeyId(): string {
  return randomBytes(8).toString('hex')
}

/** What a key object `keys/<id>` holds (plain JSON: it is read before the repository is open). */
export interface StoredKey {
  format: 'ebs-worker-key'
  version: 1
  id: string
  createdAt: string
  key: WrappedKey
}

/** One access key of a repository, as `key list` shows it. */
export interface KeyEntry {
  /** `config` for the config's own key, else the id of `keys/<id>`. */
  id: string
  /** The wrapped key; null when its object cannot be read (`error` says why). */
  key: WrappedKey | null
  createdAt: string | null
  /** The key this opening used. */
  current: boolean
  error?: string
}
