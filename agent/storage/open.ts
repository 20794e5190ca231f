// Repository URLs: file:///abs/path, a plain path, or s3://bucket/prefix[?region=…&endpoint=…&
// path-style=true|false&checksums=when-required]. The environment variable
// EBS_WORKER_S3_CHECKSUMS=when-required does the same for every s3:// URL (test beds).
import { isAbsolute, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EbsWorkerError, ErrorCode } from '../core/errors.ts'
import { FileBackend } from './file.ts'
import { S3Backend, type S3BackendOptions } from './s3.ts'
import type { Backend } from './types.ts'
import { withRetries } from './retry.ts'

export interface BackendTuning {
  partSize?: number
  partConcurrency?: number
}

export function openBackend(url: string, tuning: BackendTuning = {}): Backend {
  if (url.startsWith('s3://')) {
    const s3 = new S3Backend({ ...parseS3Url(url), ...tuning })
    return withRetries(s3, { attempts: s3.maxAttempts })
  }
  if (url.startsWith('file://')) return new FileBackend(fileURLToPath(url))
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new EbsWorkerError(ErrorCode.BadInput, `unsupported repository URL ${url} (use s3://bucket/prefix or file:///path)`)
  }
  return new FileBackend(isAbsolute(url) ? url : resolve(url))
}

export function parseS3Url(url: string): S3BackendOptions {
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
  const checksums = q.get('checksums') ?? process.env.EBS_WORKER_S3_CHECKSUMS ?? 'default'
  if (checksums !== 'default' && checksums !== 'when-required') {
    throw new EbsWorkerError(ErrorCode.BadInput, `checksums must be "default" or "when-required", not "${checksums}"`)
  }
  const pathStyle = q.get('path-style')
  const options: S3BackendOptions = {
    bucket,
    prefix: decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, ''),
    checksums,
  }
  if (q.get('region')) options.region = q.get('region')!
  if (q.get('endpoint')) options.endpoint = q.get('endpoint')!
  if (pathStyle !== null) options.forcePathStyle = pathStyle === 'true'
  return options
}
