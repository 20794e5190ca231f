// The systemd unit, checked by systemd's own tools against a root of the test's own: `verify`
// (syntax, directives, the ExecStart binary), `security` (its sandbox), sysusers (its user); and
// the readiness/watchdog messages the daemon sends through systemd-notify, received on a real
// unix datagram socket the way the service manager receives them.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { chmod, cp, mkdir, readFile, writeFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createServer } from 'node:net'
import { z } from 'zod'
import { CreateQueueCommand, SQSClient } from '@aws-sdk/client-sqs'
import { startFauxqs } from 'fauxqs'
import { cli, CLI, logWhere, ROOT, tempDir, until } from './helpers.ts'
import { startImds } from './standin/imds.ts'
import { systemdNotifier } from '../agent/daemon/systemd.ts'

const run = promisify(execFile)
const UNIT = join(ROOT, 'systemd/ebs-worker.service')
const unitText = await readFile(UNIT, 'utf8')

/** The unit's [Service] settings, key -> values (a key may repeat). */
function settings(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim())
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!])
  }
  return out
}

/** A root with systemd's own units, the unit under test, and an executable where ExecStart points. */
async function unitRoot(t: Parameters<typeof tempDir>[0], unit: string): Promise<string> {
  const root = await tempDir(t, 'unit-root')
  await mkdir(join(root, 'usr/lib/systemd'), { recursive: true })
  await cp('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true })
  await mkdir(join(root, 'etc/systemd/system'), { recursive: true })
  await writeFile(join(root, 'etc/systemd/system/ebs-worker.service'), unit)
  const exec = settings(unit).get('ExecStart')![0]!.split(' ')[0]!
  await mkdir(join(root, exec, '..'), { recursive: true })
  await writeFile(join(root, exec), '#!/bin/sh\n')
  await chmod(join(root, exec), 0o755)
  return root
}

async function verify(root: string): Promise<{ ok: boolean; stderr: string }> {
  try {
    const r = await run('systemd-analyze', ['verify', `--root=${root}`, '/etc/systemd/system/ebs-worker.service'])
    return { ok: r.stderr.trim() === '', stderr: r.stderr }
  } catch (err) {
    return { ok: false, stderr: String((err as { stderr?: string }).stderr ?? err) }
  }
}

t.test('systemd-analyze verify passes the unit, and fails a broken one', async (t) => {
  const good = await verify(await unitRoot(t, unitText))
  t.ok(good.ok, `verify is clean: ${good.stderr}`)
  const typo = await verify(await unitRoot(t, unitText.replace('ProtectSystem=strict', 'ProtectSytem=strict')))
  t.notOk(typo.ok, 'a misspelt directive is reported')
  t.match(typo.stderr, /ProtectSytem/)
})

t.test('the unit runs the release launcher as the dedicated user, sandboxed', async (t) => {
  const s = settings(unitText)
  t.equal(s.get('ExecStart')?.[0], '/opt/ebs-worker/bin/ebs-worker daemon --config /etc/ebs-worker/config.json', 'where scripts/release.sh puts the launcher')
  t.same(s.get('User'), ['ebs-worker'])
  t.same(s.get('SupplementaryGroups'), ['disk'], 'block devices are root:disk')
  t.same(s.get('DevicePolicy'), ['closed'])
  t.same(s.get('DeviceAllow'), ['block-blkext rw'], 'NVMe namespaces (major 259) only, no loop devices')
  t.same(s.get('CapabilityBoundingSet'), [''], 'no capabilities')
  for (const key of ['NoNewPrivileges', 'PrivateTmp']) t.same(s.get(key), ['yes'], key)
  t.same(s.get('ProtectSystem'), ['strict'])
  t.same(s.get('Restart'), ['on-failure'])
  t.ok(s.get('StartLimitBurst') && s.get('StartLimitIntervalSec'), 'restarts are rate limited')
  t.same(s.get('Type'), ['notify'])
  t.ok(Number(s.get('WatchdogSec')?.[0]) > 0, 'a watchdog')

  // The stop timeout covers the daemon's default SIGTERM grace (agent/daemon/config.ts) plus the hand-back.
  const configTs = await readFile(join(ROOT, 'agent/daemon/config.ts'), 'utf8')
  const grace = Number(/shutdownGraceSeconds: z\.number\(\)[^\n]*\.default\((\d+)\)/.exec(configTs)?.[1])
  t.ok(grace > 0, `default shutdownGraceSeconds found (${grace})`)
  const stop = Number(s.get('TimeoutStopSec')?.[0])
  t.ok(stop >= grace + 15 && stop <= grace + 60, `TimeoutStopSec ${stop} = grace ${grace} + time to hand messages back`)

  const root = await unitRoot(t, unitText)
  const { stdout } = await run('systemd-analyze', ['security', '--offline=true', `--root=${root}`, '/etc/systemd/system/ebs-worker.service'])
  const exposure = Number(/Overall exposure level for ebs-worker\.service: ([\d.]+)/.exec(stdout)?.[1])
  t.ok(exposure > 0 && exposure <= 3, `systemd-analyze security exposure ${exposure} (0 = locked down, 10 = none)`)
})

t.test('both units keep Node\'s compile cache in their CacheDirectory, across restarts', async (t) => {
  for (const unit of ['ebs-worker.service', 'ebs-worker-health.service']) {
    const s = settings(await readFile(join(ROOT, 'systemd', unit), 'utf8'))
    t.same(s.get('CacheDirectory'), ['ebs-worker'], `${unit}: /var/cache/ebs-worker, writable under ProtectSystem=strict`)
    t.ok(s.get('Environment')?.includes('NODE_COMPILE_CACHE=%C/ebs-worker'), `${unit}: NODE_COMPILE_CACHE there (not PrivateTmp's /tmp, gone at each restart)`)
  }
})

t.test('sysusers.d creates the user in the disk group', async (t) => {
  const root = await tempDir(t, 'sysusers-root')
  await mkdir(join(root, 'etc'), { recursive: true })
  await writeFile(join(root, 'etc/group'), 'root:x:0:\ndisk:x:6:\n')
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n')
  await mkdir(join(root, 'usr/lib/sysusers.d'), { recursive: true })
  await cp(join(ROOT, 'systemd/ebs-worker.sysusers'), join(root, 'usr/lib/sysusers.d/ebs-worker.conf'))
  await run('systemd-sysusers', [`--root=${root}`])
  const passwd = await readFile(join(root, 'etc/passwd'), 'utf8')
  const group = await readFile(join(root, 'etc/group'), 'utf8')
  t.match(passwd, /^ebs-worker:x:\d+:\d+:ebs-worker agent:\/var\/lib\/ebs-worker:\/sbin\/nologin$/m, 'a system user without a login shell')
  t.match(group, /^disk:x:6:ebs-worker$/m, 'a member of disk')
})

/** A datagram socket where the service manager's would be, printing each message (python3). */
async function notifySocket(t: Parameters<typeof tempDir>[0]): Promise<{ path: string; messages: string[] }> {
  const path = join(await tempDir(t, 'notify'), 'notify.sock')
  // Like PID 1: receive each datagram with its ancillary fds and close them, which releases the
  // barrier systemd-notify waits on.
  const script = [
    'import socket, sys, os, array',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); print("", flush=True)',
    'while True:',
    '  msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(64))',
    '  for level, kind, data in anc:',
    '    fds = array.array("i"); fds.frombytes(data[:len(data) - len(data) % 4]); [os.close(fd) for fd in fds]',
    '  print(" ".join(msg.decode().split()), flush=True)',
  ].join('\n')
  const child = spawn('python3', ['-c', script, path], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    child.kill()
  })
  const messages: string[] = []
  let buffered = ''
  let listening = false
  child.stdout.on('data', (d: Buffer) => {
    buffered += d
    const lines = buffered.split('\n')
    buffered = lines.pop()!
    for (const line of lines) {
      if (!listening) listening = true
      else messages.push(line)
    }
  })
  await until(() => listening, 10_000, 'the notify socket')
  return { path, messages }
}

