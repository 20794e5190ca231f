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
#   EBS_WORKER_ASG_NAME         tag ebs-worker:asg-name          (optional: the Auto Scaling group; with it the
#                               daemon drains on scale-in and ebs-worker-health.timer reports its health)
#   EBS_WORKER_LIFECYCLE_HOOK   tag ebs-worker:lifecycle-hook    (optional: the termination hook the daemon completes)
#   EBS_WORKER_CFN_STACK, EBS_WORKER_CFN_RESOURCE (parameters only, optional): the stack and the
#                               Auto Scaling group's logical id to signal (CreationPolicy and
#                               UpdatePolicy): SUCCESS once the service is ready, FAILURE if anything
#                               here fails, with `aws cloudformation signal-resource`
# The Region and the instance id come from IMDS.
#
# For tests and image builds, overridable: EBS_WORKER_ROOT (files are written under it, default
# /), IMDS_ENDPOINT (default http://169.254.169.254), EBS_WORKER_BIN (the ebs-worker command),
# SYSTEMCTL (the systemctl command), AWS_CLI (the aws command).
set -euo pipefail
umask 022

root=${EBS_WORKER_ROOT:-}
root=${root%/}
imds=${IMDS_ENDPOINT:-http://169.254.169.254}
bin=${EBS_WORKER_BIN:-/opt/ebs-worker/bin/ebs-worker}
systemctl=${SYSTEMCTL:-systemctl}
aws=${AWS_CLI:-aws}
cfn_stack=${EBS_WORKER_CFN_STACK:-}
cfn_resource=${EBS_WORKER_CFN_RESOURCE:-WorkerGroup}
region=
instance_id=
tmp=

log() { echo "ebs-worker user-data: $*" >&2; }
die() { log "$*"; exit 1; }

# CloudFormation waits for a signal from each new worker (the group's CreationPolicy and rolling
# UpdatePolicy): a worker that does not come up fails the deployment and rolls it back.
signal() {
  [ -n "$cfn_stack" ] || return 0
  if [ -z "$region" ] || [ -z "$instance_id" ]; then log "cannot signal $cfn_stack: no Region or instance id from IMDS"; return 0; fi
  "$aws" cloudformation signal-resource --region "$region" --stack-name "$cfn_stack" \
    --logical-resource-id "$cfn_resource" --unique-id "$instance_id" --status "$1" >&2 \
    || log "signalling $1 to $cfn_stack failed"
}
finish() {
  local rc=$?
  [ -z "$tmp" ] || rm -f "$tmp"
  [ "$rc" = 0 ] || signal FAILURE
}
trap finish EXIT

# IMDSv2: a session token first, then every read with it.
token=$(curl -fsS --retry 5 --retry-connrefused --max-time 5 -X PUT "$imds/latest/api/token" \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || die "IMDS is not reachable at $imds"
meta() { curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/$1"; }
tag() { meta "tags/instance/$1" 2>/dev/null || true; }

region=$(meta placement/region) || die "IMDS gave no Region"
instance_id=$(meta instance-id) || die "IMDS gave no instance id"

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
asg_name=$(setting "${EBS_WORKER_ASG_NAME:-}" ebs-worker:asg-name "")
lifecycle_hook=$(setting "${EBS_WORKER_LIFECYCLE_HOOK:-}" ebs-worker:lifecycle-hook "")

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
[ -z "$asg_name" ] || check asg-name "$asg_name" '^[A-Za-z0-9._-]{1,255}$' 'an Auto Scaling group name'
[ -z "$lifecycle_hook" ] || check lifecycle-hook "$lifecycle_hook" '^[A-Za-z0-9._-]{1,255}$' 'a lifecycle hook name'
[ -z "$lifecycle_hook" ] || [ -n "$asg_name" ] || die "lifecycle-hook \"$lifecycle_hook\" needs asg-name too"
[ -z "$cfn_stack" ] || check cfn-stack "$cfn_stack" '^[A-Za-z][A-Za-z0-9-]{0,127}$' 'a stack name'
check cfn-resource "$cfn_resource" '^[A-Za-z0-9]+$' 'a logical resource id'

etc=$root/etc/ebs-worker
mkdir -p "$etc"
conf=$etc/config.json
tmp=$(mktemp "$etc/.config.json.XXXXXX")
{
  printf '{\n'
  printf '  "queueUrl": "%s",\n' "$queue_url"
  printf '  "replyQueueUrl": "%s",\n' "$reply_queue_url"
  printf '  "repository": "%s",\n' "$repository"
  [ -z "$key_file" ] || printf '  "keyFile": "%s",\n' "$key_file"
  printf '  "concurrency": %d,\n' "$((10#$concurrency))"
  printf '  "visibilityTimeoutSeconds": %d,\n' "$((10#$visibility))"
  if [ -n "$asg_name" ]; then
    printf '  "autoScaling": { "groupName": "%s"' "$asg_name"
    [ -z "$lifecycle_hook" ] || printf ', "lifecycleHookName": "%s"' "$lifecycle_hook"
    printf ' },\n'
  fi
  printf '  "shutdownGraceSeconds": %d\n' "$((10#$grace))"
  printf '}\n'
} > "$tmp"
"$bin" doctor --config "$tmp" --only config >&2 || die "the configuration is not valid (see above); nothing was started"
chmod 644 "$tmp"
mv "$tmp" "$conf"
tmp=

# The daemon's environment: the SDK's Region for SQS and S3, the metrics' fleet.
printf 'AWS_REGION=%s\nEBS_WORKER_FLEET=%s\n' "$region" "$fleet" > "$etc/environment"

# systemd's stop timeout must cover the SIGTERM grace plus the hand-back of unfinished messages.
dropin=$root/etc/systemd/system/ebs-worker.service.d
mkdir -p "$dropin"
printf '[Service]\nTimeoutStopSec=%d\n' "$((10#$grace + 30))" > "$dropin/stop-timeout.conf"

$systemctl daemon-reload
# Type=notify: this returns once the daemon is ready (it has received from its queue), or fails.
$systemctl enable --now ebs-worker.service
# In an Auto Scaling group: the daemon's own health, reported to the group (ebs-worker health-check).
[ -z "$asg_name" ] || $systemctl enable --now ebs-worker-health.timer
signal SUCCESS
log "configured (queue $queue_url, repository $repository, concurrency $concurrency) and started"
