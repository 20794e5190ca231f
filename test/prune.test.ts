// forget + prune: the space of forgotten backups is reclaimed down to what the kept ones need,
// mostly unused packs are repacked (their old places forwarded), the kept backups restore byte
// for byte, and a prune killed after any write leaves a repository the next prune completes.
import t from 'tap'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { prune } from '../agent/maintenance/prune.ts'
import { Repository } from '../agent/repo/repository.ts'
import { FileBackend } from '../agent/storage/file.ts'
import type { Backend, ListOptions, PutOptions } from '../agent/storage/types.ts'
import { LOCKS, PACKS } from '../agent/repo/layout.ts'
import { cli, runCli, faultyFile, makeImage, MiB, sha256File, tempDir, type Teardown, until } from './helpers.ts'

async function bytesIn(dir: string): Promise<number> {
  let n = 0
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) if (e.isFile()) n += (await stat(join(e.parentPath, e.name))).size
  return n
}

/** Three backups: A (random), B (A with its second half replaced), C (other random data). */
async function threeBackups(t: Teardown) {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const a = join(dir, 'a.img')
  const b = join(dir, 'b.img')
  const c = join(dir, 'c.img')
  await makeImage(a, 32 * MiB, [{ kind: 'random', offset: 0, length: 32 * MiB }])
  await makeImage(b, 32 * MiB, [{ kind: 'random', offset: 0, length: 32 * MiB }])
  await makeImage(c, 24 * MiB, [{ kind: 'random', offset: 0, length: 24 * MiB }])
  // B shares A's first half.
  const { copyFile, open } = await import('node:fs/promises')
  await copyFile(a, b)
  const h = await open(b, 'r+')
  const { randomBytes } = await import('node:crypto')
  await h.write(randomBytes(16 * MiB), 0, 16 * MiB, 16 * MiB)
  await h.close()
  const ids: Record<string, string> = {}
  for (const [name, image] of [['a', a], ['b', b], ['c', c]] as const) {
    ids[name] = (await cli(['backup', '--repo', repo, '--device', image, '--volume-id', `vol-0000000000000000${name === 'a' ? 'a' : name === 'b' ? 'b' : 'c'}`, '--pack-size', '4MiB'])).backupId
  }
  return { dir, repo, images: { a, b, c }, ids }
}

async function restoresExactly(repo: string, dir: string, id: string, image: string): Promise<boolean> {
  const out = join(dir, `r-${id}-${Math.random().toString(36).slice(2)}.img`)
  await cli(['restore', '--repo', repo, '--backup', id, '--device', out])
  return (await sha256File(out)) === (await sha256File(image))
}

t.test('forget + prune reclaim what only the forgotten backups used; the kept ones restore', async (t) => {
  const { dir, repo, images, ids } = await threeBackups(t)
  const before = await bytesIn(join(repo, PACKS))
  await cli(['forget', '--repo', repo, ids.c!])
  const dry = await cli(['prune', '--repo', repo, '--dry-run', '--grace', '0'])
  t.ok(dry.packs.deleted > 0 && dry.bytes.reclaimed > 20 * MiB, `a dry run says what would go (${dry.packs.deleted} packs)`)
  t.equal(await bytesIn(join(repo, PACKS)), before, 'and deletes nothing')
  const r = await cli(['prune', '--repo', repo, '--grace', '0'])
  const after = await bytesIn(join(repo, PACKS))
  t.ok(before - after > 23 * MiB, `C's 24 MiB are reclaimed (${((before - after) / MiB).toFixed(1)} MiB, reported ${(r.bytes.reclaimed / MiB).toFixed(1)})`)
  t.ok(after >= 48 * MiB, `what A and B need is kept (${(after / MiB).toFixed(1)} MiB)`)
  t.ok(await restoresExactly(repo, dir, ids.a!, images.a), 'A restores exactly')
  t.ok(await restoresExactly(repo, dir, ids.b!, images.b), 'B restores exactly')
  const again = await cli(['prune', '--repo', repo, '--grace', '0'])
  t.equal(again.packs.deleted, 0, 'a second prune finds nothing more to delete')
})

t.test('packs mostly unused are repacked, and backups that refer to their old places still restore', async (t) => {
  const { dir, repo, images, ids } = await threeBackups(t)
  // Forgetting A leaves B's half of A's packs: the packs of A's first half are fully used by B,
  // those of A's second half not at all; 4 MiB packs hold parts of both at the boundary.
  await cli(['forget', '--repo', repo, ids.a!])
  const r = await cli(['prune', '--repo', repo, '--grace', '0', '--max-unused', '0'])
  t.ok(r.packs.deleted > 0, `packs deleted (${r.packs.deleted}), repacked ${r.packs.repacked}`)
  t.ok(await restoresExactly(repo, dir, ids.b!, images.b), 'B restores exactly')
  t.ok(await restoresExactly(repo, dir, ids.c!, images.c), 'C restores exactly')
  await cli(['verify', '--repo', repo, '--backup', ids.b!])
})

