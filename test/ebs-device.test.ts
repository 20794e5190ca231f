// Finding an attached EBS volume's device by its NVMe serial, in a sysfs/dev tree of the test's
// own whose device nodes are real loop devices (what the local AWS stand-in will provide).
import t from 'tap'
import { mkdir, symlink, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FileBackend } from '../agent/storage/file.ts'
import { backup } from '../agent/pipeline/backup.ts'
import { Repository } from '../agent/repo/repository.ts'
import { restore } from '../agent/pipeline/restore.ts'
import { assertVolumeDevice, findEbsDevice, serialOf, waitForEbsDevice, type DeviceRoots } from '../agent/device/ebs-device.ts'
import { attachLoop, fakeNvme, makeImage, MiB, sha256File, tempDir, type Teardown } from './helpers.ts'

const VOL = 'vol-0123456789abcdef0'
const OTHER = 'vol-0fedcba9876543210'


async function setup(t: Teardown) {
  const dir = await tempDir(t)
  const roots: DeviceRoots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  await mkdir(roots.sysBlock, { recursive: true })
  await mkdir(roots.byIdDir, { recursive: true })
  const loops = []
  for (const n of [1, 2, 3]) {
    const image = join(dir, `v${n}.img`)
    await makeImage(image, 4 * MiB, [])
    loops.push(attachLoop(t, image))
  }
  return { dir, roots, loops }
}

t.test('volume ids and serials', async (t) => {
  t.equal(serialOf(VOL), 'vol0123456789abcdef0')
  t.throws(() => serialOf('nvme1n1'), { code: 'BAD_INPUT' })
  t.throws(() => serialOf('vol-XYZ'), { code: 'BAD_INPUT' })
})

t.test('the device is found by serial, whatever its name, and only if it is EBS', async (t) => {
  const { roots, loops } = await setup(t)
  await fakeNvme(roots, 'nvme0n1', loops[0]!, 'AWS1234567890ABCDEF', 'Amazon EC2 NVMe Instance Storage', 4 * MiB)
  await fakeNvme(roots, 'nvme1n1', loops[1]!, serialOf(OTHER), 'Amazon Elastic Block Store', 4 * MiB)
  await fakeNvme(roots, 'nvme3n1', loops[2]!, serialOf(VOL), 'Amazon Elastic Block Store', 4 * MiB)
  const found = await findEbsDevice(VOL, roots)
  t.match(found, { volumeId: VOL, name: 'nvme3n1', path: join(roots.devDir, 'nvme3n1'), size: 4 * MiB })
  t.equal(await findEbsDevice('vol-00000000000000000', roots), null, 'an unattached volume has no device')
})

t.test('a by-id link is only a hint: sysfs must agree', async (t) => {
  const { roots, loops } = await setup(t)
  await fakeNvme(roots, 'nvme1n1', loops[0]!, serialOf(OTHER), 'Amazon Elastic Block Store', 4 * MiB)
  // A stale link naming VOL that points at OTHER's device.
  await symlink(join(roots.devDir, 'nvme1n1'), join(roots.byIdDir, `nvme-Amazon_Elastic_Block_Store_${serialOf(VOL)}`))
  t.equal(await findEbsDevice(VOL, roots), null, 'the stale link is not believed')
})

t.test('waiting for the device after attach, with a timeout', async (t) => {
  const { roots, loops } = await setup(t)
  setTimeout(() => void fakeNvme(roots, 'nvme2n1', loops[0]!, serialOf(VOL), 'Amazon Elastic Block Store', 4 * MiB), 300)
  const found = await waitForEbsDevice(VOL, { roots, timeoutMs: 5000, intervalMs: 50 })
  t.equal(found.name, 'nvme2n1', 'found once it appears')
  await t.rejects(waitForEbsDevice(OTHER, { roots, timeoutMs: 300, intervalMs: 50 }), {
    code: 'DEVICE_NOT_FOUND',
    message: /did not appear as an NVMe device within/,
  })
})

t.test('a device path is accepted for a volume only if it is that volume', async (t) => {
  const { roots, loops } = await setup(t)
  await fakeNvme(roots, 'nvme1n1', loops[0]!, serialOf(VOL), 'Amazon Elastic Block Store', 4 * MiB)
  await fakeNvme(roots, 'nvme2n1', loops[1]!, serialOf(OTHER), 'Amazon Elastic Block Store', 4 * MiB)
  t.equal((await assertVolumeDevice(join(roots.devDir, 'nvme1n1'), VOL, roots)).name, 'nvme1n1')
  t.equal((await assertVolumeDevice(loops[0]!, VOL, roots)).name, 'nvme1n1', 'the node itself is the same device')
  await t.rejects(assertVolumeDevice(join(roots.devDir, 'nvme2n1'), VOL, roots), { code: 'DEVICE_UNUSABLE' }, 'another volume')
  await t.rejects(assertVolumeDevice(loops[2]!, VOL, roots), { code: 'DEVICE_UNUSABLE' }, 'an unrelated device')
  await t.rejects(assertVolumeDevice(loops[0]!, 'vol-00000000000000000', roots), { code: 'DEVICE_NOT_FOUND' }, 'a volume not attached')
})

t.test('the device node must be the kernel device whose serial matched', async (t) => {
  const { roots, loops } = await setup(t)
  await fakeNvme(roots, 'nvme1n1', loops[0]!, serialOf(VOL), 'Amazon Elastic Block Store', 4 * MiB)
  // sysfs says nvme1n1 is another block device than the node /dev/nvme1n1.
  await writeFile(join(roots.sysBlock, 'nvme1n1', 'dev'), '259:7\n')
  await t.rejects(findEbsDevice(VOL, roots), { code: 'DEVICE_UNUSABLE', message: /is block device 7:\d+, but volume .* is nvme1n1 \(259:7\): refusing/ })
  // The kernel has the device but udev has not made its node yet: not there, so far.
  await fakeNvme(roots, 'nvme2n1', loops[1]!, serialOf(OTHER), 'Amazon Elastic Block Store', 4 * MiB)
  await unlink(join(roots.devDir, 'nvme2n1'))
  t.equal(await findEbsDevice(OTHER, roots), null, 'no node yet: not found (waitForEbsDevice keeps waiting)')
})

t.test('a restore bound to a volume refuses another device and leaves it untouched', async (t) => {
  const { dir, roots, loops } = await setup(t)
  await fakeNvme(roots, 'nvme1n1', loops[0]!, serialOf(VOL), 'Amazon Elastic Block Store', 4 * MiB)
  const repo = await Repository.init(new FileBackend(join(dir, 'repo')))
  const source = join(dir, 'source.img')
  await makeImage(source, 4 * MiB, [{ kind: 'random', offset: 0, length: 4 * MiB }])
  const b = await backup(repo, { device: source })
  const before = await sha256File(loops[1]!)
  // What the daemon and `restore --volume-id` do before a restore opens anything for writing.
  const boundRestore = async (device: string) => {
    await assertVolumeDevice(device, VOL, roots)
    return restore(repo, { backupId: b.id, device })
  }
  await t.rejects(boundRestore(loops[1]!), { code: 'DEVICE_UNUSABLE' })
  t.equal(await sha256File(loops[1]!), before, 'the wrong device is untouched')
  await boundRestore(join(roots.devDir, 'nvme1n1'))
  t.equal(await sha256File(loops[0]!), await sha256File(source), 'the right device gets the data')
})
