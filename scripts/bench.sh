#!/usr/bin/env bash
# `npm run bench`: back up and restore a multi-GiB mixed-content image through a local S3 (the
# Ceph RGW test bed, scripts/testbed.sh) with ebs-worker and with what a user would pick instead
# (dd | aws s3 cp, rclone rcat/cat, restic --stdin/dump), and report wall time, throughput,
# CPU-seconds per GiB and peak RSS side by side.  Markdown on stdout and in bench-results/.
#
# Knobs (environment):
#   BENCH_SIZES        image sizes in GiB, multiples of 1/16 (default "1 4": two sizes, so that
#                      the report shows whether peak RSS grows with the image)
#   BENCH_TOOLS        subset/order of "ebs-worker aws rclone restic" (default: all four)
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
  apt_install "${pkgs[@]}"
}
install_missing
[ -x "$NODE" ] || { log "node_modules missing: npm ci"; npm ci --no-audit --no-fund >&2; }
for s in $SIZES; do
  [[ $s =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_SIZES: \"$s\" is not a number of GiB"
done

# --- work directory and test bed; both go away on exit, whatever happens ---------------------
mkdir -p "$BASE" bench-results
WORK=$(mktemp -d "$BASE/ebs-worker-bench-XXXXXX")
mkdir -p "$WORK/logs"
TESTBED_DIR=
cleanup() {
  local rc=$?
  [ -z "$TESTBED_DIR" ] || scripts/testbed.sh stop "$TESTBED_DIR" >/dev/null 2>&1 || true
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

max_gib=$(printf '%s\n' $SIZES | sort -g | tail -n 1)
# Buckets are emptied after each tool, but a large image still needs room for one full copy plus
# what RGW's garbage collection has not handed back yet.
export MEMSTORE_BYTES=${MEMSTORE_BYTES:-$(awk -v g="$max_gib" 'BEGIN { printf "%.0f", (2 * g + 4) * 2^30 }')}
eval "$(scripts/testbed.sh start)"
ENDPOINT=$AWS_ENDPOINT_URL_S3
export CEPH_CONF=$TESTBED_DIR/ceph.conf   # for radosgw-admin gc below

# Keep every tool away from the user's own configuration (profiles, multipart settings, remotes,
# caches): each one runs with its defaults, as on a fresh machine.
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-credentials
# The test bed is plain http: a custom CA bundle is of no use, and rclone's AWS SDK refuses to
# start with one ("LoadCustomCABundleError").
unset AWS_CA_BUNDLE
export RCLONE_CONFIG=$WORK/rclone.conf
: > "$RCLONE_CONFIG"
export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph RCLONE_CONFIG_RGW_ENDPOINT=$ENDPOINT \
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

# --- measurement ----------------------------------------------------------------------------
# Every timed command starts with a cold page cache, so that each tool reads the image from disk
# (and none profits from the previous tool having read it).  Needs root; without it the report
# says so.
drop_caches() {
  sync
  echo 3 2>/dev/null > /proc/sys/vm/drop_caches || : > "$WORK/cache-not-dropped"
}
# CPU ticks the test bed's daemons (mon, osd, radosgw) have used: the server side of each run
# costs CPU on the same cores as the tool, so it is reported next to the tool's own.
CLK_TCK=$(getconf CLK_TCK)
server_ticks() {
  local total=0 name pid
  while read -r name pid; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done < "$TESTBED_DIR/pids"
  echo "$total"
}
# Busy CPU ticks of the whole machine: what is neither the tool nor the test bed is someone else's
# load (another test run, a build), which would skew the numbers; the report flags it.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }  # user nice system irq softirq
# measure NAME COMMAND: run COMMAND (a bash command line; pipelines count as a whole) under GNU
# time.  Its %M is the largest max-RSS of any single process of the pipeline, not their sum.
# Prints "wall user sys maxrss_kib server_cpu_s other_cpu_s"; stderr goes to logs/NAME.log.
measure() {
  local name=$1 cmd=$2 s0 m0 s1 m1
  drop_caches
  s0=$(server_ticks) m0=$(machine_ticks)
  if ! "$TIME" -f '%e %U %S %M' -o "$WORK/$name.time" bash -c "set -euo pipefail; $cmd" 2>"$WORK/logs/$name.log"; then
    tail -n 20 "$WORK/logs/$name.log" >&2
    die "$name failed: $cmd"
  fi
  s1=$(server_ticks) m1=$(machine_ticks)
  read -r wall user sys rss < <(tail -n 1 "$WORK/$name.time")
  awk -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v srv=$((s1 - s0)) -v all=$((m1 - m0)) -v hz="$CLK_TCK" \
    'BEGIN { o = (all - srv) / hz - u - s; printf "%s %s %s %s %.1f %.1f\n", w, u, s, r, srv / hz, o < 0 ? 0 : o }'
}
stored_bytes() {  # what the tool left in its bucket
  "$AWS" --endpoint-url "$ENDPOINT" s3 ls "s3://$1" --recursive --summarize | awk '/Total Size:/ { print $3 }'
}
drop_bucket() {  # and make RGW free the memory now rather than at its next gc period
  "$AWS" --endpoint-url "$ENDPOINT" s3 rb "s3://$1" --force >/dev/null
  radosgw-admin gc process --include-all >/dev/null 2>&1 || true
}

# --- one tool: backup IMG into a fresh bucket, restore into a new file, check ----------------
# Each sets BACKUP_CMD and RESTORE_CMD (run by measure) after its untimed setup (bucket, repository).
setup_ebs-worker() {
  "$AWS" --endpoint-url "$ENDPOINT" s3 mb "s3://$BUCKET" >/dev/null
  "$NODE" "$EBS_WORKER" init --repo "s3://$BUCKET/repo" ${EBS_KEY[@]+"${EBS_KEY[@]}"} \
    ${EBS_INIT[@]+"${EBS_INIT[@]}"} --json >/dev/null
  local ebs="$(printf '%q ' "$NODE" "$EBS_WORKER")"
  local key=""
  [ ${#EBS_KEY[@]} = 0 ] || key="$(printf '%q ' "${EBS_KEY[@]}")"
  BACKUP_CMD="$ebs backup --repo s3://$BUCKET/repo $key--device $(printf %q "$IMG") --json > $WORK/$NAME-backup.json"
  # The backup id is only known once the backup ran: read it inside the timed command (a jq-less
  # grep costs nothing next to the restore).
  RESTORE_CMD="id=\$(tail -n 1 $WORK/$NAME-backup.json | grep -o '\"backupId\":\"[^\"]*\"' | cut -d'\"' -f4);
    $ebs restore --repo s3://$BUCKET/repo $key--backup \$id --device $(printf %q "$OUT") --fresh-target --json > $WORK/$NAME-restore.json"
}
setup_aws() {
  "$AWS" --endpoint-url "$ENDPOINT" s3 mb "s3://$BUCKET" >/dev/null
  BACKUP_CMD="dd if=$(printf %q "$IMG") bs=1M status=none | $AWS --endpoint-url $ENDPOINT s3 cp - s3://$BUCKET/disk.img"
  # ebs-worker's restore ends with fdatasync (the data must be on the volume before a snapshot);
  # the others are made to end with one too, so every restore is timed until the data is durable.
  RESTORE_CMD="$AWS --endpoint-url $ENDPOINT s3 cp s3://$BUCKET/disk.img - > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}
setup_rclone() {
  rclone mkdir "rgw:$BUCKET"
  BACKUP_CMD="rclone rcat rgw:$BUCKET/disk.img < $(printf %q "$IMG")"
  RESTORE_CMD="rclone cat rgw:$BUCKET/disk.img > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}
setup_restic() {
  local repo="s3:$ENDPOINT/$BUCKET"
  restic -q -r "$repo" init >/dev/null   # creates the bucket; default (stable) format, compression on
  BACKUP_CMD="restic -q -r $repo backup --stdin --stdin-filename disk.img < $(printf %q "$IMG")"
  RESTORE_CMD="restic -q -r $repo dump latest /disk.img > $(printf %q "$OUT"); sync --data $(printf %q "$OUT")"
}

run_tool() {  # run_tool TOOL GIB: appends two rows to results.tsv
  local tool=$1 gib=$2 b r stored sum check
  NAME="$gib-$tool" BUCKET="bench-$tool-${gib//./p}g" OUT="$WORK/restored-$tool.img"
  rm -f "$OUT"
  "setup_$tool"
  log "$gib GiB, $tool: backup"
  b=$(measure "$NAME-backup" "$BACKUP_CMD")
  stored=$(stored_bytes "$BUCKET")
  log "$gib GiB, $tool: restore"
  r=$(measure "$NAME-restore" "$RESTORE_CMD")
  sum=$(sha256sum "$OUT" | cut -d' ' -f1)
  if [ "$sum" = "$SOURCE_SUM" ]; then check=ok; else
    check=MISMATCH
    echo "bench: !!! $tool restored a $gib GiB image that DIFFERS from the source (sha256 $sum, expected $SOURCE_SUM)" >&2
    MISMATCHES+=("$gib GiB $tool")
  fi
  rm -f "$OUT"
  drop_bucket "$BUCKET"
  read -r bw bu bs bm bsrv both <<< "$b"; read -r rw ru rs rm_ rsrv roth <<< "$r"
  printf '%s\t%s\tbackup\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\n' "$gib" "$tool" "$bw" "$bu" "$bs" "$bm" "$bsrv" "$both" "$stored" >> "$WORK/results.tsv"
  printf '%s\t%s\trestore\t%s\t%s\t%s\t%s\t%s\t%s\t-1\t%s\n' "$gib" "$tool" "$rw" "$ru" "$rs" "$rm_" "$rsrv" "$roth" "$check" >> "$WORK/results.tsv"
  log "$gib GiB, $tool: backup ${bw}s, restore ${rw}s, $check"
}

# --- the run --------------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# A first hint only (the load average lags by a minute); each measurement checks for other load itself.
awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }' &&
  log "WARNING: load average $LOAD_BEFORE on $(nproc) CPUs: if something else is running, numbers will be skewed"
MISMATCHES=()
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
: > "$WORK/results.tsv"
: > "$WORK/notes.md"
for gib in $SIZES; do
  IMG="$WORK/image-${gib}g.img"
  log "$gib GiB: generating the image in $WORK"
  "$NODE" scripts/bench-report.ts image "$IMG" "$gib"
  SOURCE_SUM=$(sha256sum "$IMG" | cut -d' ' -f1)
  for tool in $TOOLS; do
    declare -F "setup_$tool" >/dev/null || die "BENCH_TOOLS: unknown tool $tool"
    run_tool "$tool" "$gib"
    # ebs-worker's own timers and counters tell process start-up from the work itself
    [ "$tool" != ebs-worker ] || "$NODE" scripts/bench-report.ts ebs-note "$gib" \
      "$WORK/$gib-ebs-worker-backup.json" "$WORK/$gib-ebs-worker-restore.json" >> "$WORK/notes.md"
  done
  rm -f "$IMG"
done

# --- report ---------------------------------------------------------------------------------
ver() { "$@" 2>&1 | head -n 1; }
{
  echo "# ebs-worker benchmark, $STARTED"
  echo
  echo "Command: \`BENCH_SIZES='$SIZES' BENCH_TOOLS='$TOOLS' BENCH_DIR='$BASE' BENCH_EBS_ENCRYPT=$ENCRYPT npm run bench\`"
  echo
  echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), \
$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 2^20 }' /proc/meminfo) RAM, Linux $(uname -r), \
BENCH_DIR on $(df -T "$BASE" | awk 'NR == 2 { print $2 }') ($(df "$BASE" | awk 'NR == 2 { print $1 }'))"
  echo "- ebs-worker $("$NODE" "$EBS_WORKER" --version) ($AGENT_DESC\
$([ "$(agent_hash .)" = "$AGENT_HASH" ] || echo '; agent/ was edited during the run: measured is the copy taken at its start')), \
Node $("$NODE" --version), repository $([ "$ENCRYPT" = 1 ] && echo 'encrypted (AES-256-GCM)' || echo 'not encrypted'), \
otherwise default settings"
  echo "- $(ver "$AWS" --version | cut -d' ' -f1-2); $(ver rclone version); $(ver restic version | cut -d' ' -f1-2); \
S3: Ceph RGW $(ver radosgw --version | awk '{ print $3 }') (scripts/testbed.sh, memstore OSD: objects in RAM); \
GNU time $(dpkg-query -W -f '${Version}' time 2>/dev/null || echo '?')"
  echo "- Image: 64 MiB segments cycling random / text-like (\`zstd -3\` compresses it ≈ 2.9x) / zero / zero, every segment distinct."
  echo "- Page cache dropped before every timed command: $([ -e "$WORK/cache-not-dropped" ] && echo 'NO (not root?)' || echo yes)."
  echo "- Load average before / after the run: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$NODE" scripts/bench-report.ts report "$WORK/results.tsv"
  echo
  echo "Notes:"
  echo
  echo "- Wall time and MiB/s are of the image size, for the whole command (process start-up included)."
  echo "- CPU s/GiB and peak RSS are the client's: for a pipeline, CPU is summed over its processes and"
  echo "  peak RSS is GNU time's %M, the largest max-RSS of any single process in it (not the sum)."
  echo "  \"Server CPU s/GiB\" is what the test bed's mon, OSD and RGW used meanwhile, on the same CPUs."
  echo "- Restores write a new file in BENCH_DIR and end with fdatasync (ebs-worker does it itself; the others"
  echo "  are followed by \`sync --data\` in the timed command). ebs-worker leaves zero chunks as holes (--fresh-target)."
  echo "- \"stored\" is the bucket's total object size after the backup (aws/rclone: the raw image)."
  cat "$WORK/notes.md"
} > "$WORK/report.md"
OUTFILE="bench-results/$(date -u +%Y%m%dT%H%M%SZ).md"
cp "$WORK/report.md" "$OUTFILE"
# The raw numbers too (user and sys apart, other load), for comparing runs later.
{ printf '# gib\ttool\top\twall_s\tuser_s\tsys_s\tmaxrss_kib\tserver_cpu_s\tother_cpu_s\tstored_bytes\tsha256\n'
  cat "$WORK/results.tsv"; } > "${OUTFILE%.md}.tsv"
cat "$WORK/report.md"
log "saved $OUTFILE"
if [ ${#MISMATCHES[@]} -gt 0 ]; then
  echo "bench: !!! RESTORED DATA DIFFERS FROM THE SOURCE: ${MISMATCHES[*]}" >&2
  exit 1
fi
