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
# host's KSM counters and the processes' KSM pages (smaps) are sampled
# until 90 % of the three redundant copies are merged: pages merged and
# the time to merge. Then the same 16 clients run, and RSS is printed.
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

ksm_counter() { cat "/sys/kernel/mm/ksm/$1"; }
smaps_ksm_kib() { awk '/^KSM:/ {s+=$2} END {print s+0}' "/proc/$1/smaps"; }

part2() {
	if [ "$(id -u)" != 0 ] || [ ! -w /sys/kernel/mm/ksm/run ]; then
		echo "part 2 needs root and a writable /sys/kernel/mm/ksm" >&2
		return 1
	fi
	exec 8>/run/nbdd-ksm-test.lock
	flock 8
	rm -f "$WORK"/vm*.ovl
	local p i args pids=() socks=() t0 t1 sharing0 target total
	sharing0=$(ksm_counter pages_sharing)
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
	# Merged: KSM pages in the four processes' smaps reach 90 % of the
	# four copies (each copy's pages count once they all share one).
	target=$((4 * SIZE / 1024 * 9 / 10))
	while :; do
		total=0
		for p in "${pids[@]}"; do total=$((total + $(smaps_ksm_kib "$p"))); done
		[ "$total" -ge "$target" ] && break
		t1=$(date +%s.%N)
		if awk -v a="$t0" -v b="$t1" 'BEGIN {exit !(b-a > 600)}'; then
			echo "part 2: not merged after 600 s (KSM: $((total / 1024)) MiB)" >&2
			break
		fi
		sleep 0.5
	done
	t1=$(date +%s.%N)
	local merged_s sharing
	merged_s=$(echo "$t0 $t1" | awk '{printf "%.1f", $2-$1}')
	sharing=$(($(ksm_counter pages_sharing) - sharing0))
	printf '\nPart 2: four nbdd, each loading the 1 GiB base into mergeable memory for 4 clones, throttler on\n\n'
	printf '| what | value |\n|---|---|\n'
	printf '| KSM pages in the 4 processes (smaps) | %d MiB of %d MiB loaded |\n' $((total / 1024)) $((4 * SIZE >> 20))
	printf '| pages_sharing, rise (memory saved) | %d pages = %d MiB |\n' "$sharing" $((sharing * 4 / 1024))
	printf '| time to merge 90 %%, from the 4th start (the kick) | %s s |\n' "$merged_s"
	clients "${socks[@]}"
	local rss=0 anon=0
	for p in "${pids[@]}"; do
		rss=$((rss + $(status_kib "$p" VmRSS)))
		anon=$((anon + $(status_kib "$p" RssAnon)))
	done
	printf '| after the 16 clients: RSS of the 4 processes, summed | %d MiB (RssAnon %d MiB, counting merged pages in each) |\n' $((rss / 1024)) $((anon / 1024))
	printf '| after the 16 clients: KSM pages (smaps), pages_sharing rise | %d MiB, %d MiB |\n' \
		$(( $(for p in "${pids[@]}"; do smaps_ksm_kib "$p"; done | awk '{s+=$1} END {print s}') / 1024 )) \
		$(( ($(ksm_counter pages_sharing) - sharing0) * 4 / 1024 ))
	for p in "${pids[@]}"; do kill "$p"; done
	for p in "${pids[@]}"; do wait "$p" || true; done
	PIDS=()
}

for part in $PARTS; do "part$part"; done
