#!/usr/bin/env bash
# `npm run bench`: back up and restore a multi-GiB mixed-content image through a local S3 (the
# Ceph RGW test bed, scripts/testbed.sh) with ebs-worker and with what a user would pick instead
# (dd | aws s3 cp, rclone rcat/cat, restic --stdin/dump), over plain http and over https (haproxy
# terminating TLS in front of RGW, every tool trusting the test bed's CA), and report wall time,
# throughput, CPU-seconds per GiB and peak RSS side by side.  Per image size the bench also times the
# primitives (read, SHA-256, zstd, AES-256-GCM, write) on the image's own bytes: each row's CPU is
# given relative to them, and ebs-worker's rows against the goals of issue 12.  Markdown on stdout
# and in bench-results/.
#
# Knobs (environment):
#   BENCH_SIZES        image sizes in GiB, multiples of 1/16 (default "1 4": two sizes, so that
#                      the report shows whether peak RSS grows with the image)
#   BENCH_TOOLS        subset/order of "ebs-worker aws rclone restic" (default: all four)
#   BENCH_PROTOCOLS    subset/order of "http https" (default: both; each tool runs both in turn)
#   BENCH_DIR          where images and restored files go (default /tmp; needs ~2x the largest size)
#   BENCH_EBS_ENCRYPT  1 (default): ebs-worker repository encrypted, like restic's; 0: plain
#   BENCH_KEEP         1: keep the work directory (images, logs) instead of deleting it
#   MEMSTORE_BYTES     test bed capacity (default: enough for the largest image twice over)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/bin:/usr/sbin"
NODE=$ROOT/node_modules/.bin/node
SIZES=${BENCH_SIZES:-1 4}
TOOLS=${BENCH_TOOLS:-ebs-worker aws rclone restic}
PROTOCOLS=${BENCH_PROTOCOLS:-http https}
BASE=${BENCH_DIR:-/tmp}
ENCRYPT=${BENCH_EBS_ENCRYPT:-1}
# The Debian awscli, explicitly: a pyenv shim or a pip-installed aws earlier in PATH would be a
# different program (and version) on every machine.
AWS=/usr/bin/aws
TIME=/usr/bin/time
log() { echo "[bench $(date +%T)] $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }
. scripts/bench-lib.sh   # (the working directory is the repository, above)

# --- dependencies ---------------------------------------------------------------------------
install_missing() {  # like testbed.sh: only root with apt installs; try without `apt-get update` first
  local pkgs=()
  [ -x "$AWS" ] || pkgs+=(awscli)
  command -v rclone >/dev/null || pkgs+=(rclone)
  command -v restic >/dev/null || pkgs+=(restic)
  [ -x "$TIME" ] || pkgs+=(time)
  command -v zstd >/dev/null || pkgs+=(zstd)         # the primitives
  command -v openssl >/dev/null || pkgs+=(openssl)
  apt_install "${pkgs[@]}"
}
install_missing
[ -x "$NODE" ] || { log "node_modules missing: npm ci"; npm ci --no-audit --no-fund >&2; }
for s in $SIZES; do
  [[ $s =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_SIZES: \"$s\" is not a number of GiB"
done
TLS=0
for p in $PROTOCOLS; do
  case $p in http) ;; https) TLS=1 ;; *) die "BENCH_PROTOCOLS: unknown protocol $p (http, https)" ;; esac
done

# --- work directory and test bed; both go away on exit, whatever happens ---------------------
max_gib=$(printf '%s\n' $SIZES | sort -g | tail -n 1)
# Buckets are emptied after each tool, but a large image still needs room for one full copy plus
# what RGW's garbage collection has not handed back yet.  TLS=1 puts haproxy (TLS, a throwaway CA)
# in front of RGW; its other endpoint stays plain http.
bench_start bench "$TLS" "$(awk -v g="$max_gib" 'BEGIN { printf "%.0f", (2 * g + 4) * 2^30 }')"
# Untimed bookkeeping (bucket creation, sizes, deletion) always goes over plain http.
ENDPOINT=$AWS_ENDPOINT_URL_S3
export CEPH_CONF=$TESTBED_DIR/ceph.conf   # for radosgw-admin gc below