t.test('readiness, watchdog and stopping reach the notify socket through systemd-notify', async (t) => {
  const { path, messages } = await notifySocket(t)
  const errors: unknown[] = []
  const notifier = systemdNotifier({ env: { NOTIFY_SOCKET: path, WATCHDOG_USEC: '300000' }, onError: (e) => errors.push(e) })
  t.teardown(() => notifier.close())
  notifier.ready('polling')
  await until(() => messages.some((m) => m.startsWith('READY=1')), 10_000, 'READY=1')
  t.ok(messages.some((m) => /READY=1 STATUS=polling/.test(m)), 'READY=1 with a status')
  await until(() => messages.filter((m) => m === 'WATCHDOG=1').length >= 2, 10_000, 'two watchdog pings')
  notifier.close()
  notifier.stopping()
  await until(() => messages.includes('STOPPING=1'), 10_000, 'STOPPING=1')
  t.same(errors, [], 'no send failed')
  t.ok(messages.every((m) => z.enum(['READY=1 STATUS=polling', 'WATCHDOG=1', 'STOPPING=1', 'BARRIER=1']).safeParse(m).success), `only the expected messages: ${messages.join(' | ')}`)
})

t.test('outside systemd the notifier does nothing, and a WATCHDOG_PID of another process is not ours', async (t) => {
  const { path, messages } = await notifySocket(t)
  const other = systemdNotifier({ env: { NOTIFY_SOCKET: path, WATCHDOG_USEC: '150000', WATCHDOG_PID: String(process.pid + 1) } })
  systemdNotifier({ env: {} }).ready()
  other.ready()
  await until(() => messages.some((m) => m.startsWith('READY=1')), 10_000, 'READY=1')
  await new Promise((resolve) => setTimeout(resolve, 500))
  other.close()
  t.notOk(messages.includes('WATCHDOG=1'), 'no pings for a watchdog meant for another process')
})

