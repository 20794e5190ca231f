// One handler per task type (docs/TASKS.md).
import type { Task } from '../task.ts'
import { attach } from './attach.ts'
import { backup } from './backup.ts'
import type { Handler, TaskContext } from './context.ts'
import { check } from './check.ts'
import { detach } from './detach.ts'
import { prune } from './prune.ts'
import { read } from './read.ts'
import { restore } from './restore.ts'

export { ReplyNow, type TaskContext } from './context.ts'

const HANDLERS: { [T in Task['type']]: Handler<T> } = { attach, read, detach, backup, restore, prune, check }

/** Runs a valid task; resolves to its result's figures, or throws why it failed. */
export function runTask(task: Task, ctx: TaskContext, signal: AbortSignal): Promise<Record<string, unknown>> {
  return (HANDLERS[task.type] as Handler<Task['type']>)(task as never, ctx, signal)
}
