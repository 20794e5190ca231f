// Repository URLs: s3://bucket/prefix[?region=…&endpoint=…&path-style=true|false&
// checksums=when-required], file:///abs/path, or an absolute path (/abs/path, the same as its
// file:// URL). Anything else is refused, a relative path too: "s3:/bucket/x" or "backups" must not
// quietly become a directory wherever the program happens to run. Options in the URL win over the
// program's AWS settings (aws/config.ts: AWS_REGION, --endpoint-url, AWS_ENDPOINT_URL_S3,
// EBS_WORKER_S3_CHECKSUMS…).
import { resolve } from 'node:path'
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
  return new FileBackend(localPath(url))
}

/**
 * The directory of a file:// URL or an absolute path; BAD_INPUT for anything else, saying what
 * was probably meant.
 */
export function localPath(url: string): string {
  const usage = 'a repository is s3://bucket/prefix, file:///absolute/path or /absolute/path'
  if (/^file:/i.test(url)) {
    if (!url.startsWith('file://')) throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url}: a file URL is file:///absolute/path (${usage})`)
    let host = ''
    try {
      host = new URL(url).hostname
    } catch {
      throw new EbsWorkerError(ErrorCode.BadInput, `invalid repository URL ${url} (${usage})`)
    }
    if (host && host !== 'localhost') {
      throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url} names the host "${host}": a file URL is file:///absolute/path, with three slashes (a relative path is not taken)`)
    }
    try {
      return fileURLToPath(url)
    } catch (err) {
      throw new EbsWorkerError(ErrorCode.BadInput, `invalid repository URL ${url}: ${(err as Error).message}`)
    }
  }
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)
  if (scheme) {
    const hint = scheme[1]!.toLowerCase() === 's3' ? `; did you mean s3://${url.slice(3).replace(/^\/*/, '')}?` : ''
    throw new EbsWorkerError(ErrorCode.BadInput, `unsupported repository URL ${url} (${usage})${hint}`)
  }
  if (!url.startsWith('/')) {
    throw new EbsWorkerError(ErrorCode.BadInput, `repository ${JSON.stringify(url)} is a relative path: give it absolute (${usage}), such as file://${resolve(url)}`)
  }
  return url
}

/** The bucket, the prefix, and what the URL's options say (the rest comes from the AWS settings). */
export interface S3Url extends S3Target {
  bucket: string
  prefix: string
}

/**
 * Why a name is not a bucket name S3 accepts, or null when it is one (S3 User Guide, "General
 * purpose bucket naming rules": 3 to 63 characters; lowercase letters, digits, dots and hyphens;
 * a letter or digit first and last; no two adjacent dots; not an IP address; none of the reserved
 * prefixes xn--, sthree-, amzn-s3-demo- and suffixes -s3alias, --ol-s3, .mrap, --x-s3, --table-s3).
 * Page: https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
 */
export function bucketNameProblem(name: string): string | null {
  if (name.length < 3 || name.length > 63) return 'a bucket name is 3 to 63 characters long'
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name)) return 'a bucket name has only lowercase letters, digits, dots and hyphens, and begins and ends with a letter or digit'
  if (name.includes('..')) return 'a bucket name has no two adjacent dots'
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return 'a bucket name is not an IP address'
  if (/^(xn--|sthree-|amzn-s3-demo-)/.test(name) || /(-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)$/.test(name)) return 'the name has a prefix or suffix S3 reserves'
  return null
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
  const problem = bucketNameProblem(bucket)
  if (problem) throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url}: "${bucket}" is not a bucket name (${problem})`)
  if (parsed.username || parsed.password || parsed.port || parsed.hash) throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url}: an s3:// URL is s3://bucket/prefix[?options]`)
  const q = parsed.searchParams
  const known = new Set(['region', 'endpoint', 'path-style', 'checksums'])
  for (const key of q.keys()) {
    if (!known.has(key)) throw new EbsWorkerError(ErrorCode.BadInput, `unknown option "${key}" in ${url}`)
  }
  const out: S3Url = { bucket, prefix: decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, '') }
  // Written encoded (%2E%2E), a ".." would pass URL parsing and name keys that escape the prefix in tools that resolve them.
  if (out.prefix.split('/').some((segment) => segment === '.' || segment === '..')) throw new EbsWorkerError(ErrorCode.BadInput, `repository URL ${url}: a prefix has no "." or ".." segments`)
  if (q.get('checksums') !== null) out.checksums = s3Checksums(q.get('checksums')!)
  if (q.get('region')) out.region = q.get('region')!
  if (q.get('endpoint')) out.endpoint = q.get('endpoint')!
  if (q.get('path-style') !== null) out.forcePathStyle = q.get('path-style') === 'true'
  return out
}

/**
 * Where a repository URL points, as the storage will open it: the bucket, prefix and options of an
 * s3:// URL (after URL parsing, which resolves "." and ".." segments), or the absolute directory of
 * a file:// URL. A malformed URL is BAD_INPUT. Two URLs that name the same place have the same
 * location, which is what an allowlist compares (repositoryAllowed).
 */
export type RepositoryLocation = { scheme: 's3'; bucket: string; prefix: string; options: string } | { scheme: 'file'; path: string }

export function repositoryLocation(url: string): RepositoryLocation {
  if (url.startsWith('s3://')) {
    const { bucket, prefix } = parseS3Url(url)
    const options = [...new URL(url).searchParams].map(([k, v]) => `${k}=${v}`).sort().join('&')
    return { scheme: 's3', bucket, prefix, options }
  }
  return { scheme: 'file', path: resolve(localPath(url)) }
}

/**
 * Whether `url` is one of the repositories `allowed` names. An entry is a repository URL (that
 * repository only), or one whose path ends in "/*": it and any repository under it (the same bucket and options,
 * a prefix under the entry's; a directory under the entry's). Malformed URLs are BAD_INPUT.
 */
export function repositoryAllowed(url: string, allowed: readonly string[]): boolean {
  const where = repositoryLocation(url)
  return allowed.some((entry) => {
    const q = entry.indexOf('?')
    const [path, query] = q < 0 ? [entry, ''] : [entry.slice(0, q), entry.slice(q)]
    const under = path.endsWith('/*')
    const e = repositoryLocation(under ? path.slice(0, -2) + query : entry)
    if (e.scheme === 's3' && where.scheme === 's3') {
      if (e.bucket !== where.bucket || e.options !== where.options) return false
      return where.prefix === e.prefix || (under && (e.prefix === '' || where.prefix.startsWith(`${e.prefix}/`)))
    }
    if (e.scheme === 'file' && where.scheme === 'file') {
      return where.path === e.path || (under && where.path.startsWith(e.path === '/' ? '/' : `${e.path}/`))
    }
    return false
  })
}
