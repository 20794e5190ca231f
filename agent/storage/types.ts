// The storage a repository lives on: a flat namespace of immutable objects. Both backends give
// the same guarantees the repository format relies on: a put is atomic (readers see the whole
// object or none), and `ifAbsent` puts never overwrite (manifests are created exactly once).

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
  /**
   * Every object whose name starts with `prefix`, in no particular order; with `startAfter`,
   * only those whose name sorts after it (S3 skips the others server-side).
   */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>
  /** Deletes if present; deleting a missing object is not an error. */
  delete(name: string): Promise<void>
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
