#!/bin/sh
# build-initramfs.sh CACHE_DIR
#
# Builds the kernel e2e guest: an uncompressed PVH-bootable vmlinux and a
# zstd-compressed base initramfs (busybox, nbd.ko + ext4 + virtio_net,
# nbd-client, e2fsprogs, util-linux's blkdiscard/fallocate/fstrim, fio).
# Everything comes from Debian packages fetched with `apt-get download` and
# unpacked with `dpkg-deb -x`; nothing is installed on the host.
#
# Idempotent and cached: the outputs live in CACHE_DIR/out/KEY, where KEY
# hashes the candidate versions of the packages and this script. A warm run
# only computes the key (a few apt-cache calls) and prints the paths.
#
# On success the last lines on stdout are
#   VMLINUX=/abs/path/vmlinux
#   INITRD=/abs/path/base.cpio.zst
#   KVER=6.1.0-NN-amd64
# and CACHE_DIR/current.env holds the same lines.
#
# Environment:
#   NBDD_KERNEL_FIO=0        leave fio out (saves ~25 MB of initramfs)
#   NBDD_KERNEL_KEEP_EXTRACT=1  keep CACHE_DIR/extract (600 MB) after a build
#
# The guest /init (written below) mounts the pseudo filesystems, loads
# virtio_net, nbd and ext4, brings eth0 up as 10.0.2.15/24 (qemu user
# networking), sources /test.env and runs /test.sh (both come from a second,
# uncompressed cpio archive placed BEFORE this one in the initrd) under
# `timeout $GUEST_TIMEOUT`, prints `@@DONE rc=N@@` and powers off.
set -eu

CACHE=${1:?usage: build-initramfs.sh CACHE_DIR}
WITH_FIO=${NBDD_KERNEL_FIO:-1}
SELF=$(readlink -f "$0")

fail() { echo "build-initramfs: FAILED: $*" >&2; exit 1; }
note() { echo "build-initramfs: $*" >&2; }

for tool in apt-get apt-cache dpkg-deb cpio zstd xz ldd sha256sum flock timeout; do
	command -v "$tool" >/dev/null 2>&1 || fail "host tool '$tool' is missing (apt-get install cpio zstd xz-utils ...)"
done

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# One builder at a time per cache directory; bounded wait.
exec 9>"$CACHE/.lock"
flock -w 600 9 || fail "timed out waiting for $CACHE/.lock"

SCRIPT_SHA=$(sha256sum "$SELF" | cut -c1-16)

# Fast path: apt-cache is slow (~0.7 s a call). When neither the package
# lists, nor the host's installed packages, nor this script changed since
# the last resolution, reuse it.
STAMP="script=$SCRIPT_SHA fio=$WITH_FIO lists=$(ls -l --time-style=+%s /var/lib/apt/lists/ 2>/dev/null | sha256sum | cut -c1-16) dpkg=$(stat -c %Y /var/lib/dpkg/status 2>/dev/null)"
if [ -f "$CACHE/current.stamp" ] && [ "$(cat "$CACHE/current.stamp")" = "$STAMP" ] && [ -f "$CACHE/current.env" ]; then
	VMLINUX="" INITRD=""
	. "$CACHE/current.env"
	if [ -n "$VMLINUX" ] && [ -f "$VMLINUX" ] && [ -f "${VMLINUX%/*}/ok" ] && [ -n "$INITRD" ] && [ -f "$INITRD" ] && [ -f "${INITRD%/*}/ok" ]; then
		note "cached (fast path): ${INITRD%/*}"
		cat "$CACHE/current.env"
		exit 0
	fi
fi

# linux-image-amd64 is a metapackage: find the image package it points at.
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
[ -n "$KPKG" ] || fail "cannot resolve linux-image-amd64 to an image package"
KVER=${KPKG#linux-image-}

PKGS="$KPKG busybox-static nbd-client e2fsprogs util-linux"
[ "$WITH_FIO" = 1 ] && PKGS="$PKGS fio"

# Direct library dependencies that the host lacks (ldd resolves the rest
# against the host, which runs the same Debian release). One apt-cache call.
LIBDEPS=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
	nbd-client e2fsprogs util-linux $([ "$WITH_FIO" = 1 ] && echo fio) 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }' | sort -u)