/** The daemon as a child process under a notify socket, with fauxqs as SQS and the IMDS stand-in. */
async function notifiedDaemon(t: Parameters<typeof tempDir>[0], o: { env?: Record<string, string>; queueUrl?: (fauxqs: string) => string } = {}) {
  const { path, messages } = await notifySocket(t)
  const dir = await tempDir(t, 'notify-daemon')
  const fauxqs = await startFauxqs({ port: 0, logger: false })
  t.teardown(() => fauxqs.stop())
  const imds = await startImds({ instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', accountId: '111122223333' })
  t.teardown(() => imds.close())
  const sqs = new SQSClient({ endpoint: fauxqs.address, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } })
  t.teardown(() => sqs.destroy())
  const queueUrl = o.queueUrl?.(fauxqs.address) ?? (await sqs.send(new CreateQueueCommand({ QueueName: 'tasks' }))).QueueUrl!
  const replyQueueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'replies' }))).QueueUrl!
  const repo = `file://${join(dir, 'repo')}`
  await cli(['init', '--repo', repo])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({ queueUrl, replyQueueUrl, repository: repo, waitTimeSeconds: 1, shutdownGraceSeconds: 1, imdsEndpoint: imds.endpoint }))
  const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
    env: {
      ...process.env, NOTIFY_SOCKET: path, WATCHDOG_USEC: '300000',
      AWS_ENDPOINT_URL_SQS: fauxqs.address, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', ...o.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const out = { log: '', stdout: '' }
  daemon.stderr.on('data', (d) => (out.log += d))
  daemon.stdout.on('data', (d) => (out.stdout += d))
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', resolve))
  t.teardown(() => {
    daemon.kill('SIGKILL')
  })
  return { messages, out, daemon, exited }
}

t.test('the daemon itself: READY=1 once it polls, watchdog pings, STOPPING=1 on SIGTERM', async (t) => {
  const { messages, out, daemon, exited } = await notifiedDaemon(t, { env: { EBS_WORKER_METRICS: 'off' } })
  await until(() => messages.some((m) => m.startsWith('READY=1')), 30_000, `READY=1 (daemon log: ${out.log})`)
  t.match(out.log, /"msg":"started"/, 'READY=1 comes after the daemon started')
  t.ok(messages.some((m) => m === 'READY=1 STATUS=polling for tasks'))
  await until(() => messages.filter((m) => m === 'WATCHDOG=1').length >= 2, 30_000, 'watchdog pings')
  daemon.kill('SIGTERM')
  t.equal(await exited, 0, 'stops cleanly')
  // systemd-notify runs beside the daemon: its message may land just after the daemon exits.
  await until(() => messages.includes('STOPPING=1'), 10_000, 'STOPPING=1')
  t.pass('STOPPING=1 on SIGTERM')
  t.equal(out.stdout, '', 'EBS_WORKER_METRICS=off: no metric lines')
})

