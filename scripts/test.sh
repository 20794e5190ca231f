#!/usr/bin/env bash
# The whole test suite (what `npm test` runs): type check, start a real S3 test bed (Ceph RGW,
# scripts/testbed.sh) for this run only, run every tap test, stop the test bed. The tests use its
# plain-http endpoint (AWS_ENDPOINT_URL_S3); the test bed also has TLS in front of it (haproxy with
# a throwaway CA: TESTBED_HTTPS_ENDPOINT, TESTBED_CA_FILE) for the cases over HTTPS, as real S3 is
# reached (test/s3.test.ts).
# Extra arguments go to tap, e.g. `npm test -- test/loop.test.ts`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || echo "warning: the loop-device tests need root" >&2
scripts/test-deps.sh
echo "# type check (tsc --noEmit)" >&2
tsc -p .
eval "$(TESTBED_TLS=1 scripts/testbed.sh start)"
trap 'scripts/testbed.sh stop "$TESTBED_DIR" >/dev/null 2>&1 || true' EXIT
tap "$@"
