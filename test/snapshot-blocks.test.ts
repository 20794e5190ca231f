// EBS direct block lists: the pure BlockSet, and listBlocks() through the real @aws-sdk/client-ebs
// against the EBS direct stand-in (test/standin/ebs.ts) over the EC2 stand-in's snapshots.
import t from 'tap'
import { EBSClient } from '@aws-sdk/client-ebs'
import { copyFile, open } from 'node:fs/promises'
import { join } from 'node:path'
import { isEbsWorkerError } from '../agent/core/errors.ts'
import { BlockSet, listBlocks } from '../agent/aws/snapshot-blocks.ts'
import { makeImage, MiB, tempDir } from './helpers.ts'
import { EBS_BLOCK_SIZE, EbsStandIn } from './standin/ebs.ts'
import { Ec2StandIn } from './standin/ec2.ts'

const KiB = 1024
const instance = { instanceId: 'i-0123456789abcdef0', accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1a' }

t.test('BlockSet: runs of blocks become byte ranges, clipped to the device', async (t) => {
  const set = new BlockSet(512 * KiB, 5 * 512 * KiB + 1000)
  for (const i of [0, 1, 3, 5, 3]) set.add(i)
  t.equal(set.count, 4, 'a block listed twice counts once')
  t.same([...set.ranges()], [
    { offset: 0, length: 1024 * KiB },
    { offset: 3 * 512 * KiB, length: 512 * KiB },
    { offset: 5 * 512 * KiB, length: 1000 },
  ])
  t.same([...new BlockSet(512 * KiB, 10 * MiB).ranges()], [], 'nothing listed, nothing to read')
  t.throws(() => set.add(6), /beyond the/, 'a block beyond the device is refused')
  t.throws(() => set.add(-1), /beyond the/)
})

t.test('listBlocks through the SDK and the EBS direct stand-in', async (t) => {
  const dir = await tempDir(t)
  const roots = { sysBlock: join(dir, 'sys/block'), devDir: join(dir, 'dev'), byIdDir: join(dir, 'dev/disk/by-id') }
  const ec2 = await new Ec2StandIn({ instance, dir: join(dir, 'volumes'), roots, bytesPerGiB: 8 * MiB, delayMs: 10 }).start()
  t.teardown(() => ec2.close())
  const calls: string[] = []
  // Eight blocks examined per page: four pages for a 16 MiB snapshot (32 blocks).
  const ebs = await new EbsStandIn({ ec2, pageSpan: 8, onCall: (api) => calls.push(api) }).start()
  t.teardown(() => ebs.close())
  const client = new EBSClient({ endpoint: ebs.endpoint, region: instance.region, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } })
  t.teardown(() => client.destroy())

  const size = 16 * MiB
  const first = join(dir, 'first.img')
  await makeImage(first, size, [{ kind: 'random', offset: MiB, length: MiB + 5 }, { kind: 'text', offset: 12 * MiB, length: 100 }])
  const second = join(dir, 'second.img')
  await copyFile(first, second)
  const h = await open(second, 'r+')
  await h.write(Buffer.from('changed'), 0, 7, 3 * MiB + 10) // block 6
  await h.write(Buffer.from('changed'), 0, 7, 15 * MiB) // block 30
  await h.close()
  const s1 = ec2.addSnapshot({ image: first, sizeGiB: 2, volumeId: 'vol-0aaaaaaaaaaaaaaaa' })
  const s2 = ec2.addSnapshot({ image: second, sizeGiB: 2, volumeId: 'vol-0aaaaaaaaaaaaaaaa' })
  const other = ec2.addSnapshot({ image: second, sizeGiB: 2 })

  const written = await listBlocks(client, { kind: 'written', snapshotId: s1 }, size)
  t.equal(written.blockSize, EBS_BLOCK_SIZE)
  t.same([...written.ranges()], [{ offset: MiB, length: 1.5 * MiB }, { offset: 12 * MiB, length: 512 * KiB }], 'the blocks holding data, nothing else')
  t.same(calls, Array(4).fill('ListSnapshotBlocks'), 'in four pages, two of them empty, followed to the end')

  const changed = await listBlocks(client, { kind: 'changed', firstSnapshotId: s1, secondSnapshotId: s2 }, size)
  t.same([...changed.ranges()], [{ offset: 3 * MiB, length: 512 * KiB }, { offset: 15 * MiB, length: 512 * KiB }], 'exactly the changed blocks')

  const refused = async (p: Promise<unknown>, code: string, message: RegExp, what: string): Promise<void> => {
    const err = await p.then(() => null, (e: unknown) => e)
    t.ok(isEbsWorkerError(err) && err.code === code && message.test(err.message), `${what}: ${String(err)}`)
  }
  await refused(listBlocks(client, { kind: 'changed', firstSnapshotId: s1, secondSnapshotId: other }, size), 'BAD_INPUT', /UNRELATED_SNAPSHOTS/, 'snapshots of two lineages')
  await refused(listBlocks(client, { kind: 'written', snapshotId: 'snap-0000000000000000f' }, size), 'SNAPSHOT_NOT_FOUND', /SNAPSHOT_NOT_FOUND/, 'a missing snapshot')
  await refused(listBlocks(client, { kind: 'written', snapshotId: s1 }, 4 * MiB), 'BAD_INPUT', /beyond/, 'a device smaller than the snapshot')
  const foreign = ec2.addSnapshot({ image: first, sizeGiB: 2, ownerId: '999988887777' })
  await refused(listBlocks(client, { kind: 'written', snapshotId: foreign }, size), 'SNAPSHOT_NOT_FOUND', /does not exist/, "another account's snapshot, not shared")
})
