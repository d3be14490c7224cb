# guest-tests.sh: the command list the kernel e2e guest runs (busybox sh).
#
# kernel_test.go puts this file into the initrd as /test.sh, next to
# /test.env (the configuration below), and the base /init runs it under
# `timeout $GUEST_TIMEOUT`. Each step runs in its own `sh /test.sh --run FUNC`
# under `timeout`, and prints to the serial console:
#   @@BEGIN name@@ ... its output ... @@RESULT name rc=N ms=T@@  (rc 77: skipped)
# Other markers for the host:
#   @@HOLE export offset length@@    a range the guest discarded: the host
#                                    checks the export's block status
#   @@STOPDATA export offset length sha256@@  data written just before the
#                                    graceful stop (host checks file exports)
#   @@STOP-SERVER@@                  the guest is idle and connected: the host
#                                    does its checks, then sends SIGTERM
#
# /test.env sets:
#   SERVER=10.0.2.100 PORT=10809      main server (qemu guestfwd → host)
#   RO_SERVER=10.0.2.101              read-only server ("" = skip)
#   RO_EXPORT=ro
#   FAULT_SERVER=10.0.2.102           server whose writes fail with EIO ("" = skip)
#   FAULT_EXPORT=fault FAULT_OK_OFFSET=N  (writes at N succeed; "" = all fail)
#   EXPORTS="mem:full file:lite"      export:mode; full = every step, lite =
#                                     connect, dd, reconnect, ext4 (no
#                                     multi-conn, fio, discard)
#   STOP_EXPORT=mem                   export for the graceful-stop step ("" = skip)
#   ATTACH_CMD / DETACH_CMD           optional hook: attach /dev/nbd1 with a
#                                     static tool from /extra (nbdd attach)

. /test.env
SERVER=${SERVER:-10.0.2.100}
PORT=${PORT:-10809}
MiB=1048576
PATH=/extra:$PATH
# busybox sh runs its own applets before searching PATH: call the util-linux
# tools by path (busybox's blkdiscard/fallocate/fstrim lack -v, -z, --punch-hole).
BLKDISCARD=/usr/sbin/blkdiscard
FALLOCATE=/usr/bin/fallocate
FSTRIM=/usr/sbin/fstrim

fail() {
	echo "FAIL: $*"
	exit 1
}

ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

devsize() { echo $(($(cat /sys/block/$1/size) * 512)); }

# wait_gone DEV SECS: wait until the device is disconnected (size 0).
wait_gone() {
	i=0
	while [ "$(cat /sys/block/$1/size)" != 0 ]; do
		i=$((i + 1))
		[ $i -gt $(($2 * 10)) ] && return 1
		sleep 0.1
	done
	return 0
}

