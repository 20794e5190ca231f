// The images of the version 1 fixture (scripts/make-v1-fixture.sh), made again by the tests:
// 6 MiB + 777 bytes from a fixed seed — text, zeros, 64 KiB of pseudo-random bytes, a
// hole, a tail that is not a whole chunk. Variant 2 differs from 1 in the third MiB only.
//   node scripts/fixture-image.ts OUT 1|2
import { createHash } from 'node:crypto'
import { writeFileSync } from 'node:fs'

const MiB = 1024 * 1024

/** Deterministic bytes: SHA-256 in counter mode over `seed`. */
function bytes(seed: string, length: number): Buffer {
  const out = Buffer.alloc(length)
  for (let at = 0, n = 0; at < length; n++) at += createHash('sha256').update(`${seed}:${n}`).digest().copy(out, at)
  return out
}

export function fixtureImage(variant: 1 | 2): Buffer {
  const image = Buffer.alloc(6 * MiB + 777)
  Buffer.from('ebs-worker fixture, version 1 repository. '.repeat(30000)).copy(image, 0, 0, MiB)
  bytes('random', 64 * 1024).copy(image, 2 * MiB)
  if (variant === 2) bytes('changed', 64 * 1024).copy(image, 2 * MiB)
  bytes('tail', 5000).copy(image, image.length - 5000)
  return image
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [out, variant] = process.argv.slice(2)
  if (!out || (variant !== '1' && variant !== '2')) {
    process.stderr.write('usage: node scripts/fixture-image.ts OUT 1|2\n')
    process.exit(2)
  }
  writeFileSync(out, fixtureImage(Number(variant) as 1 | 2))
}
