#!/usr/bin/env bash
# `npm run bench:scale`: ebs-worker at the scale repository format 2 is built for (docs/FORMAT.md),
# in three parts; a Markdown report on stdout and in bench-results/scale-<UTC time>.md.
#
# 1. startup   A backup task's start-up in repositories of 10^6, 10^7 and 10^8 chunks. The index
#              runs are made synthetically by the repository's own code (scripts/bench-scale.ts
#              `runs`: sorted entries as a backup leaves them, encodeRun, blob-encoded with the
#              repository's codec) on a file:// repository: the same recent activity at every size
#              (SCALE_RECENT_RUNS runs of SCALE_RECENT_ENTRIES entries in all, named over the last
#              28 days), the rest in runs of SCALE_OLD_RUN_ENTRIES named over SCALE_YEARS before the
#              30-day window. A real `ebs-worker backup --json` of a small image of fresh data then
#              runs in each, and what it adds is removed after it. Counted from outside, before the
#              first chunk read (its first pread64 on the image): on file://, with
#              `strace -f -y -e trace=openat,statx,newfstatat,getdents64,pread64`, the objects opened
#              and the listings (getdents64 calls, entries, stat by name) under the repository; on
#              the S3 test bed (scripts/testbed.sh, sizes in SCALE_S3_CHUNKS), the requests through
#              a counting HTTP proxy (bench-scale.ts `proxy`), their times against the first
#              pread64 from `strace -e trace=pread64,execve`. Timed runs (wall, CPU, GNU time's peak
#              RSS, time to the first chunk read) go without the proxy, under that light strace.
# 2. sparse    A SCALE_SPARSE_TIB (64) TiB sparse image holding ~1 GiB in a dozen places, on XFS on a
#              loop device (ext4 files stop at 16 TiB): backup, restore into a new sparse file,
#              verify, each timed; the restored regions are compared with the source and the
#              restored file's allocation reported. The same bytes packed into a 1 GiB file are
#              the control (the difference is what the holes cost). With SCALE_PROFILE=1, each
#              command also runs once under `node --cpu-prof` (main-thread time by category).
# 3. metadata  What a year of daily incrementals of a 1 TiB volume (1 % changing a day) stores as
#              metadata, version 1 against version 2, from the model in scripts/bench-scale-metadata.ts
#              (the real TreeBuilder, PackBuilder, encodeRun, encodeIndex, encodeManifest and codec
#              over synthetic chunk ids; the change model is described there). Other daily change
#              shares (SCALE_META_SWEEP) show whether it is proportional to the change. Validated
#              against real backups: a SCALE_VALIDATE_GIB volume full of data, a full backup and
#              SCALE_VALIDATE_DAYS incrementals with --changed-ranges (the model's extents), by this
#              code (version 2) and by the last release that wrote version 1 (SCALE_V1_REV, taken
#              with `git archive`), compared with the model's figures for that volume.
#
# Knobs (environment):
#   SCALE_PARTS           parts to run, of "startup sparse metadata" (default: all three)
#   SCALE_DIR             where the work directory goes (default /tmp); it must hold ~50 bytes per
#                         chunk of the largest repository (5 GB at 10^8) and, for part 3, about
#                         2.3 x SCALE_VALIDATE_GIB
#   SCALE_ENCRYPT         1 (default): encrypted repositories, as a fleet's are; 0: plain
#   SCALE_KEEP            1: keep the work directory (it is also kept when the run fails)
#   SCALE_SEED            seed of the synthetic layouts and of the change model
#  part 1:
#   SCALE_CHUNKS          repository sizes in chunks (default "1e6 1e7 1e8"), ascending
#   SCALE_RECENT_RUNS     runs written in the last 30 days, the same at every size (default 300)
#   SCALE_RECENT_ENTRIES  their entries in all (default 450000; log-uniform sizes, 1/8–8x the mean)
#   SCALE_OLD_RUN_ENTRIES entries of each older run (default 65536: what a backup consolidates to)
#   SCALE_YEARS           how far back the older runs are named (default 3)
#   SCALE_IMAGE_MIB       the image backed up (default 64: fresh random data, 64 new chunks)
#   SCALE_REPEAT          timed backups per size (default 3; medians are reported)
#   SCALE_S3_CHUNKS       sizes also measured on the S3 test bed (default "1e6 1e7": 10^8 would be
#                         ~5 GB of runs in the test bed's RAM); "" for none
#  part 2:
#   SCALE_SPARSE_TIB      the sparse volume's size in TiB (default 64)
#   SCALE_PROFILE         1 (default): a CPU-profiled run of each command too
#  part 3:
#   SCALE_META_GIB        the modelled volume (default 1024)
#   SCALE_META_DAYS       daily incrementals after the full backup (default 365)
#   SCALE_META_CHANGE     share of the volume changed a day (default 0.01)
#   SCALE_META_MIN_EXTENT_MIB, SCALE_META_MAX_EXTENT_MIB   extent sizes (default 1 and 64)
#   SCALE_META_SWEEP      other daily change shares (default "0.001 0.1"), SCALE_META_SWEEP_DAYS
#                         incrementals each (default 7)
#   SCALE_VALIDATE_GIB    the validation volume (default 16), SCALE_VALIDATE_DAYS (default 5)
#   SCALE_V1_REV          the last revision that wrote version 1 (default 0f1bbca); "" skips it
#
# Needs root (loop devices, mount, dropping the page cache). Installs what is missing with apt-get
# (xfsprogs, time, strace; the Ceph packages through scripts/testbed.sh when S3 sizes are asked
# for) and runs `npm ci` if node_modules is missing; no other network. The work directory, the
# mount, the loop device and the test bed go away on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NODE=$ROOT/node_modules/.bin/node
TIME=/usr/bin/time
PARTS=${SCALE_PARTS:-startup sparse metadata}
BASE=${SCALE_DIR:-/tmp}
ENCRYPT=${SCALE_ENCRYPT:-1}
REPEAT=${SCALE_REPEAT:-3}
CHUNKS=${SCALE_CHUNKS:-1e6 1e7 1e8}
S3_CHUNKS=${SCALE_S3_CHUNKS-1e6 1e7}
IMAGE_MIB=${SCALE_IMAGE_MIB:-64}
SPARSE_TIB=${SCALE_SPARSE_TIB:-64}
PROFILE=${SCALE_PROFILE:-1}
META_GIB=${SCALE_META_GIB:-1024}
META_DAYS=${SCALE_META_DAYS:-365}
SWEEP=${SCALE_META_SWEEP-0.001 0.1}
SWEEP_DAYS=${SCALE_META_SWEEP_DAYS:-7}
VALIDATE_GIB=${SCALE_VALIDATE_GIB:-16}
VALIDATE_DAYS=${SCALE_VALIDATE_DAYS:-5}
V1_REV=${SCALE_V1_REV-0f1bbca}
export SCALE_SEED=${SCALE_SEED:-ebs-worker bench-scale}
log() { echo "[bench-scale $(date +%T)] $*" >&2; }
die() { echo "bench-scale: $*" >&2; exit 1; }
. scripts/bench-lib.sh   # (the working directory is the repository, above)
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
for p in $PARTS; do [[ $p =~ ^(startup|sparse|metadata)$ ]] || die "SCALE_PARTS: unknown part \"$p\""; done

