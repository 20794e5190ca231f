// Progress on a terminal: one bar on stderr with bytes, rate and time left. Silent when stderr
// is not a TTY or when output is JSON, so logs and pipes stay clean (and cli-progress is not even
// loaded then).
import { formatBytes } from '../core/units.ts'

export interface ProgressReporter {
  update(done: number, total: number): void
  stop(): void
}

const silent: ProgressReporter = { update() {}, stop() {} }

export async function progressBar(label: string, enabled: boolean): Promise<ProgressReporter> {
  if (!enabled || !process.stderr.isTTY) return silent
  const { default: cliProgress } = await import('cli-progress')
  const started = performance.now()
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} {bar} {percentage}% | {doneBytes} / {totalBytes} | {rate}/s | ETA {eta_formatted}`,
      hideCursor: true,
      etaBuffer: 50,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  )
  let started_ = false
  let last = 0
  return {
    update(done, total) {
      const now = performance.now()
      if (started_ && now - last < 100 && done < total) return
      last = now
      const rate = formatBytes(done / Math.max(0.001, (now - started) / 1000))
      const payload = { doneBytes: formatBytes(done), totalBytes: formatBytes(total), rate }
      if (!started_) {
        bar.start(total, done, payload)
        started_ = true
      } else {
        bar.setTotal(total)
        bar.update(done, payload)
      }
    },
    stop() {
      if (started_) bar.stop()
    },
  }
}

/** Runs `work` with a progress bar (when `enabled` on a terminal), stopped however it ends. */
export async function withProgress<T>(
  label: string,
  enabled: boolean,
  work: (onProgress: (p: { bytesDone: number; bytesTotal: number }) => void) => Promise<T>,
): Promise<T> {
  const bar = await progressBar(label, enabled)
  try {
    return await work((p) => bar.update(p.bytesDone, p.bytesTotal))
  } finally {
    bar.stop()
  }
}
