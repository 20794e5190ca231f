// The repository: config, keys, indexes, packs and manifests on a backend. Everything that
// touches stored objects goes through here; backup and restore only see chunks.
//
//   config                      JSON, plain: format, version, chunk size, wrapped key
//   packs/<2 hex>/<pack id>     chunk blobs + trailer (pack.ts)
//   index/<name>                where chunks live (chunk-index.ts), blob-encoded
//   backups/<backup id>         manifests (manifest.ts), blob-encoded, written last
import { createHash, createHmac, randomUUID } from 'node:crypto'
import pLimit from 'p-limit'
import { z } from 'zod'
import { BlobCodec } from './codec.ts'
import { AlreadyExistsError, type Backend } from '../storage/types.ts'
import { decodeCheckpoint, encodeCheckpoint, type Checkpoint } from '../pipeline/checkpoint.ts'
import { ChunkIndex, decodeIndex, encodeIndex, type IndexEntry } from './chunk-index.ts'
import { EbsWorkerError, ErrorCode, describe, isEbsWorkerError } from '../core/errors.ts'
import { deriveKeys, newMasterSecret, type KeyProvider, type RepositoryKeys } from './keys.ts'
import { decodeManifest, encodeManifest, type Manifest } from './manifest.ts'
import { BACKUP_ID_PATTERN } from '../core/ids.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { MAX_PACK_BYTES, PackBuilder, packObjectName } from './pack.ts'

export const REPOSITORY_VERSION = 1
export const EBS_BLOCK_SIZE = 512 * 1024
export const DEFAULT_CHUNK_SIZE = 1024 * 1024
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024

const wrappedKeySchema = z.strictObject({ provider: z.string(), keyId: z.string(), ciphertext: z.string() })
const configSchema = z.strictObject({
  format: z.literal('ebs-worker-repository'),
  version: z.number().int(),
  id: z.string(),
  createdAt: z.iso.datetime(),
  chunkSize: z.number().int().positive(),
  compression: z.literal('zstd'),
  encryption: z
    .strictObject({
      cipher: z.literal('aes-256-gcm'),
      chunkIds: z.literal('hmac-sha256'),
      key: wrappedKeySchema,
    })
    .nullable(),
})
export type RepositoryConfig = z.infer<typeof configSchema>

export interface InitOptions {
  chunkSize?: number
  /** Encrypt with a new master secret wrapped by this provider. */
  keyProvider?: KeyProvider
}

export interface OpenOptions {
  keyProvider?: KeyProvider
  compressionLevel?: number
}

export function validateChunkSize(chunkSize: number): void {
  if (!Number.isInteger(chunkSize) || chunkSize % EBS_BLOCK_SIZE !== 0 || chunkSize < EBS_BLOCK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new EbsWorkerError(
      ErrorCode.BadInput,
      `chunk size must be a multiple of 512 KiB (the EBS block size) up to 64 MiB, not ${chunkSize}`,
    )
  }
}

export interface BackupSummary {
  id: string
  createdAt: string
  size: number
  parent: string | null
  source: Manifest['source']
  tags: Record<string, string>
  stats: Manifest['stats']
}

export class Repository {
  readonly backend: Backend
  readonly config: RepositoryConfig
  readonly codec: BlobCodec
  readonly #idKey: Buffer | null

  private constructor(backend: Backend, config: RepositoryConfig, keys: RepositoryKeys | null, level: number) {
    this.backend = backend
    this.config = config
    this.codec = new BlobCodec({ key: keys?.encryption ?? null, compressionLevel: level, maxChunkBytes: config.chunkSize })
    this.#idKey = keys?.chunkId ?? null
  }

  get chunkSize(): number {
    return this.config.chunkSize
  }

  get url(): string {
    return this.backend.url
  }

  static async init(backend: Backend, options: InitOptions = {}): Promise<Repository> {
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE
    validateChunkSize(chunkSize)
    let keys = null
    let encryption: RepositoryConfig['encryption'] = null
    if (options.keyProvider) {
      const secret = newMasterSecret()
      keys = deriveKeys(secret)
      encryption = { cipher: 'aes-256-gcm', chunkIds: 'hmac-sha256', key: await options.keyProvider.wrap(secret) }
    }
    const config: RepositoryConfig = {
      format: 'ebs-worker-repository',
      version: REPOSITORY_VERSION,
      id: randomUUID(),
      createdAt: new Date().toISOString(),
      chunkSize,
      compression: 'zstd',
      encryption,
    }
    try {
      await backend.put('config', Buffer.from(JSON.stringify(config, null, 2) + '\n'), { ifAbsent: true })
    } catch (err) {
      if (err instanceof AlreadyExistsError) {
        throw new EbsWorkerError(ErrorCode.RepoExists, `a repository already exists at ${backend.url}`)
      }
      throw err
    }
    return new Repository(backend, config, keys, DEFAULT_TUNING.compressionLevel)
  }