t.test('a daemon that cannot receive from its queue is not ready, not alive and sends no heartbeat', async (t) => {
  // The task queue's endpoint is a port nothing listens on; IMDS answers, so the daemon starts.
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as { port: number }).port
  await new Promise((resolve) => closed.close(resolve))
  const { messages, out, daemon, exited } = await notifiedDaemon(t, {
    env: { AWS_ENDPOINT_URL_SQS: `http://127.0.0.1:${port}`, AWS_MAX_ATTEMPTS: '1' },
    queueUrl: () => `http://127.0.0.1:${port}/000000000000/tasks`,
  })
  await until(() => /"msg":"started"/.test(out.log), 30_000, `the daemon's start (log: ${out.log})`)
  await until(() => logWhere(out.log, { level: 'error', msg: 'cannot receive from the task queue' }).length > 0, 30_000, `a receive error in the log (log: ${out.log})`)
  t.pass('it logs that it cannot receive')
  // A healthy daemon is ready within a second here (the test above) and pings every 100 ms.
  await new Promise((resolve) => setTimeout(resolve, 3000))
  t.notOk(messages.some((m) => m.startsWith('READY=1')), `no READY=1: ${messages.join(' | ')}`)
  t.notOk(messages.includes('WATCHDOG=1'), 'no watchdog pings: systemd would restart it')
  t.notMatch(out.stdout, /"Heartbeat"/, 'no Heartbeat metric')
  t.equal(logWhere(out.log, { msg: 'started', region: 'us-east-1' }).length, 1, 'it did start (IMDS answered)')
  daemon.kill('SIGTERM')
  t.equal(await exited, 0, 'and stops cleanly on SIGTERM')
})

t.test('the health report units verify, run health-check as the daemon\'s user, every minute', async (t) => {
  const service = await readFile(join(ROOT, 'systemd/ebs-worker-health.service'), 'utf8')
  const timer = await readFile(join(ROOT, 'systemd/ebs-worker-health.timer'), 'utf8')
  const root = await unitRoot(t, service)
  await rename(join(root, 'etc/systemd/system/ebs-worker.service'), join(root, 'etc/systemd/system/ebs-worker-health.service'))
  await writeFile(join(root, 'etc/systemd/system/ebs-worker-health.timer'), timer)
  const check = async (unit: string) => run('systemd-analyze', ['verify', `--root=${root}`, `/etc/systemd/system/${unit}`])
    .then((r) => r.stderr.trim(), (e: { stderr?: string }) => String(e.stderr ?? e))
  t.equal(await check('ebs-worker-health.timer'), '', 'the timer verifies, with its service')
  t.equal(await check('ebs-worker-health.service'), '', 'the service verifies')
  const s = settings(service)
  t.equal(s.get('ExecStart')?.[0], '/opt/ebs-worker/bin/ebs-worker health-check --config /etc/ebs-worker/config.json --max-age 300')
  t.same(s.get('User'), ['ebs-worker'])
  t.same(s.get('PrivateDevices'), ['yes'], 'no block devices: it only reads a stamp and calls Auto Scaling')
  t.same(settings(timer).get('OnUnitActiveSec'), ['1min'])
  const { stdout } = await run('systemd-analyze', ['security', '--offline=true', `--root=${root}`, '/etc/systemd/system/ebs-worker-health.service'])
  const exposure = Number(/Overall exposure level for ebs-worker-health\.service: ([\d.]+)/.exec(stdout)?.[1])
  t.ok(exposure > 0 && exposure <= 3, `systemd-analyze security exposure ${exposure}`)
  await writeFile(join(root, 'etc/systemd/system/ebs-worker-health.timer'), timer.replace('OnUnitActiveSec', 'OnUnitActivSec'))
  t.match(await check('ebs-worker-health.timer'), /OnUnitActivSec/, 'and a typo is found')
})
