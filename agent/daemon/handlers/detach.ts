// detach: a volume this agent attached, detached and by default deleted; one kept (delete: false)
// is marked so (ebs-worker:transient=false), and no volume sweep deletes it.
import type { Handler } from './context.ts'

export const detach: Handler<'detach'> = async (task, { volumes }) =>
  ({ volumeId: task.volumeId, ...(await volumes.release(task.volumeId, { delete: task.delete, keep: !task.delete })) })
