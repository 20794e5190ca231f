// Checkpoints: a backup cut short (interrupted, or failing after a periodic checkpoint) goes on
// from what it had made durable, reads only the rest, and ends with the same backup a run in one
// go would make. Real files and a real file:// repository.
import t from 'tap'
import { existsSync } from 'node:fs'
import { copyFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FileBackend } from '../agent/storage/file.ts'
import { backup } from '../agent/pipeline/backup.ts'
import { checkpointObjectName, decodeCheckpoint, encodeCheckpoint, type Checkpoint } from '../agent/pipeline/checkpoint.ts'
import { isEbsWorkerError } from '../agent/core/errors.ts'
import { Repository } from '../agent/repo/repository.ts'
import { restore } from '../agent/pipeline/restore.ts'
import { logLines, makeImage, MiB, sha256File, tempDir, type Teardown } from './helpers.ts'
import { logTo } from '../agent/core/log.ts'

const stats = { bytesRead: 1, bytesNew: 2, bytesStored: 3, chunksTotal: 10, chunksZero: 4, chunksNew: 5, chunksReused: 6, chunksFromParent: 7, durationMs: 8 }

t.test('checkpoint encoding', async (t) => {
  const ref = { id: Buffer.alloc(32, 7), pack: 'ab'.repeat(16), offset: 1, length: 2, rawLength: 3 }
  const backupCheckpoint: Checkpoint = {
    kind: 'backup', savedAt: new Date().toISOString(),
    writer: {
      backupId: '20261123T000000Z-0a0b0c0d', size: 10 * MiB - 5, chunkSize: MiB, parent: null, leafChunks: 4, fanout: 3, cursor: 6,
      leaf: [ref, ref], builder: { leaves: 1, pending: [[ref], []] }, stats,
    },
  }
  const encoded = encodeCheckpoint(backupCheckpoint)
  t.ok(encoded.length < 2048, `a few hundred bytes whatever the volume (${encoded.length})`)
  t.same(decodeCheckpoint(encoded, 'x'), backupCheckpoint, 'a backup\'s: round trip')
  const restoreCheckpoint: Checkpoint = {
    kind: 'restore', savedAt: new Date().toISOString(), target: 'vol-0aaaaaaaaaaaaaaaa', backupId: '20261123T000000Z-0a0b0c0d',
    size: 10 * MiB, chunkSize: MiB, from: 4096, done: [4096, 4100], stats: { bytesWritten: 5 },
  }
  t.same(decodeCheckpoint(encodeCheckpoint(restoreCheckpoint), 'x'), restoreCheckpoint, 'a restore\'s: round trip')
  t.throws(() => decodeCheckpoint(encoded.subarray(0, encoded.length - 1), 'x'), { code: 'REPO_FORMAT', message: /damaged/ })
  t.throws(() => decodeCheckpoint(Buffer.from([0, 0, 0, 9, 1, 2]), 'x'), { code: 'REPO_FORMAT' })
})

async function setup(t: Teardown) {
  const dir = await tempDir(t)
  const repo = await Repository.init(new FileBackend(join(dir, 'repo')))
  const image = join(dir, 'vol.img')
  const size = 64 * MiB
  await makeImage(image, size, [{ kind: 'random', offset: 0, length: 40 * MiB }, { kind: 'text', offset: 48 * MiB, length: 10 * MiB }])
  const checkpointFile = join(dir, 'repo', checkpointObjectName('task:t1'))
  /** Restores `backupId` and compares it with the image. */
  const holdsImage = async (backupId: string): Promise<boolean> => {
    const out = join(dir, `restored-${backupId}.img`)
    await restore(repo, { backupId, device: out })
    return (await sha256File(out, size)) === (await sha256File(image))
  }
  return { dir, repo, image, size, checkpointFile, holdsImage }
}

