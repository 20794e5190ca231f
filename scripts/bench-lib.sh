# Shared by the benchmark scripts (sourced; they define log and die first).

# apt_install PKG...: installs the Debian packages named (none: nothing), as root, retrying once
# after an index update; anything else is a clear error naming the command to run.
apt_install() {
  local out
  [ $# -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
    die "missing $*; as root, run: apt-get install -y --no-install-recommends $*"
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  out=$(apt-get install -y --no-install-recommends "$@" 2>&1) ||
    out=$( { apt-get update -qq && apt-get install -y --no-install-recommends "$@"; } 2>&1) ||
    { echo "$out" | tail -n 20 >&2; die "failed to install $*"; }
}

# bench_start NAME TLS MEMSTORE_BYTES: a work directory WORK (with WORK/logs) in BASE, named after
# NAME, and a test bed (TESTBED_TLS=TLS, 0 or 1; MEMSTORE_BYTES unless the environment sets it)
# whose variables are exported here.  Both go away on exit, whatever happens; the work directory is
# kept with BENCH_KEEP=1 and after a failure, for its logs.  Run from the repository.
bench_start() {
  local env
  mkdir -p "$BASE" bench-results
  WORK=$(mktemp -d "$BASE/ebs-worker-$1-XXXXXX")
  mkdir -p "$WORK/logs"
  TESTBED_DIR=
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  export MEMSTORE_BYTES=${MEMSTORE_BYTES:-$3}
  # not `eval "$(…)"` straight away: eval of an empty string succeeds, and set -e would miss a failed start
  env=$(TESTBED_TLS=$2 scripts/testbed.sh start) || die "the test bed did not start"
  eval "$env"
}
bench_cleanup() {
  local rc=$?
  [ -z "$TESTBED_DIR" ] || scripts/testbed.sh stop "$TESTBED_DIR" >/dev/null 2>&1 || true
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
