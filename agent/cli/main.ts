// The ebs-worker command line. Every subcommand prints a short human summary, or with --json
// one JSON object as the last line of stdout; the exit status says how it went (docs/CLI.md).
import { readFile } from 'node:fs/promises'
import { Command, Option } from 'commander'
import { backup } from '../pipeline/backup.ts'
import { DEFAULT_CONFIG_PATH, loadDaemonSettings } from '../daemon/config.ts'
import { CHECK_NAMES, doctor, formatCheck } from '../daemon/doctor.ts'
import { EbsWorkerError, ErrorCode, describe, toErrorJson } from '../core/errors.ts'
import { VERSION } from '../core/version.ts'
import { initRepository, openRepository } from '../app/repository.ts'
import { parseChangedRanges } from '../core/plan.ts'
import { progressBar } from './progress.ts'
import { formatBytes } from '../core/units.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { parseSize, tuningArg } from './options.ts'
import { assertVolumeDevice } from '../device/ebs-device.ts'
import { DEFAULT_CHUNK_SIZE } from '../repo/repository.ts'
import { restore, verify } from '../pipeline/restore.ts'
import { systemdNotifier } from '../daemon/systemd.ts'
import { AwsClients } from '../aws/clients.ts'
import { awsSettings, type Environment } from '../aws/config.ts'


/** Exit statuses: scripts and the daemon tell "bad input" from "damaged data" from "try again". */
export const ExitStatus = { ok: 0, failure: 1, badInput: 2, damaged: 3, interrupted: 130 } as const

function exitStatusFor(err: unknown): number {
  if (!(err instanceof EbsWorkerError)) return ExitStatus.failure
  switch (err.code) {
    case ErrorCode.BadInput:
      return ExitStatus.badInput
    case ErrorCode.ChunkCorrupt:
    case ErrorCode.ChunkMissing:
    case ErrorCode.ChecksumMismatch:
      return ExitStatus.damaged
    case ErrorCode.Interrupted:
      return ExitStatus.interrupted
    default:
      return ExitStatus.failure
  }
}


interface CommonOptions {
  repo: string
  keyFile?: string
  json?: boolean
  progress: boolean
}

type Printer = (human: string[], json: Record<string, unknown>) => void

function common(cmd: Command): Command {
  return cmd
    .addOption(new Option('--repo <url>', 'repository: s3://bucket/prefix or file:///path').env('EBS_WORKER_REPO').makeOptionMandatory())
    .addOption(new Option('--key-file <path>', 'key file of an encrypted repository').env('EBS_WORKER_KEY_FILE'))
    .option('--json', 'print one JSON object as the last line of stdout')
    .option('--no-progress', 'no progress bar, even on a terminal')
}

