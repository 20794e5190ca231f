// attach: a volume from a snapshot, attached here; its device found by NVMe serial.
import type { Handler } from './context.ts'

export const attach: Handler<'attach'> = async (task, { volumes }, signal) => {
  const { volumeId } = await volumes.createFromSnapshot(task.taskId, task.snapshotId, task.volume ?? {}, Boolean(task.sharedFromAccount))
  const device = await volumes.attachHere(volumeId, signal)
  return { volumeId, device: device.path, size: device.size }
}
