// The repository: config, keys, indexes, packs and manifests on a storage. Everything that
// touches stored objects goes through here; the pipelines see chunks and offsets: a backup saves
// them through a BackupWriter (backup-writer.ts), a restore reads them through chunk-reader.ts.
//
//   config                      JSON, plain: format, version, chunk size, wrapped key
//   packs/<2 hex>/<pack id>     chunk blobs + trailer (pack.ts)
//   index/<name>                where chunks live (chunk-index.ts), blob-encoded
//   backups/<backup id>         manifests (manifest.ts), blob-encoded, written last
//   checkpoints/<hash>, tasks/<hash>
//                               small blob-encoded records of the programs that use the
//                               repository (a pipeline's checkpoint, the daemon's task records)
import { createHash, createHmac, randomUUID } from 'node:crypto'
import pLimit from 'p-limit'
import { z } from 'zod'
import { BlobCodec } from './codec.ts'
import { AlreadyExistsError, type Backend } from '../storage/types.ts'
import { BackupWriter, type BackupWriterOptions } from './backup-writer.ts'
import { planRequests, readChunks, type ChunkSink, type RangeRequest, type ReadCounters, type ReadOptions, type ReadPlan } from './chunk-reader.ts'
import { ChunkIndex, decodeIndex, encodeIndex, type IndexEntry } from './chunk-index.ts'
import { EbsWorkerError, ErrorCode, describe, isEbsWorkerError } from '../core/errors.ts'
import { deriveKeys, newMasterSecret, type KeyProvider, type RepositoryKeys, type WrappedKey } from './keys.ts'
import { decodeManifest, encodeManifest, type Manifest } from './manifest.ts'
import { BACKUP_ID_PATTERN } from '../core/ids.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { MAX_PACK_BYTES, PackBuilder } from './pack.ts'
import { BACKUPS, CONFIG, indexObject, INDEXES, manifestObject, packObject, recordObject, type RecordArea } from './layout.ts'

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
  /** The key provider that unwraps the repository key. */
  keyProvider?: KeyProvider
  /**
   * Or: the provider for the key as the repository records it (a KMS-wrapped key needs no file:
   * the caller's AWS credentials open it). Null when the caller has none that fits.
   */
  keyProviderFor?: (wrapped: WrappedKey) => KeyProvider | null
  compressionLevel?: number
}

/** The blob kind (GCM additional data) of each area's records. */
const RECORD_KIND = { checkpoints: 'checkpoint', tasks: 'task' } as const

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
      await backend.put(CONFIG, Buffer.from(JSON.stringify(config, null, 2) + '\n'), { ifAbsent: true })
    } catch (err) {
      if (err instanceof AlreadyExistsError) {
        throw new EbsWorkerError(ErrorCode.RepoExists, `a repository already exists at ${backend.url}`)
      }
      throw err
    }
    return new Repository(backend, config, keys, DEFAULT_TUNING.compressionLevel)
  }

  static async open(backend: Backend, options: OpenOptions = {}): Promise<Repository> {
    const raw = await backend.get(CONFIG)
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
      const provider = options.keyProvider ?? options.keyProviderFor?.(config.encryption.key) ?? null
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
    for await (const obj of this.backend.list(INDEXES)) {
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
    await this.backend.put(indexObject(name), await this.codec.encode('index', encodeIndex(entries)))
  }

  async deleteIndex(name: string): Promise<void> {
    await this.backend.delete(indexObject(name))
  }

  // ---- packs ------------------------------------------------------------------------------

  /** Uploads a finished pack; its entries become valid once this resolves. Returns its size. */
  async savePack(builder: PackBuilder): Promise<number> {
    const trailer = await this.codec.encode('pack-trailer', builder.trailerPlaintext())
    const data = builder.finish(trailer)
    if (data.length > MAX_PACK_BYTES) throw new Error('pack exceeds 4 GiB')
    await this.backend.put(packObject(builder.id), data)
    return data.length
  }

  /**
   * Raw bytes of consecutive blobs in a pack, into `into` when given (restores reuse buffers);
   * a short answer means the pack was truncated.
   */
  async readPackRange(pack: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = await this.backend.getRange(packObject(pack), offset, length, into).catch((err: unknown) => {
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
    await this.backend.put(manifestObject(manifest.id), blob, { ifAbsent: true })
  }

  async loadManifest(id: string): Promise<Manifest> {
    if (!BACKUP_ID_PATTERN.test(id)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `"${id}" is not a backup id (like 20261123T043200Z-1a2b3c4d)`)
    }
    const blob = await this.backend.get(manifestObject(id))
    if (!blob) throw new EbsWorkerError(ErrorCode.BackupNotFound, `backup ${id} does not exist in ${this.url}`)
    return decodeManifest(await this.#decodeMeta('manifest', blob, `backup ${id}`), id)
  }

  async listBackups(): Promise<BackupSummary[]> {
    const limit = pLimit(16)
    const loads: Promise<BackupSummary>[] = []
    for await (const obj of this.backend.list(BACKUPS)) {
      const id = obj.name.slice(BACKUPS.length)
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

  // ---- backups: writing and reading chunks ----------------------------------------------------

  /**
   * Starts writing a backup: the one way chunks get into the repository. Loads the index, so
   * that chunks the repository has are recognised and not stored again.
   */
  async startBackup(options: BackupWriterOptions): Promise<BackupWriter> {
    return new BackupWriter(this, await this.loadIndex(), options)
  }

  /** Which ranged reads fetch the backup's stored chunks (those not in `skip`), and its zero chunks. */
  async planReads(manifest: Manifest, options: { maxRequestBytes: number; skip?: Uint8Array }): Promise<ReadPlan> {
    return planRequests(manifest, await this.loadIndex(), options.maxRequestBytes, options.skip)
  }

  /** Fetches, verifies and hands on the chunks of `requests` (from planReads). */
  readChunks(manifest: Manifest, requests: readonly RangeRequest[], options: ReadOptions, sink: ChunkSink): Promise<ReadCounters> {
    return readChunks(this, manifest, requests, options, sink)
  }

  // ---- records: small objects the programs keep here (checkpoints, task records) ------------

  /** Stores a record, encrypted like every blob when the repository is; replaces an earlier one. */
  async saveRecord(area: RecordArea, key: string, data: Buffer): Promise<void> {
    await this.backend.put(recordObject(area, key), await this.codec.encode(RECORD_KIND[area], data))
  }

  /** The record's bytes, or null when there is none. */
  async loadRecord(area: RecordArea, key: string): Promise<Buffer | null> {
    const name = recordObject(area, key)
    const blob = await this.backend.get(name)
    return blob ? this.#decodeMeta(RECORD_KIND[area], blob, name) : null
  }

  async deleteRecord(area: RecordArea, key: string): Promise<void> {
    await this.backend.delete(recordObject(area, key))
  }

  async #decodeMeta(kind: 'index' | 'manifest' | 'checkpoint' | 'task', blob: Buffer, what: string): Promise<Buffer> {
    try {
      return await this.codec.decode(kind, blob)
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} cannot be read: ${describe(err)}`, { cause: err })
    }
  }
}