export function buildProgram(print: Printer, signal: AbortSignal, env: Environment): Command {
  const aws = (): AwsClients => new AwsClients(awsSettings(env))
  const program = new Command('ebs-worker')
    .description('Back up block devices (EBS volumes) into a deduplicated, compressed, encrypted repository, and restore them')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    // Set before the subcommands are added, so they inherit it: errors come back to main().
    .exitOverride()

  common(program.command('init').description('create a repository'))
    .option('--encrypt', 'encrypt, with a key kept in --key-file (created if missing) or wrapped by --kms-key')
    .option('--kms-key <key>', 'KMS key (ARN, id or alias) that wraps the repository key: no key file to keep, IAM decides who opens it')
    .option('--chunk-size <size>', 'chunk size, a multiple of 512KiB', parseSize, DEFAULT_CHUNK_SIZE)
    .action(async (opts: CommonOptions & { encrypt?: boolean; kmsKey?: string; chunkSize: number }) => {
      if (opts.kmsKey && opts.keyFile) throw new EbsWorkerError(ErrorCode.BadInput, 'give --key-file or --kms-key, not both')
      if (opts.encrypt && !opts.keyFile && !opts.kmsKey) throw new EbsWorkerError(ErrorCode.BadInput, '--encrypt needs --key-file or --kms-key')
      const repo = await initRepository(opts.repo, { aws: aws(), chunkSize: opts.chunkSize, kmsKey: opts.kmsKey, keyFile: opts.encrypt ? opts.keyFile : undefined })
      const { id, chunkSize, encryption } = repo.config
      print([`created repository ${repo.url} (id ${id}, ${formatBytes(chunkSize)} chunks, ${encryption ? 'encrypted' : 'not encrypted'})`], {
        repository: repo.url, id, chunkSize, encrypted: encryption !== null,
      })
    })

  common(program.command('backup').description('back up a block device or image file'))
    .requiredOption('--device <path>', 'block device or image file to read')
    .option('--parent <id>', 'previous backup of the same volume (incremental)')
    .option('--changed-ranges <file>', 'with --parent: JSON [{"offset":n,"length":n}] of the bytes that changed')
    .option('--volume-id <id>', 'EBS volume id to record in the manifest')
    .option('--snapshot-id <id>', 'EBS snapshot id to record in the manifest')
    .option('--tag <key=value...>', 'tags to record in the manifest')
    .option('--read-concurrency <n>', 'chunk reads in flight', tuningArg('--read-concurrency', 'readConcurrency'), DEFAULT_TUNING.readConcurrency)
    .option('--upload-concurrency <n>', 'packs uploading at once', tuningArg('--upload-concurrency', 'uploadConcurrency'), DEFAULT_TUNING.uploadConcurrency)
    .option('--pack-size <size>', 'target pack size', tuningArg('--pack-size', 'packSize', true), DEFAULT_TUNING.packSize)
    .option('--compression-level <n>', 'zstd level (1-19)', tuningArg('--compression-level', 'compressionLevel'), DEFAULT_TUNING.compressionLevel)
    .action(async (opts: CommonOptions & {
      device: string; parent?: string; changedRanges?: string; volumeId?: string; snapshotId?: string; tag?: string[]
      readConcurrency: number; uploadConcurrency: number; packSize: number; compressionLevel: number
    }) => {
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile, tuning: { compressionLevel: opts.compressionLevel } })
      const changed = opts.changedRanges
        ? parseChangedRanges(await readFile(opts.changedRanges, 'utf8').catch((err: unknown) => {
            throw new EbsWorkerError(ErrorCode.BadInput, `cannot read ${opts.changedRanges}: ${describe(err)}`)
          }), opts.changedRanges)
        : undefined
      const tags: Record<string, string> = {}
      for (const t of opts.tag ?? []) {
        const eq = t.indexOf('=')
        if (eq <= 0) throw new EbsWorkerError(ErrorCode.BadInput, `--tag ${t}: expected key=value`)
        tags[t.slice(0, eq)] = t.slice(eq + 1)
      }
      const bar = progressBar('backup ', opts.progress && !opts.json)
      try {
        const result = await backup(repo, {
          device: opts.device,
          ...(opts.parent ? { parent: opts.parent } : {}),
          ...(changed ? { changedRanges: changed } : {}),
          source: { ...(opts.volumeId ? { volumeId: opts.volumeId } : {}), ...(opts.snapshotId ? { snapshotId: opts.snapshotId } : {}) },
          tags,
          readConcurrency: opts.readConcurrency,
          uploadConcurrency: opts.uploadConcurrency,
          packSize: opts.packSize,
          onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal),
          signal,
        })
        bar.stop()
        const s = result.stats
        const secs = s.durationMs / 1000
        print(
          [
            `backup ${result.id} of ${opts.device} (${formatBytes(result.size)})`,
            `  read ${formatBytes(s.bytesRead)} in ${secs.toFixed(1)} s (${formatBytes(s.bytesRead / Math.max(secs, 0.001))}/s), stored ${formatBytes(s.bytesStored)} new`,
            `  chunks: ${s.chunksTotal} total, ${s.chunksNew} new, ${s.chunksReused} already stored, ${s.chunksZero} zero, ${s.chunksFromParent} from parent`,
          ],
          { backupId: result.id, size: result.size, parent: result.parent, checksum: result.checksum, ...s },
        )
      } finally {
        bar.stop()
      }
    })

  common(program.command('restore').description('restore a backup onto a block device or image file'))
    .requiredOption('--backup <id>', 'backup id')
    .requiredOption('--device <path>', 'target block device or image file (an image file is created if missing)')
    .option('--fresh-target', 'the target is a new empty volume: skip writing zero chunks')
    .option('--volume-id <id>', 'refuse unless the device is this attached EBS volume (by its NVMe serial)')
    .option('--concurrency <n>', 'ranged GETs in flight', tuningArg('--concurrency', 'restoreConcurrency'), DEFAULT_TUNING.restoreConcurrency)
    .action(async (opts: CommonOptions & { backup: string; device: string; freshTarget?: boolean; volumeId?: string; concurrency: number }) => {
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      // Before anything is opened for writing: the device must be that volume (its NVMe serial).
      if (opts.volumeId) await assertVolumeDevice(opts.device, opts.volumeId)
      const bar = progressBar('restore', opts.progress && !opts.json)
      try {
        const r = await restore(repo, {
          backupId: opts.backup,
          device: opts.device,
          freshTarget: opts.freshTarget === true,
          concurrency: opts.concurrency,
          onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal),
          signal,
        })
        bar.stop()
        const secs = r.durationMs / 1000
        print(
          [
            `restored backup ${r.backupId} onto ${opts.device} (${formatBytes(r.size)}) in ${secs.toFixed(1)} s (${formatBytes(r.size / Math.max(secs, 0.001))}/s)`,
            `  fetched ${formatBytes(r.bytesFetched)} in ${r.requests} requests, ${r.chunksVerified} chunks verified, ${r.zeroChunksSkipped} zero chunks skipped`,
          ],
          { ...r },
        )
      } finally {
        bar.stop()
      }
    })

  common(program.command('verify').description('prove a backup intact by reading back every chunk'))
    .requiredOption('--backup <id>', 'backup id')
    .option('--concurrency <n>', 'ranged GETs in flight', tuningArg('--concurrency', 'restoreConcurrency'), DEFAULT_TUNING.restoreConcurrency)
    .action(async (opts: CommonOptions & { backup: string; concurrency: number }) => {
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const bar = progressBar('verify ', opts.progress && !opts.json)
      try {
        const r = await verify(repo, { backupId: opts.backup, concurrency: opts.concurrency, onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal), signal })
        bar.stop()
        print([`backup ${r.backupId} is intact: ${r.chunksVerified} chunks verified, ${formatBytes(r.bytesFetched)} read`], { ...r })
      } finally {
        bar.stop()
      }
    })

  common(program.command('list').description('list the backups in a repository'))
    .action(async (opts: CommonOptions) => {
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      const backups = await repo.listBackups()
      const lines = backups.map((b) =>
        `${b.id}  ${formatBytes(b.size).padStart(10)}  ${(b.source.volumeId ?? b.source.device).padEnd(24)} ${b.parent ? `parent ${b.parent}` : 'full'}`)
      print(lines.length ? lines : ['no backups'], { repository: repo.url, backups })
    })

  program
    .command('daemon')
    .description('run the worker: take tasks from SQS and answer on the reply queue (docs/TASKS.md)')
    .addOption(new Option('--config <path>', 'configuration file').env('EBS_WORKER_CONFIG').default(DEFAULT_CONFIG_PATH))
    .action(async (opts: { config: string }) => {
      // Loaded only here: the EC2/SQS/KMS/EBS clients cost ~0.3 s of start-up the other commands do not need.
      const { Daemon } = await import('../daemon/daemon.ts')
      const daemon = new Daemon(await loadDaemonSettings(opts.config, env))
      const systemd = systemdNotifier() // does nothing outside a Type=notify unit
      await daemon.start()
      systemd.ready('polling for tasks')
      // SIGTERM/SIGINT: stop taking tasks, give running ones their grace, hand the rest back.
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
      systemd.stopping()
      await daemon.stop()
      systemd.close()
    })

  program
    .command('doctor')
    .description('check that this worker can work: IMDS, identity, queues, repository, KMS keys, devices, memory, disk')
    .addOption(new Option('--config <path>', 'configuration file').env('EBS_WORKER_CONFIG').default(DEFAULT_CONFIG_PATH))
    .addOption(new Option('--only <check...>', 'run only these checks').choices(CHECK_NAMES))
    .option('--kms-key <id...>', 'KMS keys tasks will use (the Region\'s default EBS key is always checked)')
    .option('--json', 'print one JSON object as the last line of stdout')
    .action(async (opts: { config: string; only?: string[]; kmsKey?: string[] }) => {
      const checks = await doctor({ configPath: opts.config, env, ...(opts.only ? { only: opts.only } : {}), ...(opts.kmsKey ? { kmsKeys: opts.kmsKey } : {}) })
      const problems = checks.filter((c) => c.status === 'problem').length
      print([...checks.map(formatCheck), problems ? `${problems} problem(s)` : 'no problems'], { ok: problems === 0, checks })
      if (problems) throw new ChecksFailed()
    })

  return program
}

