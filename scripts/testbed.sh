#!/usr/bin/env bash
# A real S3 (Ceph RADOS Gateway, Pacific) on 127.0.0.1 for ebs-worker's tests and benchmarks:
# 1 mon + 1 memstore OSD (data in RAM) + radosgw, no mgr/systemd/cephx.  Self-contained on purpose
# (adapted from a shared reference) so that the test command works on a fresh Debian machine.
#
#   scripts/testbed.sh deps          install radosgw ceph-mon ceph-osd if missing (needs root + apt)
#   eval "$(scripts/testbed.sh start)"   start one; STDOUT is only `export ...` lines, logs on STDERR
#   scripts/testbed.sh stop [DIR]    stop the one in DIR (default $TESTBED_DIR); KEEP_DATA=1 keeps DIR
#
# Environment for start: CLUSTER_DIR, RGW_PORT, MON_PORT_V2, MON_PORT_V1 (free ones are picked so
# several test beds, or a developer's own RGW, can coexist), MEMSTORE_BYTES, S3_ACCESS_KEY/SECRET_KEY.
set -euo pipefail

PKGS=(radosgw ceph-mon ceph-osd)
export PATH="$PATH:/usr/bin:/usr/sbin"   # minimal PATHs (sudo, CI) may miss the Debian binaries

log() { echo "[testbed $(date +%T.%N | cut -c1-12)] $*" >&2; }

cmd_deps() {
  local missing=() b out
  for b in "${PKGS[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "testbed: missing ${missing[*]}; needs Debian packages: ${PKGS[*]}" >&2
    echo "  install with: apt-get install -y --no-install-recommends ${PKGS[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Try without `apt-get update` first: it is slow and the package lists are often fresh enough.
  out=$(apt-get install -y --no-install-recommends "${PKGS[@]}" 2>&1) || {
    out=$( { apt-get update -qq && apt-get install -y --no-install-recommends "${PKGS[@]}"; } 2>&1) || {
      echo "$out" | tail -n 20 >&2; echo "testbed: failed to install ${PKGS[*]}" >&2; return 1; }
  }
}

# Stop daemons by the PIDs saved in DIR/pids, newest first (rgw, osd, mon), and only if the PID
# still belongs to a ceph daemon (guards against PID reuse after a reboot or a crash).
stop_bed() {
  local dir=$1 name pid i
  if [ -f "$dir/pids" ]; then
    while read -r name pid; do
      kill -0 "$pid" 2>/dev/null || continue
      case "$(cat "/proc/$pid/comm" 2>/dev/null)" in ceph-mon|ceph-osd|radosgw) ;; *) continue ;; esac
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      log "stopped $name ($pid)"
    done < <(tac "$dir/pids")
    rm -f "$dir/pids"
  fi
  [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$dir"
}

cmd_stop() {
  local dir=${1:-${TESTBED_DIR:-}}
  [ -n "$dir" ] || { echo "usage: testbed.sh stop DIR (or set TESTBED_DIR)" >&2; return 1; }
  [ -d "$dir" ] || { log "no test bed at $dir"; return 0; }
  # Refuse to rm -rf a directory that is not a test bed (a mistyped DIR must not cost data).
  [ -f "$dir/ceph.conf" ] || { echo "testbed: $dir is not a test bed (no ceph.conf)" >&2; return 1; }
  stop_bed "$dir"
}

# Pick N distinct free TCP ports on 127.0.0.1 below the kernel's ephemeral range (32768+), so an
# outgoing connection cannot grab one between the probe and the daemon's bind; random, so that
# concurrent starts are very unlikely to pick the same one.  OSDs use 6800-7300: avoid those too.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
got = []
while len(got) < int(sys.argv[1]):
    p = random.randint(20000, 32000)
    if p in got: continue
    s = socket.socket()
    try: s.bind(("127.0.0.1", p)); got.append(p)
    except OSError: pass
    finally: s.close()
print(*got)
PY
}

wait_for() {  # wait_for TRIES CMD...: poll every 0.1 s (keeps the whole start at ~1-2 s)
  local n=$1; shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
s3_ok() {  # $1 = extra curl args (empty = anonymous); ListBuckets must answer 200
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$RGW_PORT/")" = 200 ]
}

