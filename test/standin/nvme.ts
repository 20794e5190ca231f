// How an attached EBS volume shows up on an instance, in a device tree of the test's own: a loop
// device given an NVMe identity (sysfs serial, model, size and major:minor, and a node under
// devDir that is the loop device), which is what the agent's device discovery reads. The EC2
// stand-in exposes its volumes this way; tests use it for devices of their own.
import { mkdir, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { devNumber } from '../../agent/device/block-device.ts'

export interface DeviceTree {
  sysBlock: string
  devDir: string
  byIdDir: string
}

/** Gives loop device `loop` the NVMe identity `name` (nvme1n1) with `serial` and `model`, of `size` bytes. */
export async function fakeNvme(roots: DeviceTree, name: string, loop: string, serial: string, model: string, size: number): Promise<void> {
  await mkdir(join(roots.sysBlock, name, 'device'), { recursive: true })
  await mkdir(roots.devDir, { recursive: true })
  // Padded as the kernel pads NVMe identify strings.
  await writeFile(join(roots.sysBlock, name, 'device', 'serial'), serial.padEnd(20) + '\n')
  await writeFile(join(roots.sysBlock, name, 'device', 'model'), model.padEnd(40) + '\n')
  await writeFile(join(roots.sysBlock, name, 'size'), `${size / 512}\n`)
  await writeFile(join(roots.sysBlock, name, 'dev'), `${devNumber((await stat(loop)).rdev)}\n`)
  await symlink(loop, join(roots.devDir, name))
}