EXTRA=""
for d in $LIBDEPS; do
	if ! dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed'; then
		EXTRA="$EXTRA $d"
	fi
done
PKGS="$PKGS$EXTRA"

# Candidate versions, one apt-cache call: "pkg:" lines, then "  Candidate: v".
VERSIONS=$(apt-cache policy $PKGS 2>/dev/null | awk '
	/^[^ ].*:$/ { p = substr($0, 1, length($0) - 1) }
	$1 == "Candidate:" { printf " %s=%s", p, $2 }')
for p in $PKGS; do
	echo "$VERSIONS " | grep -q " $p=[^( ]" || fail "no candidate version for package $p (apt-get update?)"
done
KVERSION=$(echo "$VERSIONS" | tr ' ' '\n' | awk -F= -v p="$KPKG" '$1 == p { print $2 }')
KEY=$(printf '%s\n' "$VERSIONS" "fio=$WITH_FIO" "script=$SCRIPT_SHA" | sha256sum | cut -c1-16)
KKEY=$(printf '%s\n' "$KPKG=$KVERSION" | sha256sum | cut -c1-16)
OUT="$CACHE/out/$KEY"
KOUT="$CACHE/kernel/$KKEY"

report() {
	printf 'VMLINUX=%s\nINITRD=%s\nKVER=%s\n' "$KOUT/vmlinux" "$OUT/base.cpio.zst" "$KVER" >"$CACHE/current.env.tmp"
	mv "$CACHE/current.env.tmp" "$CACHE/current.env"
	echo "$STAMP" >"$CACHE/current.stamp"
	cat "$CACHE/current.env"
}

if [ -f "$OUT/ok" ] && [ -f "$KOUT/ok" ]; then
	note "cached: $OUT"
	report
	exit 0
fi

note "building $OUT for:$VERSIONS"
START=$(date +%s)

# ---- download (cached by file name, which includes the version) ----
DEBS="$CACHE/debs"
mkdir -p "$DEBS"
MISSING=""
for pv in $VERSIONS; do
	p=${pv%%=*}
	v=${pv#*=}
	vf=$(echo "$v" | sed 's/:/%3a/')
	if ! ls "$DEBS/${p}_${vf}_"*.deb >/dev/null 2>&1; then MISSING="$MISSING $p=$v"; fi
done
if [ -n "$MISSING" ]; then
	note "apt-get download$MISSING"
	(cd "$DEBS" && timeout --kill-after=10 300 apt-get -q -o APT::Sandbox::User=root download $MISSING) >&2 ||
		fail "apt-get download$MISSING"
fi

# ---- extract ----
EX="$CACHE/extract"
rm -rf "$EX"
mkdir -p "$EX"
for pv in $VERSIONS; do
	p=${pv%%=*}
	vf=$(echo "${pv#*=}" | sed 's/:/%3a/')
	deb=$(ls "$DEBS/${p}_${vf}_"*.deb | head -n 1)
	dpkg-deb -x "$deb" "$EX" || fail "dpkg-deb -x $deb"
done

# ---- kernel: uncompressed vmlinux for PVH boot ----
if [ ! -f "$KOUT/ok" ]; then
	BZ="$EX/boot/vmlinuz-$KVER"
	[ -f "$BZ" ] || fail "no $BZ in $KPKG"
	mkdir -p "$KOUT"
	# The x86 boot header: setup_sects at 0x1f1, payload_offset at 0x248,
	# payload_length at 0x24c; the payload follows the (setup_sects+1)*512
	# bytes of real-mode setup code.
	u8() { od -An -tu1 -j "$1" -N 1 "$BZ" | tr -d ' '; }
	u32() { od -An -tu4 -j "$1" -N 4 "$BZ" | tr -d ' '; }
	setup=$(u8 497)
	[ "$setup" = 0 ] && setup=4
	poff=$(( (setup + 1) * 512 + $(u32 584) ))
	plen=$(u32 588)
	magic=$(od -An -tx1 -j "$poff" -N 4 "$BZ" | tr -d ' ')
	case $magic in
	fd377a58) dec="xz -dc --single-stream" ;;
	28b52ffd) dec="zstd -dcq" ;;
	1f8b*) dec="gzip -dc" ;;
	*) fail "unknown kernel payload magic $magic at $poff" ;;
	esac
	tail -c +"$((poff + 1))" "$BZ" | head -c "$plen" | $dec >"$KOUT/vmlinux.tmp" 2>/dev/null || true
	[ "$(head -c 4 "$KOUT/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
		fail "extracting vmlinux from $BZ (payload $magic at $poff, $plen bytes) gave no ELF"
	mv "$KOUT/vmlinux.tmp" "$KOUT/vmlinux"
	cp "$EX/boot/config-$KVER" "$KOUT/config" 2>/dev/null || true
	grep -q '^CONFIG_PVH=y' "$KOUT/config" 2>/dev/null || note "warning: CONFIG_PVH=y not found in the kernel config"
	touch "$KOUT/ok"
fi

# ---- root tree (merged /usr) ----
R="$OUT/root"
rm -rf "$OUT"
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib/x86_64-linux-gnu" "$R/usr/lib64" "$R/etc" \
	"$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/mnt" "$R/root" "$R/var"
ln -s usr/bin "$R/bin"
ln -s usr/sbin "$R/sbin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"

BB="$EX/bin/busybox"
[ -x "$BB" ] || fail "no static busybox in busybox-static"
cp "$BB" "$R/usr/bin/busybox"
for a in $("$BB" --list-full); do
	name=${a##*/}
	case $a in
	sbin/* | usr/sbin/*) dst="$R/usr/sbin/$name" ;;
	*) dst="$R/usr/bin/$name" ;;
	esac
	[ "$name" = busybox ] || [ -e "$dst" ] || ln -s /usr/bin/busybox "$dst"
done

LIBPATH="$EX/lib/x86_64-linux-gnu:$EX/usr/lib/x86_64-linux-gnu"
copylibs() {
	# ldd's output: "libX => /path (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)",
	# "linux-vdso.so.1 (0x..)", "libY => not found". mawk has no \s: split on
	# default whitespace only.
	out=$(LD_LIBRARY_PATH="$LIBPATH" ldd "$1" 2>&1) || fail "ldd $1: $out"
	if echo "$out" | grep -q 'not found'; then
		fail "ldd $1: $(echo "$out" | grep 'not found' | tr '\n' ' ')"
	fi
	echo "$out" | awk '$2 == "=>" && substr($3, 1, 1) == "/" { print $3 } substr($1, 1, 1) == "/" { print $1 }' |
		while read -r lib; do
			case ${lib##*/} in
			ld-linux-x86-64.so.2) dst="$R/usr/lib64/ld-linux-x86-64.so.2" ;;
			*) dst="$R/usr/lib/x86_64-linux-gnu/${lib##*/}" ;;
			esac
			[ -e "$dst" ] || cp -L "$lib" "$dst" || fail "cp $lib"
		done
}

