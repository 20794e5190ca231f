// Who am I: this worker's instance id, account, Region and Availability Zone, from IMDSv2 (the
// SDK's MetadataService fetches and uses the session token; IMDSv1 is never used). The endpoint
// is the SDK's: AWS_EC2_METADATA_SERVICE_ENDPOINT, or the link-local default.
import { MetadataService } from '@aws-sdk/ec2-metadata-service'
import { z } from 'zod'
import { EbsWorkerError, ErrorCode, describe, isEbsWorkerError } from '../core/errors.ts'

const documentSchema = z.object({
  accountId: z.string().regex(/^\d{12}$/),
  instanceId: z.string().regex(/^i-[0-9a-f]{8,17}$/),
  region: z.string().min(1),
  availabilityZone: z.string().min(1),
  instanceType: z.string().optional(),
})

export type WorkerIdentity = z.infer<typeof documentSchema>

export interface IdentityOptions {
  endpoint?: string
  timeoutMs?: number
  retries?: number
}

/** Where IMDS serves the identity document. */
const DOCUMENT = 'latest/dynamic/instance-identity/document'

/**
 * Whether a whoAmI failure came after IMDS answered (its document is not what it should be),
 * rather than from reaching IMDS at all: doctor tells "no IMDS" from "a wrong identity".
 */
export function imdsAnswered(err: unknown): boolean {
  return isEbsWorkerError(err, ErrorCode.ImdsUnavailable) && err.context.object === DOCUMENT
}

export async function whoAmI(options: IdentityOptions = {}): Promise<WorkerIdentity> {
  const service = new MetadataService({
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    httpOptions: { timeout: options.timeoutMs ?? 2000 },
    retries: options.retries ?? 3,
    backoff: 0.2,
    ec2MetadataV1Disabled: true,
  })
  let text: string
  try {
    // No leading slash: the SDK appends the path to the endpoint's pathname ("/"), and a
    // "//latest/…" request is not what IMDS documents.
    text = await service.request(DOCUMENT, {})
  } catch (err) {
    throw new EbsWorkerError(
      ErrorCode.ImdsUnavailable,
      `cannot read this instance's identity from IMDS (is this an EC2 instance with IMDSv2 enabled?): ${describe(err)}`,
      { cause: err, context: { service: 'IMDS', operation: `GET ${DOCUMENT}` } },
    )
  }
  const answered = { context: { service: 'IMDS', object: DOCUMENT } }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new EbsWorkerError(ErrorCode.ImdsUnavailable, 'IMDS returned an instance identity document that is not JSON', answered)
  }
  const parsed = documentSchema.safeParse(json)
  if (!parsed.success) {
    throw new EbsWorkerError(ErrorCode.ImdsUnavailable, `IMDS identity document is incomplete: ${z.prettifyError(parsed.error)}`, answered)
  }
  return parsed.data
}
