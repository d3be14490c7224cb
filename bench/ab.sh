#!/usr/bin/env bash
# ab.sh: this tree's nbdd against another nbdd binary (an earlier build),
# on compare.sh's workloads, over unix sockets, each with a 1 GiB export.
# The two take turns in every repetition, in alternating order, so that a
# machine whose speed drifts weighs on both alike; the table gives the
# medians and the median of the paired ratios (this tree / BEFORE: above
# 1 is faster, for MB/s and IOPS alike).
#
#   BEFORE=/path/to/old/nbdd bench/ab.sh               # RUNS=7, FIO_SECONDS=5
#   EXPORT=file BEFORE=/path/to/old/nbdd bench/ab.sh   # a file in /dev/shm each
#   WORKLOADS="seqread" RUNS=15 BEFORE=... bench/ab.sh  # a close call, again
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BEFORE=${BEFORE:?set BEFORE to the nbdd binary to compare with}
RUNS=${RUNS:-7}
FIO_SECONDS=${FIO_SECONDS:-5}
STRATEGY=${STRATEGY:-pool}
EXPORT=${EXPORT:-memory}
SIZE=$((1 << 30))

bench_init
make_source $SIZE
cp "$BEFORE" "$WORK/before"
for s in after before; do
	bin="$WORK/nbdd"
	[ $s = before ] && bin="$WORK/before"
	case $EXPORT in
	memory) exp=(--memory default=1G) ;;
	file)
		truncate -s $SIZE "$SHM/$s.img"
		exp=(--export "default=$SHM/$s.img") ;;
	*)
		echo "ab.sh: EXPORT must be memory or file, not $EXPORT" >&2
		exit 2 ;;
	esac
	start $s "$WORK/$s.sock" "$bin" serve --listen "unix://$WORK/$s.sock" "${exp[@]}" --strategy "$STRATEGY" --log-level warn
	nbdcopy "$SHM/src.img" "$(uri "$WORK/$s.sock")"
done

measure() { workload "$1" "$(uri "$WORK/$2.sock")"; } # measure WORKLOAD SERVER (lib.sh)

WORKLOADS=${WORKLOADS:-"seqread seqwrite randread1 randread32 randwrite32"}
declare -A A B
for w in $WORKLOADS; do
	A[$w]="" B[$w]=""
	for i in $(seq "$RUNS"); do
		if [ $((i % 2)) = 1 ]; then
			a=$(measure "$w" after)
			b=$(measure "$w" before)
		else
			b=$(measure "$w" before)
			a=$(measure "$w" after)
		fi
		A[$w]+=" $a" B[$w]+=" $b"
	done
done

printf '\nnbdd (this tree) vs %s, strategy %s, 1 GiB %s export, unix socket, %s pairs\n\n' "$BEFORE" "$STRATEGY" "$EXPORT" "$RUNS"
printf '| workload | after | before | after/before (median of pairs) | pair ratios min–max |\n|---|---|---|---|---|\n'
for w in $WORKLOADS; do
	ratios=$(paste <(echo "${A[$w]}" | tr ' ' '\n' | grep -v '^$') <(echo "${B[$w]}" | tr ' ' '\n' | grep -v '^$') |
		awk '{printf "%.4f\n", $1/$2}')
	awk -v w="$w" -v a="$(echo "${A[$w]}" | median)" -v b="$(echo "${B[$w]}" | median)" \
		-v r="$(echo "$ratios" | median)" -v lo="$(echo "$ratios" | sort -g | head -1)" -v hi="$(echo "$ratios" | sort -g | tail -1)" \
		'BEGIN {printf "| %s | %d | %d | %.3f | %.2f–%.2f |\n", w, a, b, r, lo, hi}'
done
printf '\nraw runs:\n'
for w in $WORKLOADS; do printf '%s after:%s\n%s before:%s\n' "$w" "${A[$w]}" "$w" "${B[$w]}"; done
