// A stand-in for the part of AWS KMS the worker uses: DescribeKey, over the real AWS JSON 1.1
// protocol (POST, X-Amz-Target: TrentService.<Action>), so @aws-sdk/client-kms runs unchanged.
// Follows the KMS API Reference: a key is named by key id, key ARN, alias name or alias ARN;
// an unknown one is NotFoundException; KeyManager is "AWS" for AWS managed keys (aws/ebs) and
// "CUSTOMER" for customer managed keys, which is what decides whether EBS snapshots encrypted
// with it can be shared (EBS User Guide, "Share an Amazon EBS snapshot").
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'

export interface StandInKey {
  keyId: string
  accountId: string
  region: string
  keyManager: 'AWS' | 'CUSTOMER'
  aliases?: string[]
}

export class KmsStandIn {
  readonly keys: StandInKey[]
  endpoint = ''
  #server: Server | null = null

  constructor(keys: StandInKey[]) {
    this.keys = keys
  }

  static arn(k: StandInKey): string {
    return `arn:aws:kms:${k.region}:${k.accountId}:key/${k.keyId}`
  }

  /** The key a KMS key reference names, as DescribeKey resolves it. */
  resolve(ref: string): StandInKey | undefined {
    return this.keys.find((k) =>
      ref === k.keyId || ref === KmsStandIn.arn(k) ||
      (k.aliases ?? []).some((a) => ref === a || ref === `arn:aws:kms:${k.region}:${k.accountId}:${a}`))
  }

  async start(): Promise<this> {
    this.#server = createServer((req, res) => {
      let body = ''
      req.on('data', (d) => (body += d))
      req.on('end', () => {
        const send = (status: number, obj: unknown): void => {
          res.writeHead(status, { 'Content-Type': 'application/x-amz-json-1.1', 'x-amzn-RequestId': randomUUID() }).end(JSON.stringify(obj))
        }
        const target = String(req.headers['x-amz-target'] ?? '')
        let input: { KeyId?: string }
        try {
          input = JSON.parse(body || '{}')
        } catch {
          return send(400, { __type: 'SerializationException', message: 'body is not JSON' })
        }
        if (target !== 'TrentService.DescribeKey') return send(400, { __type: 'UnknownOperationException', message: target })
        const key = input.KeyId ? this.resolve(input.KeyId) : undefined
        if (!key) return send(400, { __type: 'NotFoundException', message: `Key '${input.KeyId}' does not exist` })
        send(200, {
          KeyMetadata: {
            AWSAccountId: key.accountId, KeyId: key.keyId, Arn: KmsStandIn.arn(key), CreationDate: 1700000000,
            Enabled: true, KeyState: 'Enabled', KeyUsage: 'ENCRYPT_DECRYPT', KeySpec: 'SYMMETRIC_DEFAULT',
            Origin: 'AWS_KMS', KeyManager: key.keyManager, Description: key.keyManager === 'AWS' ? 'Default key that protects my EBS volumes' : '',
          },
        })
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }
}
