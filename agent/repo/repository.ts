// The repository: config, keys, indexes, packs and manifests on a storage. Everything that
// touches stored objects goes through here; the pipelines see chunks and offsets: a backup saves
// them through a BackupWriter (backup-writer.ts), a restore reads them through chunk-reader.ts.
//
//   config                      JSON, plain: format, version, chunk size, wrapped key
//   keys/<id>                   JSON, plain: the same master secret wrapped by further keys
//   packs/<2 hex>/<pack id>     chunk blobs + trailer (pack.ts)
//   index/<name>                where chunks live (chunk-index.ts), blob-encoded
//   backups/<backup id>         manifests (manifest.ts), blob-encoded, written last
//   checkpoints/<hash>, tasks/<hash>
//                               small blob-encoded records of the programs that use the
//                               repository (a pipeline's checkpoint, the daemon's task records)
// Under Object Lock (config.objectLock) the config, keys, packs, index runs, manifests and moved
// records are written locked for the repository's period; the records that are rewritten or
// deleted as work goes on (checkpoints, tasks, locks, condemned lists) are not.
import { randomUUID } from 'node:crypto'
import pLimit from 'p-limit'
import { z } from 'zod'
import { BlobCodec, type BlobKind } from './codec.ts'
import { AlreadyExistsError, type Backend, type ListOptions, type LockMode, type ObjectInfo, type PutOptions } from '../storage/types.ts'
import { BackupWriter, type BackupWriterOptions } from './backup-writer.ts'
import { treeList, v1List, type ChunkList } from './chunk-list.ts'
import { readWindows, type ReadOptions, type ReadCounters, type WindowSink } from './chunk-reader.ts'
import { ChunkIndex, decodeIndex } from './chunk-index.ts'
import { DEFAULT_WINDOW_DAYS, DEFAULT_WINDOW_ENTRIES, DedupWindow } from './dedup-window.ts'
import { EbsWorkerError, ErrorCode, describe, isEbsWorkerError } from '../core/errors.ts'
import { BACKUP_ID_PATTERN, timestampedId } from '../core/ids.ts'
import {
  CONFIG_KEY_ID, deriveKeys, KEY_ID_PATTERN, newKeyId, newMasterSecret, type KeyEntry, type KeyProvider, type RepositoryKeys, type StoredKey, type WrappedKey,
} from './keys.ts'
import { decodeRun, encodeRun, forEachEntry, isRun, newRunName } from './index-run.ts'
import { decodeManifest, encodeManifest, summaryOf, type BackupSummary, type Manifest, type ManifestV2 } from './manifest.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { MAX_PACK_BYTES, PACK_MAGIC, PackBuilder } from './pack.ts'
import { BACKUPS, CONDEMNED, CONFIG, indexObject, INDEXES, keyObject, KEYS, manifestObject, movedObject, packObject, recordObject, type RecordArea } from './layout.ts'
import { decodeNode, type BlobRef, type NodeLoader } from './tree.ts'
import { decodeMoved, encodeMoved, forward, type Moved } from './moved.ts'
import { decodeCondemned, encodeCondemned, type Condemned } from './condemned.ts'
import { takeBackupLease } from './locks.ts'

/** The format this ebs-worker writes; it reads this one and version 1. */
export const REPOSITORY_VERSION = 2
export const READABLE_VERSIONS: readonly number[] = [1, 2]
export const EBS_BLOCK_SIZE = 512 * 1024
export const DEFAULT_CHUNK_SIZE = 1024 * 1024
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024
/** Object Lock periods: from a second (tests) to 100 years. */
export const MAX_LOCK_SECONDS = 100 * 365 * 86_400

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
      // Null once `key remove config` took it out: the repository's keys are then all under keys/.
      key: wrappedKeySchema.nullable(),
    })
    .nullable(),
  // Absent when the repository is not under Object Lock (so that builds of version 2 that do not
  // know it still read those; they refuse a locked one, whose objects they would write unlocked).
  objectLock: z
    .strictObject({
      mode: z.enum(['governance', 'compliance']),
      periodSeconds: z.number().int().min(1).max(MAX_LOCK_SECONDS),
    })
    .optional(),
})
export type RepositoryConfig = z.infer<typeof configSchema>

const storedKeySchema = z.strictObject({
  format: z.literal('ebs-worker-key'),
  version: z.literal(1),
  id: z.string().regex(KEY_ID_PATTERN),
  createdAt: z.iso.datetime(),
  key: wrappedKeySchema,
})

