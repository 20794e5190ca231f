#!/usr/bin/env bash
# A real S3 (Ceph RADOS Gateway, Pacific) on 127.0.0.1 for ebs-worker's tests and benchmarks:
# 1 mon + 1 memstore OSD (data in RAM) + radosgw, no mgr/systemd/cephx.  Self-contained on purpose
# (adapted from a shared reference) so that the test command works on a fresh Debian machine.
#   scripts/testbed.sh deps              install radosgw ceph-mon ceph-osd (+ haproxy openssl with
#                                        TESTBED_TLS=1) if missing (root + apt)
#   eval "$(scripts/testbed.sh start)"   start one; STDOUT is only `export ...` lines, logs on STDERR
#   scripts/testbed.sh stop [DIR]        stop the one in DIR (default $TESTBED_DIR); KEEP_DATA=1 keeps it
# start reads CLUSTER_DIR, RGW_PORT, MON_PORT_V2, MON_PORT_V1 (else free ones are picked, so that test
# beds and a developer's own RGW coexist), MEMSTORE_BYTES, S3_ACCESS_KEY, S3_SECRET_KEY.
# TESTBED_TLS=1 (opt-in; deps and start): HTTPS in front of RGW, as real S3 is reached: haproxy
# terminates TLS on TLS_PORT (else a free one) with a throwaway CA and a certificate for 127.0.0.1
# made at start in DIR/tls, and start also exports TESTBED_HTTPS_ENDPOINT=https://127.0.0.1:PORT
# and TESTBED_CA_FILE (Node trusts it through NODE_EXTRA_CA_CERTS=$TESTBED_CA_FILE, curl --cacert).
# AWS_ENDPOINT_URL_S3 stays the plain-http one: point it at the https one to use TLS.
set -euo pipefail
PKGS=(radosgw ceph-mon ceph-osd)
TLS=${TESTBED_TLS:-0}
[ "$TLS" = 1 ] && PKGS+=(haproxy openssl)   # package names are also the commands' names
export PATH="$PATH:/usr/bin:/usr/sbin"   # minimal PATHs (sudo, CI) may miss the Debian binaries
log() { echo "[testbed $(date +%T.%N | cut -c1-12)] $*" >&2; }
die() { echo "testbed: $*" >&2; exit 1; }

cmd_deps() {
  local missing=() b out
  for b in "${PKGS[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "missing ${missing[*]}; as root, run:" \
    "apt-get install -y --no-install-recommends ${PKGS[*]}  (Debian/Ubuntu packages)"
  export DEBIAN_FRONTEND=noninteractive
  # Try without `apt-get update` first: it is slow and the package lists are often fresh enough.
  out=$(apt-get install -y --no-install-recommends "${PKGS[@]}" 2>&1) ||
    out=$( { apt-get update -qq && apt-get install -y --no-install-recommends "${PKGS[@]}"; } 2>&1) ||
    { echo "$out" | tail -n 20 >&2; die "failed to install ${PKGS[*]}"; }
}

# A daemon that died while this script (its parent) runs stays a zombie, which `kill -0` still sees.
running() { local st; st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
# Stop by the PIDs saved in DIR/pids, newest first (haproxy, rgw, osd, mon: clients before what they
# need), only if a PID still belongs to one of our daemons (PID reuse); TERM, KILL after 5 s.  ~0.3 s.
stop_bed() {
  local dir=$1 name pid i
  while read -r name pid; do
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in ceph-mon|ceph-osd|radosgw|haproxy) ;; *) continue ;; esac
    running "$pid" && kill -TERM "$pid" 2>/dev/null || continue
    for i in $(seq 1 100); do running "$pid" || break; sleep 0.05; done
    if running "$pid"; then kill -KILL "$pid"; log "killed $name ($pid)"; else log "stopped $name ($pid)"; fi
  done < <(tac "$dir/pids" 2>/dev/null || true)
  rm -f "$dir/pids"; [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$dir"
}
cmd_stop() {
  local dir=${1:-${TESTBED_DIR:-}}
  [ -n "$dir" ] || die "usage: testbed.sh stop DIR (or set TESTBED_DIR)"
  [ -d "$dir" ] || { log "no test bed at $dir"; return 0; }
  [ -f "$dir/ceph.conf" ] || die "$dir is not a test bed (no ceph.conf); not deleting it"
  stop_bed "$dir"
}