# --- dependencies ---------------------------------------------------------------------------
install_missing() {  # like bench.sh: only root with apt installs; try without `apt-get update` first
  local pkgs=()
  [ -x "$TIME" ] || pkgs+=(time)
  command -v strace >/dev/null || [ -x /usr/bin/strace ] || pkgs+=(strace)
  if has_part sparse; then command -v mkfs.xfs >/dev/null || [ -x /usr/sbin/mkfs.xfs ] || pkgs+=(xfsprogs); fi
  if has_part sparse || has_part metadata; then [ -x /usr/bin/python3 ] || pkgs+=(python3); fi
  apt_install "${pkgs[@]}"
}
[ "$(id -u)" = 0 ] || die "run as root (loop devices, mount, dropping the page cache)"
install_missing
[ -x "$NODE" ] || { log "node_modules missing: npm ci"; npm ci --no-audit --no-fund >&2; }
# From here on only the system's programs: python3 (ebs-worker's SEEK_DATA helper) must be the
# distribution's, not a version manager's shim (pyenv's costs a second a call).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
HELPER=$ROOT/scripts/bench-scale.ts
helper() { "$NODE" "$HELPER" "$@"; }
chunks_int() { awk -v n="$1" 'BEGIN { printf "%.0f\n", n }'; }
for n in $CHUNKS $S3_CHUNKS; do [[ $(chunks_int "$n") =~ ^[1-9][0-9]*$ ]] || die "\"$n\" is not a number of chunks"; done