/** A key object's content, or why it cannot be used (the object's name must match its id). */
function parseStoredKey(name: string, raw: Buffer): StoredKey | string {
  let json: unknown
  try {
    json = JSON.parse(raw.toString('utf8'))
  } catch {
    return `${name} is not JSON`
  }
  const parsed = storedKeySchema.safeParse(json)
  if (!parsed.success) return `${name} is not a key object: ${z.prettifyError(parsed.error)}`
  if (keyObject(parsed.data.id) !== name) return `${name} holds the key ${parsed.data.id}, not its own`
  return parsed.data
}

/** Every key object under keys/, read (a stored key), or why not (a string). */
async function readStoredKeys(backend: Backend): Promise<Array<{ id: string; key: StoredKey | string }>> {
  const names: string[] = []
  for await (const obj of backend.list(KEYS)) names.push(obj.name)
  names.sort()
  const limit = pLimit(8)
  const read = await Promise.all(names.map((name) => limit(async () => {
    const raw = await backend.get(name)
    return raw ? { id: name.slice(KEYS.length), key: parseStoredKey(name, raw) } : null
  })))
  return read.filter((k) => k !== null)
}

/**
 * Whether a master secret is the repository's: it decrypts its first manifest (or, with none, its
 * first index run). A repository with neither has nothing a wrong secret could misread yet.
 */
async function belongs(backend: Backend, secret: Buffer): Promise<boolean> {
  const codec = new BlobCodec({ key: deriveKeys(secret).encryption, compressionLevel: DEFAULT_TUNING.compressionLevel })
  for (const [area, kind] of [[BACKUPS, 'manifest'], [INDEXES, 'index']] as const) {
    let first: string | null = null
    for await (const obj of backend.list(area)) {
      first = obj.name
      break
    }
    const blob = first ? await backend.get(first) : null
    if (!blob) continue
    return codec.decode(kind, blob).then(() => true, () => false)
  }
  return true
}

const describeKey = (w: WrappedKey): string =>
  w.provider === 'local-file' ? `the key file with fingerprint ${w.keyId}` : w.provider === 'aws-kms' ? `KMS key ${w.keyId}` : `a "${w.provider}" key ${w.keyId}`

/**
 * The master secret, unwrapped by the first of the repository's keys the caller has: the
 * config's key first (no request more than before keys/ existed), then each under keys/. With a
 * key file, only keys wrapped by a key file are tried; without, those `keyProviderFor` has a
 * provider for (KMS). Returns which key opened it.
 */
async function unlock(backend: Backend, configKey: WrappedKey | null, options: OpenOptions): Promise<{ secret: Buffer; keyId: string }> {
  const providerFor = (w: WrappedKey): KeyProvider | null =>
    options.keyProvider ? (options.keyProvider.name === w.provider ? options.keyProvider : null) : (options.keyProviderFor?.(w) ?? null)
  const known: WrappedKey[] = []
  const failures: unknown[] = []
  /** A key object that unwrapped another secret than the repository's. */
  let foreign: EbsWorkerError | null = null
  const attempt = async (keyId: string, w: WrappedKey): Promise<{ secret: Buffer; keyId: string } | null> => {
    known.push(w)
    const provider = providerFor(w)
    if (!provider) return null
    try {
      return { secret: await provider.unwrap(w), keyId }
    } catch (err) {
      failures.push(err)
      return null
    }
  }
  if (configKey) {
    const opened = await attempt(CONFIG_KEY_ID, configKey)
    if (opened) return opened
  }
  for (const { id, key } of await readStoredKeys(backend)) {
    if (typeof key === 'string') continue // a damaged key object opens nothing; `key list` names it
    const opened = await attempt(id, key.key)
    if (!opened) continue
    // Anyone who may write keys/ can put a key there of another secret, their own: it must be
    // this repository's, the one its backups are encrypted with.
    if (await belongs(backend, opened.secret)) return opened
    foreign ??= new EbsWorkerError(ErrorCode.WrongKey,
      `key ${id} (${describeKey(key.key)}) is not one of repository ${backend.url}: what it unwraps does not decrypt the repository's backups`,
      { context: { repository: backend.url, object: keyObject(id) } })
  }
  // Refused for another reason than a wrong key (KMS denied, disabled, not answering): that says most.
  const other = failures.find((err) => !isEbsWorkerError(err, ErrorCode.WrongKey))
  if (other) throw other
  if (foreign) throw foreign
  if (failures.length === 1) throw failures[0]
  const keys = known.length ? known.map(describeKey).join('; ') : 'none'
  if (failures.length || options.keyProvider) {
    throw new EbsWorkerError(ErrorCode.WrongKey, `the key given opens none of the keys of repository ${backend.url}, which are: ${keys}`,
      { context: { repository: backend.url } })
  }
  throw new EbsWorkerError(ErrorCode.KeyRequired, `repository ${backend.url} is encrypted: give its key (--key-file). Its keys: ${keys}`,
    { context: { repository: backend.url } })
}

