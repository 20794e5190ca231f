// Node's module compile cache (node:module enableCompileCache): the V8 code of every module a
// command loads, and for a .ts file its type-stripped JavaScript, kept on disk, so the next start
// reads them instead of compiling again (BENCHMARKS.md, "Start-up"). Both programs turn it on
// before they load anything else. It never makes a command fail: a directory that cannot be
// made or written just means no cache.
//
// Where: NODE_COMPILE_CACHE when set (the systemd units point it at their CacheDirectory=; Node
// then enables it itself, before the first module), else the user's own cache directory,
// $XDG_CACHE_HOME or ~/.cache, under ebs-worker/node-compile-cache. Not Node's default, a
// node-compile-cache directory in os.tmpdir(): /tmp is shared, and code another user left there
// would run as whoever runs ebs-worker, root included. The home directory is no such risk: whoever
// sets HOME for ebs-worker also sets its NODE_OPTIONS and ~/.aws/config. NODE_DISABLE_COMPILE_CACHE=1
// turns it off.
import { mkdirSync, statSync } from 'node:fs'
import { enableCompileCache, getCompileCacheDir } from 'node:module'
import { homedir } from 'node:os'
import { isAbsolute, join, sep } from 'node:path'

/** The cache directory for this environment when NODE_COMPILE_CACHE does not name one. */
export function compileCacheDirectory(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : join(homedir(), '.cache')
  return join(base, 'ebs-worker', 'node-compile-cache')
}

/** Turns on the compile cache if it can; returns its directory, or undefined when there is none. */
export function useCompileCache(env: NodeJS.ProcessEnv = process.env): string | undefined {
  try {
    // Already on (NODE_COMPILE_CACHE), or off (NODE_DISABLE_COMPILE_CACHE): Node's say wins.
    if (env.NODE_COMPILE_CACHE || env.NODE_DISABLE_COMPILE_CACHE) return getCompileCacheDir()
    const dir = compileCacheDirectory(env)
    if (!isAbsolute(dir) || !makeDirectory(dir)) return undefined
    return enableCompileCache(dir).directory
  } catch {
    return undefined
  }
}

/**
 * mkdir -p, one level at a time from the root; false if the directory is not there at the end.
 * Not mkdirSync's `recursive` (nor enableCompileCache's own, the same code): where mkdir says
 * ENOENT under a parent that exists, /proc for one, it retries the parent and the child forever.
 */
function makeDirectory(dir: string): boolean {
  const parts = dir.split(sep)
  for (let i = 2; i <= parts.length; i++) {
    try {
      mkdirSync(parts.slice(0, i).join(sep), 0o700)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false
    }
  }
  try {
    return statSync(dir).isDirectory()
  } catch {
    return false
  }
}