t.test('an interrupted backup checkpoints; the next attempt reads only the rest', async (t) => {
  const { repo, image, checkpointFile, holdsImage } = await setup(t)
  const abort = new AbortController()
  const first = await backup(repo, {
    device: image, checkpoint: { key: 'task:t1', intervalMs: 3_600_000 }, signal: abort.signal, readConcurrency: 2,
    onProgress: (p) => {
      if (p.bytesDone >= 20 * MiB) abort.abort(new Error('visibility cap'))
    },
  }).then(() => null, (err: unknown) => err)
  t.ok(isEbsWorkerError(first) && first.code === 'INTERRUPTED' && /checkpointed/.test(first.message), `interrupted, and says it checkpointed: ${String(first)}`)
  t.ok(existsSync(checkpointFile), 'the checkpoint is in the repository')
  t.same((await repo.listBackups()).length, 0, 'no backup is visible yet')

  const second = await backup(repo, { device: image, checkpoint: { key: 'task:t1' } })
  t.ok(second.resumedFrom, 'the second attempt went on from the checkpoint')
  // The image holds 50 MiB of data (the rest are holes, which are not read).
  const data = 50 * MiB
  t.ok(second.stats.bytesRead >= data, `the figures add up both attempts (${second.stats.bytesRead} bytes read)`)
  const repeated = second.stats.bytesRead - data
  t.ok(repeated <= 4 * MiB, `at most the reads in flight at the cut were repeated (${repeated / MiB} MiB)`)
  t.notOk(existsSync(checkpointFile), 'the checkpoint is gone once the backup is recorded')
  t.ok(await holdsImage(second.id), 'the backup holds the image, byte for byte')
  t.equal((await repo.listBackups()).length, 1, 'one backup')
})

t.test('a backup that fails after a periodic checkpoint goes on from it', async (t) => {
  const { repo, image, checkpointFile, holdsImage } = await setup(t)
  let sawCheckpoint = false
  const first = await backup(repo, {
    device: image, checkpoint: { key: 'task:t1', intervalMs: 0 }, readConcurrency: 2,
    onProgress: (p) => {
      sawCheckpoint ||= existsSync(checkpointFile)
      // A crash, as far as the backup can tell: not an interruption, so no last checkpoint.
      if (p.bytesDone >= 30 * MiB) throw new Error('the worker died')
    },
  }).then(() => null, (err: unknown) => err)
  t.match(String(first), /the worker died/, 'the first attempt failed')
  t.ok(sawCheckpoint, 'after saving checkpoints as it went')
  const second = await backup(repo, { device: image, checkpoint: { key: 'task:t1' } })
  t.ok(second.resumedFrom, 'the next attempt went on from the last one')
  t.ok(await holdsImage(second.id), 'and the backup holds the image, byte for byte')
})

t.test('a checkpoint that does not fit is not used', async (t) => {
  const { dir, repo, image, holdsImage } = await setup(t)
  const abort = new AbortController()
  await backup(repo, {
    device: image, checkpoint: { key: 'task:t1' }, signal: abort.signal, readConcurrency: 2,
    onProgress: (p) => p.bytesDone >= 20 * MiB && abort.abort(),
  }).catch(() => {})
  // The same task key, another device size: a fresh backup.
  const other = join(dir, 'other.img')
  await makeImage(other, 32 * MiB, [{ kind: 'random', offset: 0, length: 32 * MiB }])
  const b = await backup(repo, { device: other, checkpoint: { key: 'task:t1' } })
  t.equal(b.resumedFrom, null, 'another volume size: started afresh')
  t.equal(b.stats.bytesRead, 32 * MiB)
  // A damaged checkpoint is no reason to fail: it is ignored.
  await backup(repo, { device: image, checkpoint: { key: 'task:t2', intervalMs: 0 }, signal: AbortSignal.abort() }).catch(() => {})
  await writeFile(join(dir, 'repo', checkpointObjectName('task:t2')), 'garbage')
  const logged = { text: '' }
  const undo = logTo({ write: (line: string) => void (logged.text += line) })
  const c = await backup(repo, { device: image, checkpoint: { key: 'task:t2' } }).finally(undo)
  t.equal(c.resumedFrom, null, 'a damaged checkpoint: started afresh')
  t.match(logLines(logged.text), [{ level: 'warn', msg: /cannot read the checkpoint; the work starts afresh/, checkpoint: checkpointObjectName('task:t2'), error: { code: 'REPO_FORMAT', message: /damaged/ } }],
    'saying so in a warning, not an error')
  t.ok(await holdsImage(c.id), 'and the backup is right')
})