/** S3 Object Lock for every object the repository relies on: the mode and how long each is locked. */
export interface ObjectLock {
  mode: LockMode
  periodSeconds: number
}

export interface InitOptions {
  chunkSize?: number
  /** Encrypt with a new master secret wrapped by this provider. */
  keyProvider?: KeyProvider
  /** Lock every object the repository relies on (a bucket with Object Lock only). */
  objectLock?: ObjectLock
}

export interface DedupWindowOptions {
  /** Entries at most (each costs 40 bytes of memory). */
  entries?: number
  /** Runs written in the last this many days. */
  days?: number
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

/** A put locked for the config's period from now, or nothing when the repository has no Object Lock. */
function lockedFor(config: RepositoryConfig, backend: Backend): PutOptions {
  const lock = config.objectLock
  if (!lock) return {}
  if (!backend.versions) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `repository ${backend.url} is under Object Lock, which this storage cannot keep: it can be read here, not written`, { context: { repository: backend.url } })
  }
  return { retention: { mode: lock.mode, until: new Date(Date.now() + lock.periodSeconds * 1000) } }
}

/** A new locked repository needs a bucket with Object Lock enabled (S3 locks versions of objects only there). */
async function checkLockable(backend: Backend, lock: ObjectLock): Promise<void> {
  if (!backend.versions) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `Object Lock needs an S3 bucket with Object Lock enabled; ${backend.url} cannot lock objects`, { context: { repository: backend.url } })
  }
  if (!Number.isInteger(lock.periodSeconds) || lock.periodSeconds < 1 || lock.periodSeconds > MAX_LOCK_SECONDS) {
    throw new EbsWorkerError(ErrorCode.BadInput, `the Object Lock period must be from 1 second to 100 years, not ${lock.periodSeconds} seconds`)
  }
  const bucket = await backend.versions.lockConfiguration()
  if (!bucket.enabled) {
    throw new EbsWorkerError(ErrorCode.BadInput,
      `the bucket of ${backend.url} does not have Object Lock enabled: create it with Object Lock ` +
      `(aws s3api create-bucket --object-lock-enabled-for-bucket …) or enable it (aws s3api put-object-lock-configuration …)`,
      { context: { repository: backend.url } })
  }
}

export class Repository {
  readonly backend: Backend
  config: RepositoryConfig
  readonly codec: BlobCodec
  /** The master secret of an encrypted repository: new keys wrap it (`key add`). */
  readonly #secret: Buffer | null
  /** Which key opened it: `config`, the id of one under keys/, or null (not encrypted). */
  readonly keyInUse: string | null

  private constructor(backend: Backend, config: RepositoryConfig, secret: Buffer | null, keyInUse: string | null, level: number) {
    const keys = secret ? deriveKeys(secret) : null
    this.backend = backend
    this.config = config
    this.#secret = secret
    this.keyInUse = keyInUse
    this.codec = new BlobCodec({ key: keys?.encryption ?? null, idKey: keys?.chunkId ?? null, compressionLevel: level, maxChunkBytes: config.chunkSize })
  }

  get chunkSize(): number {
    return this.config.chunkSize
  }

  get url(): string {
    return this.backend.url
  }

  /** The repository's Object Lock, or null when it has none. */
  get objectLock(): ObjectLock | null {
    return this.config.objectLock ?? null
  }

