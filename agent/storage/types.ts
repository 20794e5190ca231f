// The storage a repository lives on: a flat namespace of immutable objects. Both backends give
// the same guarantees the repository format relies on: a put is atomic (readers see the whole
// object or none), and `ifAbsent` puts never overwrite (manifests are created exactly once).
// A storage that keeps versions (S3) also has `versions`: older versions and delete markers,
// and S3 Object Lock's retention of each version (docs/FORMAT.md, "Object Lock").

export interface ObjectInfo {
  name: string
  size: number
  /** When it was last written, by the storage's clock (S3 LastModified, a file's mtime). */
  modified: Date
}

export interface ListOptions {
  /** Only names that sort after this one (a full name, prefix included). */
  startAfter?: string
}

export interface PutOptions {
  /** Fail with AlreadyExistsError instead of replacing an existing object. */
  ifAbsent?: boolean
  /** Store this version under Object Lock until then; only a storage with `versions` can. */
  retention?: Retention
  /**
   * The body's SHA-256 (hex), when the caller has it: an S3 upload's signature needs it, which
   * the SDK would otherwise compute itself, on the main thread.
   */
  sha256?: string
}

/**
 * S3 Object Lock's modes: under either, a version cannot be deleted or overwritten in place until
 * its retain-until date, and the date can be moved later, never earlier, without
 * s3:BypassGovernanceRetention (governance); by nobody at all (compliance).
 */
export type LockMode = 'governance' | 'compliance'

export interface Retention {
  mode: LockMode
  until: Date
}

/** One version of an object, or a delete marker, as a storage with versions lists them. */
export interface ObjectVersion {
  name: string
  versionId: string
  /** The name's current version: what readers get (a delete marker: the name reads as missing). */
  latest: boolean
  /** A delete marker: no data; it hides the versions under it. */
  deleteMarker: boolean
  size: number
  modified: Date
  /** The storage's tag of the content ('' for a delete marker): equal tags, equal content (not always the reverse). */
  etag: string
}

/** The bucket's Object Lock: whether versions can be locked, and the retention new ones get by default. */
export interface BucketLock {
  enabled: boolean
  defaultRetention: { mode: LockMode; seconds: number } | null
}

/**
 * What a storage that keeps versions adds (an S3 bucket; file:// has none). There, `delete`
 * leaves a delete marker: the object reads as missing at once, its data stays as an older
 * version until deleted by version id, which a lock refuses until its date.
 */
export interface Versions {
  lockConfiguration(): Promise<BucketLock>
  /** Every version and delete marker under `prefix`, by name, a name's newest first. */
  list(prefix: string): AsyncIterable<ObjectVersion>
  /** A version's retention (the current version's without `versionId`); null when it has none or is gone. */
  retention(name: string, versionId?: string): Promise<Retention | null>
  /**
   * Sets a version's retention (the current version's without `versionId`). A storage only
   * lengthens one: an earlier date is refused. False when there is no such object any more.
   */
  extend(name: string, retention: Retention, versionId?: string): Promise<boolean>
  /** Deletes one version or delete marker for good; refused while a lock holds it. */
  delete(name: string, versionId: string): Promise<void>
}

export interface Backend {
  /** Where it points, for messages: `file:///srv/repo` or `s3://bucket/prefix`. */
  readonly url: string
  /** The whole object, or null when there is none. */
  get(name: string): Promise<Buffer | null>
  /**
   * Up to `length` bytes from `offset`; fewer only when the object is shorter. With `into`
   * (at least `length` bytes), the bytes land there and the result is a view of it.
   */
  getRange(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer>
  /** Stores an object; large ones go up as multipart uploads with the backend's part size. */
  put(name: string, data: Buffer, options?: PutOptions): Promise<void>
  /** Whether put() can use the body's SHA-256 (PutOptions.sha256): S3's signature needs one. */
  readonly usesBodySha256?: boolean
  /**
   * Every object whose name starts with `prefix`, in no particular order; with `startAfter`,
   * only those whose name sorts after it (S3 skips the others server-side).
   */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>
  /**
   * Deletes if present; deleting a missing object is not an error. With `versions`, the object
   * gets a delete marker (allowed even while a lock holds its data).
   */
  delete(name: string): Promise<void>
  /** Older versions, delete markers and Object Lock, where the storage keeps versions. */
  readonly versions?: Versions
}

export class AlreadyExistsError extends Error {
  constructor(name: string) {
    super(`object ${name} already exists`)
    this.name = 'AlreadyExistsError'
  }
}

/**
 * A transfer that broke midway (a connection dropped while a body streamed, a server error on a
 * path without the SDK's retries): the same request may well succeed. Backends throw it for
 * reads; storage/retry.ts retries them.
 */
export class InterruptedTransfer extends Error {
  constructor(what: string, cause: unknown) {
    super(`${what}: ${(cause as Error)?.message ?? String(cause)}`, { cause })
    this.name = 'InterruptedTransfer'
  }
}
