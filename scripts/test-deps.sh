#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (as root, with apt-get):
# loop devices, ext4 and XFS images (XFS holds the 64 TiB sparse files ext4 cannot), /usr/bin/time
# for peak memory, systemd-analyze for the unit, python3-fusepy for the failing and
# slow disks of test/fixtures/faulty-fs.py, packer for the AMI template, curl for user-data,
# Ceph (radosgw, mon, osd) for the local S3 of scripts/testbed.sh, and haproxy and openssl for its
# TLS front and the TLS tests' certificates, rpm (rpmbuild, rpm, rpm2archive) for the RPM packages
# of scripts/package.sh (dpkg-deb, for the DEB, is part of every Debian), strace to count a
# restore's flushes. Used by `npm test` and .ci/run.
set -uo pipefail
export PATH="$PATH:/usr/bin:/usr/sbin"   # haproxy is in /usr/sbin, which minimal PATHs (sudo, CI) may miss
need=()
for pkg_cmd in e2fsprogs:mkfs.ext4 xfsprogs:mkfs.xfs mount:mount util-linux:losetup systemd:systemd-analyze python3:python3 curl:curl packer:packer radosgw:radosgw ceph-mon:ceph-mon ceph-osd:ceph-osd haproxy:haproxy openssl:openssl rpm:rpmbuild rpm:rpm2archive strace:strace; do
  command -v "${pkg_cmd#*:}" >/dev/null || need+=("${pkg_cmd%%:*}")
done
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import fusepy' 2>/dev/null || need+=(python3-fusepy)
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing Debian packages for the tests: ${need[*]} (as root: apt-get install ${need[*]})" >&2
  exit 1
fi
echo "# installing ${need[*]}" >&2
# Without `apt-get update` first: it is slow and the lists are often fresh enough.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
  { echo "apt-get install ${need[*]} failed" >&2; exit 1; }
