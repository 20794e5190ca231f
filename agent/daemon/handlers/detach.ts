// detach: a volume this agent attached, detached and by default deleted.
import type { Handler } from './context.ts'

export const detach: Handler<'detach'> = async (task, { volumes }) =>
  ({ volumeId: task.volumeId, ...(await volumes.release(task.volumeId, { delete: task.delete })) })
