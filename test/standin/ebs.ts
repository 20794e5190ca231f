// A stand-in for the read side of the EBS direct APIs, ListSnapshotBlocks and ListChangedBlocks,
// over their real REST-JSON protocol (GET /snapshots/{id}/blocks, GET /snapshots/{id}/changedblocks),
// so @aws-sdk/client-ebs runs unchanged. It answers about the EC2 stand-in's snapshots.
//
// It follows the EBS direct API Reference (ListSnapshotBlocks, ListChangedBlocks, Errors) and the
// EBS User Guide ("Read Amazon EBS snapshots with EBS direct APIs", "Frequently asked questions
// for EBS direct APIs"):
//   - blocks are 512 KiB; indexes come unique and in numerical order;
//   - a page may hold fewer blocks than MaxResults, even none, with a NextToken to go on; the
//     last page has no NextToken; NextToken wins over StartingBlockIndex;
//   - ListChangedBlocks compares two snapshots of one volume/snapshot lineage only, otherwise
//     ValidationException (Reason UNRELATED_SNAPSHOTS);
//   - a snapshot the caller cannot see is ResourceNotFoundException (Reason SNAPSHOT_NOT_FOUND);
//     one still pending cannot be accessed (the FAQ says so; the error it gets is our choice:
//     ValidationException, Reason INVALID_SNAPSHOT_ID);
//   - IAM authorizes a call on the snapshots it names (arn:aws:ec2:<region>::snapshot/<id>, with
//     their tags as aws:ResourceTag/…: Service Authorization Reference, "Actions, resources, and
//     condition keys for Amazon EBS direct APIs").
// Departures, documented: EBS lists the blocks that were *written*; this stand-in lists the
// blocks that are not all zeros (ListSnapshotBlocks) or whose bytes differ (ListChangedBlocks),
// a subset of what EBS would list, which is what a reader that trusts the lists must cope with
// anyway. Lineage: a snapshot belongs to the volume it was taken of, a volume to the snapshot
// it was created from, back to the first volume or seeded snapshot; two snapshots are related
// when those roots match.
import { randomBytes, randomUUID } from 'node:crypto'
import { open, type FileHandle } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { Ec2StandIn } from './ec2.ts'
import type { AwsWorld } from './iam.ts'

export const EBS_BLOCK_SIZE = 512 * 1024

export interface EbsStandInOptions {
  ec2: Ec2StandIn
  /**
   * Callers and their identity policies (test/standin/iam.ts): each call is authorized as
   * ebs:<Action> and recorded. Without it, every caller is the EC2 stand-in's account.
   */
  world?: AwsWorld
  /** Block indexes examined per page: small, so that paging (and empty pages) is exercised. */
  pageSpan?: number
  /** Called with each API call, for tests that count them. */
  onCall?: (api: 'ListSnapshotBlocks' | 'ListChangedBlocks', params: Record<string, string>) => void
}

class EbsError extends Error {
  readonly status: number
  readonly type: string
  readonly reason: string
  constructor(status: number, type: string, reason: string, message: string) {
    super(message)
    this.status = status
    this.type = type
    this.reason = reason
  }
}

export class EbsStandIn {
  readonly #options: EbsStandInOptions
  #server: Server | null = null
  endpoint = ''
  /** The request id of every answer, in order. */
  readonly requestIds: string[] = []

  constructor(options: EbsStandInOptions) {
    this.#options = options
  }

  async start(): Promise<this> {
    this.#server = createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        // Every answer has its request id, as EBS's do (x-amzn-RequestId), which the SDK reads into $metadata.requestId.
        const requestId = randomUUID()
        this.requestIds.push(requestId)
        this.#route(req)
          .then((body) => res.writeHead(200, { 'Content-Type': 'application/json', 'x-amzn-RequestId': requestId }).end(JSON.stringify(body)))
          .catch((err: unknown) => {
            const e = err instanceof EbsError ? err : new EbsError(500, 'InternalServerException', '', String(err))
            res.writeHead(e.status, { 'Content-Type': 'application/json', 'x-amzn-ErrorType': e.type, 'x-amzn-RequestId': requestId })
              .end(JSON.stringify({ Message: e.message, ...(e.reason ? { Reason: e.reason } : {}) }))
          })
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }

