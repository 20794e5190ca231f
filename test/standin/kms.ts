// A stand-in for the part of AWS KMS the worker and the controller use, over the real AWS JSON 1.1
// protocol (POST, X-Amz-Target: TrentService.<Action>), so @aws-sdk/client-kms runs unchanged.
// Follows the KMS API Reference and Developer Guide:
//   - a key is named by key id, key ARN, alias name or alias ARN; an alias name or a bare key id
//     is looked up in the caller's account and the request's Region; a key lives in one Region;
//     an unknown one is NotFoundException ("DescribeKey", "Key identifiers (KeyId)");
//   - KeyManager is "AWS" for AWS managed keys (aws/ebs) and "CUSTOMER" for customer managed keys,
//     which is what decides whether EBS snapshots encrypted with it can be shared (EBS User Guide,
//     "Share an Amazon EBS snapshot"); each account's aws/ebs key exists once EBS needs it, with
//     the policy AWS gives it: usable by the account's principals through EC2 only, never by
//     another account ("AWS managed keys", the default key policy of aws/ebs);
//   - who may use a key is its key policy, the caller's identity policy and grants (test/standin/
//     iam.ts); a use through EBS carries kms:ViaService (ec2.<region>.amazonaws.com) and, for the
//     grant EBS makes, kms:GrantIsForAWSResource = true, which a direct CreateGrant never has
//     ("AWS KMS condition keys": "kms:GrantIsForAWSResource … only when an AWS service integrated
//     with AWS KMS calls the operation on the user's behalf"; kms:ViaService "limits use of a KMS
//     key to requests from specified AWS services", so a direct call never has it); a direct
//     Encrypt, Decrypt or GenerateDataKey* carries its encryption context as
//     kms:EncryptionContext:<key> and kms:EncryptionContextKeys; DryRun on CreateGrant, Decrypt,
//     Encrypt, GenerateDataKey(WithoutPlaintext) answers
//     DryRunOperationException when the call would succeed and AccessDeniedException when not
//     (Developer Guide, "Testing your permissions", programming-dryrun.html);
//   - Encrypt and Decrypt with symmetric keys: the ciphertext names its key, Decrypt with another
//     KeyId is IncorrectKeyException, another encryption context InvalidCiphertextException, a
//     disabled key DisabledException (API Reference, Encrypt, Decrypt);
//   - GetKeyPolicy returns the key policy as a JSON string; it is not a cross-account operation
//     ("Cross-account use: No"): a key of another account is refused (AccessDeniedException: the
//     exact answer is not documented).
// With an AwsWorld (test/standin/iam.ts) it checks callers and records every use of a key in
// world.keyUses; without one (the older tests) every caller may do everything.
// Pages: https://docs.aws.amazon.com/kms/latest/APIReference/API_DescribeKey.html,
//   https://docs.aws.amazon.com/kms/latest/developerguide/programming-dryrun.html,
//   …/developerguide/key-policy-modifying-external-accounts.html, …/developerguide/grants.html,
//   …/developerguide/concepts.html#aws-managed-key, …/developerguide/conditions-kms.html#conditions-kms-grant-is-for-aws-resource,
//   …/APIReference/API_GetKeyPolicy.html, …/developerguide/conditions-kms.html#conditions-kms-via-service,
//   …/developerguide/conditions-kms.html#conditions-kms-encryption-context.
import { createCipheriv, createDecipheriv, createHmac, randomBytes, randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { evaluate as evaluateOne, type AwsWorld, type ConditionContext, type PolicyDocument, type Principal } from './iam.ts'

export interface StandInKey {
  keyId: string
  accountId: string
  region: string
  keyManager: 'AWS' | 'CUSTOMER'
  aliases?: string[]
  /** Key policy (default for a customer key: the account root may do everything, i.e. IAM decides). */
  policy?: PolicyDocument
  /** Grants: the grantee (a role ARN) may do these operations (without "kms:"). */
  grants?: Array<{ grantee: string; operations: string[] }>
  enabled?: boolean
}

export interface KeyCheck {
  key: StandInKey | undefined
  /** The actions that were refused (empty: all allowed). */
  denied: string[]
}

const DRY_RUN_ACTIONS = new Set(['CreateGrant', 'Decrypt', 'Encrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncrypt'])

export class KmsStandIn {
  readonly keys: StandInKey[]
  readonly world: AwsWorld | undefined
  endpoint = ''
  #server: Server | null = null

  constructor(keys: StandInKey[], options: { world?: AwsWorld } = {}) {
    this.keys = keys
    this.world = options.world
  }

  static arn(k: StandInKey): string {
    return `arn:aws:kms:${k.region}:${k.accountId}:key/${k.keyId}`
  }

  /** The default policy AWS gives an account's aws/ebs key. */
  static awsEbsPolicy(accountId: string, region: string): PolicyDocument {
    return {
      Version: '2012-10-17',
      Statement: [
        {
          Sid: 'Allow access through EBS for all principals in the account that are authorized to use EBS',
          Effect: 'Allow', Principal: { AWS: '*' },
          Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*',
          Condition: { StringEquals: { 'kms:ViaService': `ec2.${region}.amazonaws.com`, 'kms:CallerAccount': accountId } },
        },
        { Sid: 'Allow direct access to key metadata to the account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:root` }, Action: ['kms:Describe*', 'kms:Get*', 'kms:List*'], Resource: '*' },
      ],
    }
  }

  /** The default key policy of a customer managed key: the account decides through IAM. */
  static rootPolicy(accountId: string): PolicyDocument {
    return { Version: '2012-10-17', Statement: [{ Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:root` }, Action: 'kms:*', Resource: '*' }] }
  }

  /** Adds a key (a customer managed one unless said otherwise); returns its ARN. */
  addKey(key: Omit<StandInKey, 'keyId' | 'keyManager'> & { keyId?: string; keyManager?: 'AWS' | 'CUSTOMER' }): string {
    const full: StandInKey = { keyId: key.keyId ?? randomUUID(), keyManager: 'CUSTOMER', ...key }
    this.keys.push(full)
    return KmsStandIn.arn(full)
  }

  /** The account's aws/ebs key in a Region, made on first need as EBS does. */
  awsEbsKey(accountId: string, region: string): StandInKey {
    const found = this.keys.find((k) => k.accountId === accountId && k.region === region && (k.aliases ?? []).includes('alias/aws/ebs'))
    if (found) return found
    const key: StandInKey = { keyId: randomUUID(), accountId, region, keyManager: 'AWS', aliases: ['alias/aws/ebs'], policy: KmsStandIn.awsEbsPolicy(accountId, region) }
    this.keys.push(key)
    return key
  }

  /**
   * The key a KMS key reference names, as KMS resolves it. With `scope`, alias names and bare key
   * ids are looked up in that account and Region, and the key must be in that Region.
   */
  resolve(ref: string, scope?: { accountId: string; region: string }): StandInKey | undefined {
    const arn = /^arn:aws:kms:([^:]+):(\d{12}):(key|alias)\/(.+)$/.exec(ref)
    if (arn) {
      const [, region, accountId, kind, name] = arn
      if (scope && region !== scope.region) return undefined
      if (kind === 'key') return this.keys.find((k) => k.keyId === name && k.accountId === accountId && k.region === region)
      if (this.world && `alias/${name}` === 'alias/aws/ebs') return this.awsEbsKey(accountId!, region!)
      return this.keys.find((k) => k.accountId === accountId && k.region === region && (k.aliases ?? []).includes(`alias/${name}`))
    }
    const inScope = (k: StandInKey): boolean => !scope || (k.accountId === scope.accountId && k.region === scope.region)
    if (ref.startsWith('alias/')) {
      if (ref === 'alias/aws/ebs' && scope && this.world) return this.awsEbsKey(scope.accountId, scope.region)
      return this.keys.find((k) => inScope(k) && (k.aliases ?? []).includes(ref))
    }
    return this.keys.find((k) => inScope(k) && k.keyId === ref)
  }

  /**
   * May `principal` do `actions` (kms:…) with the key `ref`: key policy, identity policy, grants
   * (test/standin/iam.ts). Records each use in world.keyUses.
   */
  check(principal: Principal, ref: string, actions: string[], o: { region: string; via: string; viaService?: string; context?: ConditionContext }): KeyCheck {
    const key = this.resolve(ref, { accountId: principal.accountId, region: o.region }) ?? this.resolve(ref)
    if (!key || key.region !== o.region) return { key: undefined, denied: actions }
    const denied = actions.filter((a) => !this.#allowed(principal, key, a, o.viaService, o.context))
    for (const action of actions) {
      this.world?.keyUses.push({ key: KmsStandIn.arn(key), action, role: principal.roleArn ?? principal.arn, accountId: principal.accountId, via: o.via, allowed: !denied.includes(action) })
    }
    return { key, denied }
  }

  #allowed(p: Principal, key: StandInKey, action: string, viaService?: string, extra: ConditionContext = {}): boolean {
    if (!this.world) return true
    if (key.enabled === false) return false
    const context: ConditionContext = {
      ...extra,
      'kms:CallerAccount': p.accountId, ...(viaService ? { 'kms:ViaService': viaService } : {}), 'aws:PrincipalArn': p.roleArn ?? p.arn,
      ...(viaService && action.toLowerCase() === 'kms:creategrant' ? { 'kms:GrantIsForAWSResource': true } : {}),
    }
    const grantee = p.roleArn ?? p.arn
    if ((key.grants ?? []).some((g) => g.grantee === grantee && g.operations.some((op) => `kms:${op}`.toLowerCase() === action.toLowerCase()))) return true
    const policy = key.policy ?? (key.keyManager === 'AWS' ? KmsStandIn.awsEbsPolicy(key.accountId, key.region) : KmsStandIn.rootPolicy(key.accountId))
    const arn = KmsStandIn.arn(key)
    let direct = false
    let viaAccount = false
    for (const s of policy.Statement) {
      const principals = s.Principal === '*' ? ['*'] : s.Principal ? (Array.isArray(s.Principal.AWS) ? s.Principal.AWS : [s.Principal.AWS]) : []
      const namesDirectly = principals.some((x) => x === '*' || x === p.roleArn || x === p.arn)
      const namesAccount = principals.some((x) => x === p.accountId || x === `arn:aws:iam::${p.accountId}:root`)
      if (!namesDirectly && !namesAccount) continue
      const one = { Statement: [{ ...s, Principal: undefined }] } as PolicyDocument
      const decision = evaluateOne(one, action, arn, context)
      if (decision === 'deny') return false
      if (decision === 'allow') {
        if (namesDirectly) direct = true
        else viaAccount = true
      }
    }
    const identity = !p.policy || evaluateOne(p.policy, action, arn, context) === 'allow'
    if (key.accountId === p.accountId) return direct || (viaAccount && identity)
    return (direct || viaAccount) && identity
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
        let input: {
          KeyId?: string; DryRun?: boolean; GranteePrincipal?: string; Operations?: string[]
          Plaintext?: string; CiphertextBlob?: string; EncryptionContext?: Record<string, string>
        }
        try {
          input = JSON.parse(body || '{}')
        } catch {
          return send(400, { __type: 'SerializationException', message: 'body is not JSON' })
        }
        const operation = target.replace(/^TrentService\./, '')
        const caller = this.world?.callerOf(req.headers.authorization, 'us-east-1')
        const principal: Principal = caller?.principal ?? { arn: 'arn:aws:iam::000000000000:root', accountId: '000000000000' }
        const region = caller?.region ?? 'us-east-1'
        const scope = caller ? { accountId: principal.accountId, region } : undefined
        // Decrypt may leave the key out: a symmetric ciphertext names its key.
        if (operation === 'Decrypt' && !input.KeyId && input.CiphertextBlob) input.KeyId = sealedKeyArn(Buffer.from(input.CiphertextBlob, 'base64')) ?? undefined
        const key = input.KeyId ? (this.resolve(input.KeyId, scope) ?? (scope ? undefined : this.resolve(input.KeyId))) : undefined
        if (!key) return this.world?.record(principal, 'kms', operation, region, true), send(400, { __type: 'NotFoundException', message: `Key '${input.KeyId}' does not exist` })
        const record = (allowed: boolean): void => this.world?.record(principal, 'kms', operation, region, allowed)
        const denied = (action: string): void => (record(false), send(400, {
          __type: 'AccessDeniedException',
          message: `User: ${principal.arn} is not authorized to perform: ${action} on resource: ${KmsStandIn.arn(key)} because no resource-based policy or identity-based policy allows the ${action} action`,
        }))
        if (operation === 'DescribeKey') {
          if (this.world && this.check(principal, input.KeyId!, ['kms:DescribeKey'], { region, via: 'kms:DescribeKey' }).denied.length) return denied('kms:DescribeKey')
          record(true)
          return send(200, {
            KeyMetadata: {
              AWSAccountId: key.accountId, KeyId: key.keyId, Arn: KmsStandIn.arn(key), CreationDate: 1700000000,
              Enabled: key.enabled !== false, KeyState: key.enabled === false ? 'Disabled' : 'Enabled', KeyUsage: 'ENCRYPT_DECRYPT', KeySpec: 'SYMMETRIC_DEFAULT',
              Origin: 'AWS_KMS', KeyManager: key.keyManager, Description: key.keyManager === 'AWS' ? 'Default key that protects my EBS volumes when no other key is defined' : '',
            },
          })
        }
        if (operation === 'GetKeyPolicy') {
          if (this.world && (key.accountId !== principal.accountId || this.check(principal, input.KeyId!, ['kms:GetKeyPolicy'], { region, via: 'kms:GetKeyPolicy' }).denied.length)) {
            return denied('kms:GetKeyPolicy')
          }
          record(true)
          const policy = key.policy ?? (key.keyManager === 'AWS' ? KmsStandIn.awsEbsPolicy(key.accountId, key.region) : KmsStandIn.rootPolicy(key.accountId))
          return send(200, { Policy: JSON.stringify(policy), PolicyName: 'default' })
        }
        if (DRY_RUN_ACTIONS.has(operation)) {
          // A disabled key is DisabledException (this stand-in says so before checking permissions).
          if (key.enabled === false && !input.DryRun && (operation === 'Encrypt' || operation === 'Decrypt')) {
            record(false)
            return send(400, { __type: 'DisabledException', message: `${KmsStandIn.arn(key)} is disabled.` })
          }
          const action = operation === 'ReEncrypt' ? 'kms:ReEncryptFrom' : `kms:${operation}`
          const refused = this.check(principal, input.KeyId!, [action], {
            region, via: `kms:${operation}${input.DryRun ? ' (DryRun)' : ''}`, context: encryptionContextKeys(input.EncryptionContext ?? {}),
          }).denied.length > 0
          if (refused) return denied(action)
          record(true)
          if (input.DryRun) return send(400, { __type: 'DryRunOperationException', message: 'The request would have succeeded, but the DryRun option is set.' })
          if (operation === 'Encrypt' && input.Plaintext !== undefined) {
            const sealed = this.#seal(key, Buffer.from(input.Plaintext, 'base64'), input.EncryptionContext ?? {})
            return send(200, { CiphertextBlob: sealed.toString('base64'), KeyId: KmsStandIn.arn(key), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' })
          }
          if (operation === 'Decrypt' && input.CiphertextBlob !== undefined) {
            const blob = Buffer.from(input.CiphertextBlob, 'base64')
            if (sealedKeyArn(blob) !== KmsStandIn.arn(key)) {
              return send(400, { __type: 'IncorrectKeyException', message: 'The key ID in the request does not identify a CMK that can perform this operation.' })
            }
            const plain = this.#open(key, blob, input.EncryptionContext ?? {})
            if (!plain) return send(400, { __type: 'InvalidCiphertextException', message: '' })
            return send(200, { Plaintext: plain.toString('base64'), KeyId: KmsStandIn.arn(key), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' })
          }
          return send(400, { __type: 'UnsupportedOperationException', message: `the KMS stand-in does ${operation} only with DryRun` })
        }
        send(400, { __type: 'UnknownOperationException', message: target })
      })
    })
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`
    return this
  }

  // Key material: derived per key from a secret of this stand-in, never leaving it. A ciphertext
  // is "SKMS" ‖ u16 length ‖ key ARN ‖ nonce ‖ AES-256-GCM(plaintext) ‖ tag, with the encryption
  // context (sorted) as additional data: KMS binds it the same way ("Encryption context": the
  // same context must be given to decrypt).
  readonly #secret = randomBytes(32)

  #material(key: StandInKey): Buffer {
    return createHmac('sha256', this.#secret).update(KmsStandIn.arn(key)).digest()
  }

  #seal(key: StandInKey, plaintext: Buffer, context: Record<string, string>): Buffer {
    const arn = Buffer.from(KmsStandIn.arn(key))
    const nonce = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#material(key), nonce)
    cipher.setAAD(contextBytes(context))
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()])
    const head = Buffer.alloc(6)
    head.write('SKMS', 0)
    head.writeUInt16BE(arn.length, 4)
    return Buffer.concat([head, arn, nonce, body, cipher.getAuthTag()])
  }

  #open(key: StandInKey, blob: Buffer, context: Record<string, string>): Buffer | null {
    const start = 6 + blob.readUInt16BE(4)
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#material(key), blob.subarray(start, start + 12))
      decipher.setAAD(contextBytes(context))
      decipher.setAuthTag(blob.subarray(blob.length - 16))
      return Buffer.concat([decipher.update(blob.subarray(start + 12, blob.length - 16)), decipher.final()])
    } catch {
      return null
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()))
  }
}

/** The key ARN a stand-in ciphertext names, or null when it is not one. */
function sealedKeyArn(blob: Buffer): string | null {
  if (blob.length < 6 + 12 + 16 || blob.toString('latin1', 0, 4) !== 'SKMS') return null
  return blob.toString('utf8', 6, 6 + blob.readUInt16BE(4))
}

/**
 * A request's encryption context as condition keys ("AWS KMS condition keys":
 * kms:EncryptionContext:<key> is each pair's value, kms:EncryptionContextKeys the list of its keys;
 * absent when the request has none).
 */
function encryptionContextKeys(context: Record<string, string>): ConditionContext {
  const keys = Object.keys(context)
  if (!keys.length) return {}
  return { ...Object.fromEntries(Object.entries(context).map(([k, v]) => [`kms:EncryptionContext:${k}`, v])), 'kms:EncryptionContextKeys': keys }
}

function contextBytes(context: Record<string, string>): Buffer {
  return Buffer.from(JSON.stringify(Object.entries(context).sort(([a], [b]) => a.localeCompare(b))))
}
