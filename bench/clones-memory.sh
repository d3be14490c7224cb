#!/usr/bin/env bash
# clones-memory.sh: what 16 clones of one 1 GiB base cost in memory.
#
#   bench/clones-memory.sh              # both parts; part 2 needs root and KSM
#   PARTS=1 bench/clones-memory.sh      # only part 1
#
# Part 1: one nbdd serves 16 clones of a 1 GiB base file (random data) on
# the disk ($TMPDIR), each with its own overlay. 16 clients at once each
# write 64 MiB of their own (fio, 1 MiB writes, at 64 MiB × client) and
# then read their whole disk (nbdcopy to null:). Printed: nbdd's resident
# memory (RSS, and its peak) and the page cache that the base and the
# overlays hold (fincore), against the 16 GiB of 16 separate copies. The
# base and overlays are dropped from the page cache first
# (POSIX_FADV_DONTNEED on those files only), so the figure is what the
# run brought in.
#
# Part 2: four nbdd processes, each serving four of the clones over its
# own copy of the base loaded into memory and marked mergeable
# (,load,ksm); the last one started runs the KSM throttler (--ksm). The
# processes' KSM pages (smaps_rollup) are sampled until 90 % of the four
# copies are merged: the time to merge from the fourth start (the
# throttler's kick). Memory is each process's own view: Anonymous counts
# a merged page in every process mapping it, Pss_Anon divides it among
# them, so their sums are the memory without and with KSM. (The host's
# pages_sharing is no measure here: it also counts other users of KSM,
# and pages of exited processes until ksmd's next scan.) Then the same
# 16 clients run, and the figures are taken again.
# Holds /run/nbdd-ksm-test.lock, as the KSM tests do, and
# /tmp/nbdd-bench.lock.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PARTS=${PARTS:-1 2}
CLONES=16
SIZE=$((1 << 30))
WRITE=$((64 << 20))

exec 9>/tmp/nbdd-bench.lock
flock 9
bench_init
head -c $SIZE /dev/urandom >"$WORK/base.raw"

mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b/1048576}'; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# drop_cache FILE...: drop the files' pages from the page cache.
drop_cache() {
	python3 -c 'import os,sys
for p in sys.argv[1:]:
    fd=os.open(p,os.O_RDONLY)
    os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)
    os.close(fd)' "$@"
}

# cached_bytes FILE...: bytes of the files in the page cache.
cached_bytes() { fincore --bytes --noheadings --output RES "$@" | awk '{s+=$1} END {print s+0}'; }

