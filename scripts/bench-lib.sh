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