# install SRC-in-extract DEST-in-root [alias...]: copy a dynamic binary over
# any busybox applet link (rm first: cp would write through the symlink and
# replace busybox itself).
install_bin() {
	src=$(for d in bin sbin usr/bin usr/sbin; do [ -f "$EX/$d/$1" ] && [ ! -L "$EX/$d/$1" ] && echo "$EX/$d/$1"; done | head -n 1)
	[ -n "$src" ] || fail "binary $1 not found in the extracted packages"
	dst="$R/usr/$2/$1"
	rm -f "$R/usr/bin/$1" "$R/usr/sbin/$1"
	cp "$src" "$dst"
	copylibs "$dst"
	shift 2
	for alias in "$@"; do
		rm -f "$R/usr/sbin/$alias" "$R/usr/bin/$alias"
		ln -s "$1" "$R/usr/sbin/$alias" 2>/dev/null || true
	done
}
install_bin nbd-client sbin
install_bin mke2fs sbin
for a in mkfs.ext4 mkfs.ext2; do rm -f "$R/usr/sbin/$a" "$R/usr/bin/$a"; ln -s mke2fs "$R/usr/sbin/$a"; done
install_bin e2fsck sbin
for a in fsck.ext4 fsck.ext2; do rm -f "$R/usr/sbin/$a" "$R/usr/bin/$a"; ln -s e2fsck "$R/usr/sbin/$a"; done
install_bin tune2fs sbin
install_bin dumpe2fs sbin
install_bin filefrag sbin
install_bin blkdiscard sbin
install_bin fstrim sbin
install_bin fallocate bin
install_bin lsblk bin
[ "$WITH_FIO" = 1 ] && install_bin fio bin
cp "$EX/etc/mke2fs.conf" "$R/etc/mke2fs.conf"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"

