#!/usr/bin/env bash
# make-root.sh: a minimal Debian 13 (trixie) root holding the newest NBD
# peers Debian ships (libnbd 1.22: nbdinfo, nbdcopy, nbdsh; qemu 10:
# qemu-img, qemu-io, qemu-nbd; nbdkit 1.42; fio 3.39; file, which nbdinfo
# runs on what it reads), made with
# debootstrap and cached between runs. Prints the root's path.
#
#   ROOT=$(test/debian13/make-root.sh)
#   test/debian13/run "$ROOT" nbdinfo --version
#
# The cache lives in $NBDD_DEBIAN13_CACHE (default /var/cache/nbdd), one
# directory per hash of this script, so a change of the package list or of
# the steps below makes a new root; older roots are removed. Needs root
# (debootstrap) and Debian's mirror. Outside CI a failure prints why and
# exits 77 (the callers skip); with CI set it exits 1 (the callers fail).
set -euo pipefail

SUITE=trixie
MIRROR=${NBDD_DEBIAN13_MIRROR:-http://deb.debian.org/debian}
PACKAGES=nbdkit,libnbd-bin,python3-libnbd,qemu-utils,fio,file
CACHE=${NBDD_DEBIAN13_CACHE:-/var/cache/nbdd}

fail() {
	echo "make-root.sh: $*" >&2
	if [ -n "${CI:-}" ]; then exit 1; fi
	exit 77
}

self=$(readlink -f "${BASH_SOURCE[0]}")
key=$(sha256sum "$self" | cut -c1-16)
root="$CACHE/debian13-$key"
if [ -f "$root/.nbdd-complete" ]; then
	echo "$root"
	exit 0
fi

[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
mkdir -p "$CACHE"

# One maker at a time: parallel test binaries may all ask for the root.
exec 9>"$CACHE/.debian13.lock"
flock 9
if [ -f "$root/.nbdd-complete" ]; then
	echo "$root"
	exit 0
fi

tmp="$root.tmp.$$"
rm -rf "$tmp"
log="$CACHE/debian13-$key.log"
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >"$log" 2>&1; then
	tail -n 20 "$log" >&2
	rm -rf "$tmp"
	fail "debootstrap $SUITE failed; the whole log is $log"
fi
# Check that every tool the tests and benchmarks run is there.
for tool in nbdinfo nbdcopy nbdsh nbdkit qemu-img qemu-io qemu-nbd fio python3; do
	[ -x "$tmp/usr/bin/$tool" ] || [ -x "$tmp/usr/sbin/$tool" ] || fail "$tool missing from the root"
done
# apt's package cache is not needed to run the tools.
rm -rf "$tmp"/var/cache/apt/archives/*.deb
touch "$tmp/.nbdd-complete"
echo "made in $(($(date +%s) - start)) s" >>"$log"
# Older roots of this script are stale.
for old in "$CACHE"/debian13-*; do
	case $old in "$root" | "$tmp" | *.log) continue ;; esac
	[ -d "$old" ] && rm -rf "$old"
done
mv "$tmp" "$root"
echo "$root"
