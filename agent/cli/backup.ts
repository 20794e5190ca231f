// ebs-worker backup: a block device or image file into the repository, in full or incremental.
import { readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import { EbsWorkerError, ErrorCode, describe } from '../core/errors.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { formatBytes } from '../core/units.ts'
import type { CliContext } from './context.ts'
import { instantArg, tuningArg, withRepository, type RepositoryOptions } from './options.ts'
import { withProgress } from './progress.ts'

interface BackupFlags extends RepositoryOptions {
  device: string
  parent?: string
  changedRanges?: string
  volumeId?: string
  snapshotId?: string
  tag?: string[]
  time?: Date
  readConcurrency: number
  uploadConcurrency: number
  packSize: number
  compressionLevel: number
}

export function backupCommand(program: Command, { print, signal, aws }: CliContext): void {
  withRepository(program.command('backup').description('back up a block device or image file'))
    .requiredOption('--device <path>', 'block device or image file to read')
    .option('--parent <id>', 'previous backup of the same volume (incremental)')
    .option('--changed-ranges <file>', 'with --parent: JSON [{"offset":n,"length":n}] of the bytes that changed')
    .option('--volume-id <id>', 'EBS volume id to record in the manifest')
    .option('--snapshot-id <id>', 'EBS snapshot id to record in the manifest')
    .option('--tag <key=value...>', 'tags to record in the manifest')
    .option('--time <iso-8601>', 'the backup\'s time, when not now (imports, tests): 2026-11-23T04:51:25Z; its id takes the same time', instantArg('--time'))
    .option('--read-concurrency <n>', 'chunk reads in flight', tuningArg('--read-concurrency', 'readConcurrency'), DEFAULT_TUNING.readConcurrency)
    .option('--upload-concurrency <n>', 'packs uploading at once', tuningArg('--upload-concurrency', 'uploadConcurrency'), DEFAULT_TUNING.uploadConcurrency)
    .option('--pack-size <size>', 'target pack size', tuningArg('--pack-size', 'packSize', true), DEFAULT_TUNING.packSize)
    .option('--compression-level <n>', 'zstd level (1-19)', tuningArg('--compression-level', 'compressionLevel'), DEFAULT_TUNING.compressionLevel)
    .action(async (opts: BackupFlags) => {
      const [{ openRepository }, { backup }, { parseChangedRanges }, { CodecThreads }] = await Promise.all([
        import('../app/repository.ts'), import('../pipeline/backup.ts'), import('../core/plan.ts'), import('../repo/codec-threads.ts'),
      ])
      // The codec threads start while the repository opens (a cold start reads their modules from disk).
      CodecThreads.shared().start()
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
      const result = await withProgress('backup ', opts.progress && !opts.json, (onProgress) => backup(repo, {
        device: opts.device,
        ...(opts.parent ? { parent: opts.parent } : {}),
        ...(changed ? { changedRanges: changed } : {}),
        source: { ...(opts.volumeId ? { volumeId: opts.volumeId } : {}), ...(opts.snapshotId ? { snapshotId: opts.snapshotId } : {}) },
        tags,
        ...(opts.time ? { time: opts.time } : {}),
        readConcurrency: opts.readConcurrency,
        uploadConcurrency: opts.uploadConcurrency,
        packSize: opts.packSize,
        onProgress,
        signal,
      }))
      const s = result.stats
      const secs = s.durationMs / 1000
      print(
        [
          `backup ${result.id} of ${opts.device} (${formatBytes(result.size)})`,
          `  read ${formatBytes(s.bytesRead)} in ${secs.toFixed(1)} s (${formatBytes(s.bytesRead / Math.max(secs, 0.001))}/s), stored ${formatBytes(s.bytesStored)} new`,
          `  chunks: ${s.chunksTotal} total, ${s.chunksNew} new, ${s.chunksReused} already stored, ${s.chunksZero} zero, ${s.chunksFromParent} from parent`,
        ],
        { backupId: result.id, createdAt: result.createdAt, size: result.size, parent: result.parent, checksum: result.checksum, ...s },
      )
    })
}
