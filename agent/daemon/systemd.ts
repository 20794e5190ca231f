// Readiness and liveness for systemd (Type=notify, WatchdogSec=, systemd/ebs-worker.service).
// The sd_notify protocol is a datagram on the unix socket named by $NOTIFY_SOCKET; Node has no
// unix datagram sockets in core and a native module would tie the release to one Node ABI, so
// the messages go through systemd's own `systemd-notify` (the unit sets NotifyAccess=all). Since
// systemd 246 it waits on a barrier until the manager has read the message, so its exiting right
// after sending does not lose it. Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
import { execFile } from 'node:child_process'

export interface SystemdNotifier {
  /** READY=1: the service is up (systemd then considers the start done). */
  ready(status?: string): void
  /** STOPPING=1: shutdown has begun. */
  stopping(): void
  /** Stops the watchdog pings. */
  close(): void
}

export interface NotifierOptions {
  /** NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, as systemd sets them for the service. */
  env: Readonly<Record<string, string | undefined>>
  /** Whether the service works: the watchdog is pinged only while it says so (default: always). */
  alive?: () => boolean
  /** The systemd-notify command (tests may point elsewhere). */
  command?: string
  /** Problems sending (never fatal: the service works without them). */
  onError?: (err: unknown) => void
}

export function systemdNotifier(options: NotifierOptions): SystemdNotifier {
  const env = options.env
  if (!env.NOTIFY_SOCKET) return { ready() {}, stopping() {}, close() {} }
  const command = options.command ?? 'systemd-notify'
  const send = (...assignments: string[]): void => {
    execFile(command, assignments, { env: { ...process.env, NOTIFY_SOCKET: env.NOTIFY_SOCKET }, timeout: 10_000 }, (err) => {
      if (err) options.onError?.(err)
    })
  }
  // WATCHDOG_USEC is set when the unit has WatchdogSec=; WATCHDOG_PID, when set, names the process
  // meant to ping. A ping every third of the period leaves room for a slow spawn. A service that
  // is not alive misses its pings, and systemd restarts it when the period runs out.
  const usec = Number(env.WATCHDOG_USEC)
  const forUs = !env.WATCHDOG_PID || Number(env.WATCHDOG_PID) === process.pid
  let timer: NodeJS.Timeout | null = null
  if (Number.isFinite(usec) && usec > 0 && forUs) {
    const alive = options.alive ?? (() => true)
    timer = setInterval(() => {
      if (alive()) send('WATCHDOG=1')
    }, Math.max(100, Math.floor(usec / 3000)))
    timer.unref()
  }
  return {
    ready: (status) => send('--ready', ...(status ? [`STATUS=${status}`] : [])),
    stopping: () => send('STOPPING=1'),
    close: () => {
      if (timer) clearInterval(timer)
      timer = null
    },
  }
}
