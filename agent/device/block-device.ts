// Block devices and image files: open, size, positional I/O and the checks that keep a restore
// from writing where it must not. Linux-only by nature (sysfs, O_EXCL on block devices).
import { constants } from 'node:fs'
import { open, readdir, readFile, realpath, stat, type FileHandle } from 'node:fs/promises'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'

export interface Device {
  /** The path as given. */
  path: string
  /** Resolved path (symlinks such as /dev/disk/by-id/… followed). */
  realPath: string
  kind: 'block' | 'file'
  size: number
  handle: FileHandle
  /** True when this call created the file: its content is known to be all zeros. */
  created: boolean
}

function major(rdev: number): number {
  return Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn)
}
function minor(rdev: number): number {
  return Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn)
}

/** The kernel's "MAJ:MIN" for a block device, the key to its sysfs directory. */
export function devNumber(rdev: number): string {
  return `${major(rdev)}:${minor(rdev)}`
}

async function blockDeviceSize(devno: string): Promise<number> {
  // /sys/dev/block/MAJ:MIN/size is in 512-byte sectors whatever the logical block size.
  const sectors = Number((await readFile(`/sys/dev/block/${devno}/size`, 'utf8')).trim())
  return sectors * 512
}

async function resolve(path: string): Promise<{ realPath: string; kind: 'block' | 'file'; rdev: number; size: number }> {
  let realPath: string
  try {
    realPath = await realpath(path)
  } catch (err) {
    throw new EbsWorkerError(ErrorCode.DeviceNotFound, `device ${path} does not exist`, { cause: err })
  }
  const st = await stat(realPath)
  if (st.isBlockDevice()) return { realPath, kind: 'block', rdev: st.rdev, size: await blockDeviceSize(devNumber(st.rdev)) }
  if (st.isFile()) return { realPath, kind: 'file', rdev: 0, size: st.size }
  throw new EbsWorkerError(ErrorCode.DeviceUnusable, `${path} is neither a block device nor a regular file`)
}

/** Opens a device or image read-only: a backup never writes to its source. */
export async function openForRead(path: string): Promise<Device> {
  const info = await resolve(path)
  let handle: FileHandle
  try {
    handle = await open(info.realPath, constants.O_RDONLY)
  } catch (err) {
    throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot open ${path} for reading: ${describe(err)}`, { cause: err })
  }
  return { path, realPath: info.realPath, kind: info.kind, size: info.size, handle, created: false }
}

export interface OpenForWriteOptions {
  /** Bytes the target must hold at least. */
  minSize: number
  /** For image files: create the file (sparse, minSize bytes) when it does not exist. */
  create?: boolean
}

/**
 * Opens a restore target. A block device is opened with O_EXCL, which Linux grants only when
 * nothing has it mounted or claimed (a filesystem, a device-mapper table, another exclusive
 * opener): the kernel itself refuses a device in use. Mount points are checked as well, to
 * give a clear error, and a target smaller than the backup is refused before any write.
 */
export async function openForWrite(path: string, options: OpenForWriteOptions): Promise<Device> {
  let info
  try {
    info = await resolve(path)
  } catch (err) {
    if (!(options.create && err instanceof EbsWorkerError && err.code === ErrorCode.DeviceNotFound)) throw err
    const handle = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644)
    await handle.truncate(options.minSize)
    return { path, realPath: await realpath(path), kind: 'file', size: options.minSize, handle, created: true }
  }
  if (info.kind === 'block') await refuseIfMounted(path, devNumber(info.rdev))
  if (info.size < options.minSize) {
    throw new EbsWorkerError(
      ErrorCode.TargetTooSmall,
      `${path} holds ${info.size} bytes but the backup needs ${options.minSize}: refusing to restore onto it`,
    )
  }
  let handle: FileHandle
  const flags = constants.O_RDWR | (info.kind === 'block' ? constants.O_EXCL : 0)
  try {
    handle = await open(info.realPath, flags)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'EBUSY' ? 'it is in use (mounted, or claimed by another program)' : describe(err)
    throw new EbsWorkerError(ErrorCode.DeviceUnusable, `cannot open ${path} for writing: ${why}`, { cause: err })
  }
  return { path, realPath: info.realPath, kind: info.kind, size: info.size, handle, created: false }
}

/** Refuses a device that is mounted, or whose partition is, per /proc/self/mountinfo. */
async function refuseIfMounted(path: string, devno: string): Promise<void> {
  const partitions = new Set([devno])
  const name = (await realpath(`/sys/dev/block/${devno}`)).split('/').pop()!
  try {
    for (const entry of await readdir(`/sys/class/block/${name}`)) {
      if (entry.startsWith(name)) partitions.add((await readFile(`/sys/class/block/${name}/${entry}/dev`, 'utf8')).trim())
    }
  } catch {
    // No partitions directory: nothing more to check.
  }
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8')
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ')
    if (fields[2] && partitions.has(fields[2])) {
      const what = fields[4] === '/' ? 'the root filesystem' : `a filesystem mounted on ${fields[4]}`
      throw new EbsWorkerError(ErrorCode.DeviceUnusable, `${path} holds ${what}: refusing to write to it`)
    }
  }
}

/** Reads exactly buf.length bytes at `position` (fewer only at the end of the device). */
export async function readAt(handle: FileHandle, buf: Buffer, position: number): Promise<number> {
  let filled = 0
  while (filled < buf.length) {
    const { bytesRead } = await handle.read(buf, filled, buf.length - filled, position + filled)
    if (bytesRead === 0) break
    filled += bytesRead
  }
  return filled
}

export async function writeAt(handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let written = 0
  while (written < buf.length) {
    const { bytesWritten } = await handle.write(buf, written, buf.length - written, position + written)
    written += bytesWritten
  }
}
