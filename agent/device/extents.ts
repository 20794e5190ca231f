// Where an image file holds data: its extents, from lseek(2) SEEK_DATA / SEEK_HOLE, so that a
// backup skips the holes of a sparse file unread (a 64 TiB image holding 1 GiB reads 1 GiB).
// Node's fs has no lseek, and a native addon would tie the release to one ABI and architecture,
// so the calls are made by python3's os.lseek (on Amazon Linux and Debian alike), whose output —
// one "start end" line per extent — is streamed back. Without python3, or on a file system
// without SEEK_DATA (Linux then reports the whole file as data), the whole file is read: slower,
// never wrong.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { ByteRange } from '../core/geometry.ts'

const SCRIPT = `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
at = 0
out = sys.stdout
while at < end:
    try:
        start = os.lseek(fd, at, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    out.write("%d %d\\n" % (start, stop))
    at = stop
`

/**
 * The data extents of the regular file `path`, in order (byte ranges; what lies between reads as
 * zeros), or null when they cannot be had (then read everything).
 */
export async function dataExtents(path: string, python = 'python3'): Promise<ByteRange[] | null> {
  const child = spawn(python, ['-c', SCRIPT, path], { stdio: ['ignore', 'pipe', 'pipe'] })
  const extents: ByteRange[] = []
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(null))
    child.on('close', (code) => resolve(code))
  })
  try {
    for await (const line of createInterface({ input: child.stdout })) {
      const [start, stop] = line.split(' ').map(Number)
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(stop) || stop! <= start!) return null
      const last = extents[extents.length - 1]
      // Adjacent extents (the file system's own fragments) are one range.
      if (last && last.offset + last.length === start) last.length = stop! - last.offset
      else extents.push({ offset: start!, length: stop! - start! })
    }
  } catch {
    return null
  }
  return (await exited) === 0 && !stderr ? extents : null
}
