// Repository URLs: file:///abs/path, a plain path, or s3://bucket/prefix[?region=…&endpoint=…&
// path-style=true|false&checksums=when-required]. Options in the URL win over the program's AWS
// settings (aws/config.ts: AWS_REGION, AWS_ENDPOINT_URL_S3, EBS_WORKER_S3_CHECKSUMS…).
import { isAbsolute, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import type { AwsClients, S3Target } from '../aws/clients.ts'
import { s3Checksums } from '../aws/config.ts'
import { FileBackend } from './file.ts'
import { S3Backend } from './s3.ts'
import type { Backend } from './types.ts'
import { withRetries } from './retry.ts'

export interface BackendTuning {
  partSize?: number
  partConcurrency?: number
}

export interface BackendOptions {
  /** The program's AWS clients: an s3:// URL gets its client there. */
  aws: AwsClients
  tuning?: BackendTuning
}

export function openBackend(url: string, options: BackendOptions): Backend {
  if (url.startsWith('s3://')) {
    const { bucket, prefix, ...target } = parseS3Url(url)
    const s3 = new S3Backend({ bucket, prefix, connection: options.aws.s3(target), ...options.tuning })
    return withRetries(s3, { attempts: s3.maxAttempts })
  }
  if (url.startsWith('file://')) return new FileBackend(fileURLToPath(url))
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new EbsWorkerError(ErrorCode.BadInput, `unsupported repository URL ${url} (use s3://bucket/prefix or file:///path)`)
  }
  return new FileBackend(isAbsolute(url) ? url : resolve(url))
}

/** The bucket, the prefix, and what the URL's options say (the rest comes from the AWS settings). */
export interface S3Url extends S3Target {
  bucket: string
  prefix: string
}

export function parseS3Url(url: string): S3Url {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new EbsWorkerError(ErrorCode.BadInput, `invalid repository URL ${url}`)
  }
  const bucket = parsed.hostname
  if (!bucket) throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url} names no bucket`)
  const q = parsed.searchParams
  const known = new Set(['region', 'endpoint', 'path-style', 'checksums'])
  for (const key of q.keys()) {
    if (!known.has(key)) throw new EbsWorkerError(ErrorCode.BadInput, `unknown option "${key}" in ${url}`)
  }
  const out: S3Url = { bucket, prefix: decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, '') }
  if (q.get('checksums') !== null) out.checksums = s3Checksums(q.get('checksums')!)
  if (q.get('region')) out.region = q.get('region')!
  if (q.get('endpoint')) out.endpoint = q.get('endpoint')!
  if (q.get('path-style') !== null) out.forcePathStyle = q.get('path-style') === 'true'
  return out
}
