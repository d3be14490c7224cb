#!/usr/bin/env bash
# clones.sh: an nbdd clone (--export NAME=BASE,cow=OVERLAY) against a raw
# nbdd export of the same data, nbdkit's cow filter over the same base,
# and qemu-nbd serving a qcow2 overlay with the base as its backing file,
# in one run, over unix sockets, each a 1 GiB disk. Prints medians of
# RUNS repetitions and the clone's ratios.
#
#   bench/clones.sh                     # RUNS=5, FIO_SECONDS=5, files in /dev/shm
#   BLOCK=64K bench/clones.sh           # the clone's overlay with 64 KiB blocks
#   WHERE=disk bench/clones.sh          # base and overlays on the disk (page cache)
#
# The base is 1 GiB of random data. Each repetition starts every server
# on a fresh overlay, writes the second half of the disk through it (1 MiB
# writes), and then runs, the servers taking turns in each row:
#   seqread-unwritten  fio 256 KiB reads, qd16, of the first half (the base)
#   seqread-written    the same over the second half (the overlay)
#   randwrite4k-qd32   fio 4 KiB random writes, qd32, into the first half:
#                      each first write to a block is a copy-on-write
#   randread4k-qd32    fio 4 KiB random reads, qd32, of the whole disk
# The raw export gets the same writes into a copy of the base. Timing runs
# hold /tmp/nbdd-bench.lock, so benchmarks never overlap.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
FIO_SECONDS=${FIO_SECONDS:-5}
STRATEGY=${STRATEGY:-pool}
BLOCK=${BLOCK:-4K}
WHERE=${WHERE:-shm}
SIZE=$((1 << 30))
HALF=$((SIZE / 2))

exec 9>/tmp/nbdd-bench.lock
flock 9
bench_init
case $WHERE in
shm) D=$SHM ;;
disk) D=$WORK ;;
*)
	echo "clones.sh: WHERE must be shm or disk, not $WHERE" >&2
	exit 2 ;;
esac
head -c $SIZE /dev/urandom >"$D/base.img"
chmod a-w "$D/base.img"
SERVERS="raw clone nbdkit qemu"

# start_servers: every server on a fresh overlay (raw: a fresh copy).
start_servers() {
	rm -f "$D/raw.img" "$D/clone.ovl" "$D/q.qcow2" "$WORK"/*.sock
	cp "$D/base.img" "$D/raw.img" && chmod u+w "$D/raw.img"
	"$WORK/nbdd" image clone --block-size "$BLOCK" "$D/base.img" "$D/clone.ovl"
	qemu-img create -q -f qcow2 -b "$D/base.img" -F raw "$D/q.qcow2"
	start raw "$WORK/raw.sock" "$WORK/nbdd" serve --listen "unix://$WORK/raw.sock" --export "raw=$D/raw.img" --strategy "$STRATEGY" --log-level warn
	start clone "$WORK/clone.sock" "$WORK/nbdd" serve --listen "unix://$WORK/clone.sock" --export "clone=$D/base.img,cow=$D/clone.ovl" --strategy "$STRATEGY" --log-level warn
	# nbdkit's cow filter keeps its overlay in TMPDIR, a temporary file.
	start nbdkit "$WORK/nbdkit.sock" env TMPDIR="$D" nbdkit -f -U "$WORK/nbdkit.sock" --filter=cow file "$D/base.img"
	start qemu "$WORK/qemu.sock" qemu-nbd -f qcow2 -t -e 16 --cache=writeback -k "$WORK/qemu.sock" "$D/q.qcow2"
	for s in $SERVERS; do
		fio --name=w --ioengine=nbd --uri="$(uri "$WORK/$s.sock")" --rw=write --bs=1M --iodepth=8 \
			--offset=$HALF --size=$HALF --output=/dev/null >/dev/null 2>&1
	done
}

stop_servers() {
	for s in $SERVERS; do
		eval "pid=\$PID_$s"
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}

# fio_run URI RW BS DEPTH OFFSET SIZE: one time-based fio run; prints MB/s
# for 256k blocks, IOPS otherwise.
fio_run() {
	quiesce
	fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --offset="$5" --size="$6" \
		--runtime="$FIO_SECONDS" --time_based --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
	python3 -c 'import json,sys
j=json.load(open(sys.argv[1]))["jobs"][0]
r,w=j["read"],j["write"]
print(round((r["bw_bytes"]+w["bw_bytes"])/1e6) if sys.argv[2]=="256k" else round(r["iops"]+w["iops"]))' "$WORK/fio.json" "$3"
}

run() { # run WORKLOAD SERVER
	local u
	u=$(uri "$WORK/$2.sock")
	case $1 in
	seqread-unwritten) fio_run "$u" read 256k 16 0 $HALF ;;
	seqread-written) fio_run "$u" read 256k 16 $HALF $HALF ;;
	randwrite4k-qd32) fio_run "$u" randwrite 4k 32 0 $HALF ;;
	randread4k-qd32) fio_run "$u" randread 4k 32 0 $SIZE ;;
	esac
}

declare -A R
WORKLOADS="seqread-unwritten seqread-written randwrite4k-qd32 randread4k-qd32"
for w in $WORKLOADS; do for s in $SERVERS; do R[$w.$s]=""; done; done
for rep in $(seq "$RUNS"); do
	start_servers
	for w in $WORKLOADS; do
		for s in $SERVERS; do R[$w.$s]+=" $(run "$w" "$s")"; done
	done
	stop_servers
	echo "repetition $rep of $RUNS done" >&2
done

printf '\nnbdd clone (%s blocks, strategy %s) vs a raw nbdd export and peers, 1 GiB disk in %s, unix socket, median of %s runs\n\n' \
	"$BLOCK" "$STRATEGY" "$WHERE" "$RUNS"
printf '| workload | nbdd raw | nbdd clone | nbdkit cow filter | qemu-nbd qcow2 | clone/raw | clone/nbdkit | clone/qemu-nbd |\n|---|---|---|---|---|---|---|---|\n'
declare -A LABEL=([seqread-unwritten]="fio 256 KiB seq read, unwritten half, MB/s" [seqread-written]="fio 256 KiB seq read, written half, MB/s"
	[randwrite4k-qd32]="fio 4 KiB randwrite qd32, IOPS" [randread4k-qd32]="fio 4 KiB randread qd32, IOPS")
for w in $WORKLOADS; do
	declare -A M=()
	for s in $SERVERS; do M[$s]=$(echo "${R[$w.$s]}" | median); done
	awk -v l="${LABEL[$w]}" -v a="${M[raw]}" -v b="${M[clone]}" -v c="${M[nbdkit]}" -v d="${M[qemu]}" \
		'BEGIN {printf "| %s | %d | %d | %d | %d | %.2f | %.2f | %.2f |\n", l, a, b, c, d, b/a, b/c, b/d}'
done
printf '\nraw runs:\n'
for w in $WORKLOADS; do for s in $SERVERS; do printf '%s %s:%s\n' "$w" "$s" "${R[$w.$s]}"; done; done