# Print the given ports, 0 replaced by a random free one.  Random picks stay below the ephemeral
# range (32768+, so no outgoing connection grabs one before the daemon binds) and above the OSDs'
# 6800-7300; randomness keeps concurrent starts apart.  A given port that is in use is an error
# (rather than a 30 s wait); SO_REUSEADDR so that a just-stopped test bed's TIME_WAIT is no clash.
free_ports() {
  python3 - "$@" <<'PY'
import random, socket, sys
def free(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try: s.bind(("127.0.0.1", p)); return True
    except OSError: return False
    finally: s.close()
got = []
for p in map(int, sys.argv[1:]):
    while not p: p = random.randint(20000, 32000); p = p if p not in got and free(p) else 0
    if not free(p): sys.exit(f"testbed: port {p} is in use")
    got.append(p)
print(*got)
PY
}

# Start a daemon in the background, PID to $D/pids.  It must keep no inherited fd above 2 (fd 3 is
# the caller's stdout, others may be a CI runner's pipes): `eval "$(testbed.sh start)"` or a pipeline
# would otherwise wait for EOF on that pipe as long as the daemon lives.
daemon() {
  local name=$1; shift
  ( for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -le 2 ] || eval "exec $fd>&-"; done; exec "$@" ) \
    </dev/null >"$D/log/$name.stdout" 2>&1 &
  echo "$name $!" >> "$D/pids"
}
# wait_for TRIES CMD...: poll every 0.1 s (keeps the whole start at ~1 s); give up at once if one of
# our daemons died (e.g. a port taken after all) instead of polling a dead daemon for 30 s.
wait_for() {
  local n=$1 name pid; shift
  for _ in $(seq 1 "$n"); do
    "$@" >/dev/null 2>&1 && return 0
    while read -r name pid; do running "$pid" || die "$name exited"; done < "$D/pids"; sleep 0.1
  done; return 1
}
s3_ok() {  # ListBuckets answers 200 (args: extra curl options); time-limited, a port may not answer
  [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$RGW_PORT/")" = 200 ]
}