/** `doctor` found problems: its lines say which; the exit status is 1, with no error message. */
class ChecksFailed extends Error {}

/** Runs the CLI; resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json')
  const controller = new AbortController()
  const onSignal = (): void => controller.abort()
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const print: Printer = (human, obj) => {
    if (json) process.stdout.write(JSON.stringify({ ok: true, ...obj }) + '\n')
    else process.stdout.write(human.join('\n') + '\n')
  }
  const program = buildProgram(print, controller.signal, process.env)
  try {
    await program.parseAsync(argv, { from: 'user' })
    return ExitStatus.ok
  } catch (err) {
    if (err instanceof ChecksFailed) return ExitStatus.failure
    const commanderCode = (err as { code?: string }).code
    if (commanderCode === 'commander.helpDisplayed' || commanderCode === 'commander.version') return ExitStatus.ok
    if (typeof commanderCode === 'string' && commanderCode.startsWith('commander.')) {
      if (json) process.stdout.write(JSON.stringify({ ok: false, error: toErrorJson(new EbsWorkerError(ErrorCode.BadInput, describe(err))) }) + '\n')
      return ExitStatus.badInput
    }
    if (controller.signal.aborted && !(err instanceof EbsWorkerError && err.code === ErrorCode.Interrupted)) {
      err = new EbsWorkerError(ErrorCode.Interrupted, `interrupted by a signal: ${describe(err)}`, { cause: err })
    }
    const error = toErrorJson(err)
    process.stderr.write(`ebs-worker: error [${error.code}]: ${error.message}\n`)
    if (!(err instanceof EbsWorkerError) && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n')
    if (json) process.stdout.write(JSON.stringify({ ok: false, error }) + '\n')
    return exitStatusFor(err)
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