connect() { # connect DEV EXPORT [nbd-client options]
	dev=$1 exp=$2
	shift 2
	dmesg -c >/dev/null 2>&1 # disconnect looks for I/O errors since here
	echo "+ nbd-client $SERVER $PORT /dev/$dev -N $exp -b 4096 $*"
	nbd-client "$SERVER" "$PORT" "/dev/$dev" -N "$exp" -b 4096 "$@" || fail "nbd-client $* rc=$?"
	i=0
	while [ "$(cat /sys/block/$dev/size)" = 0 ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "/dev/$dev has size 0 after connecting"
		sleep 0.1
	done
	echo "/dev/$dev: $(devsize $dev) bytes, ro=$(cat /sys/block/$dev/ro)," \
		"discard_max=$(cat /sys/block/$dev/queue/discard_max_bytes)," \
		"write_zeroes_max=$(cat /sys/block/$dev/queue/write_zeroes_max_bytes)," \
		"max_sectors_kb=$(cat /sys/block/$dev/queue/max_sectors_kb)"
}

disconnect() { # disconnect DEV (IOERR_OK=1: the step provoked I/O errors)
	if [ -z "${IOERR_OK:-}" ] && dmesg | grep -q "I/O error, dev $1,"; then
		dmesg | grep "dev $1," | tail -n 5
		fail "the kernel logged I/O errors on /dev/$1"
	fi
	nbd-client -d "/dev/$1" || fail "nbd-client -d /dev/$1 rc=$?"
	wait_gone "$1" 10 || fail "/dev/$1 still has a size 10 s after nbd-client -d"
	# the kernel drops the pid attribute when the configuration goes away
	# (ioctl mode: when the nbd-client daemon's NBD_DO_IT returns)
	i=0
	while [ -e /sys/block/$1/pid ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "/dev/$1 still has a pid ($(cat /sys/block/$1/pid)) 10 s after -d"
		sleep 0.1
	done
}

# reset: after a failed step, disconnect whatever it left behind, so one
# failure does not cascade into the following steps.
reset() {
	for d in /sys/block/nbd*; do
		dev=${d##*/}
		if [ -e $d/pid ] || [ "$(cat $d/size)" != 0 ]; then
			echo "reset: disconnecting /dev/$dev"
			timeout -s KILL 15 nbd-client -d /dev/$dev >/dev/null 2>&1
		fi
	done
	grep -q ' /mnt/t ' /proc/mounts && umount -f /mnt/t
	p=$(pidof nbd-client) && echo "reset: killing nbd-client $p" && kill -9 $p
	return 0
}

# The dd regions: 1 MiB at the start, the middle and near the end, and the
# last 4 KiB block of the device on its own (regions do not overlap).
regions() { # regions DEV → "name offset length" lines
	s=$(devsize $1)
	echo "start 0 $MiB"
	echo "middle $((s / 2)) $MiB"
	echo "end $((s - 2 * MiB)) $MiB"
	echo "lastblock $((s - 4096)) 4096"
}

# write_region DEV OFFSET LENGTH SRCFILE; read_region DEV OFFSET LENGTH
write_region() {
	if [ "$3" = 4096 ]; then
		dd if="$4" of="/dev/$1" bs=4096 seek=$(($2 / 4096)) count=1 oflag=direct conv=notrunc status=none
	else
		dd if="$4" of="/dev/$1" bs=$MiB seek=$(($2 / MiB)) count=$(($3 / MiB)) oflag=direct conv=notrunc status=none
	fi
}
read_region() {
	if [ "$3" = 4096 ]; then
		dd if="/dev/$1" bs=4096 skip=$(($2 / 4096)) count=1 iflag=direct status=none
	else
		dd if="/dev/$1" bs=$MiB skip=$(($2 / MiB)) count=$(($3 / MiB)) iflag=direct status=none
	fi
}
sha() { sha256sum | cut -d' ' -f1; }

# ---- steps (each runs in its own shell under timeout) ----

st_connect_netlink() { # EXPORT
	connect nbd0 "$1"
	[ -n "$EXPECT_SIZE" ] && [ "$(devsize nbd0)" != "$EXPECT_SIZE" ] &&
		fail "size $(devsize nbd0) != expected $EXPECT_SIZE"
	return 0
}

st_dd() { # EXPORT: O_DIRECT round trips on /dev/nbd0
	regions nbd0 | while read -r name off len; do
		head -c "$len" /dev/urandom >/tmp/w.$name
		want=$(sha </tmp/w.$name)
		write_region nbd0 "$off" "$len" /tmp/w.$name || fail "write $name at $off"
		got=$(read_region nbd0 "$off" "$len" | sha)
		[ "$got" = "$want" ] || fail "$name at $off: read back $got, wrote $want"
		echo "$name $off $len $want" >>/tmp/dd.$1
		echo "$name @$off +$len ok $want"
	done
	[ -s /tmp/dd.$1 ] && [ "$(wc -l </tmp/dd.$1)" = 4 ] || fail "not all regions checked"
}

st_disconnect() { # DEV
	disconnect "$1"
	echo "/dev/$1 disconnected"
}

st_reread_ioctl() { # EXPORT: reconnect over ioctl (-L), compare the dd regions
	[ -s /tmp/dd.$1 ] || fail "no dd regions recorded (the dd step failed)"
	connect nbd1 "$1" -L
	while read -r name off len want; do
		got=$(read_region nbd1 "$off" "$len" | sha)
		[ "$got" = "$want" ] || fail "after reconnect: $name at $off reads $got, want $want"
		echo "$name @$off ok"
	done </tmp/dd.$1
	disconnect nbd1
}

st_multiconn() { # EXPORT MODE(netlink|ioctl): -C 4, parallel O_DIRECT reads
	[ -s /tmp/dd.$1 ] || fail "no dd regions recorded (the dd step failed)"
	dev=nbd0
	[ "$2" = ioctl ] && dev=nbd1
	if [ "$2" = ioctl ]; then connect $dev "$1" -C 4 -L; else connect $dev "$1" -C 4; fi
	while read -r name off len want; do
		(
			got=$(read_region $dev "$off" "$len" | sha)
			[ "$got" = "$want" ] && echo "$name ok" || echo "$name MISMATCH $got"
		) >/tmp/par.$name &
	done </tmp/dd.$1
	wait
	cat /tmp/par.*
	grep -q MISMATCH /tmp/par.* && fail "parallel reads over -C 4 mismatched"
	[ "$2" = ioctl ] && disconnect $dev
	return 0
}

st_fio() { # EXPORT: on the -C 4 netlink connection left by st_multiconn
	if ! command -v fio >/dev/null; then
		disconnect nbd0
		echo "fio is not in the initramfs (built with NBDD_KERNEL_FIO=0)"
		exit 77
	fi
	s=$(devsize nbd0)
	fio --name=verify --filename=/dev/nbd0 --direct=1 --ioengine=libaio --iodepth=16 \
		--rw=randwrite --bsrange=4k-128k --offset=$((s / 2 + 64 * MiB)) --size=32M \
		--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=0 \
		--runtime=60 --time_based=0 --group_reporting --output-format=normal ||
		fail "fio rc=$?"
	disconnect nbd0
}

st_discard() { # EXPORT: blkdiscard (TRIM) and blkdiscard -z (WRITE_ZEROES)
	connect nbd0 "$1"
	s=$(devsize nbd0)
	d=$((s / 2 + 128 * MiB))
	z=$((s / 2 + 160 * MiB))
	head -c $((8 * MiB)) /dev/urandom >/tmp/r8
	dd if=/tmp/r8 of=/dev/nbd0 bs=$MiB seek=$((d / MiB)) oflag=direct conv=notrunc status=none || fail "write before discard"
	dd if=/tmp/r8 of=/dev/nbd0 bs=$MiB seek=$((z / MiB)) count=4 oflag=direct conv=notrunc status=none || fail "write before zeroout"
	[ "$(cat /sys/block/nbd0/queue/discard_max_bytes)" != 0 ] || fail "the server does not advertise TRIM (discard_max_bytes=0)"
	$BLKDISCARD -v -o $d -l $((8 * MiB)) /dev/nbd0 || fail "blkdiscard rc=$?"
	echo "@@HOLE $1 $d $((8 * MiB))@@"
	$BLKDISCARD -v -z -o $z -l $((4 * MiB)) /dev/nbd0 || fail "blkdiscard -z rc=$?"
	zero=$(head -c $((4 * MiB)) /dev/zero | sha)
	got=$(dd if=/dev/nbd0 bs=$MiB skip=$((z / MiB)) count=4 iflag=direct status=none | sha)
	[ "$got" = "$zero" ] || fail "blkdiscard -z range does not read back as zeros"
	echo "zeroout range reads back as zeros"
	disconnect nbd0
}

st_ext4() { # EXPORT: mkfs, mount, tree, punch hole, fstrim, umount, fsck
	connect nbd0 "$1"
	s=$(devsize nbd0)
	# ext4 in the first half, so the dd/fio/discard ranges stay apart.
	mkfs.ext4 -F -q -b 4096 -L nbdd /dev/nbd0 $((s / 2 / 4096)) || fail "mkfs.ext4 rc=$?"
	mkdir -p /mnt/t
	mount -t ext4 -o discard /dev/nbd0 /mnt/t || fail "mount rc=$?"
	mkdir -p /mnt/t/tree
	i=0
	while [ $i -lt 60 ]; do
		d=/mnt/t/tree/d$((i % 6))/e$((i % 3))
		mkdir -p $d
		head -c $(((i * 7919) % 60000 + 1)) /dev/urandom >$d/f$i
		i=$((i + 1))
	done
	head -c $((2 * MiB)) /dev/urandom >/mnt/t/tree/big2
	head -c $((8 * MiB)) /dev/urandom >/mnt/t/tree/big8
	ln -s d0/e0/f0 /mnt/t/tree/link
	sync
	# fallocate --punch-hole on a mounted file: ext4 frees the blocks and,
	# mounted with -o discard, sends TRIM for them at the next commit.
	ext=$(filefrag -v -b4096 /mnt/t/tree/big8 | awk -F'[:. ]+' '$2 ~ /^[0-9]+$/ && $3 == 0 { print $5; exit }')
	nex=$(filefrag /mnt/t/tree/big8 | awk '{ print $2 }')
	blocks0=$(stat -c %b /mnt/t/tree/big8)
	$FALLOCATE --punch-hole --offset $((2 * MiB)) --length $((4 * MiB)) /mnt/t/tree/big8 || fail "fallocate --punch-hole rc=$?"
	blocks1=$(stat -c %b /mnt/t/tree/big8)
	[ "$blocks1" -lt "$blocks0" ] || fail "punch-hole freed nothing ($blocks0 -> $blocks1 blocks)"
	zero=$(head -c $((4 * MiB)) /dev/zero | sha)
	got=$(dd if=/mnt/t/tree/big8 bs=$MiB skip=2 count=4 status=none | sha)
	[ "$got" = "$zero" ] || fail "punched range does not read as zeros"
	sync
	echo "punched 4 MiB: $blocks0 -> $blocks1 sectors (file had $nex extent(s), first physical block $ext)"
	if [ "$nex" = 1 ] && [ -n "$ext" ]; then
		echo "@@HOLE $1 $(((ext + 512) * 4096)) $((4 * MiB))@@"
	fi
	$FSTRIM -v /mnt/t || fail "fstrim rc=$?"
	(cd /mnt/t && find tree -type f | sort | xargs sha256sum) >/tmp/manifest.$1
	echo "$(wc -l </tmp/manifest.$1) files, $(du -sk /mnt/t/tree | cut -f1) KiB"
	umount /mnt/t || fail "umount rc=$?"
	e2fsck -fn /dev/nbd0 || fail "e2fsck -fn rc=$?"
	disconnect nbd0
}

st_ext4_reconnect() { # EXPORT: reconnect over ioctl, fsck, mount, checksums
	connect nbd1 "$1" -L
	e2fsck -fn /dev/nbd1 || fail "e2fsck -fn after reconnect rc=$?"
	mount -t ext4 -o ro /dev/nbd1 /mnt/t || fail "mount after reconnect rc=$?"
	(cd /mnt/t && sha256sum -c /tmp/manifest.$1 >/tmp/check.out 2>&1) || {
		grep -v ': OK$' /tmp/check.out
		fail "checksums differ after reconnect"
	}
	echo "$(grep -c ': OK$' /tmp/check.out) files match"
	[ "$(readlink /mnt/t/tree/link)" = d0/e0/f0 ] || fail "symlink lost"
	umount /mnt/t || fail "umount rc=$?"
	disconnect nbd1
}

st_readonly() { # write to the read-only export: an error, no hang
	SERVER=$RO_SERVER IOERR_OK=1
	connect nbd2 "$RO_EXPORT"
	echo "kernel read-only flag: $(cat /sys/block/nbd2/ro)"
	read_region nbd2 0 4096 >/dev/null || fail "read before the write failed"
	head -c 4096 /dev/urandom >/tmp/w4k
	timeout -s KILL 30 dd if=/tmp/w4k of=/dev/nbd2 bs=4096 count=1 oflag=direct conv=notrunc,fsync status=none
	rc=$?
	[ $rc = 137 ] && fail "write to the read-only export hung (killed after 30 s)"
	[ $rc = 0 ] && fail "write to the read-only export succeeded"
	echo "write failed as expected (dd rc=$rc)"
	dmesg | tail -n 5
	read_region nbd2 0 4096 >/dev/null || fail "read after the failed write failed: connection lost?"
	echo "read after the failed write ok"
	disconnect nbd2
}

st_fault() { # the server fails writes with EIO: an I/O error in the guest, no hang
	SERVER=$FAULT_SERVER IOERR_OK=1
	connect nbd2 "$FAULT_EXPORT"
	[ "$(cat /sys/block/nbd2/ro)" = 0 ] || fail "the fault export is read-only: the write would not reach the server"
	head -c 4096 /dev/urandom >/tmp/w4k
	timeout -s KILL 30 dd if=/tmp/w4k of=/dev/nbd2 bs=4096 count=1 oflag=direct conv=notrunc status=none 2>/tmp/dd.err
	rc=$?
	cat /tmp/dd.err
	[ $rc = 137 ] && fail "a write the server fails hung (killed after 30 s)"
	[ $rc = 0 ] && fail "a write the server fails succeeded"
	grep -q 'Input/output error' /tmp/dd.err || fail "want EIO from the failed write"
	dmesg | grep nbd2 | tail -n 3
	read_region nbd2 0 4096 >/dev/null || fail "read after the failed write failed: connection lost?"
	echo "read after the failed write ok"
	if [ -n "$FAULT_OK_OFFSET" ]; then
		write_region nbd2 "$FAULT_OK_OFFSET" 4096 /tmp/w4k || fail "write outside the fault range failed"
		[ "$(read_region nbd2 "$FAULT_OK_OFFSET" 4096 | sha)" = "$(sha </tmp/w4k)" ] || fail "write outside the fault range reads back wrong"
		echo "write outside the fault range ok"
	fi
	disconnect nbd2
}

st_attach() { # optional hook: nbdd attach (a static tool from /extra)
	echo "+ $ATTACH_CMD"
	sh -c "$ATTACH_CMD" || fail "attach rc=$?"
	i=0
	while [ "$(cat /sys/block/nbd1/size)" = 0 ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "/dev/nbd1 has size 0 after attach"
		sleep 0.1
	done
	# The export's transmission flags reached the kernel (attach passes them
	# in NBD_ATTR_SERVER_FLAGS): writable, TRIM, FLUSH.
	[ "$(cat /sys/block/nbd1/ro)" = 0 ] || fail "nbd1 is read-only after attach"
	[ "$(cat /sys/block/nbd1/queue/discard_max_bytes)" != 0 ] || fail "nbd1: no TRIM after attach (discard_max_bytes=0)"
	grep -q "write back" /sys/block/nbd1/queue/write_cache || fail "nbd1: no FLUSH after attach (write_cache: $(cat /sys/block/nbd1/queue/write_cache))"
	regions nbd1 | while read -r name off len; do
		head -c "$len" /dev/urandom >/tmp/a.$name
		want=$(sha </tmp/a.$name)
		write_region nbd1 "$off" "$len" /tmp/a.$name || fail "write $name"
		got=$(read_region nbd1 "$off" "$len" | sha)
		[ "$got" = "$want" ] || fail "$name: read back $got, wrote $want"
		echo "$name ok"
	done || fail "attach dd checks failed"
	echo "+ $DETACH_CMD"
	sh -c "$DETACH_CMD" || fail "detach rc=$?"
	wait_gone nbd1 10 || fail "/dev/nbd1 still attached after detach"
}

st_graceful_stop() { # EXPORT: idle ioctl connection; the host SIGTERMs the server
	connect nbd3 "$1" -L
	s=$(devsize nbd3)
	off=$((s / 2 + 200 * MiB))
	head -c $MiB /dev/urandom >/tmp/stop
	# no fsync: a graceful stop must not lose acknowledged writes
	dd if=/tmp/stop of=/dev/nbd3 bs=$MiB seek=$((off / MiB)) count=1 oflag=direct conv=notrunc status=none || fail "write"
	echo "@@STOPDATA $1 $off $MiB $(sha </tmp/stop)@@"
	sleep 1
	echo "@@STOP-SERVER@@"
	t0=$(ms)
	i=0
	while [ -e /sys/block/nbd3/pid ]; do
		i=$((i + 1))
		[ $i -gt 900 ] && fail "still connected 90 s after the stop request: pid=$(cat /sys/block/nbd3/pid 2>/dev/null)"
		sleep 0.1
	done
	echo "disconnect seen after $(($(ms) - t0)) ms (incl. host checks)"
	dmesg | grep -i nbd3 | tail -n 5
	dmesg | grep -q "I/O error, dev nbd3," && fail "requests failed when the server stopped"
	timeout -s KILL 15 dd if=/dev/nbd3 of=/dev/null bs=4096 count=1 iflag=direct status=none
	rc=$?
	[ $rc = 137 ] && fail "I/O on the stopped device hung"
	echo "I/O after the stop: rc=$rc (no hang)"
	echo "nbd3 size after stop: $(cat /sys/block/nbd3/size)"
}

if [ "${1:-}" = --run ]; then
	shift
	"$@"
	exit $?
fi

# ---- the list ----
FAILED=0
step() { # step NAME TIMEOUT FUNC ARGS...
	name=$1 to=$2
	shift 2
	echo "@@BEGIN $name@@"
	t0=$(ms)
	timeout -s KILL "$to" sh /test.sh --run "$@" 2>&1
	rc=$?
	[ $rc = 137 ] && echo "step $name killed after $to s"
	echo "@@RESULT $name rc=$rc ms=$(($(ms) - t0))@@"
	if [ $rc != 0 ] && [ $rc != 77 ]; then # 77: skipped
		FAILED=$((FAILED + 1))
		reset
	fi
	return $rc
}

for em in $EXPORTS; do
	e=${em%%:*} mode=${em#*:}
	if step connect-netlink-$e 30 st_connect_netlink $e; then
		step dd-direct-$e 90 st_dd $e
		step disconnect-$e 30 st_disconnect nbd0
	fi
	step reconnect-ioctl-$e 60 st_reread_ioctl $e
	if [ "$mode" = full ]; then
		step multiconn-ioctl-$e 60 st_multiconn $e ioctl
		step multiconn-netlink-$e 60 st_multiconn $e netlink &&
			step fio-verify-$e 120 st_fio $e
	fi
	# lite exports skip what another configuration covers for their backend
	[ "$mode" = full ] && step discard-$e 60 st_discard $e
	step ext4-$e 180 st_ext4 $e
	step ext4-reconnect-$e 90 st_ext4_reconnect $e
done
[ -n "$RO_SERVER" ] && step readonly-write 60 st_readonly
[ -n "$FAULT_SERVER" ] && step fault-write-eio 60 st_fault
[ -n "$ATTACH_CMD" ] && step nbdd-attach 90 st_attach
[ -n "$STOP_EXPORT" ] && step graceful-stop-$STOP_EXPORT 120 st_graceful_stop $STOP_EXPORT
echo "@@STEPS failed=$FAILED@@"
exit $FAILED