  async #route(req: IncomingMessage): Promise<unknown> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const match = /^\/snapshots\/([^/]+)\/(blocks|changedblocks)$/.exec(url.pathname)
    if (req.method !== 'GET' || !match) throw new EbsError(404, 'ResourceNotFoundException', '', `no such operation: ${req.method} ${url.pathname}`)
    const api = match[2] === 'blocks' ? 'ListSnapshotBlocks' : 'ListChangedBlocks'
    const account = this.#authorize(req, api, [decodeURIComponent(match[1]!), ...(url.searchParams.get('firstSnapshotId') ? [url.searchParams.get('firstSnapshotId')!] : [])])
    const params = Object.fromEntries(url.searchParams)
    const maxResults = url.searchParams.has('maxResults') ? Number(url.searchParams.get('maxResults')) : 10_000
    if (!Number.isInteger(maxResults) || maxResults < 100 || maxResults > 10_000) {
      throw new EbsError(400, 'ValidationException', 'INVALID_PARAMETER_VALUE', 'MaxResults must be between 100 and 10000')
    }
    const start = url.searchParams.has('pageToken')
      ? this.#decodeToken(url.searchParams.get('pageToken')!)
      : Number(url.searchParams.get('startingBlockIndex') ?? 0)
    const second = this.#snapshot(decodeURIComponent(match[1]!), account)
    if (match[2] === 'blocks') {
      this.#options.onCall?.('ListSnapshotBlocks', { snapshotId: second.snapshotId, ...params })
      const page = await this.#page(second.image, null, second.bytes, start, maxResults)
      return {
        Blocks: page.indexes.map((i) => ({ BlockIndex: i, BlockToken: token() })),
        ExpiryTime: Date.now() / 1000 + 7 * 24 * 3600, VolumeSize: second.sizeGiB, BlockSize: EBS_BLOCK_SIZE,
        ...(page.next !== null ? { NextToken: this.#encodeToken(page.next) } : {}),
      }
    }
    const firstId = url.searchParams.get('firstSnapshotId')
    if (!firstId) throw new EbsError(400, 'ValidationException', 'INVALID_PARAMETER_VALUE', 'this stand-in needs FirstSnapshotId')
    const first = this.#snapshot(firstId, account)
    this.#options.onCall?.('ListChangedBlocks', { snapshotId: second.snapshotId, ...params })
    if (this.#lineage(first.snapshotId) !== this.#lineage(second.snapshotId)) {
      throw new EbsError(400, 'ValidationException', 'UNRELATED_SNAPSHOTS', `${first.snapshotId} and ${second.snapshotId} are not of one volume lineage`)
    }
    const page = await this.#page(second.image, first.image, Math.max(first.bytes, second.bytes), start, maxResults)
    return {
      ChangedBlocks: page.indexes.map((i) => ({ BlockIndex: i, FirstBlockToken: token(), SecondBlockToken: token() })),
      ExpiryTime: Date.now() / 1000 + 7 * 24 * 3600, VolumeSize: second.sizeGiB, BlockSize: EBS_BLOCK_SIZE,
      ...(page.next !== null ? { NextToken: this.#encodeToken(page.next) } : {}),
    }
  }

  /** Block indexes from `start` on, in order, over at most `pageSpan` blocks examined. */
  async #page(image: string, against: string | null, bytes: number, start: number, maxResults: number): Promise<{ indexes: number[]; next: number | null }> {
    const blocks = Math.ceil(bytes / EBS_BLOCK_SIZE)
    const end = Math.min(blocks, start + (this.#options.pageSpan ?? 16))
    const indexes: number[] = []
    const a = await open(image, 'r')
    const b = against ? await open(against, 'r') : null
    try {
      const bufA = Buffer.alloc(EBS_BLOCK_SIZE)
      const bufB = Buffer.alloc(EBS_BLOCK_SIZE)
      let i = start
      for (; i < end && indexes.length < maxResults; i++) {
        await readBlock(a, bufA, i)
        if (b) {
          await readBlock(b, bufB, i)
          if (!bufA.equals(bufB)) indexes.push(i)
        } else if (bufA.some((x) => x !== 0)) {
          indexes.push(i)
        }
      }
      return { indexes, next: i < blocks ? i : null }
    } finally {
      await a.close()
      await b?.close()
    }
  }

  #snapshot(snapshotId: string, account: string): { snapshotId: string; image: string; sizeGiB: number; bytes: number } {
    const s = this.#options.ec2.snapshots.get(snapshotId)
    if (!s || s.deleted || (s.ownerId !== account && !s.sharedWith.includes(account))) {
      throw new EbsError(404, 'ResourceNotFoundException', 'SNAPSHOT_NOT_FOUND', `The snapshot '${snapshotId}' does not exist.`)
    }
    if (s.state !== 'completed') {
      throw new EbsError(400, 'ValidationException', 'INVALID_SNAPSHOT_ID', `The snapshot '${snapshotId}' is not completed.`)
    }
    return { snapshotId, image: s.image, sizeGiB: s.sizeGiB, bytes: s.sizeGiB * this.#options.ec2.bytesPerGiB }
  }

  /** The root of a snapshot's lineage: the first volume, or the seeded snapshot, it descends from. */
  #lineage(snapshotId: string): string {
    const { snapshots, volumes } = this.#options.ec2
    let snapshot = snapshots.get(snapshotId)
    let root = snapshotId
    for (let hops = 0; snapshot && hops < 1000; hops++) {
      if (!snapshot.volumeId) return snapshot.snapshotId
      root = snapshot.volumeId
      const from = volumes.get(snapshot.volumeId)?.snapshotId
      snapshot = from ? snapshots.get(from) : undefined
    }
    return root
  }

  /** The caller's account, once its identity policy allows the call on each snapshot (AccessDeniedException otherwise). */
  #authorize(req: IncomingMessage, api: string, snapshotIds: string[]): string {
    const { world, ec2 } = this.#options
    if (!world) return ec2.accountId
    const { principal, region } = world.callerOf(req.headers.authorization, 'us-east-1')
    const requests = snapshotIds.map((id) => ({
      action: `ebs:${api}`, resource: `arn:aws:ec2:${region}::snapshot/${id}`,
      context: Object.fromEntries(Object.entries(ec2.snapshots.get(id)?.tags ?? {}).map(([k, v]) => [`aws:ResourceTag/${k}`, v])),
    }))
    if (world.authorizeAll(principal, 'ebs', api, region, requests)) {
      throw new EbsError(403, 'AccessDeniedException', 'UNAUTHORIZED_ACCOUNT', `User: ${principal.arn} is not authorized to perform: ebs:${api}`)
    }
    return principal.accountId
  }

  #encodeToken(index: number): string {
    return Buffer.from(`next:${index}`).toString('base64')
  }

  #decodeToken(t: string): number {
    const m = /^next:(\d+)$/.exec(Buffer.from(t, 'base64').toString())
    if (!m) throw new EbsError(400, 'ValidationException', 'INVALID_PAGE_TOKEN', 'The pagination token is not valid.')
    return Number(m[1])
  }
}

function token(): string {
  return randomBytes(24).toString('base64')
}

/** One block of an image; bytes beyond its end read as zeros (a sparse volume). */
async function readBlock(h: FileHandle, buf: Buffer, index: number): Promise<void> {
  buf.fill(0)
  let done = 0
  while (done < buf.length) {
    const { bytesRead } = await h.read(buf, done, buf.length - done, index * EBS_BLOCK_SIZE + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
}
