// The daemon's log: one JSON object per line on stderr, what journald and the CloudWatch agent pick up.

export interface DaemonLog {
  info(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

export const jsonLog: DaemonLog = {
  info: (msg, fields) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg, ...fields }) + '\n'),
  error: (msg, fields) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'error', msg, ...fields }) + '\n'),
}