# --- work directory, and what goes away on exit ---------------------------------------------
mkdir -p "$BASE" bench-results
WORK=$(mktemp -d "$BASE/ebs-worker-bench-scale-XXXXXX")
mkdir -p "$WORK/logs" "$WORK/results"
TESTBED_DIR= PROXY_PID= MNT=
cleanup() {
  local rc=$?
  [ -z "$PROXY_PID" ] || kill "$PROXY_PID" 2>/dev/null || true
  [ -z "$TESTBED_DIR" ] || scripts/testbed.sh stop "$TESTBED_DIR" >/dev/null 2>&1 || true
  # The loop device goes with the mount (mount -o loop sets autoclear).
  [ -z "$MNT" ] || ! mountpoint -q "$MNT" || umount "$MNT" || umount --lazy "$MNT" || true
  if [ "${SCALE_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ebs-worker runs from a copy of agent/ taken now (edits during the run do not mix versions).
agent_hash() { (cd "$1" && find agent -type f -name '*.ts' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12); }
mkdir -p "$WORK/ebs-worker"
cp -r agent package.json "$WORK/ebs-worker/"
ln -s "$ROOT/node_modules" "$WORK/ebs-worker/node_modules"
EBS=$WORK/ebs-worker/agent/bin/ebs-worker.ts
AGENT_HASH=$(agent_hash "$WORK/ebs-worker")
AGENT_DESC="git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- agent 2>/dev/null &&
  [ -z "$(git ls-files --others --exclude-standard agent 2>/dev/null)" ] || echo ' + uncommitted changes'), agent/*.ts sha256 $AGENT_HASH"
ebs() { "$NODE" "$EBS" "$@"; }
KEY=() INIT=()
if [ "$ENCRYPT" = 1 ]; then KEY=(--key-file "$WORK/repo.key") INIT=(--encrypt); fi
KEYFILE=$([ "$ENCRYPT" = 1 ] && echo "$WORK/repo.key" || echo "")
backup_id() { grep -o '"backupId":"[^"]*"' "$1" | tail -n 1 | cut -d'"' -f4; }
avail_bytes() { df -B1 --output=avail "$1" | tail -n 1 | tr -d ' '; }
need_room() {  # need_room BYTES WHAT
  local have; have=$(avail_bytes "$WORK")
  [ "$have" -ge "$1" ] || die "$2 needs $(( $1 / 2**30 )) GiB free in $WORK, $(( have / 2**30 )) GiB are"
}

# --- measurement (as bench.sh) --------------------------------------------------------------
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
CLK_TCK=$(getconf CLK_TCK)
server_ticks() {  # CPU ticks of the test bed's daemons, when there is one
  local total=0 name pid
  [ -n "$TESTBED_DIR" ] || { echo 0; return; }
  while read -r name pid; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done < "$TESTBED_DIR/pids"
  echo "$total"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# measure NAME [--trace] CMD…: runs CMD under GNU time with a cold page cache; with --trace, under
# `strace -e trace=pread64,execve` too (logs/NAME.strace: its first chunk read). Its stdout goes
# to logs/NAME.out. Prints a JSON object: wall, user, sys (CMD's own), peak RSS, the test bed's
# CPU and other processes' CPU meanwhile.
measure() {
  local name=$1 s0 m0 s1 m1 wall user sys rss
  shift
  local pre=()
  if [ "$1" = --trace ]; then
    shift
    pre=(strace -f --seccomp-bpf -y -ttt -e trace=pread64,execve -o "$WORK/logs/$name.strace")
  fi
  drop_caches
  s0=$(server_ticks) m0=$(machine_ticks)
  if ! "${pre[@]}" "$TIME" -f '%e %U %S %M' -o "$WORK/logs/$name.time" "$@" > "$WORK/logs/$name.out" 2> "$WORK/logs/$name.err"; then
    tail -n 20 "$WORK/logs/$name.err" >&2
    die "$name failed: $*"
  fi
  s1=$(server_ticks) m1=$(machine_ticks)
  read -r wall user sys rss < <(tail -n 1 "$WORK/logs/$name.time")
  awk -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v srv=$((s1 - s0)) -v all=$((m1 - m0)) -v hz="$CLK_TCK" \
    'BEGIN { o = (all - srv) / hz - u - s; printf "{\"wall\":%s,\"user\":%s,\"sys\":%s,\"maxRssKiB\":%s,\"serverCpu\":%.2f,\"otherCpu\":%.2f}\n", w, u, s, r, srv / hz, o < 0 ? 0 : o }'
}
# json_merge A B…: the JSON objects given, as one (later keys win)
json_merge() { "$NODE" -e 'console.log(JSON.stringify(Object.assign({}, ...process.argv.slice(1).map((a) => JSON.parse(a)))))' "$@"; }
last_json() { grep '^{' "$1" | tail -n 1; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }' &&
  log "WARNING: load average $LOAD_BEFORE on $(nproc) CPUs: other work is running; numbers will show it"

# ================================================================================================
# Part 1: a backup task's start-up in repositories of 10^6 … 10^8 chunks
# ================================================================================================
# startup_size BACKEND URL CHUNKS: the counting run and the timed runs of one repository size.
startup_size() {
  local backend=$1 url=$2 n=$3 name r t count runs ibytes
  name="startup-$backend-$n"
  helper objects "$url" "$WORK/objects.before"
  runs=$(grep -c '^index/' "$WORK/objects.before" || true)
  ibytes=$(awk -F'\t' '$1 ~ /^index\// { n += $2 } END { printf "%.0f", n }' "$WORK/objects.before")
  if [ "$backend" = file ]; then
    log "$n chunks, file://: counting run (strace)"
    drop_caches
    strace -f -y -ttt -e trace=openat,statx,newfstatat,getdents64,pread64,execve -o "$WORK/logs/$name-count.strace" \
      "$NODE" "$EBS" backup --repo "$url" ${KEY[@]+"${KEY[@]}"} --device "$IMG" --json > "$WORK/logs/$name-count.out" 2>&1 ||
      { tail -n 20 "$WORK/logs/$name-count.out" >&2; die "$name: counting run failed"; }
    count=$(helper strace "$WORK/logs/$name-count.strace" "$IMG" "$REPO_FILE")
    rm -f "$WORK/logs/$name-count.strace"
  else
    log "$n chunks, s3://: counting run (proxy)"
    : > "$WORK/proxy.log"
    drop_caches
    AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PROXY_PORT strace -f --seccomp-bpf -y -ttt -e trace=pread64,execve -o "$WORK/logs/$name-count.strace" \
      "$NODE" "$EBS" backup --repo "$url" ${KEY[@]+"${KEY[@]}"} --device "$IMG" --json > "$WORK/logs/$name-count.out" 2>&1 ||
      { tail -n 20 "$WORK/logs/$name-count.out" >&2; die "$name: counting run failed"; }
    sleep 0.5   # the proxy writes its log every 200 ms
    count=$(helper proxy-count "$WORK/proxy.log" "$WORK/logs/$name-count.strace" "$IMG")
  fi
  helper remove-new "$url" "$WORK/objects.before" > /dev/null
  for r in $(seq 1 "$REPEAT"); do
    log "$n chunks, $backend: timed backup $r/$REPEAT"
    t=$(measure "$name-$r" --trace "$NODE" "$EBS" backup --repo "$url" ${KEY[@]+"${KEY[@]}"} --device "$IMG" --json)
    t=$(json_merge "$t" "$(helper startup "$WORK/logs/$name-$r.strace" "$IMG")" "{\"cli\":$(last_json "$WORK/logs/$name-$r.out")}")
    helper remove-new "$url" "$WORK/objects.before" > /dev/null
    echo "$(json_merge "{\"backend\":\"$backend\",\"chunks\":$n,\"runs\":$runs,\"indexBytes\":$ibytes,\"kind\":\"timed\"}" "$t")" >> "$WORK/results/startup.jsonl"
  done
  echo "$(json_merge "{\"backend\":\"$backend\",\"chunks\":$n,\"runs\":$runs,\"indexBytes\":$ibytes,\"kind\":\"count\"}" "$count")" >> "$WORK/results/startup.jsonl"
}

part_startup() {
  local n prev=0 largest gen
  largest=$(for n in $CHUNKS; do chunks_int "$n"; done | sort -n | tail -n 1)
  need_room $(( largest * 52 + IMAGE_MIB * 2**20 * 2 + 2**30 )) "part 1 ($largest chunks)"
  IMG=$WORK/startup.img
  helper image "$IMG" "$IMAGE_MIB"
  REPO_FILE=$WORK/repo-startup
  ebs init --repo "$REPO_FILE" ${KEY[@]+"${KEY[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
  # The baseline: an empty repository (what start-up costs without any index).
  startup_size file "file://$REPO_FILE" 0
  for n in $CHUNKS; do
    n=$(chunks_int "$n")
    [ "$n" -gt "$prev" ] || die "SCALE_CHUNKS must ascend"
    log "file:// repository: index runs for $prev → $n chunks"
    gen=$(helper runs "file://$REPO_FILE" "$KEYFILE" "$prev" "$n")
    echo "$(json_merge "{\"backend\":\"file\",\"kind\":\"generate\"}" "$gen")" >> "$WORK/results/startup.jsonl"
    prev=$n
    startup_size file "file://$REPO_FILE" "$n"
  done
  rm -rf "$REPO_FILE"

  [ -n "$S3_CHUNKS" ] || return 0
  largest=$(for n in $S3_CHUNKS; do chunks_int "$n"; done | sort -n | tail -n 1)
  export MEMSTORE_BYTES=${MEMSTORE_BYTES:-$(( largest * 60 + 2 * 2**30 ))}
  eval "$(scripts/testbed.sh start)"
  export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-credentials
  unset AWS_CA_BUNDLE
  local rgw=$AWS_ENDPOINT_URL_S3
  "$NODE" "$HELPER" proxy "$WORK/proxy.port" "$rgw" "repo/" "$WORK/proxy.log" 2> "$WORK/logs/proxy.err" &
  PROXY_PID=$!
  for _ in $(seq 1 50); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
  PROXY_PORT=$(cat "$WORK/proxy.port")
  local url=s3://bench-scale/repo
  helper bucket bench-scale
  ebs init --repo "$url" ${KEY[@]+"${KEY[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
  startup_size s3 "$url" 0
  prev=0
  for n in $S3_CHUNKS; do
    n=$(chunks_int "$n")
    log "s3:// repository: index runs for $prev → $n chunks"
    gen=$(helper runs "$url" "$KEYFILE" "$prev" "$n")
    echo "$(json_merge "{\"backend\":\"s3\",\"kind\":\"generate\"}" "$gen")" >> "$WORK/results/startup.jsonl"
    prev=$n
    startup_size s3 "$url" "$n"
  done
  kill "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=
  scripts/testbed.sh stop "$TESTBED_DIR" >/dev/null 2>&1 || true
  TESTBED_DIR=
  RGW_VERSION=$(radosgw --version 2>&1 | head -n 1 | awk '{ print $3 }')
}

# ================================================================================================
# Part 2: a 64 TiB sparse volume holding 1 GiB
# ================================================================================================
part_sparse() {
  local size what img repo id t out
  size=$(awk -v t="$SPARSE_TIB" 'BEGIN { printf "%.0f", t * 2^40 }')
  need_room $(( 8 * 2**30 )) "part 2"
  truncate -s 16G "$WORK/xfs.img"
  mkfs.xfs -q -f "$WORK/xfs.img"
  MNT=$WORK/xfs
  mkdir -p "$MNT"
  mount -o loop "$WORK/xfs.img" "$MNT"
  helper sparse "$MNT/sparse.img" "$size"
  helper sparse "$MNT/packed.img" "$size" packed
  for what in sparse packed; do
    img=$MNT/$what.img
    repo=$MNT/repo-$what
    out=$MNT/restored-$what.img
    local r check
    for r in $(seq 1 "$REPEAT"); do
      rm -rf "$repo"
      ebs init --repo "$repo" ${KEY[@]+"${KEY[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
      log "$what: backup, restore, verify ($r/$REPEAT)"
      t=$(measure "$what-backup-$r" "$NODE" "$EBS" backup --repo "$repo" ${KEY[@]+"${KEY[@]}"} --device "$img" --json)
      echo "$(json_merge "{\"volume\":\"$what\",\"op\":\"backup\",\"rep\":$r}" "$t" "{\"cli\":$(last_json "$WORK/logs/$what-backup-$r.out")}")" >> "$WORK/results/sparse.jsonl"
      id=$(backup_id "$WORK/logs/$what-backup-$r.out")
      t=$(measure "$what-restore-$r" "$NODE" "$EBS" restore --repo "$repo" ${KEY[@]+"${KEY[@]}"} --backup "$id" --device "$out" --json)
      check=$(helper compare "$img" "$out" "$size" "$([ $what = packed ] && echo packed || echo sparse)")
      echo "$(json_merge "{\"volume\":\"$what\",\"op\":\"restore\",\"rep\":$r}" "$t" "{\"cli\":$(last_json "$WORK/logs/$what-restore-$r.out")}" "$check")" >> "$WORK/results/sparse.jsonl"
      rm -f "$out"
      t=$(measure "$what-verify-$r" "$NODE" "$EBS" verify --repo "$repo" ${KEY[@]+"${KEY[@]}"} --backup "$id" --json)
      echo "$(json_merge "{\"volume\":\"$what\",\"op\":\"verify\",\"rep\":$r}" "$t" "{\"cli\":$(last_json "$WORK/logs/$what-verify-$r.out")}")" >> "$WORK/results/sparse.jsonl"
    done
    if [ "$PROFILE" = 1 ]; then
      # Profiled: a backup into a repository of its own (the first one's window would know every chunk).
      log "$what: profiled backup, restore, verify"
      rm -rf "$repo-prof"
      ebs init --repo "$repo-prof" ${KEY[@]+"${KEY[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
      drop_caches
      "$NODE" --cpu-prof --cpu-prof-dir="$WORK/prof/$what-backup" "$EBS" backup --repo "$repo-prof" ${KEY[@]+"${KEY[@]}"} --device "$img" --json > "$WORK/logs/$what-backup-prof.out"
      id=$(backup_id "$WORK/logs/$what-backup-prof.out")
      drop_caches
      "$NODE" --cpu-prof --cpu-prof-dir="$WORK/prof/$what-restore" "$EBS" restore --repo "$repo-prof" ${KEY[@]+"${KEY[@]}"} --backup "$id" --device "$out" --json > /dev/null
      rm -f "$out"
      drop_caches
      "$NODE" --cpu-prof --cpu-prof-dir="$WORK/prof/$what-verify" "$EBS" verify --repo "$repo-prof" ${KEY[@]+"${KEY[@]}"} --backup "$id" --json > /dev/null
      local op
      for op in backup restore verify; do
        echo "$(json_merge "{\"volume\":\"$what\",\"op\":\"$op\"}" "$(helper profile "$WORK"/prof/$what-$op/*.cpuprofile)")" >> "$WORK/results/profiles.jsonl"
      done
      rm -rf "$repo-prof" "$WORK/prof"
    fi
    rm -rf "$repo"
  done
  umount "$MNT"
  MNT=
  rm -f "$WORK/xfs.img"
  XFS_VERSION=$(mkfs.xfs -V 2>&1 | awk '{ print $NF }')
}

# ================================================================================================
# Part 3: metadata of a year of daily incrementals, version 1 against version 2
# ================================================================================================
# index_sizes REPO: "name size" of every object under index/
index_sizes() { find "$1/index" -type f -printf '%f %s\n' 2>/dev/null | sort; }
# real_backup VERSION REPO DAY CLI…: one real backup; appends what it stored as metadata.
real_backup() {
  local version=$1 repo=$2 day=$3 out id manifest index meta
  shift 3
  out=$WORK/logs/validate-v$version-$day.out
  index_sizes "$repo" > "$WORK/index.before"
  "$@" --volume-id vol-0123456789abcdef0 --snapshot-id snap-0123456789abcdef0 --json > "$out" 2> "$out.err" ||
    { tail -n 20 "$out.err" >&2; die "validation backup (version $version, day $day) failed"; }
  id=$(backup_id "$out")
  manifest=$(stat -c %s "$repo/backups/$id")
  index=$(index_sizes "$repo" | comm -13 "$WORK/index.before" - | awk '{ n += $2 } END { print n + 0 }')
  meta=$(grep -o '"bytesMetadata":[0-9]*' "$out" | cut -d: -f2 || true)
  echo "{\"version\":$version,\"day\":$day,\"manifest\":$manifest,\"index\":$index,\"tree\":${meta:-0},\"cli\":$(last_json "$out")}" >> "$WORK/results/validate-real.jsonl"
  echo "$id"
}

part_metadata() {
  local size f d vsize vol p1 p2 v1=
  size=$(awk -v g="$META_GIB" 'BEGIN { printf "%.0f", g * 2^30 }')
  log "model: ${META_GIB} GiB, full backup + $META_DAYS daily incrementals"
  helper sim "$size" "$META_DAYS" "$ENCRYPT" "$WORK" > "$WORK/results/meta-main.jsonl"
  for f in $SWEEP; do
    log "model: ${META_GIB} GiB, $f of it changing a day, $SWEEP_DAYS days"
    SCALE_META_CHANGE=$f helper sim "$size" "$SWEEP_DAYS" "$ENCRYPT" "$WORK" > "$WORK/results/meta-sweep-$f.jsonl"
  done

  # Validation: real backups of a volume full of data, changed by the model's extents.
  vsize=$(( VALIDATE_GIB * 2**30 ))
  need_room $(( vsize * 23 / 10 + 2**30 )) "the validation (SCALE_VALIDATE_GIB=$VALIDATE_GIB)"
  vol=$WORK/validate.img
  log "validation: writing a $VALIDATE_GIB GiB volume"
  helper volume "$vol" "$vsize"
  ebs init --repo "$WORK/repo-v2" ${KEY[@]+"${KEY[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
  local key1=()
  [ "$ENCRYPT" != 1 ] || key1=(--key-file "$WORK/repo-v1.key")
  if [ -n "$V1_REV" ]; then
    if git rev-parse --verify -q "$V1_REV^{commit}" > /dev/null; then
      mkdir -p "$WORK/v1"
      git archive "$V1_REV" agent package.json | tar -x -C "$WORK/v1"
      ln -s "$ROOT/node_modules" "$WORK/v1/node_modules"
      v1=$WORK/v1/agent/bin/ebs-worker.ts
      "$NODE" "$v1" init --repo "$WORK/repo-v1" ${key1[@]+"${key1[@]}"} ${INIT[@]+"${INIT[@]}"} --json > /dev/null
    else
      log "revision $V1_REV is not in this clone: version 1 is not validated"
    fi
  fi
  log "validation: full backups"
  p2=$(real_backup 2 "$WORK/repo-v2" 0 "$NODE" "$EBS" backup --repo "$WORK/repo-v2" ${KEY[@]+"${KEY[@]}"} --device "$vol")
  [ -z "$v1" ] || p1=$(real_backup 1 "$WORK/repo-v1" 0 "$NODE" "$v1" backup --repo "$WORK/repo-v1" ${key1[@]+"${key1[@]}"} --device "$vol")
  for d in $(seq 1 "$VALIDATE_DAYS"); do
    log "validation: day $d"
    helper change "$vol" "$d" "$WORK/changed-$d.json" > /dev/null
    p2=$(real_backup 2 "$WORK/repo-v2" "$d" "$NODE" "$EBS" backup --repo "$WORK/repo-v2" ${KEY[@]+"${KEY[@]}"} --device "$vol" \
      --parent "$p2" --changed-ranges "$WORK/changed-$d.json")
    [ -z "$v1" ] || p1=$(real_backup 1 "$WORK/repo-v1" "$d" "$NODE" "$v1" backup --repo "$WORK/repo-v1" ${key1[@]+"${key1[@]}"} --device "$vol" \
      --parent "$p1" --changed-ranges "$WORK/changed-$d.json")
  done
  helper sim "$vsize" "$VALIDATE_DAYS" "$ENCRYPT" "$WORK" > "$WORK/results/validate-sim.jsonl"
  rm -rf "$vol" "$WORK/repo-v2" "$WORK/repo-v1"
  [ -z "$v1" ] || echo "$V1_REV" > "$WORK/results/v1-rev"
}

for part in startup sparse metadata; do
  if has_part $part; then
    log "part: $part"
    echo "$(date -u +%s)" > "$WORK/results/$part.started"
    "part_$part"
    echo "$(date -u +%s)" > "$WORK/results/$part.ended"
  fi
done

# --- report ---------------------------------------------------------------------------------
{
  echo "# ebs-worker scale benchmark, $STARTED"
  echo
  cmd="SCALE_PARTS='$PARTS'"
  for v in SCALE_DIR SCALE_ENCRYPT SCALE_CHUNKS SCALE_RECENT_RUNS SCALE_RECENT_ENTRIES SCALE_OLD_RUN_ENTRIES SCALE_YEARS \
    SCALE_IMAGE_MIB SCALE_REPEAT SCALE_S3_CHUNKS SCALE_SPARSE_TIB SCALE_PROFILE SCALE_META_GIB SCALE_META_DAYS SCALE_META_CHANGE \
    SCALE_META_MIN_EXTENT_MIB SCALE_META_MAX_EXTENT_MIB SCALE_META_SWEEP SCALE_META_SWEEP_DAYS SCALE_VALIDATE_GIB SCALE_VALIDATE_DAYS SCALE_V1_REV; do
    [ -z "${!v+x}" ] || cmd+=" $v='${!v}'"
  done
  echo "Command: \`$cmd npm run bench:scale\`"
  echo
  echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), \
$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 2^20 }' /proc/meminfo) RAM, Linux $(uname -r), \
SCALE_DIR on $(df -T "$BASE" | awk 'NR == 2 { print $2 }') ($(df "$BASE" | awk 'NR == 2 { print $1 }'))"
  echo "- ebs-worker $("$NODE" "$EBS" --version) ($AGENT_DESC\
$([ "$(agent_hash .)" = "$AGENT_HASH" ] || echo '; agent/ was edited during the run: measured is the copy taken at its start')), \
Node $("$NODE" --version), repositories $([ "$ENCRYPT" = 1 ] && echo 'encrypted (AES-256-GCM)' || echo 'not encrypted'), default settings"
  echo "- GNU time $(dpkg-query -W -f '${Version}' time 2>/dev/null || echo '?'), $(strace -V | head -n 1)\
${XFS_VERSION:+, mkfs.xfs $XFS_VERSION}${RGW_VERSION:+, S3: Ceph RGW $RGW_VERSION (scripts/testbed.sh, memstore OSD)}; \
python3 for SEEK_DATA: $(readlink -f "$(command -v python3)")"
  echo "- Page cache dropped before every timed command."
  echo "- Load average before / after the run: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg) \
(the \"other CPU\" figures are what processes other than the one measured, and the test bed, used meanwhile)."
  echo
  helper report "$WORK/results"
} > "$WORK/report.md"
OUTFILE="bench-results/scale-$(date -u +%Y%m%dT%H%M%SZ).md"
cp "$WORK/report.md" "$OUTFILE"
mkdir -p "${OUTFILE%.md}"
cp "$WORK"/results/* "${OUTFILE%.md}/"
cat "$WORK/report.md"
log "saved $OUTFILE (raw figures in ${OUTFILE%.md}/)"
