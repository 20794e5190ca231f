// What a run created, undone in reverse order when it fails (and, for what is temporary, when it
// succeeds). A step that fails is reported, never hidden: the caller says what could not be cleaned.
import { awsName, describe } from './errors.ts'

export interface CleanupReport {
  done: string[]
  failed: string[]
}

export class Cleanup {
  readonly #steps: Array<{ what: string; run: () => Promise<unknown> }> = []

  /** Registers an undo step; `what` names it in the report ("unshare snap-… from 222…"). */
  add(what: string, run: () => Promise<unknown>): void {
    this.#steps.push({ what, run })
  }

  /** Runs every step, last registered first; each failure is reported with its reason. */
  async run(): Promise<CleanupReport> {
    const report: CleanupReport = { done: [], failed: [] }
    while (this.#steps.length) {
      const step = this.#steps.pop()!
      try {
        await step.run()
        report.done.push(step.what)
      } catch (err) {
        const name = awsName(err)
        // Already gone (a volume EBS rolled back, a snapshot deleted by hand): nothing left to undo.
        if (name.endsWith('.NotFound')) report.done.push(`${step.what} (already gone)`)
        else report.failed.push(`${step.what}: ${name === 'Error' ? '' : `${name}: `}${describe(err)}`)
      }
    }
    return report
  }
}