# clients SOCKET...: client i writes 64 MiB at 64 MiB × i of clone vm$i,
# then reads all of it; all at once. The clones are spread evenly over the
# sockets given, in order (vm0-vm3 on the first of four). A client that
# fails is counted and reported, and the others go on.
clients() {
	local socks=("$@") pids=() i failed=0
	for i in $(seq 0 $((CLONES - 1))); do
		(
			u="nbd+unix:///vm$i?socket=${socks[$((i * ${#socks[@]} / CLONES))]}"
			fio --name=w --ioengine=nbd --uri="$u" --rw=write --bs=1M --iodepth=4 \
				--offset=$((i * WRITE)) --size=$WRITE --output=/dev/null >/dev/null 2>&1 &&
				nbdcopy "$u" null:
		) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
	if [ $failed -gt 0 ]; then
		echo "clones-memory.sh: $failed of $CLONES clients failed; server logs:" >&2
		tail -n 5 "$WORK"/*.log >&2
	fi
}

part1() {
	local args=() i ovls=() t0 t1 pid
	for i in $(seq 0 $((CLONES - 1))); do
		ovls+=("$WORK/vm$i.ovl")
		args+=(--export "vm$i=$WORK/base.raw,cow=$WORK/vm$i.ovl")
	done
	start nbdd1 "$WORK/p1.sock" "$WORK/nbdd" serve --listen "unix://$WORK/p1.sock" "${args[@]}" --default-export vm0 --log-level warn
	pid=$PID_nbdd1
	sync
	drop_cache "$WORK/base.raw" "${ovls[@]}"
	t0=$(date +%s.%N)
	clients "$WORK/p1.sock"
	t1=$(date +%s.%N)
	local base_c ovl_c rss hwm
	base_c=$(cached_bytes "$WORK/base.raw")
	ovl_c=$(cached_bytes "${ovls[@]}")
	rss=$(status_kib "$pid" VmRSS)
	hwm=$(status_kib "$pid" VmHWM)
	printf '\nPart 1: one nbdd, %d clones of a 1 GiB base file, each client writing 64 MiB and reading 1 GiB (%.1f s)\n\n' \
		$CLONES "$(echo "$t0 $t1" | awk '{print $2-$1}')"
	printf '| what | MiB | vs 16 × 1 GiB |\n|---|---|---|\n'
	printf '| nbdd RSS at the end (peak) | %d (%d) | %.3f |\n' $((rss / 1024)) $((hwm / 1024)) "$(awk -v r="$hwm" 'BEGIN {print r*1024/(16*2^30)}')"
	printf '| page cache: the base | %s | |\n' "$(mib "$base_c")"
	printf '| page cache: the 16 overlays | %s | |\n' "$(mib "$ovl_c")"
	printf '| page cache + RSS, all told | %s | %.3f |\n' "$(mib $((base_c + ovl_c + hwm * 1024)))" \
		"$(awk -v b=$((base_c + ovl_c + hwm * 1024)) 'BEGIN {print b/(16*2^30)}')"
	printf '| overlays on disk (allocated) | %s | |\n' "$(du -cm "${ovls[@]}" | tail -1 | cut -f1)"
	kill "$pid"
	wait "$pid" || true
	PIDS=()
}

# rollup_kib FIELD PID...: FIELD of /proc/PID/smaps_rollup, summed.
rollup_kib() {
	local f=$1 p s=0
	shift
	for p in "$@"; do s=$((s + $(awk -v k="$f:" '$1 == k {print $2}' "/proc/$p/smaps_rollup"))); done
	echo $s
}

# ksm_rows LABEL PID...: the memory of the processes, merged and not.
ksm_rows() {
	local l=$1 rss pss ksm
	shift
	rss=$(rollup_kib Anonymous "$@")
	pss=$(rollup_kib Pss_Anon "$@")
	ksm=$(rollup_kib KSM "$@")
	printf '| %s: KSM pages in the 4 processes | %d MiB of %d MiB loaded |\n' "$l" $((ksm / 1024)) $((4 * SIZE >> 20))
	printf '| %s: anonymous memory, each merged page counted in every process (smaps Anonymous) | %d MiB |\n' "$l" $((rss / 1024))
	printf '| %s: anonymous memory, merged pages shared out (Pss_Anon) | %d MiB (%.2f of the unmerged) |\n' "$l" $((pss / 1024)) \
		"$(awk -v a="$pss" -v b="$rss" 'BEGIN {print a/b}')"
}

part2() {
	if [ "$(id -u)" != 0 ] || [ ! -w /sys/kernel/mm/ksm/run ]; then
		echo "part 2 needs root and a writable /sys/kernel/mm/ksm" >&2
		return 1
	fi
	exec 8>/run/nbdd-ksm-test.lock
	flock 8
	rm -f "$WORK"/vm*.ovl
	local p i args pids=() socks=() t0 t1 total target
	for p in 0 1 2 3; do
		args=()
		for i in $(seq $((p * 4)) $((p * 4 + 3))); do
			args+=(--export "vm$i=$WORK/base.raw,cow=$WORK/vm$i.ovl,load,ksm")
		done
		[ $p = 3 ] && args+=(--ksm --ksm-state-file "$WORK/ksm.state")
		[ $p = 3 ] && t0=$(date +%s.%N)
		start "k$p" "$WORK/k$p.sock" "$WORK/nbdd" serve --listen "unix://$WORK/k$p.sock" "${args[@]}" --default-export "vm$((p * 4))" --log-level warn
		eval "pids+=(\$PID_k$p)"
		socks+=("$WORK/k$p.sock")
	done
	# Merged: KSM pages in the four processes reach 90 % of the four
	# copies (each copy's pages count once they all share one).
	target=$((4 * SIZE / 1024 * 9 / 10))
	while :; do
		total=$(rollup_kib KSM "${pids[@]}")
		[ "$total" -ge "$target" ] && break
		t1=$(date +%s.%N)
		if awk -v a="$t0" -v b="$t1" 'BEGIN {exit !(b-a > 600)}'; then
			echo "part 2: not merged after 600 s (KSM: $((total / 1024)) MiB)" >&2
			break
		fi
		sleep 0.5
	done
	t1=$(date +%s.%N)
	printf '\nPart 2: four nbdd, each loading the 1 GiB base into mergeable memory for 4 clones, throttler on\n\n'
	printf '| what | value |\n|---|---|\n'
	printf '| time to merge 90 %% of the 4 copies, from the 4th start (the kick) | %s s |\n' \
		"$(echo "$t0 $t1" | awk '{printf "%.1f", $2-$1}')"
	ksm_rows merged "${pids[@]}"
	t0=$(date +%s.%N)
	clients "${socks[@]}"
	t1=$(date +%s.%N)
	printf '| the 16 clients, each writing 64 MiB and reading 1 GiB | %s s |\n' "$(echo "$t0 $t1" | awk '{printf "%.1f", $2-$1}')"
	ksm_rows "after the clients" "${pids[@]}"
	printf '| after the clients: RSS of the 4 processes, summed | %d MiB |\n' $(($(for p in "${pids[@]}"; do status_kib "$p" VmRSS; done | awk '{s+=$1} END {print s}') / 1024))
	for p in "${pids[@]}"; do kill "$p"; done
	for p in "${pids[@]}"; do wait "$p" || true; done
	PIDS=()
}

for part in $PARTS; do "part$part"; done
