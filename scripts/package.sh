#!/usr/bin/env bash
# RPM and DEB packages of a release tarball (scripts/release.sh), for Amazon Linux 2023 (RPM) and
# Debian/Ubuntu workers (DEB), built with rpmbuild (Debian's "rpm" package) and dpkg-deb, no fpm:
#   /opt/ebs-worker/                       the release (bin/, node/, lib/, share/, VERSION)
#   /usr/bin/ebs-worker, /usr/bin/ebs-controller   links to its launchers
#   /usr/lib/systemd/system/ebs-worker.service     the unit (enabled by the user-data, not here),
#     ebs-worker-health.service and .timer          and the health report to Auto Scaling (same)
#   /usr/lib/sysusers.d/ebs-worker.conf    the user ebs-worker (group disk), created on install
#   /opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json
#                                          a CloudWatch agent fragment, merged with the agent's
#                                          other configuration at its start; its main config is
#                                          left alone
#   /etc/logrotate.d/ebs-worker (a config file), /etc/ebs-worker/
# The package's architecture is the tarball's: linux-x64 -> x86_64 / amd64, linux-arm64 ->
# aarch64 / arm64. Usage: scripts/package.sh TARBALL [OUTPUT_DIR] (default: the tarball's
# directory). Prints "rpm PATH" and "deb PATH".
set -euo pipefail
tarball=$(readlink -f "${1:?usage: package.sh ebs-worker-VERSION-linux-ARCH.tar.gz [OUTPUT_DIR]}")
out=$(mkdir -p "${2:-$(dirname "$tarball")}" && cd "${2:-$(dirname "$tarball")}" && pwd)
command -v rpmbuild >/dev/null || { echo "package: rpmbuild is missing (Debian: apt-get install rpm)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "package: dpkg-deb is missing" >&2; exit 1; }

base=$(basename "$tarball")
[[ $base =~ ^ebs-worker-([0-9]+\.[0-9]+\.[0-9]+)-linux-(x64|arm64)\.tar\.gz$ ]] \
  || { echo "package: $base is not named ebs-worker-VERSION-linux-(x64|arm64).tar.gz" >&2; exit 1; }
version=${BASH_REMATCH[1]}
case "${BASH_REMATCH[2]}" in
  x64) rpm_arch=x86_64; deb_arch=amd64 ;;
  arm64) rpm_arch=aarch64; deb_arch=arm64 ;;
esac
release=${PACKAGE_RELEASE:-1}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tree=$stage/tree
mkdir -p "$tree/opt"
tar -xzf "$tarball" -C "$tree/opt" --no-same-owner
[ "$(cat "$tree/opt/ebs-worker-$version/VERSION")" = "$version" ] || { echo "package: $base does not hold ebs-worker $version" >&2; exit 1; }
mv "$tree/opt/ebs-worker-$version" "$tree/opt/ebs-worker"
share=$tree/opt/ebs-worker/share
install -d "$tree/usr/bin"
ln -s /opt/ebs-worker/bin/ebs-worker "$tree/usr/bin/ebs-worker"
ln -s /opt/ebs-worker/bin/ebs-controller "$tree/usr/bin/ebs-controller"
for unit in ebs-worker.service ebs-worker-health.service ebs-worker-health.timer; do
  install -D -m 0644 "$share/$unit" "$tree/usr/lib/systemd/system/$unit"
done
install -D -m 0644 "$share/ebs-worker.sysusers" "$tree/usr/lib/sysusers.d/ebs-worker.conf"
install -D -m 0644 "$share/cloudwatch-agent.json" "$tree/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json"
install -D -m 0644 "$share/logrotate.conf" "$tree/etc/logrotate.d/ebs-worker"
install -d -m 0755 "$tree/etc/ebs-worker"

summary="EBS volume backup and restore worker (deduplicated, compressed, encrypted S3 repository)"
# The maintainer scripts, the same for both formats (sh; $1 differs, so each gets its own test).
# After install or upgrade: the user and its log directory, then systemd learns of the unit.
post_install='systemd-sysusers /usr/lib/sysusers.d/ebs-worker.conf || :
install -d -m 0750 -o ebs-worker -g ebs-worker /var/log/ebs-worker || :
systemctl daemon-reload >/dev/null 2>&1 || :'
# Before removal (not upgrade): stop and disable the service; running tasks are handed back.
pre_remove='systemctl --no-reload disable --now ebs-worker.service ebs-worker-health.timer >/dev/null 2>&1 || :'
# After upgrade: a running daemon restarts on the new version (it hands its tasks back first).
post_upgrade='systemctl daemon-reload >/dev/null 2>&1 || :
systemctl try-restart ebs-worker.service >/dev/null 2>&1 || :'