t.test('an interrupted restore checkpoints; the next attempt writes only the rest, onto the same target', async (t) => {
  const { dir, repo, image, size } = await setup(t)
  const { id } = await backup(repo, { device: image })
  const target = join(dir, 'target.img')
  const abort = new AbortController()
  const first = await restore(repo, {
    backupId: id, device: target, concurrency: 2, maxRequestBytes: 2 * MiB, signal: abort.signal,
    checkpoint: { key: 'task:r1', target: 'vol-0aaaaaaaaaaaaaaaa', intervalMs: 3_600_000 },
    onProgress: (p) => p.bytesDone >= 20 * MiB && abort.abort(),
  }).then(() => null, (err: unknown) => err)
  t.ok(isEbsWorkerError(first) && first.code === 'INTERRUPTED' && /checkpointed/.test(first.message), `interrupted, and says it checkpointed: ${String(first)}`)
  const checkpointFile = join(dir, 'repo', checkpointObjectName('task:r1'))
  t.ok(existsSync(checkpointFile), 'the checkpoint is in the repository')

  // Another target (a new volume): the checkpoint does not apply to it.
  await copyFile(checkpointFile, `${checkpointFile}.saved`)
  const elsewhere = join(dir, 'elsewhere.img')
  const other = await restore(repo, { backupId: id, device: elsewhere, checkpoint: { key: 'task:r1', target: 'vol-0bbbbbbbbbbbbbbbb' } })
  t.equal(other.resumedFrom, null, 'another volume starts afresh')
  t.equal(await sha256File(elsewhere, size), await sha256File(image), 'and is restored whole')

  // Put the checkpoint back (the restore above finished and removed it) and go on on the first target.
  await rename(`${checkpointFile}.saved`, checkpointFile)
  const second = await restore(repo, {
    backupId: id, device: target, concurrency: 2, maxRequestBytes: 2 * MiB,
    checkpoint: { key: 'task:r1', target: 'vol-0aaaaaaaaaaaaaaaa' },
  })
  t.ok(second.resumedFrom, 'the second attempt went on from the checkpoint, and succeeded')
  t.equal(await sha256File(target, size), await sha256File(image), 'the target holds the backup, byte for byte')
  t.notOk(existsSync(checkpointFile), 'and the checkpoint is gone')
})

t.test('a restore resumed from its checkpoint fetches only what was not written', async (t) => {
  const { dir, repo, image, size } = await setup(t)
  const { id } = await backup(repo, { device: image })
  const target = join(dir, 'target.img')
  const abort = new AbortController()
  const checkpoint = { key: 'task:r2', target: 'vol-0cccccccccccccccc' }
  await restore(repo, {
    backupId: id, device: target, concurrency: 1, maxRequestBytes: MiB, signal: abort.signal, checkpoint,
    onProgress: (p) => p.bytesDone >= 30 * MiB && abort.abort(),
  }).catch(() => {})
  const second = await restore(repo, { backupId: id, device: target, checkpoint })
  t.ok(second.resumedFrom, 'went on from the checkpoint')
  const full = await restore(repo, { backupId: id, device: join(dir, 'whole.img') })
  t.ok(second.requests < full.requests, `fewer requests than a whole restore (${second.requests} < ${full.requests})`)
  t.equal(await sha256File(target, size), await sha256File(image), 'and the target holds the backup, byte for byte')
})
