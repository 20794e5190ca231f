// backup: attach + read + detach in one task; the volume is released whatever the read's
// outcome. Redelivered after the backup was made, the task reports it and removes a volume left
// behind; before, it finds its volume (by tag) and its checkpoint again.
import { madeBackup } from '../task-records.ts'
import type { Handler } from './context.ts'
import { checkParent, readVolume } from './read.ts'

export const backup: Handler<'backup'> = async (task, ctx, signal) => {
  const { volumes } = ctx
  const made = await madeBackup(await ctx.repository(task.repository), task.taskId)
  if (made) {
    const leftover = await volumes.findByTask(task.taskId)
    if (leftover) await volumes.release(leftover.VolumeId!, { delete: true })
    return { ...made, ...(leftover ? { volumeId: leftover.VolumeId } : {}) }
  }
  await checkParent(ctx, task)
  const { volumeId } = await volumes.createFromSnapshot(task.taskId, task.snapshotId, task.volume ?? {}, Boolean(task.sharedFromAccount))
  try {
    await volumes.attachHere(volumeId, signal)
    return await readVolume(ctx, volumeId, task, signal)
  } finally {
    await volumes.release(volumeId, { delete: true }).catch((err: unknown) =>
      ctx.log.error({ volumeId, error: err }, 'could not release volume'))
  }
}
