#!/usr/bin/env bash
# compare.sh: nbdd against nbdkit, qemu-nbd and the go-nbd v0.3.2 server
# on the same machine in one run, over unix sockets, each with a 1 GiB
# export. Prints medians of RUNS runs and nbdd's ratios.
#
#   bench/compare.sh            # RUNS=5, FIO_SECONDS=5
#   STRATEGY=stream bench/compare.sh
#   EXPORT=file bench/compare.sh   # every server on its own file in /dev/shm
#
# EXPORT=memory (the default) serves memory: nbdd --memory, nbdkit's memory
# plugin and go-nbd's memory backend; qemu-nbd, which has no memory
# export, serves a file in /dev/shm. EXPORT=file gives every server its
# own 1 GiB file in /dev/shm: nbdd --export, nbdkit's file plugin, qemu-nbd
# and go-nbd's file backend.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
FIO_SECONDS=${FIO_SECONDS:-5}
STRATEGY=${STRATEGY:-pool}
EXPORT=${EXPORT:-memory}
SIZE=$((1 << 30))

bench_init
make_source $SIZE
for s in nbdd nbdkit qemu gonbd; do truncate -s $SIZE "$SHM/$s.img"; done

case $EXPORT in
memory)
	start nbdd "$WORK/nbdd.sock" "$WORK/nbdd" serve --listen "unix://$WORK/nbdd.sock" --memory default=1G --strategy "$STRATEGY" --log-level warn
	start nbdkit "$WORK/nbdkit.sock" nbdkit -f -U "$WORK/nbdkit.sock" memory 1G
	start gonbd "$WORK/gonbd.sock" "$WORK/gonbd-server" -socket "$WORK/gonbd.sock" -size $SIZE
	KIT="nbdkit memory" ;;
file)
	start nbdd "$WORK/nbdd.sock" "$WORK/nbdd" serve --listen "unix://$WORK/nbdd.sock" --export "default=$SHM/nbdd.img" --strategy "$STRATEGY" --log-level warn
	start nbdkit "$WORK/nbdkit.sock" nbdkit -f -U "$WORK/nbdkit.sock" file "$SHM/nbdkit.img"
	start gonbd "$WORK/gonbd.sock" "$WORK/gonbd-server" -socket "$WORK/gonbd.sock" -size $SIZE -file "$SHM/gonbd.img"
	KIT="nbdkit file" ;;
*)
	echo "compare.sh: EXPORT must be memory or file, not $EXPORT" >&2
	exit 2 ;;
esac
start qemu "$WORK/qemu.sock" qemu-nbd -f raw -t -e 16 --cache=writeback -k "$WORK/qemu.sock" "$SHM/qemu.img"
SERVERS="nbdd nbdkit qemu gonbd"
for s in $SERVERS; do nbdcopy "$SHM/src.img" "$(uri "$WORK/$s.sock")"; done

declare -A R
run() { workload "$1" "$(uri "$WORK/$2.sock")"; } # run WORKLOAD SERVER: one measurement (lib.sh)
WORKLOADS="seqread seqwrite randread1 randread32 randwrite32"
for w in $WORKLOADS; do
	for s in $SERVERS; do R[$w.$s]=""; done
	for _ in $(seq "$RUNS"); do
		for s in $SERVERS; do R[$w.$s]+=" $(run "$w" "$s")"; done
	done
done

printf '\nnbdd (strategy %s) vs peers, 1 GiB %s export, unix socket, median of %s runs\n\n' "$STRATEGY" "$EXPORT" "$RUNS"
printf '| workload | nbdd | %s | qemu-nbd | go-nbd v0.3.2 | nbdd/nbdkit | nbdd/qemu-nbd | nbdd/go-nbd |\n|---|---|---|---|---|---|---|---|\n' "$KIT"
declare -A LABEL=([seqread]="nbdcopy sequential read, MB/s" [seqwrite]="nbdcopy sequential write, MB/s"
	[randread1]="fio 4 KiB randread qd1, IOPS" [randread32]="fio 4 KiB randread qd32, IOPS" [randwrite32]="fio 4 KiB randwrite qd32, IOPS")
for w in $WORKLOADS; do
	declare -A M=()
	for s in $SERVERS; do M[$s]=$(echo "${R[$w.$s]}" | median); done
	awk -v l="${LABEL[$w]}" -v a="${M[nbdd]}" -v b="${M[nbdkit]}" -v c="${M[qemu]}" -v d="${M[gonbd]}" \
		'BEGIN {printf "| %s | %d | %d | %d | %d | %.2f | %.2f | %.2f |\n", l, a, b, c, d, a/b, a/c, a/d}'
done
printf '\nraw runs:\n'
for w in $WORKLOADS; do for s in $SERVERS; do printf '%s %s:%s\n' "$w" "$s" "${R[$w.$s]}"; done; done
