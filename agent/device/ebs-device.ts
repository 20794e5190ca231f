// Which block device is an attached EBS volume. On Nitro instances an EBS volume is an NVMe
// namespace (/dev/nvmeXn1) whose controller reports model "Amazon Elastic Block Store" and the
// volume id, without its dash, as serial ("vol0123…"); device names and their order are not
// stable, so the serial is the only identity. Amazon's udev rules (amazon-ec2-utils) also link
// /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123… to the device.
// The roots are configurable so that tests and the local AWS stand-in can use their own tree.
import { readdir, readFile, realpath, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { devNumber } from './block-device.ts'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'

export const EBS_MODEL = 'Amazon Elastic Block Store'

export interface DeviceRoots {
  /** sysfs block directory: <sysBlock>/<name>/device/{serial,model}, <sysBlock>/<name>/{dev,size}. */
  sysBlock: string
  /** Where device nodes are: <devDir>/<name>. */
  devDir: string
  /** udev's by-id links. */
  byIdDir: string
}

export const SYSTEM_ROOTS: DeviceRoots = { sysBlock: '/sys/block', devDir: '/dev', byIdDir: '/dev/disk/by-id' }

export interface EbsDevice {
  volumeId: string
  /** The device node, e.g. /dev/nvme1n1. */
  path: string
  /** Kernel name, e.g. nvme1n1. */
  name: string
  size: number
}

const VOLUME_ID = /^vol-[0-9a-f]{8,17}$/

/** "vol-0123…" → the NVMe serial "vol0123…"; refuses anything that is not a volume id. */
export function serialOf(volumeId: string): string {
  if (!VOLUME_ID.test(volumeId)) throw new EbsWorkerError(ErrorCode.BadInput, `"${volumeId}" is not an EBS volume id`)
  return volumeId.replace('-', '')
}

async function readAttr(path: string): Promise<string | null> {
  try {
    // sysfs pads NVMe model and serial strings with spaces.
    return (await readFile(path, 'utf8')).trim()
  } catch {
    return null
  }
}

async function identify(roots: DeviceRoots, name: string): Promise<{ serial: string | null; model: string | null }> {
  const dir = join(roots.sysBlock, name, 'device')
  return { serial: await readAttr(join(dir, 'serial')), model: await readAttr(join(dir, 'model')) }
}

/** Finds the device of an attached volume now, or null when it is not (yet) there. */
export async function findEbsDevice(volumeId: string, roots: DeviceRoots = SYSTEM_ROOTS): Promise<EbsDevice | null> {
  const serial = serialOf(volumeId)
  // sysfs is the authority; the by-id link only points at a candidate, which is then checked.
  const candidates = new Set<string>()
  try {
    const linked = await realpath(join(roots.byIdDir, `nvme-${EBS_MODEL.replaceAll(' ', '_')}_${serial}`))
    candidates.add(linked.split('/').pop()!)
  } catch {
    // No link (yet, or no udev rules): scan.
  }
  let names: string[] = []
  try {
    names = await readdir(roots.sysBlock)
  } catch {
    names = []
  }
  for (const name of names) if (/^nvme\d+n\d+$/.test(name)) candidates.add(name)
  for (const name of candidates) {
    const id = await identify(roots, name)
    if (id.serial === serial && id.model === EBS_MODEL) {
      // The node must be the very kernel device whose serial matched: its major:minor is the
      // one sysfs gives. udev makes the node a moment after the kernel: until then, not found.
      const path = join(roots.devDir, name)
      const [devno, node] = await Promise.all([readAttr(join(roots.sysBlock, name, 'dev')), stat(path).catch(() => null)])
      if (!devno || !node) return null
      if (!node.isBlockDevice() || devNumber(node.rdev) !== devno) {
        throw new EbsWorkerError(
          ErrorCode.DeviceUnusable,
          `${path} is ${node.isBlockDevice() ? `block device ${devNumber(node.rdev)}` : 'not a block device'}, but volume ${volumeId} is ${name} (${devno}): refusing to use it`,
        )
      }
      const sectors = Number(await readAttr(join(roots.sysBlock, name, 'size')))
      return { volumeId, name, path, size: sectors * 512 }
    }
  }
  return null
}

export interface WaitOptions {
  roots?: DeviceRoots
  timeoutMs?: number
  intervalMs?: number
  signal?: AbortSignal
}

/** Waits for an attached volume's device to appear (AttachVolume returns before it does). */
export async function waitForEbsDevice(volumeId: string, options: WaitOptions = {}): Promise<EbsDevice> {
  const deadline = Date.now() + (options.timeoutMs ?? 120_000)
  for (;;) {
    const device = await findEbsDevice(volumeId, options.roots)
    if (device) return device
    if (Date.now() >= deadline) {
      throw new EbsWorkerError(
        ErrorCode.DeviceNotFound,
        `volume ${volumeId} did not appear as an NVMe device within ${Math.round((options.timeoutMs ?? 120_000) / 1000)} s`,
      )
    }
    await sleep(options.intervalMs ?? 250, undefined, options.signal ? { signal: options.signal } : {})
  }
}

/**
 * Proves that `path` is the device of `volumeId` before anything writes to it: the device node
 * must be the same block device (major:minor) as the one whose NVMe serial is the volume's.
 * A mismatch is DEVICE_UNUSABLE and nothing has been opened for writing.
 */
export async function assertVolumeDevice(path: string, volumeId: string, roots: DeviceRoots = SYSTEM_ROOTS): Promise<EbsDevice> {
  const expected = await findEbsDevice(volumeId, roots)
  if (!expected) throw new EbsWorkerError(ErrorCode.DeviceNotFound, `no device carries volume ${volumeId}`)
  const [given, owned] = await Promise.all([stat(path), stat(expected.path)]).catch((err: unknown) => {
    throw new EbsWorkerError(ErrorCode.DeviceNotFound, `cannot inspect ${path}: ${describe(err)}`)
  })
  if (!given.isBlockDevice() || !owned.isBlockDevice() || devNumber(given.rdev) !== devNumber(owned.rdev)) {
    throw new EbsWorkerError(
      ErrorCode.DeviceUnusable,
      `${path} is not the device of volume ${volumeId} (that is ${expected.path}): refusing to use it`,
    )
  }
  return expected
}
