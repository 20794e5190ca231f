// Shared test fixtures: real image files, loop devices, the CLI as a child process, and
// repositories on the local file system or on the test bed's S3 (Ceph RGW, scripts/testbed.sh).
import { execFileSync, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3'
import { openBackend } from '../agent/storage/open.ts'
import type { Backend } from '../agent/storage/types.ts'
import { AwsClients } from '../agent/aws/clients.ts'
import { awsSettings } from '../agent/aws/config.ts'

export const ROOT = new URL('..', import.meta.url).pathname
export const CLI = join(ROOT, 'agent/bin/ebs-worker.ts')
export const MiB = 1024 * 1024

export interface Teardown {
  teardown(fn: () => unknown): void
}

export async function tempDir(t: Teardown, label = 'ebs-worker-test'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${label}-`))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

export type Region =
  | { kind: 'random'; offset: number; length: number }
  | { kind: 'text'; offset: number; length: number }
  | { kind: 'bytes'; offset: number; data: Buffer }

/** A sparse image of `size` bytes with the given regions written (the rest reads as zeros). */
export async function makeImage(path: string, size: number, regions: Region[]): Promise<void> {
  const handle = await open(path, 'w')
  try {
    await handle.truncate(size)
    for (const r of regions) {
      if (r.kind === 'bytes') {
        await handle.write(r.data, 0, r.data.length, r.offset)
        continue
      }
      for (let done = 0; done < r.length; ) {
        const n = Math.min(4 * MiB, r.length - done)
        const data = r.kind === 'random' ? randomBytes(n) : Buffer.from(loremAt(r.offset + done, n))
        await handle.write(data, 0, n, r.offset + done)
        done += n
      }
    }
  } finally {
    await handle.close()
  }
}

const LOREM = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore. '
function loremAt(position: number, n: number): string {
  const start = position % LOREM.length
  return LOREM.repeat(Math.ceil((n + start) / LOREM.length) + 1).slice(start, start + n)
}

/** An ext4 filesystem image built from a directory of real files (mkfs.ext4 -d). */
export async function makeExt4Image(dir: string, size: number): Promise<string> {
  const content = join(dir, 'ext4-content')
  execFileSync('mkdir', ['-p', join(content, 'etc'), join(content, 'var/data')])
  await makeImage(join(content, 'var/data/random.bin'), 3 * MiB + 12345, [{ kind: 'random', offset: 0, length: 3 * MiB + 12345 }])
  await makeImage(join(content, 'var/data/text.txt'), 2 * MiB, [{ kind: 'text', offset: 0, length: 2 * MiB }])
  execFileSync('cp', ['-r', join(ROOT, 'agent'), join(content, 'etc/agent-sources')])
  const image = join(dir, 'ext4.img')
  execFileSync('truncate', ['-s', String(size), image])
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', content, image])
  return image
}

export async function sha256File(path: string, length?: number): Promise<string> {
  const hash = createHash('sha256')
  const stream = createReadStream(path, length === undefined ? {} : { start: 0, end: length - 1 })
  for await (const chunk of stream) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** The JSON object on the last line of stdout, when there is one. */
  json: Record<string, any> | null
}

/** Runs the real CLI as a child process, as a user or the daemon would. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      const json = lastJsonLine(stdout)
      resolve({ code, signal, stdout, stderr, json })
    })
  })
}

/** Runs the CLI and fails loudly unless it succeeds; returns the JSON result. */
export async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Record<string, any>> {
  const r = await runCli([...args, '--json'], env)
  if (r.code !== 0 || !r.json) throw new Error(`ebs-worker ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return r.json
}

/** A loop device over an image file, detached when the test ends. */
export function attachLoop(t: Teardown, image: string): string {
  const dev = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim()
  t.teardown(() => {
    execFileSync('losetup', ['-d', dev])
  })
  return dev
}

export const s3Available = Boolean(process.env.AWS_ENDPOINT_URL_S3)

/** A repository's storage (file:// or s3://), opened as the programs open it, with this test run's AWS settings. */
export function storageAt(url: string): Backend {
  return openBackend(url, { aws: new AwsClients(awsSettings(process.env)) })
}

let bucketCounter = 0
/** A fresh bucket on the test bed's S3 (with S3 Object Lock enabled when asked), as an s3:// repository URL. */
export async function s3RepoUrl(prefix = 'repo', o: { objectLock?: boolean } = {}): Promise<string> {
  if (!s3Available) throw new Error('no S3 test bed: run the tests with "npm test", which starts one (scripts/testbed.sh)')
  const bucket = `t-${process.pid}-${Date.now().toString(36)}-${bucketCounter++}`
  const client = new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED' })
  await client.send(new CreateBucketCommand({ Bucket: bucket, ...(o.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }))
  client.destroy()
  return `s3://${bucket}/${prefix}`
}

// The NVMe identity of a loop device lives with the stand-ins, which must not import these helpers.
export { fakeNvme, type DeviceTree } from './standin/nvme.ts'

/** A new file:// repository in `dir` and an image of `size` random bytes beside it. */
export async function repoWithImage(dir: string, size: number): Promise<{ repo: string; image: string }> {
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'vol.img')
  await makeImage(image, size, [{ kind: 'random', offset: 0, length: size }])
  return { repo, image }
}

/** repoWithImage, then a backup of the image: what restore tests start from. */
export async function backedUpImage(dir: string, size: number): Promise<{ repo: string; image: string; backupId: string }> {
  const { repo, image } = await repoWithImage(dir, size)
  const b = await cli(['backup', '--repo', repo, '--device', image])
  return { repo, image, backupId: b.backupId as string }
}

/** Polls `what` until it holds; throws after `ms`. For outcomes another process settles a little later. */
export async function until(what: () => boolean | Promise<boolean>, ms = 10_000, label = 'a condition'): Promise<void> {
  const end = Date.now() + ms
  while (!(await what())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${label}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** The JSON object on the last line of a command's stdout (what --json prints), or null. */
export function lastJsonLine(stdout: string): Record<string, any> | null {
  const last = stdout.trim().split('\n').pop() ?? ''
  try {
    return last.startsWith('{') ? JSON.parse(last) : null
  } catch {
    return null
  }
}

/**
 * Mounts `image` as a FUSE file (test/fixtures/faulty-fs.py, Debian's python3-fusepy) that fails
 * reads touching [badStart, badEnd) with EIO and makes every read take `delayMs`: a failing or a
 * slow disk. Unmounted when the test ends. Returns the file's path.
 */
export async function faultyFile(t: Teardown, image: string, o: { badStart?: number; badEnd?: number; delayMs?: number }): Promise<string> {
  const mnt = await tempDir(t, 'faulty-fs')
  const fs = spawn('/usr/bin/python3', [join(ROOT, 'test/fixtures/faulty-fs.py'), image, mnt, String(o.badStart ?? 0), String(o.badEnd ?? 0), String(o.delayMs ?? 0)],
    { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  fs.stderr.on('data', (d) => (log += d))
  t.teardown(() => {
    try {
      execFileSync('umount', ['--lazy', mnt]) // lazy: a loop device on the file may still hold it; it goes once released
    } catch {
      fs.kill()
    }
  })
  const file = join(mnt, 'disk.img')
  await until(() => existsSync(file), 10_000, `the FUSE file system (is python3-fusepy installed?) ${log}`)
  return file
}

/** One line of the log (agent/core/log.ts): pino's JSON, level as a word. */
export type LogLine = { time: string; level: 'debug' | 'info' | 'warn' | 'error'; msg: string; version: string } & Record<string, any>

/** The log lines in `text` (a process's stderr), parsed; what is not a JSON object (a stray line) is left out. */
export function logLines(text: string): LogLine[] {
  const out: LogLine[] = []
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue
    try {
      out.push(JSON.parse(line) as LogLine)
    } catch {
      // a line cut short by the process's end
    }
  }
  return out
}

/** The log lines of `text` whose fields equal those of `match` (a RegExp tests a string field). */
export function logWhere(text: string, match: Record<string, string | number | boolean | RegExp>): LogLine[] {
  return logLines(text).filter((l) => Object.entries(match).every(([k, v]) => (v instanceof RegExp ? typeof l[k] === 'string' && v.test(l[k]) : l[k] === v)))
}
