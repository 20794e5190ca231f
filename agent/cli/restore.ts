// ebs-worker restore: a backup onto a block device or image file; with --volume-id only onto
// that attached EBS volume.
import { stat } from 'node:fs/promises'
import type { Command } from 'commander'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { DEFAULT_TUNING } from '../core/tuning.ts'
import { formatBytes } from '../core/units.ts'
import type { CliContext } from './context.ts'
import { tuningArg, withRepository, type RepositoryOptions } from './options.ts'
import { withProgress } from './progress.ts'

/** --concurrency of restore and verify. */
export const getsInFlight = ['--concurrency <n>', 'ranged GETs in flight', tuningArg('--concurrency', 'restoreConcurrency'), DEFAULT_TUNING.restoreConcurrency] as const

export function restoreCommand(program: Command, { print, signal, aws }: CliContext): void {
  withRepository(program.command('restore').description('restore a backup onto a block device or image file'))
    .requiredOption('--backup <id>', 'backup id')
    .requiredOption('--device <path>', 'target block device or image file (an image file is created if missing)')
    .option('--fresh-target', 'the target is a new empty volume: skip writing zero chunks')
    .option('--force', 'overwrite an image file that is not empty')
    .option('--volume-id <id>', 'refuse unless the device is this attached EBS volume (by its NVMe serial)')
    .option(...getsInFlight)
    .action(async (opts: RepositoryOptions & { backup: string; device: string; freshTarget?: boolean; force?: boolean; volumeId?: string; concurrency: number }) => {
      // An image file that holds something is likely a mistake (a source image, another restore):
      // overwritten only when asked. A block device is the target a restore is for.
      const existing = await stat(opts.device).catch(() => null)
      if (existing?.isFile() && existing.size > 0 && !opts.force) {
        throw new EbsWorkerError(ErrorCode.BadInput, `${opts.device} is an image file that is not empty (${formatBytes(existing.size)}): the restore would overwrite it; pass --force to do so`, { context: { device: opts.device } })
      }
      const [{ openRepository }, { restore }, { assertVolumeDevice }, { CodecThreads }] = await Promise.all([
        import('../app/repository.ts'), import('../pipeline/restore.ts'), import('../device/ebs-device.ts'), import('../repo/codec-threads.ts'),
      ])
      // The codec threads start while the repository opens (a cold start reads their modules from disk).
      CodecThreads.shared().start()
      const repo = await openRepository(opts.repo, { aws: aws(), keyFile: opts.keyFile })
      // Before anything is opened for writing: the device must be that volume (its NVMe serial).
      if (opts.volumeId) await assertVolumeDevice(opts.device, opts.volumeId)
      const r = await withProgress('restore', opts.progress && !opts.json, (onProgress) => restore(repo, {
        backupId: opts.backup,
        device: opts.device,
        freshTarget: opts.freshTarget === true,
        concurrency: opts.concurrency,
        onProgress,
        signal,
      }))
      const secs = r.durationMs / 1000
      print(
        [
          `restored backup ${r.backupId} onto ${opts.device} (${formatBytes(r.size)}) in ${secs.toFixed(1)} s (${formatBytes(r.size / Math.max(secs, 0.001))}/s)`,
          `  fetched ${formatBytes(r.bytesFetched)} in ${r.requests} requests, ${r.chunksVerified} chunks verified, ${r.zeroChunksSkipped} zero chunks skipped`,
        ],
        { ...r },
      )
    })
}