# Keep every tool away from the user's own configuration (profiles, multipart settings, remotes,
# caches): each one runs with its defaults, as on a fresh machine.
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-credentials
# Every tool is told its endpoint and CA on its command line (use_protocol below), and nothing in the
# environment may redirect it or change whom it trusts: an https row must be the tool verifying our
# CA, not the system's store, a skipped check or a silent fall-back to the http endpoint.  (With
# AWS_CA_BUNDLE set, rclone's AWS SDK also refuses to start: "LoadCustomCABundleError".)
unset AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL AWS_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR NODE_EXTRA_CA_CERTS \
  NODE_TLS_REJECT_UNAUTHORIZED RCLONE_CA_CERT RCLONE_NO_CHECK_CERTIFICATE RESTIC_CACERT
export RCLONE_CONFIG=$WORK/rclone.conf
: > "$RCLONE_CONFIG"
export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph \
  RCLONE_CONFIG_RGW_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RESTIC_PASSWORD=bench-password RESTIC_CACHE_DIR=$WORK/restic-cache
# ebs-worker runs from a copy of agent/ taken now, committed or not: the run takes minutes, and
# edits made meanwhile must not give its rows a mix of code versions.  Fingerprinted, so the
# report can tell which code it measured and whether agent/ moved on during the run.
agent_hash() { (cd "$1" && find agent -type f -name '*.ts' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12); }
mkdir -p "$WORK/ebs-worker"
cp -r agent package.json "$WORK/ebs-worker/"
ln -s "$ROOT/node_modules" "$WORK/ebs-worker/node_modules"
EBS_WORKER=$WORK/ebs-worker/agent/bin/ebs-worker.ts
AGENT_HASH=$(agent_hash "$WORK/ebs-worker")
AGENT_DESC="git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- agent 2>/dev/null &&
  [ -z "$(git ls-files --others --exclude-standard agent 2>/dev/null)" ] || echo ' + uncommitted changes'), agent/*.ts sha256 $AGENT_HASH"
EBS_KEY=() EBS_INIT=()
if [ "$ENCRYPT" = 1 ]; then EBS_KEY=(--key-file "$WORK/ebs-worker.key") EBS_INIT=(--encrypt); fi

# use_protocol PROTO: EP, the endpoint the tools get, and each tool's words (quoted for the command
# lines) that make it trust the test bed's CA over https; each keeps verifying the certificate.
use_protocol() {
  local ca
  case $1 in
    http) EP=$ENDPOINT AWS_TLS= RCLONE_TLS= RESTIC_TLS= EBS_TLS= ;;
    https)
      EP=$TESTBED_HTTPS_ENDPOINT ca=$(printf %q "$TESTBED_CA_FILE")
      AWS_TLS="--ca-bundle $ca " RCLONE_TLS="--ca-cert $ca " RESTIC_TLS="--cacert $ca "
      EBS_TLS="NODE_EXTRA_CA_CERTS=$ca " ;;   # Node's (the SDK's and raw-http.ts's) extra trusted CAs
  esac
}

# --- measurement ----------------------------------------------------------------------------
# Every timed command starts with a cold page cache, so that each tool reads the image from disk
# (and none profits from the previous tool having read it).  Needs root; without it the report
# says so.
drop_caches() {
  sync
  echo 3 2>/dev/null > /proc/sys/vm/drop_caches || : > "$WORK/cache-not-dropped"
}
# CPU ticks the test bed's daemons (mon, osd, radosgw, haproxy) have used, as "ALL HAPROXY": the
# server side of each run costs CPU on the same cores as the tool, so it is reported next to the
# tool's own; haproxy's (TLS) apart, which also tells whether a row went through it.
CLK_TCK=$(getconf CLK_TCK)
server_ticks() {
  local total=0 tls=0 name pid t
  while read -r name pid; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
    [ "$name" != haproxy ] || tls=$((tls + t))
  done < "$TESTBED_DIR/pids"
  echo "$total $tls"
}
# Busy CPU ticks of the whole machine: what is neither the tool nor the test bed is someone else's
# load (another test run, a build), which would skew the numbers; the report flags it.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }  # user nice system irq softirq
# measure NAME COMMAND [warm]: run COMMAND (a bash command line; pipelines count as a whole) under
# GNU time, from a cold page cache unless "warm" (then only after a sync, so that no earlier
# writeback runs meanwhile).  Its %M is the largest max-RSS of any single process of the pipeline,
# not their sum.  Prints "wall user sys maxrss_kib server_cpu_s tls_cpu_s other_cpu_s" (tls: haproxy's
# share of server); COMMAND itself goes to logs/NAME.cmd, its stderr to logs/NAME.log.
measure() {
  local name=$1 cmd=$2 s0 t0 m0 s1 t1 m1
  if [ "${3:-}" = warm ]; then sync; else drop_caches; fi
  echo "$cmd" > "$WORK/logs/$name.cmd"
  read -r s0 t0 < <(server_ticks); m0=$(machine_ticks)
  if ! "$TIME" -f '%e %U %S %M' -o "$WORK/$name.time" bash -c "set -euo pipefail; $cmd" 2>"$WORK/logs/$name.log"; then
    tail -n 20 "$WORK/logs/$name.log" >&2
    die "$name failed: $cmd"
  fi
  read -r s1 t1 < <(server_ticks); m1=$(machine_ticks)
  read -r wall user sys rss < <(tail -n 1 "$WORK/$name.time")
  awk -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v srv=$((s1 - s0)) -v tls=$((t1 - t0)) -v all=$((m1 - m0)) \
    -v hz="$CLK_TCK" 'BEGIN { o = (all - srv) / hz - u - s
                              printf "%s %s %s %s %.1f %.2f %.1f\n", w, u, s, r, srv / hz, tls / hz, o < 0 ? 0 : o }'
}
stored_bytes() {  # what the tool left in its bucket
  "$AWS" --endpoint-url "$ENDPOINT" s3 ls "s3://$1" --recursive --summarize | awk '/Total Size:/ { print $3 }'
}
drop_bucket() {  # and make RGW free the memory now rather than at its next gc period
  "$AWS" --endpoint-url "$ENDPOINT" s3 rb "s3://$1" --force >/dev/null
  radosgw-admin gc process --include-all >/dev/null 2>&1 || true
}

# --- one tool: backup IMG into a fresh bucket, restore into a new file, check ----------------
# Each sets BACKUP_CMD and RESTORE_CMD (run by measure) after its untimed setup (bucket, repository),
# all of it through EP with the CA words of use_protocol.
setup_ebs-worker() {
  "$AWS" --endpoint-url "$ENDPOINT" s3 mb "s3://$BUCKET" >/dev/null
  # Run as an installed ebs-worker runs: through the entry's own #! line (its V8 flags), with this
  # checkout's Node first on PATH.
  local ebs="${EBS_TLS}PATH=$(printf %q "$(dirname "$NODE")"):\$PATH $(printf '%q ' "$EBS_WORKER")"
  local key="" init=""
  [ ${#EBS_KEY[@]} = 0 ] || key="$(printf '%q ' "${EBS_KEY[@]}")"
  [ ${#EBS_INIT[@]} = 0 ] || init="$(printf '%q ' "${EBS_INIT[@]}")"
  local repo="--endpoint-url $EP --repo s3://$BUCKET/repo"
  bash -c "${ebs}init $repo $key$init--json" >/dev/null
  BACKUP_CMD="${ebs}backup $repo $key--device $(printf %q "$IMG") --json > $WORK/$NAME-backup.json"
  # The backup id is only known once the backup ran: read it inside the timed command (a jq-less
  # grep costs nothing next to the restore).
  RESTORE_CMD="id=\$(tail -n 1 $WORK/$NAME-backup.json | grep -o '\"backupId\":\"[^\"]*\"' | cut -d'\"' -f4);
    ${ebs}restore $repo $key--backup \$id --device $(printf %q "$OUT") --fresh-target --json > $WORK/$NAME-restore.json"
}
setup_aws() {
  "$AWS" --endpoint-url "$ENDPOINT" s3 mb "s3://$BUCKET" >/dev/null
  BACKUP_CMD="dd if=$(printf %q "$IMG") bs=1M status=none | $AWS --endpoint-url $EP ${AWS_TLS}s3 cp - s3://$BUCKET/disk.img"
  # ebs-worker's restore ends with fdatasync (the data must be on the volume before a snapshot);
  # the others are made to end with one too, so every restore is timed until the data is durable.
  RESTORE_CMD="$AWS --endpoint-url $EP ${AWS_TLS}s3 cp s3://$BUCKET/disk.img - > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}
setup_rclone() {
  local rclone="rclone --s3-endpoint $EP $RCLONE_TLS"
  bash -c "${rclone}mkdir rgw:$BUCKET"
  BACKUP_CMD="${rclone}rcat rgw:$BUCKET/disk.img < $(printf %q "$IMG")"
  RESTORE_CMD="${rclone}cat rgw:$BUCKET/disk.img > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}
setup_restic() {
  local restic="restic ${RESTIC_TLS}-q -r s3:$EP/$BUCKET"
  bash -c "$restic init" >/dev/null   # creates the bucket; default (stable) format, compression on
  BACKUP_CMD="$restic backup --stdin --stdin-filename disk.img < $(printf %q "$IMG")"
  RESTORE_CMD="$restic dump latest /disk.img > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}

# check_transport NAME PROTO TLS_CPU_S: the row went the way its protocol says, or die.  haproxy
# spends CPU on every TLS connection (handshake, then every byte) and none while idle (0 ticks in
# 90 s measured): an https row with none of it did not use TLS; an http one with some of it (more
# than one tick) did.
check_transport() {
  awk -v p="$2" -v t="$3" -v hz="$CLK_TCK" 'BEGIN { exit !(p == "https" ? t > 0 : t * hz < 1.5) }' ||
    die "$1: haproxy used $3 CPU-s during this $2 row: the tool did not go $([ "$2" = https ] && echo through || echo around) TLS"
}

run_tool() {  # run_tool TOOL GIB PROTO: appends two rows to results.tsv
  local tool=$1 gib=$2 proto=$3 b r stored sum check
  NAME="$gib-$proto-$tool" BUCKET="bench-$tool-${gib//./p}g-$proto" OUT="$WORK/restored-$tool.img"
  use_protocol "$proto"
  rm -f "$OUT"
  "setup_$tool"
  log "$gib GiB, $tool over $proto: backup"
  b=$(measure "$NAME-backup" "$BACKUP_CMD")
  stored=$(stored_bytes "$BUCKET")
  log "$gib GiB, $tool over $proto: restore"
  r=$(measure "$NAME-restore" "$RESTORE_CMD")
  sum=$(sha256sum "$OUT" | cut -d' ' -f1)
  if [ "$sum" = "$SOURCE_SUM" ]; then check=ok; else
    check=MISMATCH
    echo "bench: !!! $tool over $proto restored a $gib GiB image that DIFFERS from the source (sha256 $sum, expected $SOURCE_SUM)" >&2
    MISMATCHES+=("$gib GiB $tool $proto")
  fi
  rm -f "$OUT"
  drop_bucket "$BUCKET"
  read -r bw bu bs bm bsrv btls both <<< "$b"; read -r rw ru rs rm_ rsrv rtls roth <<< "$r"
  check_transport "$NAME-backup" "$proto" "$btls"
  check_transport "$NAME-restore" "$proto" "$rtls"
  printf '%s\t%s\t%s\tbackup\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\n' "$gib" "$proto" "$tool" \
    "$bw" "$bu" "$bs" "$bm" "$bsrv" "$btls" "$both" "$stored" >> "$WORK/results.tsv"
  printf '%s\t%s\t%s\trestore\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-1\t%s\n' "$gib" "$proto" "$tool" \
    "$rw" "$ru" "$rs" "$rm_" "$rsrv" "$rtls" "$roth" "$check" >> "$WORK/results.tsv"
  log "$gib GiB, $tool over $proto: backup ${bw}s, restore ${rw}s, $check (haproxy CPU ${btls}s / ${rtls}s)"
}

# --- primitives: the CPU-seconds of the work nobody can skip, on this image's bytes ------------
# (PRIMITIVES in bench-report.ts says which count for backup and which for restore.)  The read is
# timed from a cold cache, as the tools read the image; the others from a warm one, on the bytes
# each needs, extracted (untimed) by the image generator's own segment layout: random segments are
# stored raw, text ones compressed, zero ones not at all.
prim() {  # prim NAME BYTES cold|warm COMMAND: one row in primitives.tsv
  local m wall user sys
  m=$(measure "$GIB-prim-$1" "$4" "$3")
  read -r wall user sys _ <<< "$m"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$GIB" "$1" "$2" "$wall" "$user" "$sys" >> "$WORK/primitives.tsv"
  log "$GIB GiB, primitive $1: ${user}s user ${sys}s sys"
}
measure_primitives() {  # uses IMG and GIB
  local p=$WORK/prim q nonzero stored report
  report="$(printf %q "$NODE") scripts/bench-report.ts"
  mkdir -p "$p"
  q=$(printf %q "$p")
  "$NODE" scripts/bench-report.ts parts "$IMG" "$p/random" "$p/text"
  prim read "$(stat -c %s "$IMG")" cold "dd if=$(printf %q "$IMG") of=/dev/null bs=1M status=none"
  # back into the page cache after the read's drop: the bytes, and Node with the script (or the
  # first Node run, node-start, would also pay for reading them from disk)
  cat "$p/random" "$p/text" > /dev/null
  "$NODE" scripts/bench-report.ts gcm seal
  nonzero=$(($(stat -c %s "$p/random") + $(stat -c %s "$p/text")))
  prim sha256 "$nonzero" warm "openssl dgst -sha256 $q/random $q/text > /dev/null"
  prim zstd "$(stat -c %s "$p/text")" warm "zstd -1 -T1 -q -c $q/text > $q/text.zst"
  stored=$(($(stat -c %s "$p/random") + $(stat -c %s "$p/text.zst")))
  # AES-256-GCM through Node's crypto (OpenSSL) over the stored bytes in 1 MiB pieces: `openssl enc`
  # has no GCM.  The same script without files is its start-up, which the report subtracts.
  prim node-start 0 warm "$report gcm seal"
  prim gcm-seal "$stored" warm "$report gcm seal $q/random $q/text.zst"
  "$NODE" scripts/bench-report.ts gcm seal --out "$p/random" "$p/text.zst"   # what gcm-open opens (untimed)
  prim gcm-open "$stored" warm "$report gcm open $q/random.gcm $q/text.zst.gcm"
  prim unzstd "$(stat -c %s "$p/text.zst")" warm "zstd -d -q -c $q/text.zst > /dev/null"
  # into a new file in BENCH_DIR, as the restores; the second dd's fdatasync covers the whole file
  prim write "$nonzero" warm "dd if=$q/random of=$q/out bs=1M status=none &&
    dd if=$q/text of=$q/out bs=1M status=none oflag=append conv=notrunc,fdatasync"
  rm -rf "$p"
}

# --- the run --------------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# A first hint only (the load average lags by a minute); each measurement checks for other load itself.
awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }' &&
  log "WARNING: load average $LOAD_BEFORE on $(nproc) CPUs: if something else is running, numbers will be skewed"
MISMATCHES=()
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
: > "$WORK/results.tsv"
: > "$WORK/primitives.tsv"
: > "$WORK/notes.md"
for tool in $TOOLS; do declare -F "setup_$tool" >/dev/null || die "BENCH_TOOLS: unknown tool $tool"; done
for gib in $SIZES; do
  IMG="$WORK/image-${gib}g.img" GIB=$gib
  log "$gib GiB: generating the image in $WORK"
  "$NODE" scripts/bench-report.ts image "$IMG" "$gib"
  SOURCE_SUM=$(sha256sum "$IMG" | cut -d' ' -f1)
  measure_primitives
  # A tool's protocols one after the other: its http and https rows are the closest in time.
  for tool in $TOOLS; do
    for proto in $PROTOCOLS; do
      run_tool "$tool" "$gib" "$proto"
      # ebs-worker's own timers and counters tell process start-up from the work itself
      [ "$tool" != ebs-worker ] || "$NODE" scripts/bench-report.ts ebs-note "$gib" "$proto" \
        "$WORK/$gib-$proto-ebs-worker-backup.json" "$WORK/$gib-$proto-ebs-worker-restore.json" >> "$WORK/notes.md"
    done
  done
  rm -f "$IMG"
done

# --- report ---------------------------------------------------------------------------------
ver() { "$@" 2>&1 | head -n 1; }
{
  echo "# ebs-worker benchmark, $STARTED"
  echo
  echo "Command: \`BENCH_SIZES='$SIZES' BENCH_TOOLS='$TOOLS' BENCH_PROTOCOLS='$PROTOCOLS' BENCH_DIR='$BASE' BENCH_EBS_ENCRYPT=$ENCRYPT npm run bench\`"
  echo
  echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), \
$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 2^20 }' /proc/meminfo) RAM, Linux $(uname -r), \
BENCH_DIR on $(df -T "$BASE" | awk 'NR == 2 { print $2 }') ($(df "$BASE" | awk 'NR == 2 { print $1 }'))"
  echo "- ebs-worker $("$NODE" "$EBS_WORKER" --version) ($AGENT_DESC\
$([ "$(agent_hash .)" = "$AGENT_HASH" ] || echo '; agent/ was edited during the run: measured is the copy taken at its start')), \
Node $("$NODE" --version), repository $([ "$ENCRYPT" = 1 ] && echo 'encrypted (AES-256-GCM)' || echo 'not encrypted'), \
otherwise default settings"
  echo "- $(ver "$AWS" --version | cut -d' ' -f1-2); $(ver rclone version); $(ver restic version | cut -d' ' -f1-2); \
S3: Ceph RGW $(ver radosgw --version | awk '{ print $3 }') (scripts/testbed.sh, memstore OSD: objects in RAM)\
$([ "$TLS" = 0 ] || echo ", over https through $(ver haproxy -v | cut -d' ' -f1-3)"); \
GNU time $(dpkg-query -W -f '${Version}' time 2>/dev/null || echo '?'); primitives: $(ver openssl version | cut -d' ' -f1-2), \
zstd $(zstd -V | grep -o 'v[0-9.]*' | head -n 1), Node's crypto (OpenSSL $("$NODE" -p process.versions.openssl))"
  echo "- Image: 64 MiB segments cycling random / text-like (\`zstd -3\` compresses it ≈ 2.9x) / zero / zero, every segment distinct."
  echo "- Page cache dropped before every timed command: $([ -e "$WORK/cache-not-dropped" ] && echo 'NO (not root?)' || echo yes)."
  echo "- Load average before / after the run: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$NODE" scripts/bench-report.ts report "$WORK/results.tsv" "$WORK/primitives.tsv"
  echo
  echo "Notes:"
  echo
  echo "- Wall time and MiB/s are of the image size, for the whole command (process start-up included)."
  echo "- CPU s/GiB and peak RSS are the client's: for a pipeline, CPU is summed over its processes and"
  echo "  peak RSS is GNU time's %M, the largest max-RSS of any single process in it (not the sum)."
  echo "  \"Server CPU s/GiB\" is what the test bed's mon, OSD, RGW and (https) haproxy used meanwhile, on the"
  echo "  same CPUs; \"of it TLS\" is haproxy's, the TLS termination that a real S3 does on its side."
  if [ "$TLS" = 1 ]; then
    echo "- https: haproxy in TCP mode terminates TLS (1.2 or later; RSA-2048 certificate for 127.0.0.1 signed by a"
    echo "  throwaway CA made at start, scripts/testbed.sh TESTBED_TLS=1) in front of the same RGW; \`openssl s_client\`"
    echo "  negotiates $(openssl s_client -connect "${TESTBED_HTTPS_ENDPOINT#https://}" -CAfile "$TESTBED_CA_FILE" \
      -verify_return_error </dev/null 2>/dev/null | awk '/^New,/ { printf "%s %s", $2, $5 } /Verify return code/ { v = $4 } END { printf " (certificate check %s)", v == "0" ? "ok" : "FAILED" }'),"
    echo "  each tool negotiates its own.  Every tool is given the https endpoint and verifies the certificate"
    echo "  against that CA: aws \`--ca-bundle\`, rclone \`--ca-cert\`, restic \`--cacert\`, ebs-worker"
    echo "  \`NODE_EXTRA_CA_CERTS\`; none skips the check (no variable that would is set).  Every https row was"
    echo "  checked to have gone through haproxy (it used CPU meanwhile), every http row not to have."
  fi
  echo "- CPU / primitives: the row's client CPU divided by that of its operation's primitives at that size"
  echo "  (table under each size), measured in this run on this image's bytes with GNU time: backup = read the"
  echo "  image (cold cache) + SHA-256 of the non-zero data + zstd -1 of the text part + AES-256-GCM seal of what"
  echo "  is stored (random part + compressed text); restore = zstd -d + SHA-256 + AES-256-GCM open + writing the"
  echo "  non-zero data with fdatasync.  AES-256-GCM is a Node script (\`bench-report.ts gcm\`: Node's crypto, i.e."
  echo "  OpenSSL, over the real bytes in 1 MiB pieces, one cipher and tag per piece; its empty start subtracted),"
  echo "  not \`openssl speed\` (\`openssl enc\` has no GCM).  Besides the read, the primitives read their input from"
  echo "  the page cache (included).  TLS is not among them: over https the ratio includes the client's TLS."
  echo "- Restores write a new file in BENCH_DIR and end with fdatasync (ebs-worker does it itself; the others"
  echo "  are followed by \`sync --data\` in the timed command). ebs-worker leaves zero chunks as holes (--fresh-target)."
  echo "- \"stored\" is the bucket's total object size after the backup (aws/rclone: the raw image)."
  cat "$WORK/notes.md"
} > "$WORK/report.md"
OUTFILE="bench-results/$(date -u +%Y%m%dT%H%M%SZ).md"
cp "$WORK/report.md" "$OUTFILE"
# The raw numbers too (user and sys apart, other load), for comparing runs later.
{ printf '# gib\tprotocol\ttool\top\twall_s\tuser_s\tsys_s\tmaxrss_kib\tserver_cpu_s\ttls_cpu_s\tother_cpu_s\tstored_bytes\tsha256\n'
  cat "$WORK/results.tsv"; } > "${OUTFILE%.md}.tsv"
{ printf '# gib\tprimitive\tbytes\twall_s\tuser_s\tsys_s\n'; cat "$WORK/primitives.tsv"; } > "${OUTFILE%.md}-primitives.tsv"
cat "$WORK/report.md"
log "saved $OUTFILE"
if [ ${#MISMATCHES[@]} -gt 0 ]; then
  echo "bench: !!! RESTORED DATA DIFFERS FROM THE SOURCE: ${MISMATCHES[*]}" >&2
  exit 1
fi
