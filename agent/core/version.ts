// The release version of ebs-worker and ebs-controller: package.json's, checked by scripts/release.sh.
export const VERSION = '0.1.0'