# --- RPM ---
top=$stage/rpm
mkdir -p "$top/SPECS" "$top/BUILDROOT" "$top/RPMS"
cat > "$top/SPECS/ebs-worker.spec" <<SPEC
Name: ebs-worker
Version: $version
Release: $release
Summary: $summary
License: Proprietary
URL: https://github.com/ebs-worker/ebs-worker
# Prebuilt: the tree is the release tarball's; no build, no stripping (the Node binary is the
# official one, checked against its SHASUMS256.txt), no automatic dependencies from its ELF.
AutoReqProv: no
Requires: systemd
Requires: logrotate
Recommends: amazon-cloudwatch-agent
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none

%description
ebs-worker backs up and restores EBS volumes into a deduplicated, compressed, encrypted S3
repository, taking tasks from SQS (ebs-worker daemon, ebs-worker.service). With its own Node
runtime under /opt/ebs-worker; /opt/ebs-worker/share/OPERATIONS.md is the manual.

%install
cp -a "$tree/." %{buildroot}/

%post
$post_install
if [ "\$1" -ge 2 ]; then
  systemctl try-restart ebs-worker.service >/dev/null 2>&1 || :
fi

%preun
if [ "\$1" -eq 0 ]; then
  $pre_remove
fi

%postun
systemctl daemon-reload >/dev/null 2>&1 || :

%files
%defattr(-,root,root,-)
/opt/ebs-worker
/usr/bin/ebs-worker
/usr/bin/ebs-controller
/usr/lib/systemd/system/ebs-worker.service
/usr/lib/systemd/system/ebs-worker-health.service
/usr/lib/systemd/system/ebs-worker-health.timer
/usr/lib/sysusers.d/ebs-worker.conf
%dir /opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d
/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/ebs-worker.json
%config(noreplace) /etc/logrotate.d/ebs-worker
%dir /etc/ebs-worker
SPEC
echo "package: rpm for $rpm_arch" >&2
rpmbuild -bb --quiet --target "$rpm_arch-linux" \
  --define "_topdir $top" --define "_buildrootdir $top/BUILDROOT" --define "_rpmdir $top/RPMS" \
  --define "_binary_payload w6.zstdio" \
  "$top/SPECS/ebs-worker.spec" >&2
rpm=$(find "$top/RPMS" -name "ebs-worker-$version-$release.$rpm_arch.rpm")
[ -n "$rpm" ] || { echo "package: rpmbuild made no ebs-worker-$version-$release.$rpm_arch.rpm" >&2; exit 1; }
mv "$rpm" "$out/"
echo "rpm $out/ebs-worker-$version-$release.$rpm_arch.rpm"

# --- DEB ---
deb=$stage/deb
cp -a "$tree" "$deb"
mkdir -p "$deb/DEBIAN"
cat > "$deb/DEBIAN/control" <<CONTROL
Package: ebs-worker
Version: $version-$release
Architecture: $deb_arch
Maintainer: ebs-worker maintainers <ebs-worker@invalid>
Depends: systemd
Recommends: logrotate
Section: admin
Priority: optional
Installed-Size: $(du -sk "$tree" | cut -f1)
Description: $summary
 ebs-worker backs up and restores EBS volumes, taking tasks from SQS (ebs-worker.service),
 with its own Node runtime under /opt/ebs-worker.
CONTROL
echo /etc/logrotate.d/ebs-worker > "$deb/DEBIAN/conffiles"
printf '#!/bin/sh\nset -e\nif [ "$1" = configure ]; then\n%s\nfi\nif [ "$1" = configure ] && [ -n "$2" ]; then\n%s\nfi\n' "$post_install" "$post_upgrade" > "$deb/DEBIAN/postinst"
printf '#!/bin/sh\nset -e\nif [ "$1" = remove ]; then\n%s\nfi\n' "$pre_remove" > "$deb/DEBIAN/prerm"
printf '#!/bin/sh\nset -e\nsystemctl daemon-reload >/dev/null 2>&1 || :\n' > "$deb/DEBIAN/postrm"
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
debfile=$out/ebs-worker_$version-${release}_$deb_arch.deb
echo "package: deb for $deb_arch" >&2
dpkg-deb --root-owner-group -Zgzip -z6 --build "$deb" "$debfile" >&2
echo "deb $debfile"
