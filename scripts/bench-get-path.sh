#!/usr/bin/env bash
# Which GET path pays for restores, over HTTPS like real S3 and over plain http like the test bed:
# restore and verify of one backup of the mixed-content bench image (scripts/bench-report.ts image,
# encrypted repository, as `npm run bench`), many times over, with ebs-worker's ranged GETs on
#   https-lean  the lean path over https (the default): own SigV4 signing + raw-http.ts over TLS
#   https-sdk   the SDK's GetObject over https (EBS_WORKER_S3_LEAN_GET=0)
#   http-raw    the lean path over plain http: raw-http.ts, the hand-written HTTP/1.1 client
#   http-sdk    the SDK's GetObject over plain http (EBS_WORKER_S3_LEAN_GET=0)
# against one test bed (scripts/testbed.sh with TESTBED_TLS=1: haproxy terminates TLS in front of
# RGW; the same bucket is read through both endpoints).  The machine is small and RGW shares its
# CPUs, so the variants are interleaved: every round runs each variant once (the order rotates
# from round to round), and the report gives per variant the median and the range over the rounds
# of client CPU-seconds (user+sys of the ebs-worker process, GNU time), wall time, peak RSS and the
# server's CPU (radosgw + ceph-osd + ceph-mon, and haproxy apart, from /proc/PID/stat).
#
# Besides restore and verify, `get` times the GET path alone: one process that fetches every pack of
# the repository BENCH_GET_PASSES times (whole packs, 8 in flight, into reused buffers, through the
# backend's getRange as restores do) and nothing else; its CPU per GiB fetched is the receive cost
# (plus Node's and the SDK's start-up, the same for all variants).
#
# Before the timed rounds, each variant verifies the backup once with counters loaded (--import)
# that show which path its GETs really took (lean GETs, of them raw-http over TLS and over plain
# http, SDK ranged GetObjects):
# a variant that silently fell back to the SDK would otherwise look like the SDK.
#
#   scripts/bench-get-path.sh                       # as root (apt-get for haproxy/time if missing)
#   BENCH_ROUNDS=9 BENCH_VARIANTS="https-lean https-sdk" scripts/bench-get-path.sh
#
# Knobs (environment):
#   BENCH_ROUNDS    interleaved rounds (default 7; at least 5 for medians worth reading)
#   BENCH_VARIANTS  subset/order of the variants above (default: all four)
#   BENCH_OPS       subset/order of "restore verify get" (default: all three)
#   BENCH_GET_PASSES  how often `get` fetches all packs (default 3: about 1 GiB for a 1 GiB image)
#   BENCH_GIB       image size in GiB, a multiple of 1/16 (default 1)
#   BENCH_DIR       where the image and the restored file go (default /tmp; needs ~2x the image)
#   BENCH_KEEP      1: keep the work directory (raw timings, logs, JSON outputs)
# Markdown report on stdout and in bench-results/get-path-<UTC time>.md, raw rows in a .tsv beside it.
# Restores write a new file (sparse where the backup has zero chunks, --fresh-target) and end with
# fdatasync, as in `npm run bench`; its sha256 is checked after every restore (untimed).  Unlike
# `npm run bench`, the page cache is not dropped: only restores and verifies are timed, which read
# nothing from the local disk but Node and its modules, whose cold reads would only add noise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/bin:/usr/sbin"
NODE=$ROOT/node_modules/.bin/node
TIME=/usr/bin/time
ROUNDS=${BENCH_ROUNDS:-7}
VARIANTS=${BENCH_VARIANTS:-https-lean https-sdk http-raw http-sdk}
OPS=${BENCH_OPS:-restore verify get}
GIB=${BENCH_GIB:-1}
BASE=${BENCH_DIR:-/tmp}
log() { echo "[get-path $(date +%T)] $*" >&2; }
die() { echo "bench-get-path: $*" >&2; exit 1; }
. scripts/bench-lib.sh   # (the working directory is the repository, above)

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS: \"$ROUNDS\" is not a positive number"
[[ $GIB =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_GIB: \"$GIB\" is not a number of GiB"
for v in $VARIANTS; do
  case $v in https-lean|https-sdk|http-raw|http-sdk) ;; *) die "BENCH_VARIANTS: unknown variant $v" ;; esac