/** A storage that fails every write after the first `writes` (a process killed there). */
function dyingAfter(writes: number): (b: Backend) => Backend {
  return (inner) => {
    let left = writes
    const write = <T>(fn: () => Promise<T>): Promise<T> => (left-- > 0 ? fn() : Promise.reject(new Error('killed')))
    return {
      url: inner.url,
      get: (name: string) => inner.get(name),
      getRange: (name: string, offset: number, length: number, into?: Buffer) => inner.getRange(name, offset, length, into),
      list: (prefix: string, options?: ListOptions) => inner.list(prefix, options),
      put: (name: string, data: Buffer, options?: PutOptions) => write(() => inner.put(name, data, options)),
      delete: (name: string) => write(() => inner.delete(name)),
    }
  }
}

t.test('a prune killed after any of its writes leaves a repository the next prune completes', async (t) => {
  const probe = await threeBackups(t)
  await cli(['forget', '--repo', probe.repo, probe.ids.a!])
  let writes = 0
  const counting = (inner: Backend): Backend => ({
    url: inner.url, get: inner.get.bind(inner), getRange: inner.getRange.bind(inner), list: inner.list.bind(inner),
    put: (n: string, d: Buffer, o?: PutOptions) => (writes++, inner.put(n, d, o)), delete: (n: string) => (writes++, inner.delete(n)),
  })
  await prune(await Repository.open(counting(new FileBackend(probe.repo))), { graceMs: 0, maxUnusedPercent: 0 })
  t.ok(writes > 5, `a prune makes ${writes} writes`)
  // Killed after 1, 2, … writes: each time the next prune finishes and everything kept restores.
  const points = [...new Set([0, 1, 2, 3, Math.floor(writes / 3), Math.floor(writes / 2), writes - 3, writes - 2, writes - 1])].filter((n) => n >= 0 && n < writes)
  for (const n of points) {
    const f = await threeBackups(t)
    await cli(['forget', '--repo', f.repo, f.ids.a!])
    // (Random images pack a little differently each time: a prune may need fewer writes than the probe's.)
    const cut = await prune(await Repository.open(dyingAfter(n)(new FileBackend(f.repo))), { graceMs: 0, maxUnusedPercent: 0 }).then(() => null, (err: unknown) => err)
    t.ok(cut === null || /killed/.test(String(cut)), `killed after ${n} writes${cut === null ? ' (it had finished)' : ''}`)
    // Between the two, the repository is whole: check finds no damage (what the killed prune left
    // half-done, a lock or packs nobody refers to, is information).
    const checked = await runCli(['check', '--repo', f.repo, '--read-data', '--json'])
    t.equal(checked.code, 0, `check passes after the kill (${(checked.json?.problems ?? []).filter((p: { severity: string }) => p.severity === 'damage').map((p: { message: string }) => p.message).join('; ')})`)
    // The next prune comes once the killed one's lock is stale (a day later, say).
    const r = await prune(await Repository.open(new FileBackend(f.repo)), { graceMs: 0, maxUnusedPercent: 0, maxWaitMs: 0, staleLockMs: 0 })
    t.equal(r.deferred, null, 'the next prune finishes')
    t.ok(await restoresExactly(f.repo, f.dir, f.ids.b!, f.images.b), 'B restores exactly')
    t.ok(await restoresExactly(f.repo, f.dir, f.ids.c!, f.images.c), 'C restores exactly')
  }
})

t.test('backups running while prune runs, many times over: each restores exactly', async (t) => {
  const dir = await tempDir(t)
  const repo = join(dir, 'repo')
  await cli(['init', '--repo', repo])
  const image = join(dir, 'x.img')
  let reusedDuringPrune = 0
  for (let round = 0; round < 6; round++) {
    // A backup of X, forgotten: its chunks are in the dedup window and in no kept backup.
    await makeImage(image, 16 * MiB, [{ kind: 'random', offset: 0, length: 16 * MiB }])
    const forgotten = (await cli(['backup', '--repo', repo, '--device', image, '--pack-size', '4MiB'])).backupId
    await cli(['forget', '--repo', repo, forgotten])
    // Now a backup of the same X (which may find those chunks in its window) and prune (which
    // condemns them) at once. Even rounds: the backup first, read through a slow disk, so that
    // it reuses them before prune decides; odd rounds: prune first.
    const slow = round % 2 === 0 ? await faultyFile(t, image, { delayMs: 20 }) : image
    const leases = async () => (await readdir(join(repo, LOCKS)).catch(() => [] as string[])).filter((n) => n.startsWith('backup-')).length
    const backupDone = cli(['backup', '--repo', repo, '--device', slow, '--pack-size', '4MiB', '--read-concurrency', '2'])
    if (round % 2 === 0) await until(async () => (await leases()) > 0, 30_000, 'the backup\'s lease')
    const p = await prune(await Repository.open(new FileBackend(repo)), { graceMs: 0, pollMs: 100 })
    const b = await backupDone
    if (round % 2 === 0) reusedDuringPrune += b.chunksReused
    t.ok(await restoresExactly(repo, dir, b.backupId, image), `round ${round}: the backup made during the prune restores exactly (prune deleted ${p.packs.deleted} packs; the backup reused ${b.chunksReused} chunks)`)
  }
  t.ok(reusedDuringPrune > 0, `backups did reuse chunks prune had found unreferenced (${reusedDuringPrune}): prune waited for them and spared those`)
  // And the repository as a whole: every kept backup verifies.
  for (const b of (await cli(['list', '--repo', repo])).backups) await cli(['verify', '--repo', repo, '--backup', b.id])
})