cmd_start() {
  exec 3>&1 1>&2   # everything goes to stderr; only the final export lines go to the real stdout (fd 3)
  cmd_deps
  read -r p1 p2 p3 < <(free_ports 3)
  RGW_PORT=${RGW_PORT:-$p1}; MON_PORT_V2=${MON_PORT_V2:-$p2}; MON_PORT_V1=${MON_PORT_V1:-$p3}
  MEMSTORE_BYTES=${MEMSTORE_BYTES:-8589934592}   # 8 GiB; RAM is only used as objects are written
  S3_ACCESS_KEY=${S3_ACCESS_KEY:-testaccesskey}; S3_SECRET_KEY=${S3_SECRET_KEY:-testsecretkey}
  # glibc malloc: give freed memstore buffers back to the OS, or the OSD's RSS only ever grows
  export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072} MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

  if [ -n "${CLUSTER_DIR:-}" ]; then
    [ ! -f "$CLUSTER_DIR/pids" ] || { echo "testbed: $CLUSTER_DIR/pids exists; stop it first" >&2; return 1; }
    [ -z "$(ls -A "$CLUSTER_DIR" 2>/dev/null)" ] || [ -f "$CLUSTER_DIR/ceph.conf" ] ||
      { echo "testbed: $CLUSTER_DIR is not empty and not a test bed" >&2; return 1; }
    rm -rf "$CLUSTER_DIR"; mkdir -p "$CLUSTER_DIR"
  else
    CLUSTER_DIR=$(mktemp -d /tmp/ebs-worker-testbed-XXXXXX)
  fi
  D=$CLUSTER_DIR CONF=$CLUSTER_DIR/ceph.conf   # global: the EXIT trap needs D
  mkdir -p "$D"/{mon,osd,rgw,log,run}
  # On any failure from here: show the logs and stop what was started, so nothing is left running.
  trap 'rc=$?; if [ $rc != 0 ]; then tail -n 20 "$D"/log/* >&2 2>/dev/null || true;
        KEEP_DATA=${KEEP_DATA:-0} stop_bed "$D"; echo "testbed: start FAILED" >&2; fi' EXIT
  local FSID; FSID=$(cat /proc/sys/kernel/random/uuid)
  export CEPH_CONF=$CONF
  local MON_ADDR="[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]"
  # Single-node settings: replica size 1, few PGs, fast paxos; everything (sockets, logs) inside $D
  # so that test beds never share state.  gc settings: memstore holds deleted data in RAM until RGW
  # garbage collection runs, so run it every 10 s instead of hours.
  cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = $MON_ADDR
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
keyring = /dev/null
crash dir = $D/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
paxos propose interval = 0.01
paxos min wait = 0.01
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
ms bind ipv4 = true
ms bind ipv6 = false
ms mon client mode = crc secure
ms client mode = crc secure
mon warn on insecure global id reclaim allowed = false
err to stderr = true
log to stderr = false
[mon.a]
mon data = $D/mon
mon cluster log file = $D/log/mon-cluster.log
[osd]
osd data = $D/osd
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $D/rgw
rgw thread pool size = 64
rgw crypt require ssl = false
rgw gc obj min wait = 10
rgw gc processor period = 10
rgw gc processor max time = 10
CONF

  log "dir $D, mon :$MON_PORT_V2/:$MON_PORT_V1, rgw :$RGW_PORT"
  monmaptool --create --fsid "$FSID" --addv a "$MON_ADDR" "$D/monmap" >/dev/null
  ceph-mon -i a --mkfs --monmap "$D/monmap" --keyring /dev/null
  ceph-mon -i a -f >"$D/log/mon.a.stdout" 2>&1 &
  echo "mon.a $!" >> "$D/pids"
  wait_for 100 ceph --connect-timeout 2 mon stat || { echo "testbed: mon not up" >&2; return 1; }
  log "mon up"

  local OSD_UUID OSD_ID; OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  OSD_ID=$(ceph osd new "$OSD_UUID")
  ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1
  ceph-osd -i "$OSD_ID" -f >"$D/log/osd.$OSD_ID.stdout" 2>&1 &
  echo "osd.$OSD_ID $!" >> "$D/pids"
  wait_for 150 bash -c "ceph osd dump | grep -q '^osd.$OSD_ID up'" || { echo "testbed: osd not up" >&2; return 1; }
  log "osd.$OSD_ID up"

  radosgw -n client.rgw.a -f >"$D/log/rgw.a.stdout" 2>&1 &
  echo "rgw.a $!" >> "$D/pids"
  wait_for 300 s3_ok || { echo "testbed: rgw not answering on :$RGW_PORT" >&2; return 1; }
  radosgw-admin user create --uid=test --display-name="Test User" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >"$D/log/user-create.json"
  # The new user can take a moment to be visible to RGW: wait for an authenticated ListBuckets.
  wait_for 100 s3_ok -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" ||
    { echo "testbed: authenticated S3 request failed" >&2; return 1; }
  log "ready at http://127.0.0.1:$RGW_PORT (stop: scripts/testbed.sh stop $D)"
  trap - EXIT
  # Pacific rejects aws-chunked bodies (411), hence SDK checksums only when required.
  printf 'export %s=%q\n' TESTBED_DIR "$D" AWS_ENDPOINT_URL_S3 "http://127.0.0.1:$RGW_PORT" \
    AWS_ACCESS_KEY_ID "$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY "$S3_SECRET_KEY" \
    AWS_REGION us-east-1 EBS_WORKER_S3_CHECKSUMS when-required >&3
}

case "${1:-}" in
  deps) cmd_deps ;;
  start) cmd_start ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 deps | start | stop [DIR]" >&2; exit 2 ;;
esac