# ---- kernel modules: the closure of what the guest needs ----
MODSRC="$EX/lib/modules/$KVER"
[ -d "$MODSRC/kernel" ] || fail "no modules in $KPKG"
"$BB" depmod -b "$EX" "$KVER" || fail "busybox depmod on the full module tree"
WANT="nbd virtio_net virtio_pci virtio_blk ext4 crc32c_generic crc32c-intel libcrc32c"
# modules.dep lines: "kernel/path/mod.ko: kernel/dep1.ko kernel/dep2.ko"
CLOSURE=$(awk -v want="$WANT" '
	BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { m = w[i]; gsub("-", "_", m); wanted[m] = 1 } }
	{
		sub(":", "", $1)
		name = $1; sub(".*/", "", name); sub("\\.ko.*", "", name); gsub("-", "_", name)
		deps[$1] = ""; for (i = 2; i <= NF; i++) deps[$1] = deps[$1] " " $i
		if (name in wanted) { todo[$1] = 1 }
	}
	END {
		do {
			changed = 0
			for (m in todo) if (!(m in done)) {
				done[m] = 1; changed = 1
				k = split(deps[m], d, " "); for (i = 1; i <= k; i++) todo[d[i]] = 1
			}
		} while (changed)
		for (m in done) print m
	}' "$MODSRC/modules.dep")
[ -n "$CLOSURE" ] || fail "module closure is empty"
echo "$CLOSURE" | grep -q '/nbd\.ko' || fail "nbd.ko not found in $KPKG"
MODDST="$R/usr/lib/modules/$KVER"
for m in $CLOSURE; do
	mkdir -p "$MODDST/$(dirname "$m")"
	cp "$MODSRC/$m" "$MODDST/$m"
done
cp "$MODSRC/modules.builtin" "$MODSRC/modules.order" "$MODDST/" 2>/dev/null || true
"$BB" depmod -b "$R" "$KVER" || fail "busybox depmod on the initramfs module tree"

# ---- /init ----
cat >"$R/init" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
up() { cut -d' ' -f1 /proc/uptime; }
echo "@@BOOT uptime=$(up)@@"
[ -f /test.env ] && . /test.env
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}
NBDS_MAX=${NBDS_MAX:-8}
for m in virtio_pci virtio_net crc32c_generic ext4; do
	modprobe "$m" 2>/dev/null || grep -q "/$m.ko" /lib/modules/*/modules.builtin 2>/dev/null ||
		echo "@@WARN modprobe $m failed@@"
done
modprobe nbd nbds_max="$NBDS_MAX" || echo "@@WARN modprobe nbd failed@@"
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || echo "@@WARN eth0 setup failed@@"
echo "@@READY uptime=$(up)@@"
if [ -f /test.sh ]; then
	timeout -s KILL "$GUEST_TIMEOUT" sh /test.sh
	rc=$?
else
	echo "no /test.sh in the initrd"
	rc=127
fi
echo "@@DONE rc=$rc uptime=$(up)@@"
sync
poweroff -f
EOF
chmod 755 "$R/init"

# ---- archive ----
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | zstd -q -T0 -9 >"$OUT/base.cpio.zst.tmp" ||
	fail "cpio | zstd"
mv "$OUT/base.cpio.zst.tmp" "$OUT/base.cpio.zst"
du -sk "$R" | awk '{ printf "build-initramfs: root tree %d MB, ", $1 / 1024 }' >&2
du -k "$OUT/base.cpio.zst" | awk '{ printf "base.cpio.zst %d MB\n", $1 / 1024 }' >&2
rm -rf "$R"
[ "${NBDD_KERNEL_KEEP_EXTRACT:-0}" = 1 ] || rm -rf "$EX"
# Keep only the newest few outputs.
ls -1dt "$CACHE"/out/* 2>/dev/null | tail -n +4 | xargs -r rm -rf
touch "$OUT/ok"
note "built in $(($(date +%s) - START)) s"
report