  /** How an object the repository relies on is put: locked from now for the period, when it is under Object Lock. */
  #locked(): PutOptions {
    return lockedFor(this.config, this.backend)
  }

  static async init(backend: Backend, options: InitOptions = {}): Promise<Repository> {
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE
    validateChunkSize(chunkSize)
    if (options.objectLock) await checkLockable(backend, options.objectLock)
    let secret = null
    let encryption: RepositoryConfig['encryption'] = null
    if (options.keyProvider) {
      secret = newMasterSecret()
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
      ...(options.objectLock ? { objectLock: { ...options.objectLock } } : {}),
    }
    try {
      await backend.put(CONFIG, Buffer.from(JSON.stringify(config, null, 2) + '\n'), { ifAbsent: true, ...lockedFor(config, backend) })
    } catch (err) {
      if (err instanceof AlreadyExistsError) {
        throw new EbsWorkerError(ErrorCode.RepoExists, `a repository already exists at ${backend.url}`)
      }
      throw err
    }
    return new Repository(backend, config, secret, secret ? CONFIG_KEY_ID : null, DEFAULT_TUNING.compressionLevel)
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
    if (typeof head.version !== 'number' || !READABLE_VERSIONS.includes(head.version)) {
      throw new EbsWorkerError(
        ErrorCode.RepoVersion,
        `repository ${backend.url} has format version ${String(head.version)}; this ebs-worker reads versions ${READABLE_VERSIONS.join(' and ')}`,
      )
    }
    const parsed = configSchema.safeParse(json)
    if (!parsed.success) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `repository config is invalid: ${z.prettifyError(parsed.error)}`)
    }
    const config = parsed.data
    validateChunkSize(config.chunkSize)
    const opened = config.encryption ? await unlock(backend, config.encryption.key, options) : null
    return new Repository(backend, config, opened?.secret ?? null, opened?.keyId ?? null, options.compressionLevel ?? DEFAULT_TUNING.compressionLevel)
  }

  /**
   * Content address of a chunk or node: SHA-256, or HMAC-SHA256 with a derived key when
   * encrypted. On the calling thread: for the small blobs and checks; a backup's chunks are
   * identified on the codec threads (codec.identifyChunk).
   */
  chunkId(data: Buffer): Buffer {
    return this.codec.chunkId(data)
  }

  /** The format version: 2, or 1 for a repository not yet migrated (read only). */
  get version(): number {
    return this.config.version
  }

  /** Backups go only into repositories of the current format. */
  #assertWritable(): void {
    if (this.config.version !== REPOSITORY_VERSION) {
      throw new EbsWorkerError(ErrorCode.RepoVersion,
        `repository ${this.url} is of format version ${this.config.version}: it can be listed, restored and verified, but backups go only ` +
        `into version ${REPOSITORY_VERSION}. Upgrade it in place with "ebs-worker migrate --repo ${this.url}"`, { context: { repository: this.url } })
    }
  }

  // ---- index runs (version 2) ----------------------------------------------------------------

  /** Writes an index run of stored chunks (sorted by id); returns its name. */
  async saveRun(entries: readonly BlobRef[]): Promise<string> {
    const name = newRunName()
    await this.backend.put(indexObject(name), await this.codec.encode('index', encodeRun(entries, { sort: true })), this.#locked())
    return name
  }

  async deleteRun(name: string): Promise<void> {
    await this.backend.delete(indexObject(name))
  }

  /**
   * The chunks a backup recognises besides its parent's: the newest index runs (written in the
   * last `days`, newest first) up to `entries`. Requests and memory are bounded by these two,
   * whatever the repository's size (docs/FORMAT.md, "Dedup").
   */
  async loadDedupWindow(options: DedupWindowOptions = {}): Promise<DedupWindow> {
    const window = new DedupWindow(options.entries ?? DEFAULT_WINDOW_ENTRIES)
    const cutoff = indexObject(timestampedId('', new Date(Date.now() - (options.days ?? DEFAULT_WINDOW_DAYS) * 86_400_000)).slice(0, INDEXES.length + 16))
    const names: string[] = []
    for await (const obj of this.backend.list(INDEXES, { startAfter: cutoff })) names.push(obj.name)
    names.sort().reverse()
    // Loaded a few at a time, newest first, until the window is full.
    for (let i = 0; i < names.length && !window.full; i += 8) {
      const blobs = await Promise.all(names.slice(i, i + 8).map((name) => this.backend.get(name).then((b) => [name, b] as const)))
      for (const [name, blob] of blobs) {
        if (!blob || window.full) continue
        const plain = await this.#decodeMeta('index', blob, name)
        if (!isRun(plain)) continue
        forEachEntry(plain, name, (e) => window.add(e) || !window.full)
      }
    }
    return window
  }

  /** Version 1: every index object in one map (what version 1 always did). */
  async loadV1Index(): Promise<ChunkIndex> {
    const index = new ChunkIndex()
    const limit = pLimit(16)
    const reads: Promise<void>[] = []
    for await (const obj of this.backend.list(INDEXES)) {
      reads.push(
        limit(async () => {
          const blob = await this.backend.get(obj.name)
          if (!blob) return
          const plain = await this.#decodeMeta('index', blob, obj.name)
          if (isRun(plain)) for (const e of decodeRun(plain, obj.name).entries) index.add(e)
          else for (const entry of decodeIndex(plain, obj.name)) index.add(entry)
        }),
      )
    }
    await Promise.all(reads)
    return index
  }

  // ---- packs ------------------------------------------------------------------------------

  /** Uploads a finished pack; its entries become valid once this resolves. Returns its size. */
  async savePack(builder: PackBuilder): Promise<number> {
    const trailer = await this.codec.encode('pack-trailer', builder.trailerPlaintext())
    const data = builder.finish(trailer)
    if (data.length > MAX_PACK_BYTES) throw new Error('pack exceeds 4 GiB')
    // The body's hash for the upload's signature, on a codec thread (pack buffers are shared).
    const sha256 = this.backend.usesBodySha256 ? (await this.codec.bodySha256(data)).toString('hex') : undefined
    await this.backend.put(packObject(builder.id), data, { ...this.#locked(), ...(sha256 ? { sha256 } : {}) })
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

  /** Decodes one chunk blob into `into` and proves it is the chunk `id` (on a codec thread when both are shared buffers). */
  async decodeChunk(blob: Buffer, id: Buffer, rawLength: number, into: Buffer): Promise<Buffer> {
    return await this.codec.openChunk(blob, id, rawLength, into)
  }

  /**
   * A pack's own index, from its trailer: every blob it holds (version 1 packs' trailers too),
   * whether it is a tree pack, and where its blobs end (its trailer begins). `size` is the pack's size, when the caller knows it (a listing).
   */
  async readPackTrailer(pack: string, size: number): Promise<{ entries: BlobRef[]; tree: boolean; blobsEnd: number }> {
    const name = packObject(pack)
    const tailLength = 4 + PACK_MAGIC.length
    if (size < tailLength) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `pack ${pack} is too short to be a pack (${size} bytes)`, { context: { pack } })
    const tail = await this.readPackRange(pack, size - tailLength, tailLength)
    if (!tail.subarray(4).equals(PACK_MAGIC)) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `pack ${pack} does not end like a pack`, { context: { pack, object: name } })
    const trailerLength = tail.readUInt32LE(0)
    if (trailerLength > size - tailLength) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `pack ${pack} announces a trailer longer than itself`, { context: { pack } })
    // Where the blobs end and the trailer begins.
    const blobsEnd = size - tailLength - trailerLength
    const blob = await this.readPackRange(pack, blobsEnd, trailerLength)
    let plain: Buffer
    try {
      plain = await this.codec.decode('pack-trailer', blob)
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `pack ${pack}: its trailer cannot be read: ${describe(err)}`, { cause: err, context: { pack } })
    }
    if (isRun(plain)) {
      const run = decodeRun(plain, `the trailer of pack ${pack}`)
      return { entries: run.entries, tree: run.tree, blobsEnd }
    }
    return { entries: decodeIndex(plain, `the trailer of pack ${pack}`).map((e) => ({ ...e, pack })), tree: false, blobsEnd }
  }

  /** Reads chunk-list nodes: fetched, decoded, proven to be the node the reference names. */
  nodeLoader(): NodeLoader {
    return async (ref, level) => {
      const blob = await this.readBlob(ref)
      const what = `chunk-list node ${ref.id.toString('hex').slice(0, 16)}… (pack ${ref.pack})`
      const plain = await this.codec.decode('tree', blob, ref.rawLength).catch((err: unknown) => {
        throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `${what}: ${describe(err)}`, { cause: err, context: { pack: ref.pack, offset: ref.offset } })
      })
      if (!this.chunkId(plain).equals(ref.id)) throw new EbsWorkerError(ErrorCode.ChunkCorrupt, `${what} does not match its id`, { context: { pack: ref.pack } })
      const node = decodeNode(plain, what)
      if (node.level !== level) throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} is at level ${node.level}, expected ${level}`)
      return node.entries
    }
  }

  // ---- manifests --------------------------------------------------------------------------

  async saveManifest(manifest: ManifestV2): Promise<void> {
    const blob = await this.codec.encode('manifest', encodeManifest(manifest))
    await this.backend.put(manifestObject(manifest.id), blob, { ifAbsent: true, ...this.#locked() })
  }

  async loadManifest(id: string): Promise<Manifest> {
    if (!BACKUP_ID_PATTERN.test(id)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `"${id}" is not a backup id (like 20261123T043200Z-1a2b3c4d)`)
    }
    const blob = await this.backend.get(manifestObject(id))
    if (!blob) throw new EbsWorkerError(ErrorCode.BackupNotFound, `backup ${id} does not exist in ${this.url}`, { context: { backupId: id } })
    return decodeManifest(await this.#decodeMeta('manifest', blob, `backup ${id}`), id)
  }

  /** Removes a backup from the list: its manifest goes (prune then deletes the data no backup needs). */
  async forgetBackup(id: string): Promise<void> {
    if (!BACKUP_ID_PATTERN.test(id)) throw new EbsWorkerError(ErrorCode.BadInput, `"${id}" is not a backup id`)
    await this.backend.delete(manifestObject(id))
  }

  /** Every backup's summary: one small manifest read per backup, never a chunk list (version 2). */
  async listBackups(): Promise<BackupSummary[]> {
    const limit = pLimit(16)
    const loads: Promise<BackupSummary>[] = []
    for await (const obj of this.backend.list(BACKUPS)) {
      const id = obj.name.slice(BACKUPS.length)
      if (!BACKUP_ID_PATTERN.test(id)) continue
      loads.push(limit(async () => summaryOf(await this.loadManifest(id))))
    }
    const all = await Promise.all(loads)
    return all.sort((a, b) => a.id.localeCompare(b.id))
  }

  // ---- backups: writing and reading chunks ----------------------------------------------------

  /**
   * Starts writing a backup: the one way chunks get into the repository. Loads the dedup window
   * (the newest chunks), so that what the repository has recently stored is not stored again.
   */
  async startBackup(options: Omit<BackupWriterOptions, 'lease' | 'condemned'> & { window?: DedupWindowOptions }): Promise<BackupWriter> {
    this.#assertWritable()
    // In this order (docs/FORMAT.md, "Prune and running backups"): the lease first, so that a
    // prune deciding from now on waits for this backup; then what prunes already condemned, which
    // this backup will not dedup against; then the parent, which must still exist (a forgotten
    // parent's packs may be condemned).
    const lease = await takeBackupLease(this, options.resume?.backupId ?? 'new')
    try {
      const condemned = new Set((await this.listCondemned()).flatMap((c) => c.packs))
      if (options.parent) await this.loadManifest(options.parent.id)
      return new BackupWriter(this, await this.loadDedupWindow(options.window), { ...options, lease, condemned })
    } catch (err) {
      await lease.release()
      throw err
    }
  }

  /** The backup's chunk list, leaf by leaf, whatever its version. */
  async chunkList(manifest: Manifest): Promise<ChunkList> {
    return manifest.version === 2 ? treeList(manifest, this.nodeLoader()) : v1List(manifest, await this.loadV1Index())
  }

  /** Fetches, verifies and hands on a backup's chunks, window after window (chunk-reader.ts). */
  async readChunks(manifest: Manifest, options: ReadOptions, sink: WindowSink): Promise<ReadCounters> {
    return readWindows(this, manifest, await this.chunkList(manifest), options, sink)
  }

  // ---- upgrading (migrate.ts) --------------------------------------------------------------------

  /** The names of the index objects that are not yet runs (version 1's), and of the runs. */
  async *indexObjects(): AsyncIterable<{ name: string; plain: Buffer }> {
    for await (const obj of this.backend.list(INDEXES)) {
      const blob = await this.backend.get(obj.name)
      if (blob) yield { name: obj.name, plain: await this.#decodeMeta('index', blob, obj.name) }
    }
  }

  /** The ids of every backup (manifest names), in order. */
  async backupIds(): Promise<string[]> {
    const ids: string[] = []
    for await (const obj of this.backend.list(BACKUPS)) {
      const id = obj.name.slice(BACKUPS.length)
      if (BACKUP_ID_PATTERN.test(id)) ids.push(id)
    }
    return ids.sort()
  }

  /** Replaces a backup's manifest by its version 2 (the same backup; an atomic put). */
  async replaceManifest(manifest: ManifestV2): Promise<void> {
    await this.backend.put(manifestObject(manifest.id), await this.codec.encode('manifest', encodeManifest(manifest)), this.#locked())
  }

  /** Marks the repository as of `version` (the last step of an upgrade). */
  async setVersion(version: number): Promise<void> {
    const config = { ...this.config, version }
    await this.backend.put(CONFIG, Buffer.from(JSON.stringify(config, null, 2) + '\n'), lockedFor(config, this.backend))
    this.config = config
  }

  // ---- access keys: the config's and keys/<id> (`ebs-worker key`) ---------------------------------

  /** The repository's keys: the config's (when it still has one), then those under keys/ by id. */
  async listKeys(): Promise<KeyEntry[]> {
    const encryption = this.#encryption()
    const out: KeyEntry[] = []
    if (encryption.key) out.push({ id: CONFIG_KEY_ID, key: encryption.key, createdAt: this.config.createdAt, current: this.keyInUse === CONFIG_KEY_ID })
    for (const { id, key } of await readStoredKeys(this.backend)) {
      out.push(typeof key === 'string'
        ? { id, key: null, createdAt: null, current: false, error: key }
        : { id, key: key.key, createdAt: key.createdAt, current: this.keyInUse === id })
    }
    return out
  }

  /**
   * Adds a key: the master secret wrapped by `provider`, as a new object keys/<id> (create-only,
   * locked under Object Lock); the config is not rewritten. Refuses a key the repository has already.
   */
  async addKey(provider: KeyProvider): Promise<KeyEntry> {
    this.#encryption()
    const wrapped = await provider.wrap(this.#secret!)
    const same = (await this.listKeys()).find((k) => k.key?.provider === wrapped.provider && k.key.keyId === wrapped.keyId)
    if (same) {
      throw new EbsWorkerError(ErrorCode.BadInput, `${describeKey(wrapped)} opens repository ${this.url} already (key ${same.id})`, { context: { repository: this.url } })
    }
    const stored: StoredKey = { format: 'ebs-worker-key', version: 1, id: newKeyId(), createdAt: new Date().toISOString(), key: wrapped }
    await this.backend.put(keyObject(stored.id), Buffer.from(JSON.stringify(stored, null, 2) + '\n'), { ifAbsent: true, ...this.#locked() })
    return { id: stored.id, key: wrapped, createdAt: stored.createdAt, current: false }
  }

  /**
   * Removes a key. Refuses the key this opening used (open with another to remove it) and the
   * last key that can open the repository. The config's key is taken out of the config (an atomic
   * rewrite), which a repository under Object Lock refuses: its config is written once.
   */
  async removeKey(id: string): Promise<KeyEntry> {
    this.#encryption()
    const keys = await this.listKeys()
    const entry = keys.find((k) => k.id === id)
    if (!entry) {
      throw new EbsWorkerError(ErrorCode.BadInput, `repository ${this.url} has no key ${id} (its keys: ${keys.map((k) => k.id).join(', ')})`, { context: { repository: this.url } })
    }
    if (entry.key && !keys.some((k) => k !== entry && k.key)) {
      throw new EbsWorkerError(ErrorCode.BadInput, `key ${id} is the last key of repository ${this.url}: without it nobody could open it`, { context: { repository: this.url } })
    }
    if (id === this.keyInUse) {
      throw new EbsWorkerError(ErrorCode.BadInput,
        `key ${id} is the key that opened the repository now: open it with another of its keys (--key-file, or no key file for a KMS key) to remove this one`, { context: { repository: this.url } })
    }
    if (id === CONFIG_KEY_ID) {
      if (this.config.objectLock) {
        throw new EbsWorkerError(ErrorCode.BadInput,
          `the config's key cannot be removed from a repository under Object Lock: its config is written once, and its locked version would keep the key anyway`, { context: { repository: this.url } })
      }
      const config: RepositoryConfig = { ...this.config, encryption: { ...this.#encryption(), key: null } }
      await this.backend.put(CONFIG, Buffer.from(JSON.stringify(config, null, 2) + '\n'))
      this.config = config
    } else {
      await this.backend.delete(keyObject(id))
    }
    return entry
  }

  #encryption(): NonNullable<RepositoryConfig['encryption']> {
    if (!this.config.encryption || !this.#secret) {
      throw new EbsWorkerError(ErrorCode.BadInput, `repository ${this.url} is not encrypted: it has no keys`, { context: { repository: this.url } })
    }
    return this.config.encryption
  }

  // ---- repacked packs: moved records (moved.ts) ------------------------------------------------

  readonly #moved = new Map<string, Promise<Moved | null>>()

  async saveMoved(m: Moved): Promise<void> {
    await this.backend.put(movedObject(m.pack), await this.codec.encode('moved', encodeMoved(m)), this.#locked())
    this.#moved.delete(m.pack)
  }

  /** Where the blobs of a repacked pack went, or null when the pack was not repacked. */
  loadMoved(pack: string): Promise<Moved | null> {
    let m = this.#moved.get(pack)
    if (!m) {
      m = (async () => {
        const blob = await this.backend.get(movedObject(pack))
        return blob ? decodeMoved(await this.#decodeMeta('moved', blob, movedObject(pack)), movedObject(pack)) : null
      })()
      m.catch(() => this.#moved.delete(pack))
      this.#moved.set(pack, m)
    }
    return m
  }

  async deleteMoved(pack: string): Promise<void> {
    await this.backend.delete(movedObject(pack))
    this.#moved.delete(pack)
  }

  /**
   * Where a blob is now: its reference, or — its pack repacked by prune — the one its moved
   * record gives. Null when it is nowhere.
   */
  async locate(ref: BlobRef): Promise<BlobRef | null> {
    let now: BlobRef = ref
    // A blob repacked again after its first move is found by following the records.
    for (let hop = 0; hop < 8; hop++) {
      const moved = await this.loadMoved(now.pack)
      if (!moved) return hop === 0 ? null : now
      const next = forward(now, moved)
      if (!next) return null
      now = next
    }
    return now
  }

  /** One blob's bytes, following its pack's moved record if prune repacked it. */
  async readBlob(ref: BlobRef, into?: Buffer): Promise<Buffer> {
    try {
      return await this.readPackRange(ref.pack, ref.offset, ref.length, into)
    } catch (err) {
      if (!isEbsWorkerError(err, ErrorCode.ChunkMissing)) throw err
      const now = await this.locate(ref)
      if (!now) throw err
      return this.readPackRange(now.pack, now.offset, now.length, into)
    }
  }

  // ---- prune's decisions: condemned lists (condemned.ts) ----------------------------------------

  async saveCondemned(c: Condemned): Promise<void> {
    await this.backend.put(`${CONDEMNED}${c.id}`, await this.codec.encode('condemned', encodeCondemned(c)))
  }

  /** Every condemned list, oldest first. */
  async listCondemned(): Promise<Condemned[]> {
    const out: Condemned[] = []
    for (const obj of (await this.listObjects(CONDEMNED)).sort((a, b) => a.name.localeCompare(b.name))) {
      const blob = await this.backend.get(obj.name)
      if (blob) out.push(decodeCondemned(await this.#decodeMeta('condemned', blob, obj.name), obj.name))
    }
    return out
  }

  async deleteCondemned(id: string): Promise<void> {
    await this.backend.delete(`${CONDEMNED}${id}`)
  }

  // ---- maintenance: locks and listings (locks.ts, the maintenance room) -------------------------

  /** Every object under `prefix` (names, sizes, times). */
  async listObjects(prefix: string, options: ListOptions = {}): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = []
    for await (const obj of this.backend.list(prefix, options)) out.push(obj)
    return out
  }

  async putLock(name: string, record: object, options: PutOptions = {}): Promise<void> {
    await this.backend.put(name, await this.codec.encode('lock', Buffer.from(JSON.stringify(record))), options)
  }

  /** A lock's record (JSON), or null when it is gone or unreadable. */
  async getLock(name: string): Promise<unknown> {
    const blob = await this.backend.get(name)
    if (!blob) return null
    try {
      return JSON.parse((await this.codec.decode('lock', blob)).toString('utf8'))
    } catch {
      return null
    }
  }

  async deleteLock(name: string): Promise<void> {
    await this.backend.delete(name)
  }

  /** An index object's plaintext (a run, or a version 1 index), or null when it is gone. */
  async readIndexObject(name: string): Promise<Buffer | null> {
    const blob = await this.backend.get(name)
    return blob ? this.#decodeMeta('index', blob, name) : null
  }

  async deletePack(pack: string): Promise<void> {
    await this.backend.delete(packObject(pack))
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

  /** Every record of an area, by object name (prune reads the checkpoints of unfinished backups). */
  async listRecords(area: RecordArea): Promise<Array<{ name: string; data: Buffer }>> {
    const out: Array<{ name: string; data: Buffer }> = []
    for (const obj of await this.listObjects(`${area}/`)) {
      const blob = await this.backend.get(obj.name)
      if (blob) out.push({ name: obj.name, data: await this.#decodeMeta(RECORD_KIND[area], blob, obj.name) })
    }
    return out
  }

  async deleteRecord(area: RecordArea, key: string): Promise<void> {
    await this.backend.delete(recordObject(area, key))
  }

  async #decodeMeta(kind: BlobKind, blob: Buffer, what: string): Promise<Buffer> {
    try {
      return await this.codec.decode(kind, blob)
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.RepoFormat, `${what} cannot be read: ${describe(err)}`, { cause: err })
    }
  }
}