# TESTBED_TLS=1: a throwaway CA (key left in DIR/tls, gone with the test bed) and a server certificate
# for 127.0.0.1 and localhost signed by it.  Node checks the subjectAltName, not the CN; RSA 2048 like
# S3's own certificates.  haproxy's `crt` takes the certificate and its key in one file.
make_certs() {
  local t=$D/tls; mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=ebs-worker test bed CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>"$D/log/openssl.log"
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$t/server.key" -out "$t/server.csr" \
    2>>"$D/log/openssl.log"
  printf '%s\n' subjectAltName=IP:127.0.0.1,DNS:localhost basicConstraints=CA:FALSE \
    keyUsage=critical,digitalSignature,keyEncipherment extendedKeyUsage=serverAuth \
    subjectKeyIdentifier=hash authorityKeyIdentifier=keyid > "$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 7 \
    -extfile "$t/server.ext" -out "$t/server.crt" 2>>"$D/log/openssl.log"
  cat "$t/server.crt" "$t/server.key" > "$t/server.pem"
}
# haproxy in TCP mode: TLS ends here and the bytes go on to RGW unchanged (the Host header the client
# signed included), one RGW connection per client connection, so keep-alive behaves as without it.
# Foreground (-db), no chroot/user/daemon: a child of the test bed like the ceph daemons, in DIR/pids.
start_tls() {
  make_certs
  cat > "$D/haproxy.cfg" <<CONF
global
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend s3_tls
  bind 127.0.0.1:$TLS_PORT ssl crt $D/tls/server.pem
  default_backend rgw
backend rgw
  server rgw 127.0.0.1:$RGW_PORT
CONF
  daemon haproxy haproxy -db -f "$D/haproxy.cfg"
  wait_for 100 tls_ok || die "haproxy not answering on :$TLS_PORT"
  log "https at https://127.0.0.1:$TLS_PORT (CA $D/tls/ca.pem)"
}
tls_ok() {  # the same anonymous ListBuckets through TLS, the certificate checked against our CA
  [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' --cacert "$D/tls/ca.pem" "https://127.0.0.1:$TLS_PORT/")" = 200 ]
}

cmd_start() {
  exec 3>&1 1>&2   # everything goes to stderr; only the final export lines go to the real stdout (fd 3)
  cmd_deps
  local ports; ports=$(free_ports "${RGW_PORT:-0}" "${MON_PORT_V2:-0}" "${MON_PORT_V1:-0}" \
    $([ "$TLS" != 1 ] || echo "${TLS_PORT:-0}")) || exit 1
  read -r RGW_PORT MON_PORT_V2 MON_PORT_V1 TLS_PORT <<< "$ports"
  MEMSTORE_BYTES=${MEMSTORE_BYTES:-8589934592}   # 8 GiB; RAM is only used as objects are written
  S3_ACCESS_KEY=${S3_ACCESS_KEY:-testaccesskey}; S3_SECRET_KEY=${S3_SECRET_KEY:-testsecretkey}
  # glibc malloc: give freed memstore buffers back to the OS, or the OSD's RSS only ever grows
  export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072} MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
  if [ -n "${CLUSTER_DIR:-}" ]; then   # reuse only an empty dir or a stopped test bed: we rm -rf it
    [ ! -f "$CLUSTER_DIR/pids" ] || die "$CLUSTER_DIR/pids exists; stop that test bed first"
    [ -z "$(ls -A "$CLUSTER_DIR" 2>/dev/null)" ] || [ -f "$CLUSTER_DIR/ceph.conf" ] ||
      die "$CLUSTER_DIR is not empty and not a test bed"
    rm -rf "$CLUSTER_DIR"; mkdir -p "$CLUSTER_DIR"
  else CLUSTER_DIR=$(mktemp -d /tmp/ebs-worker-testbed-XXXXXX); fi
  D=$CLUSTER_DIR; export CEPH_CONF=$D/ceph.conf   # D global: the EXIT trap needs it
  mkdir -p "$D"/{mon,osd,rgw,log,run}
  # On any failure from here: show the logs (not mon-cluster.log: *[^r].log) and stop what was started.
  trap '[ $? = 0 ] || { tail -n 12 "$D"/log/*[^r].log "$D"/log/*.stdout >&2 2>/dev/null
        stop_bed "$D"; echo "testbed: start FAILED" >&2; }' EXIT
  local FSID MON_ADDR="[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]"
  FSID=$(cat /proc/sys/kernel/random/uuid)
  # Single node: replica size 1, few PGs, fast paxos; sockets, logs and data all inside $D so that
  # test beds share nothing.  gc: memstore holds deleted objects in RAM until RGW's garbage
  # collection runs, so run it every 10 s instead of hours.  No lifecycle threads: they make radosgw
  # take 2-10 s to exit on TERM (lifecycle rules are still accepted, just never executed).
  cat > "$CEPH_CONF" <<CONF
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
rgw enable lc threads = false
rgw crypt require ssl = false
rgw gc obj min wait = 10
rgw gc processor period = 10
rgw gc processor max time = 10
CONF
  log "dir $D, mon :$MON_PORT_V2/:$MON_PORT_V1, rgw :$RGW_PORT"
  monmaptool --create --fsid "$FSID" --addv a "$MON_ADDR" "$D/monmap" >/dev/null
  ceph-mon -i a --mkfs --monmap "$D/monmap" --keyring /dev/null
  daemon mon.a ceph-mon -i a -f
  wait_for 100 ceph --connect-timeout 2 mon stat || die "mon not up"; log "mon up"
  local OSD_UUID OSD_ID; OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  OSD_ID=$(ceph osd new "$OSD_UUID")
  ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1
  daemon "osd.$OSD_ID" ceph-osd -i "$OSD_ID" -f
  wait_for 150 bash -c "ceph osd dump | grep -q '^osd.$OSD_ID up'" || die "osd not up"; log "osd.$OSD_ID up"
  daemon rgw.a radosgw -n client.rgw.a -f
  wait_for 300 s3_ok || die "rgw not answering on :$RGW_PORT"
  radosgw-admin user create --uid=test --display-name="Test User" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >"$D/log/user-create.json"
  # The new user can take a moment to be visible to RGW: wait for an authenticated ListBuckets.
  wait_for 100 s3_ok -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" || die "authenticated S3 request failed"
  [ "$TLS" != 1 ] || start_tls
  log "ready at http://127.0.0.1:$RGW_PORT (stop: scripts/testbed.sh stop $D)"
  trap - EXIT
  # Pacific rejects aws-chunked bodies (411), hence SDK checksums only when required.
  printf 'export %s=%q\n' TESTBED_DIR "$D" AWS_ENDPOINT_URL_S3 "http://127.0.0.1:$RGW_PORT" \
    AWS_ACCESS_KEY_ID "$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY "$S3_SECRET_KEY" \
    AWS_REGION us-east-1 EBS_WORKER_S3_CHECKSUMS when-required >&3
  [ "$TLS" != 1 ] || printf 'export %s=%q\n' TESTBED_HTTPS_ENDPOINT "https://127.0.0.1:$TLS_PORT" \
    TESTBED_CA_FILE "$D/tls/ca.pem" >&3
}

case "${1:-}" in
  deps) cmd_deps ;;
  start) cmd_start ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 deps | start | stop [DIR]" >&2; exit 2 ;;
esac
