#!/usr/bin/env bash
# Makes test/fixtures/repo-v1/: a small repository of format version 1, written by the last
# ebs-worker that wrote version 1 (git revision 0f1bbca, or the one given), for the tests that
# prove version 1 repositories still list, restore, verify and migrate. The images are made from
# a fixed seed (scripts/fixture-image.ts), so the tests make them again to compare restores.
#   scripts/make-v1-fixture.sh [REVISION]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REV=${1:-0f1bbca}
NODE=$ROOT/node_modules/.bin/node
OUT=$ROOT/test/fixtures/repo-v1
work=$(mktemp -d)
cleanup() { git -C "$ROOT" worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

git worktree add --detach "$work/src" "$REV" >/dev/null 2>&1
ln -s "$ROOT/node_modules" "$work/src/node_modules"
old() { "$NODE" "$work/src/agent/bin/ebs-worker.ts" "$@"; }

rm -rf "$OUT"
mkdir -p "$OUT"
"$NODE" scripts/fixture-image.ts "$work/a.img" 1
"$NODE" scripts/fixture-image.ts "$work/b.img" 2
old init --repo "$OUT/repo" --encrypt --key-file "$OUT/repo.key" --json >/dev/null
first=$(old backup --repo "$OUT/repo" --key-file "$OUT/repo.key" --device "$work/a.img" --volume-id vol-0123456789abcdef0 --json | tail -n 1)
id1=$(sed -nE 's/.*"backupId":"([^"]+)".*/\1/p' <<<"$first")
echo '[{"offset":2097152,"length":1048576}]' > "$work/changed.json"
second=$(old backup --repo "$OUT/repo" --key-file "$OUT/repo.key" --device "$work/b.img" --volume-id vol-0123456789abcdef0 \
  --parent "$id1" --changed-ranges "$work/changed.json" --json | tail -n 1)
id2=$(sed -nE 's/.*"backupId":"([^"]+)".*/\1/p' <<<"$second")
cat > "$OUT/backups.json" <<JSON
{
  "revision": "$(git rev-parse --short "$REV")",
  "backups": [
    { "id": "$id1", "image": 1, "sha256": "$(sha256sum "$work/a.img" | cut -d' ' -f1)" },
    { "id": "$id2", "image": 2, "parent": "$id1", "sha256": "$(sha256sum "$work/b.img" | cut -d' ' -f1)" }
  ]
}
JSON
echo "made $OUT ($(du -sh "$OUT" | cut -f1)): $id1, $id2"
