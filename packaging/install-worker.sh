#!/bin/bash
# Installs an ebs-worker release on a worker image (the Packer build runs it as root on Amazon
# Linux 2023, after `dnf install amazon-cloudwatch-agent logrotate`), or upgrades one in place:
#   /opt/ebs-worker-<version>/      the unpacked release; /opt/ebs-worker -> it (upgrade = flip)
#   /usr/lib/sysusers.d/ebs-worker.conf, the user ebs-worker (group disk)
#   /etc/systemd/system/ebs-worker.service   enabled at first boot by the user-data, not here
#   /etc/logrotate.d/ebs-worker, /var/log/ebs-worker (owned by ebs-worker)
#   /opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json, a fragment the
#   agent merges with its other configuration at start (its main config is left alone), enabled
# The RPM and DEB packages (scripts/package.sh) install the same files; this is for hosts without them.
# Usage: install-worker.sh TARBALL. INSTALL_ROOT (default /) and SYSTEMCTL let a test install
# into a directory.
set -euo pipefail
tarball=${1:?usage: install-worker.sh ebs-worker-VERSION-linux-ARCH.tar.gz}
root=${INSTALL_ROOT:-}
root=${root%/}
systemctl=${SYSTEMCTL:-systemctl}

name=$(tar -tzf "$tarball" | awk -F/ 'NR == 1 { print $1 }')   # awk reads it all: no SIGPIPE
case "$name" in ebs-worker-[0-9]*) ;; *) echo "install-worker: $tarball is not an ebs-worker release" >&2; exit 1 ;; esac
mkdir -p "$root/opt"
tar -xzf "$tarball" -C "$root/opt" --no-same-owner
ln -sfn "$name" "$root/opt/ebs-worker"
share=$root/opt/ebs-worker/share
"$root/opt/ebs-worker/bin/ebs-worker" --version >/dev/null   # the bundled runtime runs here

install -D -m 0644 "$share/ebs-worker.sysusers" "$root/usr/lib/sysusers.d/ebs-worker.conf"
systemd-sysusers --root="${root:-/}" "$root/usr/lib/sysusers.d/ebs-worker.conf"
for unit in ebs-worker.service ebs-worker-health.service ebs-worker-health.timer; do
  install -D -m 0644 "$share/$unit" "$root/etc/systemd/system/$unit"
done
install -D -m 0644 "$share/logrotate.conf" "$root/etc/logrotate.d/ebs-worker"
install -D -m 0644 "$share/cloudwatch-agent.json" "$root/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json"
install -d -m 0755 "$root/etc/ebs-worker"
# The log file systemd appends the daemon's output to (StandardOutput=append:), before first start.
uid=$(awk -F: '$1 == "ebs-worker" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "ebs-worker" { print $4 }' "$root/etc/passwd")
install -d -m 0750 -o "$uid" -g "$gid" "$root/var/log/ebs-worker"

$systemctl daemon-reload
# The CloudWatch agent translates its JSON config at each start; the worker waits for user-data.
$systemctl enable amazon-cloudwatch-agent.service
echo "install-worker: installed $name" >&2