  static async open(backend: Backend, options: OpenOptions = {}): Promise<Repository> {
    const raw = await backend.get('config')
    if (!raw) {
      throw new EbsWorkerError(ErrorCode.RepoNotFound, `no ebs-worker repository at ${backend.url} (create one with "ebs-worker init")`)
    }
    let json: unknown
    try {
      json = JSON.parse(raw.toString('utf8'))
    } catch {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `${backend.url}/config is not JSON: not an ebs-worker repository`)
    }
    const head = json as { format?: unknown; version?: unknown }
    if (head?.format !== 'ebs-worker-repository') {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `${backend.url} is not an ebs-worker repository`)
    }
    if (head.version !== REPOSITORY_VERSION) {
      throw new EbsWorkerError(
        ErrorCode.RepoVersion,
        `repository ${backend.url} has format version ${String(head.version)}; this ebs-worker reads version ${REPOSITORY_VERSION}`,
      )
    }
    const parsed = configSchema.safeParse(json)
    if (!parsed.success) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `repository config is invalid: ${z.prettifyError(parsed.error)}`)
    }
    const config = parsed.data
    validateChunkSize(config.chunkSize)
    let keys = null
    if (config.encryption) {
      // Which provider unwraps it (a key file, KMS) is the caller's to decide: app/repository.ts.
      const provider = options.keyProvider
      if (!provider) {
        throw new EbsWorkerError(ErrorCode.KeyRequired, `repository ${backend.url} is encrypted: give its key (--key-file)`)
      }
      keys = deriveKeys(await provider.unwrap(config.encryption.key))
    }
    return new Repository(backend, config, keys, options.compressionLevel ?? DEFAULT_TUNING.compressionLevel)
  }

  /**
   * Content address of a chunk: SHA-256, or HMAC-SHA256 with a derived key when encrypted.
   * Synchronous on purpose: with SHA extensions it runs at GB/s, and WebCrypto's off-thread
   * digest copies its input first, which measured no faster in total.
   */
  chunkId(data: Buffer): Buffer {
    return this.#idKey ? createHmac('sha256', this.#idKey).update(data).digest() : createHash('sha256').update(data).digest()
  }

  // ---- indexes ----------------------------------------------------------------------------

  /** Reads every index file into one map. Files that vanish meanwhile were consolidated. */
  async loadIndex(): Promise<ChunkIndex> {
    const index = new ChunkIndex()
    const limit = pLimit(16)
    const reads: Promise<void>[] = []
    for await (const obj of this.backend.list('index/')) {
      reads.push(
        limit(async () => {
          const blob = await this.backend.get(obj.name)
          if (!blob) return
          const plain = await this.#decodeMeta('index', blob, obj.name)
          for (const entry of decodeIndex(plain, obj.name)) index.add(entry)
        }),
      )
    }
    await Promise.all(reads)
    return index
  }

  async saveIndex(name: string, entries: readonly IndexEntry[]): Promise<void> {
    await this.backend.put(`index/${name}`, await this.codec.encode('index', encodeIndex(entries)))
  }

  async deleteIndex(name: string): Promise<void> {
    await this.backend.delete(`index/${name}`)
  }

  // ---- packs ------------------------------------------------------------------------------

  /** Uploads a finished pack; its entries become valid once this resolves. Returns its size. */
  async savePack(builder: PackBuilder): Promise<number> {
    const trailer = await this.codec.encode('pack-trailer', builder.trailerPlaintext())
    const data = builder.finish(trailer)
    if (data.length > MAX_PACK_BYTES) throw new Error('pack exceeds 4 GiB')
    await this.backend.put(packObjectName(builder.id), data)
    return data.length
  }

  /**
   * Raw bytes of consecutive blobs in a pack, into `into` when given (restores reuse buffers);
   * a short answer means the pack was truncated.
   */
  async readPackRange(pack: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = await this.backend.getRange(packObjectName(pack), offset, length, into).catch((err: unknown) => {
      if (isEbsWorkerError(err, ErrorCode.ObjectNotFound)) {
        throw new EbsWorkerError(ErrorCode.ChunkMissing, `pack ${pack} is missing from ${this.url}`, { cause: err, context: { pack } })
      }
      throw err
    })
    if (buf.length !== length) {
      throw new EbsWorkerError(
        ErrorCode.ChunkCorrupt,
        `pack ${pack} is truncated: wanted bytes ${offset}–${offset + length - 1}, got ${buf.length}`,
        { context: { pack, offset } },
      )
    }
    return buf
  }

  /** Decodes one chunk blob and proves it is the chunk `id`; `into`: see BlobCodec.decode. */
  async decodeChunk(blob: Buffer, id: Buffer, rawLength: number, into?: Buffer): Promise<Buffer> {
    const plain = await this.codec.decode('chunk', blob, rawLength, into)
    if (!this.chunkId(plain).equals(id)) {
      throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `chunk ${id.toString('hex').slice(0, 16)}… does not match its id`)
    }
    return plain
  }

  // ---- manifests --------------------------------------------------------------------------

  async saveManifest(manifest: Manifest): Promise<void> {
    const blob = await this.codec.encode('manifest', encodeManifest(manifest))
    await this.backend.put(`backups/${manifest.id}`, blob, { ifAbsent: true })
  }

  async loadManifest(id: string): Promise<Manifest> {
    if (!BACKUP_ID_PATTERN.test(id)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `"${id}" is not a backup id (like 20261123T043200Z-1a2b3c4d)`)
    }
    const blob = await this.backend.get(`backups/${id}`)
    if (!blob) throw new EbsWorkerError(ErrorCode.BackupNotFound, `backup ${id} does not exist in ${this.url}`)
    return decodeManifest(await this.#decodeMeta('manifest', blob, `backup ${id}`), id)
  }

  async listBackups(): Promise<BackupSummary[]> {
    const limit = pLimit(16)
    const loads: Promise<BackupSummary>[] = []
    for await (const obj of this.backend.list('backups/')) {
      const id = obj.name.slice('backups/'.length)
      if (!BACKUP_ID_PATTERN.test(id)) continue
      loads.push(
        limit(async () => {
          const { chunks: _chunks, checksum: _checksum, chunkSize: _cs, ...summary } = await this.loadManifest(id)
          return summary
        }),
      )
    }
    const all = await Promise.all(loads)
    return all.sort((a, b) => a.id.localeCompare(b.id))
  }

  // ---- checkpoints -------------------------------------------------------------------------

  /** Where a task's checkpoint lives: task ids may hold "/", so the name is their hash. */
  static checkpointName(key: string): string {
    return `checkpoints/${keyHash(key)}`
  }

  async saveCheckpoint(key: string, checkpoint: Checkpoint): Promise<void> {
    await this.backend.put(Repository.checkpointName(key), await this.codec.encode('checkpoint', encodeCheckpoint(checkpoint)))
  }

  /** The checkpoint saved under `key`, or null. */
  async loadCheckpoint(key: string): Promise<Checkpoint | null> {
    const name = Repository.checkpointName(key)
    const blob = await this.backend.get(name)
    if (!blob) return null
    return decodeCheckpoint(await this.#decodeMeta('checkpoint', blob, name), name)
  }

  async deleteCheckpoint(key: string): Promise<void> {
    await this.backend.delete(Repository.checkpointName(key))
  }

  // ---- task records ------------------------------------------------------------------------

  /** Records that the backup for `key` (the daemon's task) is `backupId`: one GET finds it again. */
  async saveTaskRecord(key: string, backupId: string): Promise<void> {
    const record = Buffer.from(JSON.stringify({ version: 1, key, backupId, savedAt: new Date().toISOString() }))
    await this.backend.put(`tasks/${keyHash(key)}`, await this.codec.encode('task', record))
  }

  /** The backup recorded for `key`, if its manifest exists. */
  async findTaskBackup(key: string): Promise<Manifest | null> {
    const blob = await this.backend.get(`tasks/${keyHash(key)}`)
    if (!blob) return null
    const parsed = z.object({ key: z.string(), backupId: z.string() })
      .safeParse(JSON.parse((await this.#decodeMeta('task', blob, `task record of ${key}`)).toString('utf8')))
    if (!parsed.success || parsed.data.key !== key) return null
    return this.loadManifest(parsed.data.backupId).catch((err: unknown) => {
      if (err instanceof EbsWorkerError && err.code === ErrorCode.BackupNotFound) return null
      throw err
    })
  }

  async #decodeMeta(kind: 'index' | 'manifest' | 'checkpoint' | 'task', blob: Buffer, what: string): Promise<Buffer> {
    try {
      return await this.codec.decode(kind, blob)
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} cannot be read: ${describe(err)}`, { cause: err })
    }
  }
}

/** Object names keyed by a task: task ids may hold "/" and be long, so the name is their hash. */
function keyHash(key: string): string {
  return createHash('sha256').update(key).digest('hex')
}