done
for op in $OPS; do case $op in restore|verify|get) ;; *) die "BENCH_OPS: unknown operation $op" ;; esac; done
[ -x "$TIME" ] || apt_install time   # like bench.sh: only root with apt installs
[ -x "$NODE" ] || { log "node_modules missing: npm ci"; npm ci --no-audit --no-fund >&2; }

# --- work directory and test bed (with its https front); both go away on exit ----------------
bench_start get-path 1 "$(awk -v g="$GIB" 'BEGIN { printf "%.0f", (g + 2) * 2^30 }')"
HTTP_ENDPOINT=$AWS_ENDPOINT_URL_S3
# The JS SDK and raw-http.ts trust the test bed's CA through NODE_EXTRA_CA_CERTS (one file, read at
# start; it replaces any value the environment had).  Set for every variant, http ones included,
# so that all pay the same start-up.  AWS_CA_BUNDLE is the CLI's, not the JS SDK's: out of the way.
export NODE_EXTRA_CA_CERTS=$TESTBED_CA_FILE
unset AWS_CA_BUNDLE AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE AWS_PROFILE
unset EBS_WORKER_S3_LEAN_GET

# ebs-worker from a copy of agent/ taken now (as bench.sh): edits during the run do not mix in.
mkdir -p "$WORK/ebs-worker"
cp -r agent package.json "$WORK/ebs-worker/"
ln -s "$ROOT/node_modules" "$WORK/ebs-worker/node_modules"
EBS_WORKER=$WORK/ebs-worker/agent/bin/ebs-worker.ts
AGENT_HASH=$(cd "$WORK/ebs-worker" && find agent -type f -name '*.ts' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
AGENT_DESC="git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- agent 2>/dev/null || echo ' + uncommitted changes'), agent/*.ts sha256 $AGENT_HASH"

# --- one backup to read back: made over https (so that path is exercised too) -----------------
BUCKET=get-path
REPO=s3://$BUCKET/repo
KEY=$WORK/repo.key
IMG=$WORK/image.img
OUT=$WORK/restored.img
curl -sf -X PUT -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:us-east-1:s3" \
  --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$HTTP_ENDPOINT/$BUCKET" >/dev/null || die "cannot create the bucket"
log "$GIB GiB: generating the image in $WORK"
"$NODE" scripts/bench-report.ts image "$IMG" "$GIB"
SOURCE_SUM=$(sha256sum "$IMG" | cut -d' ' -f1)
export AWS_ENDPOINT_URL_S3=$TESTBED_HTTPS_ENDPOINT
"$NODE" "$EBS_WORKER" init --repo "$REPO" --encrypt --key-file "$KEY" --json >/dev/null
log "backup over https"
"$NODE" "$EBS_WORKER" backup --repo "$REPO" --key-file "$KEY" --device "$IMG" --no-progress --json > "$WORK/backup.json"
BACKUP_ID=$(tail -n 1 "$WORK/backup.json" | grep -o '"backupId":"[^"]*"' | cut -d'"' -f4)
[ -n "$BACKUP_ID" ] || die "backup failed: $(tail -c 500 "$WORK/backup.json")"

# variant_env VARIANT: the environment that selects its path (printed as NAME=VALUE words for env)
variant_env() {
  case $1 in
    https-lean) echo "AWS_ENDPOINT_URL_S3=$TESTBED_HTTPS_ENDPOINT" ;;
    https-sdk) echo "AWS_ENDPOINT_URL_S3=$TESTBED_HTTPS_ENDPOINT EBS_WORKER_S3_LEAN_GET=0" ;;
    http-raw) echo "AWS_ENDPOINT_URL_S3=$HTTP_ENDPOINT" ;;
    http-sdk) echo "AWS_ENDPOINT_URL_S3=$HTTP_ENDPOINT EBS_WORKER_S3_LEAN_GET=0" ;;
  esac
}
# op_args OP: what Node runs for it
op_args() {
  case $1 in
    restore) echo "$EBS_WORKER restore --repo $REPO --key-file $KEY --backup $BACKUP_ID --device $OUT --fresh-target --no-progress --json" ;;
    verify) echo "$EBS_WORKER verify --repo $REPO --key-file $KEY --backup $BACKUP_ID --no-progress --json" ;;
    get) echo "$WORK/ebs-worker/fetch-packs.mjs $REPO ${BENCH_GET_PASSES:-3}" ;;
  esac
}
cat > "$WORK/ebs-worker/fetch-packs.mjs" <<JS
// The GET path alone: every pack of the repository, PASSES times, whole, 8 in flight (restore's
// default), through the backend's getRange into reused 20 MiB buffers (restore's request buffers).
import { openBackend } from '$WORK/ebs-worker/agent/storage/open.ts'
import { AwsClients } from '$WORK/ebs-worker/agent/aws/clients.ts'
import { awsSettings } from '$WORK/ebs-worker/agent/aws/config.ts'
const [repo, passes] = process.argv.slice(2)
const started = Date.now()
const backend = openBackend(repo, { aws: new AwsClients(awsSettings(process.env)) })
const packs = []
for await (const o of backend.list('packs/')) packs.push(o)
const queue = Array.from({ length: Number(passes) }, () => packs).flat()
let fetched = 0
await Promise.all(Array.from({ length: 8 }, async () => {
  const buf = Buffer.allocUnsafe(20 << 20)
  for (let p; (p = queue.shift()); ) {
    const got = await backend.getRange(p.name, 0, p.size, buf)   // (not \`fetched += await …\`: lost updates)
    if (got.length !== p.size) throw new Error(\`\${p.name}: \${got.length} of \${p.size} bytes\`)
    fetched += got.length
  }
}))
console.log(JSON.stringify({ ok: true, packs: packs.length, bytesFetched: fetched, durationMs: Date.now() - started }))
JS

# --- which path the GETs took: counters loaded into one untimed verify per variant -------------
cat > "$WORK/count-paths.mjs" <<JS
// Wraps the lean getter, the raw-http pool and S3Client#send (same module instances as the CLI's)
// and prints the counts on exit: lean = RangeGetter#get calls, rawTls / raw = of them through
// raw-http.ts over TLS / plain http, sdkRanged = GetObject with a Range through the SDK (the SDK
// path, or a lean GET that fell back).
import { RangeGetter } from '$WORK/ebs-worker/agent/storage/s3-range.ts'
import { RawHttpPool } from '$WORK/ebs-worker/agent/storage/raw-http.ts'
import { S3Client } from '@aws-sdk/client-s3'
const n = { lean: 0, rawTls: 0, raw: 0, sdkRanged: 0, sdkOther: 0 }
const wrap = (proto, name, count) => { const f = proto[name]; proto[name] = function (...a) { count(a); return f.apply(this, a) } }
wrap(RangeGetter.prototype, 'get', () => n.lean++)
wrap(RawHttpPool.prototype, 'get', ([req]) => req.tls ? n.rawTls++ : n.raw++)
wrap(S3Client.prototype, 'send', ([cmd]) => cmd?.input?.Range ? n.sdkRanged++ : n.sdkOther++)
process.on('exit', () => process.stderr.write('GET-PATHS ' + JSON.stringify(n) + '\n'))
JS
# The .mjs resolves @aws-sdk/client-s3 from the agent copy's node_modules (a symlink to ours).
cp "$WORK/count-paths.mjs" "$WORK/ebs-worker/count-paths.mjs"
: > "$WORK/paths.tsv"
for v in $VARIANTS; do
  # shellcheck disable=SC2046
  env $(variant_env "$v") "$NODE" --import "$WORK/ebs-worker/count-paths.mjs" $(op_args verify) \
    > "$WORK/logs/paths-$v.json" 2> "$WORK/logs/paths-$v.log" || die "$v: verify failed: $(tail -n 5 "$WORK/logs/paths-$v.log")"
  counts=$(grep -o 'GET-PATHS .*' "$WORK/logs/paths-$v.log" | cut -d' ' -f2)
  log "$v: GET paths $counts"
  case $v in   # a variant whose GETs took another path would measure that path under its name
    https-lean) expect='"rawTls":[1-9][0-9]*,"raw":0,"sdkRanged":0,' ;;
    http-raw) expect='"rawTls":0,"raw":[1-9][0-9]*,"sdkRanged":0,' ;;
    *-sdk) expect='"lean":0,"rawTls":0,"raw":0,"sdkRanged":[1-9]' ;;
  esac
  [[ $counts =~ $expect ]] || die "$v: its GETs did not take the expected path: $counts"
  printf '%s\t%s\n' "$v" "$counts" >> "$WORK/paths.tsv"
done

# --- measurement --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# CPU ticks (utime + stime, all threads) of the test bed's daemons by role: "ceph" (radosgw, osd,
# mon) and "haproxy" (the TLS front), as "CEPH HAPROXY".
server_ticks() {
  local ceph=0 tls=0 name pid t
  while read -r name pid; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    if [ "$name" = haproxy ]; then tls=$((tls + t)); else ceph=$((ceph + t)); fi
  done < "$TESTBED_DIR/pids"
  echo "$ceph $tls"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }  # user nice system irq softirq
# run_one ROUND VARIANT OP: one timed run, a row to results.tsv:
# round variant op wall user sys maxrss_kib ceph_cpu_s haproxy_cpu_s other_cpu_s own_ms fetched_bytes check
run_one() {
  local round=$1 v=$2 op=$3 name="$1-$2-$3" c0 t0 m0 c1 t1 m1 wall user sys rss own fetched check=-
  rm -f "$OUT"; sync
  read -r c0 t0 < <(server_ticks); m0=$(machine_ticks)
  # shellcheck disable=SC2046
  if ! env $(variant_env "$v") "$TIME" -f '%e %U %S %M' -o "$WORK/$name.time" \
      "$NODE" $(op_args "$op") > "$WORK/$name.json" 2> "$WORK/logs/$name.log"; then
    tail -n 20 "$WORK/logs/$name.log" >&2; die "$name failed"
  fi
  read -r c1 t1 < <(server_ticks); m1=$(machine_ticks)
  read -r wall user sys rss < <(tail -n 1 "$WORK/$name.time")
  own=$(tail -n 1 "$WORK/$name.json" | grep -o '"durationMs":[0-9]*' | cut -d: -f2)
  fetched=$(tail -n 1 "$WORK/$name.json" | grep -o '"bytesFetched":[0-9]*' | cut -d: -f2)
  if [ "$op" = restore ]; then
    check=MISMATCH; [ "$(sha256sum "$OUT" | cut -d' ' -f1)" != "$SOURCE_SUM" ] || check=ok
    [ "$check" = ok ] || echo "bench-get-path: !!! $name restored an image that DIFFERS from the source" >&2
    rm -f "$OUT"
  fi
  awk -v r="$round" -v vv="$v" -v op="$op" -v w="$wall" -v u="$user" -v s="$sys" -v m="$rss" \
    -v c=$((c1 - c0)) -v t=$((t1 - t0)) -v all=$((m1 - m0)) -v hz="$CLK_TCK" -v own="$own" -v f="$fetched" -v ck="$check" \
    'BEGIN { o = (all - c - t) / hz - u - s; printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\n",
             r, vv, op, w, u, s, m, c / hz, t / hz, o < 0 ? 0 : o, own, f, ck }' >> "$WORK/results.tsv"
  log "round $round $v $op: $(tail -n 1 "$WORK/results.tsv" | cut -f4-7 | tr '\t' ' ') (wall user sys rss_kib)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
: > "$WORK/results.tsv"
read -r -a VLIST <<< "$VARIANTS"
NV=${#VLIST[@]}
for round in $(seq 1 "$ROUNDS"); do
  for op in $OPS; do
    # rotate the order by one each round: no variant always runs first (or right after another)
    for i in $(seq 0 $((NV - 1))); do run_one "$round" "${VLIST[$(((i + round - 1) % NV))]}" "$op"; done
  done
done

# --- report ---------------------------------------------------------------------------------
{
  echo "# GET path benchmark (restore/verify over https and http), $STARTED"
  echo
  echo "Command: \`BENCH_ROUNDS=$ROUNDS BENCH_VARIANTS='$VARIANTS' BENCH_OPS='$OPS' BENCH_GIB=$GIB BENCH_DIR='$BASE' scripts/bench-get-path.sh\`"
  echo
  echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), \
$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 2^20 }' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- ebs-worker $("$NODE" "$EBS_WORKER" --version) ($AGENT_DESC), Node $("$NODE" --version), encrypted repository, default settings (8 GETs in flight)"
  echo "- S3: Ceph RGW $(radosgw --version | awk '{ print $3 }') (memstore), https through $(haproxy -v | head -n 1 | cut -d' ' -f1-3) in TCP mode; \
TLS as Node negotiates it: $("$NODE" -e "const s = require('tls').connect({ host: '127.0.0.1', port: new URL(process.argv[1]).port }, () => { console.log(s.getProtocol() + ' ' + s.getCipher().name); s.end() })" "$TESTBED_HTTPS_ENDPOINT")"
  echo "- Image: $GIB GiB, bench image (25 % random, 25 % text-like, 50 % zeros); backup $BACKUP_ID; $ROUNDS interleaved rounds"
  echo "- Load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 - "$WORK/results.tsv" "$WORK/paths.tsv" "$GIB" "$VARIANTS" "$OPS" <<'PY'
import json, statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
paths = dict(l.rstrip('\n').split('\t', 1) for l in open(sys.argv[2]) if l.strip())
gib = float(sys.argv[3]); variants = sys.argv[4].split(); ops = sys.argv[5].split()
def stat(xs, fmt):
    m = statistics.median(xs)
    return f"{fmt.format(m)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
print("Median (min–max) over the rounds. CPU is the client's user+sys per GiB of image; \"per GiB fetched\" divides")
print("the same by what the GETs received. Server: radosgw + ceph-osd + ceph-mon; TLS: haproxy; other: the rest of the machine.")
print("For `get` (the GET path alone, all packs fetched BENCH_GET_PASSES times) every \"per GiB\" is per GiB fetched.")
for op in ops:
    # restore/verify: per GiB of image; get: per GiB fetched (it is all it does)
    per = lambda r: int(r[11]) / 2**30 if op == 'get' else gib
    print(f"\n### {op}\n")
    print("| variant | runs | wall s | CPU s/GiB | CPU s/GiB fetched | user s | sys s | peak RSS MiB | own timer s | server CPU s/GiB | haproxy CPU s/GiB | other CPU s | check |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for v in variants:
        rs = [r for r in rows if r[1] == v and r[2] == op]
        if not rs: continue
        col = lambda i: [float(r[i]) for r in rs]
        cpu = [float(r[4]) + float(r[5]) for r in rs]
        fetched = [int(r[11]) / 2**30 for r in rs]
        checks = sorted(set(r[12] for r in rs)); check = ','.join(checks) if checks != ['-'] else '–'
        print(f"| {v} | {len(rs)} | {stat(col(3), '{:.2f}')} | {stat([c / per(r) for c, r in zip(cpu, rs)], '{:.2f}')} | "
              f"{stat([c / f for c, f in zip(cpu, fetched)], '{:.2f}')} | {stat(col(4), '{:.2f}')} | {stat(col(5), '{:.2f}')} | "
              f"{stat([x / 1024 for x in col(6)], '{:.0f}')} | {stat([x / 1000 for x in col(10)], '{:.2f}')} | "
              f"{stat([x / per(r) for x, r in zip(col(7), rs)], '{:.2f}')} | {stat([x / per(r) for x, r in zip(col(8), rs)], '{:.2f}')} | "
              f"{stat(col(9), '{:.2f}')} | {check} |")
    # paired differences within a round, against the first variant of each scheme
    print()
    for base, others in (("https-lean", ["https-sdk"]), ("http-raw", ["http-sdk"])):
        for o in others:
            d = []
            for rnd in sorted(set(r[0] for r in rows)):
                a = [r for r in rows if r[0] == rnd and r[1] == base and r[2] == op]
                b = [r for r in rows if r[0] == rnd and r[1] == o and r[2] == op]
                if a and b:
                    d.append((float(b[0][4]) + float(b[0][5])) / per(b[0]) - (float(a[0][4]) + float(a[0][5])) / per(a[0]))
            if d:
                print(f"- {op}: {o} minus {base}, client CPU s/GiB per round: median {statistics.median(d):+.2f} "
                      f"(min {min(d):+.2f}, max {max(d):+.2f}; {sum(x > 0 for x in d)} of {len(d)} rounds positive)")
print("\nGET paths taken (counters in one untimed verify per variant: lean = RangeGetter#get, rawTls / raw = through")
print("raw-http.ts over TLS / plain http, sdkRanged = ranged GetObject through the SDK):\n")
for v in variants:
    if v in paths: print(f"- {v}: {paths[v]}")
PY
} > "$WORK/report.md"
OUTFILE="bench-results/get-path-$(date -u +%Y%m%dT%H%M%SZ).md"
cp "$WORK/report.md" "$OUTFILE"
{ printf '# round\tvariant\top\twall_s\tuser_s\tsys_s\tmaxrss_kib\tserver_cpu_s\thaproxy_cpu_s\tother_cpu_s\town_ms\tfetched_bytes\tsha256\n'
  cat "$WORK/results.tsv"; } > "${OUTFILE%.md}.tsv"
cat "$WORK/report.md"
log "saved $OUTFILE"
if grep -q MISMATCH "$WORK/results.tsv"; then die "!!! a restore DIFFERS from the source"; fi
