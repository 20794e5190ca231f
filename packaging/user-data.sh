#!/bin/bash
# ebs-worker first-boot configuration (cloud-init user-data, or run by the fleet's user-data from
# the AMI: /opt/ebs-worker/share/user-data.sh). Writes /etc/ebs-worker/config.json and
# /etc/ebs-worker/environment, checks the configuration with the agent's own schema
# (`ebs-worker doctor --only config`), then enables and starts ebs-worker.service.
#
# Every setting comes from a launch-template parameter (an environment variable set by the
# user-data that calls this script) or else from an instance tag (IMDS, when the launch template
# enables instance metadata tags); parameters win:
#   EBS_WORKER_QUEUE_URL        tag ebs-worker:queue-url         (required)
#   EBS_WORKER_REPLY_QUEUE_URL  tag ebs-worker:reply-queue-url   (required)
#   EBS_WORKER_REPOSITORY       tag ebs-worker:repository        (required, s3://bucket/prefix)
#   EBS_WORKER_CONCURRENCY      tag ebs-worker:concurrency       (default 2)
#   EBS_WORKER_KEY_FILE         tag ebs-worker:key-file          (optional, a key file already on the AMI)
#   EBS_WORKER_VISIBILITY_TIMEOUT tag ebs-worker:visibility-timeout (default 300 s)
#   EBS_WORKER_SHUTDOWN_GRACE   tag ebs-worker:shutdown-grace    (default 60 s; the unit's TimeoutStopSec is 90)
#   EBS_WORKER_FLEET            tag ebs-worker:fleet             (default "default": the metrics' Fleet dimension)
# The Region comes from IMDS (placement/region).
#
# For tests and image builds, overridable: EBS_WORKER_ROOT (files are written under it, default
# /), IMDS_ENDPOINT (default http://169.254.169.254), EBS_WORKER_BIN (the ebs-worker command),
# SYSTEMCTL (the systemctl command).
set -euo pipefail
umask 022

root=${EBS_WORKER_ROOT:-}
root=${root%/}
imds=${IMDS_ENDPOINT:-http://169.254.169.254}
bin=${EBS_WORKER_BIN:-/opt/ebs-worker/bin/ebs-worker}
systemctl=${SYSTEMCTL:-systemctl}

log() { echo "ebs-worker user-data: $*" >&2; }
die() { log "$*"; exit 1; }

# IMDSv2: a session token first, then every read with it.
token=$(curl -fsS --retry 5 --retry-connrefused --max-time 5 -X PUT "$imds/latest/api/token" \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || die "IMDS is not reachable at $imds"
meta() { curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/$1"; }
tag() { meta "tags/instance/$1" 2>/dev/null || true; }

region=$(meta placement/region) || die "IMDS gave no Region"

setting() { # setting VALUE_FROM_PARAMETER TAG_KEY DEFAULT
  if [ -n "$1" ]; then printf '%s' "$1"; return; fi
  local v
  v=$(tag "$2")
  printf '%s' "${v:-$3}"
}
queue_url=$(setting "${EBS_WORKER_QUEUE_URL:-}" ebs-worker:queue-url "")
reply_queue_url=$(setting "${EBS_WORKER_REPLY_QUEUE_URL:-}" ebs-worker:reply-queue-url "")
repository=$(setting "${EBS_WORKER_REPOSITORY:-}" ebs-worker:repository "")
concurrency=$(setting "${EBS_WORKER_CONCURRENCY:-}" ebs-worker:concurrency 2)
key_file=$(setting "${EBS_WORKER_KEY_FILE:-}" ebs-worker:key-file "")
visibility=$(setting "${EBS_WORKER_VISIBILITY_TIMEOUT:-}" ebs-worker:visibility-timeout 300)
grace=$(setting "${EBS_WORKER_SHUTDOWN_GRACE:-}" ebs-worker:shutdown-grace 60)
fleet=$(setting "${EBS_WORKER_FLEET:-}" ebs-worker:fleet default)

# Shapes checked here so the values can be written into JSON as they are (no quotes or
# backslashes can pass); the agent's schema then checks the whole file.
check() { [[ $2 =~ $3 ]] || die "$1 \"$2\" is missing or malformed (expected $4)"; }
check queue-url "$queue_url" '^https?://[A-Za-z0-9.:/_-]+$' 'an SQS queue URL'
check reply-queue-url "$reply_queue_url" '^https?://[A-Za-z0-9.:/_-]+$' 'an SQS queue URL'
check repository "$repository" '^(s3|file)://[A-Za-z0-9.:/_=?&-]+$' 's3://bucket/prefix'
check concurrency "$concurrency" '^[0-9]+$' 'a number'
check visibility-timeout "$visibility" '^[0-9]+$' 'seconds'
check shutdown-grace "$grace" '^[0-9]+$' 'seconds'
check fleet "$fleet" '^[A-Za-z0-9._-]{1,64}$' 'a name'
check region "$region" '^[a-z0-9-]+$' 'a Region'
[ -z "$key_file" ] || check key-file "$key_file" '^/[A-Za-z0-9._/-]+$' 'an absolute path'

etc=$root/etc/ebs-worker
mkdir -p "$etc"
conf=$etc/config.json
tmp=$(mktemp "$etc/.config.json.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
  printf '{\n'
  printf '  "queueUrl": "%s",\n' "$queue_url"
  printf '  "replyQueueUrl": "%s",\n' "$reply_queue_url"
  printf '  "repository": "%s",\n' "$repository"
  [ -z "$key_file" ] || printf '  "keyFile": "%s",\n' "$key_file"
  printf '  "concurrency": %d,\n' "$((10#$concurrency))"
  printf '  "visibilityTimeoutSeconds": %d,\n' "$((10#$visibility))"
  printf '  "shutdownGraceSeconds": %d\n' "$((10#$grace))"
  printf '}\n'
} > "$tmp"
"$bin" doctor --config "$tmp" --only config >&2 || die "the configuration is not valid (see above); nothing was started"
chmod 644 "$tmp"
mv "$tmp" "$conf"
trap - EXIT

# The daemon's environment: the SDK's Region for SQS and S3, the metrics' fleet.
printf 'AWS_REGION=%s\nEBS_WORKER_FLEET=%s\n' "$region" "$fleet" > "$etc/environment"

# systemd's stop timeout must cover the SIGTERM grace plus the hand-back of unfinished messages.
dropin=$root/etc/systemd/system/ebs-worker.service.d
mkdir -p "$dropin"
printf '[Service]\nTimeoutStopSec=%d\n' "$((10#$grace + 30))" > "$dropin/stop-timeout.conf"

$systemctl daemon-reload
$systemctl enable --now ebs-worker.service
log "configured (queue $queue_url, repository $repository, concurrency $concurrency) and started"
