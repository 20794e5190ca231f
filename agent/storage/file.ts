// file:///path backend: objects are files under a root directory. Writes go to tmp/ first and
// are renamed into place after fsync, so a crash leaves at worst a stray temporary file.
import { randomBytes } from 'node:crypto'
import { mkdir, open, opendir, readFile, rename, link, unlink, stat } from 'node:fs/promises'
import { dirname, join, relative, sep } from 'node:path'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { AlreadyExistsError, type Backend, type ListOptions, type ObjectInfo, type PutOptions } from './types.ts'

const TMP_DIR = 'tmp'

export class FileBackend implements Backend {
  readonly url: string
  readonly root: string

  constructor(root: string) {
    this.root = root
    this.url = `file://${root}`
  }

  #path(name: string): string {
    if (name.split('/').some((part) => part === '' || part === '.' || part === '..')) {
      throw new EbsWorkerError(ErrorCode.BadInput, `invalid object name ${JSON.stringify(name)}`)
    }
    return join(this.root, ...name.split('/'))
  }

  async get(name: string): Promise<Buffer | null> {
    try {
      return await readFile(this.#path(name))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw storageError('read', this.#path(name), err)
    }
  }

  async getRange(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const path = this.#path(name)
    let handle
    try {
      handle = await open(path, 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new EbsWorkerError(ErrorCode.ObjectNotFound, `object ${name} is missing from ${this.url}`, { context: { object: name } })
      }
      throw storageError('open', path, err)
    }
    try {
      const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length)
      let filled = 0
      while (filled < length) {
        const { bytesRead } = await handle.read(buf, filled, length - filled, offset + filled)
        if (bytesRead === 0) break
        filled += bytesRead
      }
      return buf.subarray(0, filled)
    } catch (err) {
      throw storageError('read', path, err)
    } finally {
      await handle.close()
    }
  }

  async put(name: string, data: Buffer, options: PutOptions = {}): Promise<void> {
    if (options.retention) {
      throw new EbsWorkerError(ErrorCode.BadInput, `${this.url} cannot keep Object Lock: a file system has no versions or retention (use an S3 bucket with Object Lock)`)
    }
    const path = this.#path(name)
    const tmp = join(this.root, TMP_DIR, `${randomBytes(12).toString('hex')}.tmp`)
    try {
      await mkdir(dirname(path), { recursive: true })
      await mkdir(dirname(tmp), { recursive: true })
      const handle = await open(tmp, 'wx', 0o644)
      try {
        await handle.writeFile(data)
        await handle.datasync()
      } finally {
        await handle.close()
      }
      if (options.ifAbsent) {
        // link(2) fails with EEXIST atomically: the create-once guarantee manifests rely on.
        try {
          await link(tmp, path)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExistsError(name)
          throw err
        } finally {
          await unlink(tmp).catch(() => {})
        }
      } else {
        await rename(tmp, path)
      }
      await syncDir(dirname(path))
    } catch (err) {
      await unlink(tmp).catch(() => {})
      if (err instanceof AlreadyExistsError || err instanceof EbsWorkerError) throw err
      throw storageError('write', path, err)
    }
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    // Objects live in directories named by their prefix, so walk only the directory part.
    const dirPart = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : ''
    for await (const obj of this.#walk(dirPart ? join(this.root, ...dirPart.split('/')) : this.root, prefix)) {
      if (options.startAfter === undefined || obj.name > options.startAfter) yield obj
    }
  }

  async *#walk(dir: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries
    try {
      entries = await opendir(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw storageError('list', dir, err)
    }
    for await (const entry of entries) {
      const full = join(dir, entry.name)
      const name = relative(this.root, full).split(sep).join('/')
      if (name === TMP_DIR) continue
      if (entry.isDirectory()) {
        if (name.startsWith(prefix) || prefix.startsWith(name + '/')) yield* this.#walk(full, prefix)
      } else if (entry.isFile() && name.startsWith(prefix)) {
        // Deleted since the directory was read (a lock released, a pack pruned): not there any more.
        const st = await stat(full).catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return null
          throw storageError('list', full, err)
        })
        if (st) yield { name, size: st.size, modified: st.mtime }
      }
    }
  }

  async delete(name: string): Promise<void> {
    try {
      await unlink(this.#path(name))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw storageError('delete', this.#path(name), err)
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

function storageError(op: string, path: string, err: unknown): EbsWorkerError {
  return new EbsWorkerError(ErrorCode.Storage, `cannot ${op} ${path}: ${describe(err)}`, { cause: err, context: { object: path } })
}
