// Which parts of a volume a backup needs to read, asked of the EBS direct APIs: the 512 KiB
// blocks a snapshot holds (ListSnapshotBlocks; blocks it does not list read as zeros) or the
// blocks that differ between two snapshots of one lineage (ListChangedBlocks; the rest is as in
// the first). EBS User Guide, "Read Amazon EBS snapshots with EBS direct APIs"; EBS direct API
// Reference, ListSnapshotBlocks / ListChangedBlocks.
//
// The lists only save reads; they never decide what the data is. The caller falls back to
// reading the whole volume when EBS cannot answer, so a backup stays correct either way.
import { EBSClient, ListChangedBlocksCommand, ListSnapshotBlocksCommand } from '@aws-sdk/client-ebs'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { awsError } from './errors.ts'
import type { ByteRange } from '../core/geometry.ts'

/** The largest page EBS returns (MaxResults: 100–10000). */
const PAGE = 10_000

export type BlockQuery =
  | { kind: 'written'; snapshotId: string }
  | { kind: 'changed'; firstSnapshotId: string; secondSnapshotId: string }

/**
 * A set of block indexes, one bit per 512 KiB block of the device (2 MiB of memory per TiB),
 * so that even a list of millions of scattered blocks stays small.
 */
export class BlockSet {
  readonly blockSize: number
  readonly deviceSize: number
  readonly #bits: Uint8Array
  count = 0

  constructor(blockSize: number, deviceSize: number) {
    if (!Number.isInteger(blockSize) || blockSize <= 0) throw new Error(`bad block size ${blockSize}`)
    this.blockSize = blockSize
    this.deviceSize = deviceSize
    this.#bits = new Uint8Array(Math.ceil(Math.ceil(deviceSize / blockSize) / 8))
  }

  add(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index * this.blockSize >= this.deviceSize) {
      throw new EbsWorkerError(ErrorCode.BadInput, `block ${index} lies beyond the ${this.deviceSize}-byte device: is it the snapshot's volume?`)
    }
    const mask = 1 << (index & 7)
    if (this.#bits[index >> 3]! & mask) return
    this.#bits[index >> 3]! |= mask
    this.count++
  }

  has(index: number): boolean {
    return (this.#bits[index >> 3]! & (1 << (index & 7))) !== 0
  }

  /** Byte ranges of runs of listed blocks, in order; the last one is clipped to the device. */
  *ranges(): Generator<ByteRange> {
    const blocks = Math.ceil(this.deviceSize / this.blockSize)
    for (let i = 0; i < blocks; i++) {
      if (!this.has(i)) continue
      let end = i + 1
      while (end < blocks && this.has(end)) end++
      const offset = i * this.blockSize
      yield { offset, length: Math.min(end * this.blockSize, this.deviceSize) - offset }
      i = end
    }
  }
}

/** Lists the blocks `query` names, for a device of `deviceSize` bytes. */
export async function listBlocks(client: EBSClient, query: BlockQuery, deviceSize: number, signal?: AbortSignal): Promise<BlockSet> {
  const options = signal ? { abortSignal: signal } : {}
  let set: BlockSet | null = null
  let nextToken: string | undefined
  do {
    let page: { blockSize?: number | undefined; indexes: Array<number | undefined>; nextToken?: string | undefined }
    try {
      if (query.kind === 'written') {
        const out = await client.send(new ListSnapshotBlocksCommand({ SnapshotId: query.snapshotId, MaxResults: PAGE, NextToken: nextToken }), options)
        page = { blockSize: out.BlockSize, indexes: (out.Blocks ?? []).map((b) => b.BlockIndex), nextToken: out.NextToken }
      } else {
        const out = await client.send(new ListChangedBlocksCommand({
          FirstSnapshotId: query.firstSnapshotId, SecondSnapshotId: query.secondSnapshotId, MaxResults: PAGE, NextToken: nextToken,
        }), options)
        page = { blockSize: out.BlockSize, indexes: (out.ChangedBlocks ?? []).map((b) => b.BlockIndex), nextToken: out.NextToken }
      }
    } catch (err) {
      throw ebsError(err, query)
    }
    if (!page.blockSize) throw new EbsWorkerError(ErrorCode.AwsError, 'EBS returned a block list without a block size')
    set ??= new BlockSet(page.blockSize, deviceSize)
    if (page.blockSize !== set.blockSize) throw new EbsWorkerError(ErrorCode.AwsError, 'EBS changed its block size between pages')
    for (const index of page.indexes) {
      if (index === undefined) throw new EbsWorkerError(ErrorCode.AwsError, 'EBS returned a block without an index')
      set.add(index)
    }
    nextToken = page.nextToken || undefined
  } while (nextToken)
  return set!
}

/** An EBS direct error as one of ours (aws/errors.ts), keeping EBS's reason (e.g. UNRELATED_SNAPSHOTS). */
function ebsError(err: unknown, query: BlockQuery): EbsWorkerError {
  const reason = (err as { Reason?: string }).Reason
  const operation = query.kind === 'written' ? 'ListSnapshotBlocks' : 'ListChangedBlocks'
  const e = awsError(err, { service: 'EBS', operation }, { snapshotId: query.kind === 'written' ? query.snapshotId : query.secondSnapshotId })
  if (reason) e.message += ` (${reason})`
  return e
}
