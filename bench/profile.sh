#!/usr/bin/env bash
# profile.sh: where a server's time goes on one of bench/compare.sh's rows.
# For each server, on a fresh 1 GiB memory export (filled first, except for
# the fill row), it runs the row's workload twice with Debian 13's clients:
# once under perf stat (software events: the server's CPU time, context
# switches and page faults, all threads) and once under strace -c -f (the
# server's system calls; strace slows the run, the counts stand), with
# the client's CPU time from the first run beside the server's (on
# 2-vCPU machines the client's CPU decides the default-parallelism rows),
# and the server's migrations between CPUs in the run.
# It prints each per request: nbdcopy rows move 1 GiB in 256 KiB requests
# (4096), fio rows report their own count.
#
#   ROWS="seqread1 randread1" SERVERS="nbdd gonbd" bench/profile.sh
#   TRANSPORT=tcp ROWS=seqread1 bench/profile.sh
#   NBDD_BIN=/tmp/nbdd-experiment ROWS=seqread1 SERVERS=nbdd bench/profile.sh
#   EXPORT=file NBDD_BIN=/tmp/nbdd-old ROWS=seqread1 SERVERS=nbdd bench/profile.sh
#   PIN=cross TRANSPORT=tcp ROWS=seqread1 SERVERS="nbdd kit13" bench/profile.sh
#
# Rows are compare.sh's: fill seqread seqwrite seqread1 seqwrite1 randread1
# randwrite1 randread32 randwrite32. Servers: nbdd, nbddp (prealloc), gonbd,
# kit13 (nbdkit 1.42 memory), kit13m (allocator=malloc). EXPORT=file
# serves nbdd, gonbd and kit13 (nbdkit's file plugin) a 1 GiB file in
# /dev/shm instead, as compare.sh's EXPORT=file does. PIN=same or
# PIN=cross places the server and the workload's client as compare.sh's
# PIN does (a round trip per request costs several times more across
# the two vCPUs of this machine kind than on one: docs/performance.md,
# "TCP serial read: the slow mode"); unset, the kernel places them.
# Run it under flock /tmp/nbdd-bench.lock like every timing run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROWS=${ROWS:-"fill seqread1 seqwrite1 seqwrite randread1 randwrite1"}
SERVERS=${SERVERS:-"nbdd gonbd kit13"}
TRANSPORT=${TRANSPORT:-unix}
EXPORT=${EXPORT:-memory}
case $EXPORT in memory | file) ;; *)
	echo "profile.sh: EXPORT must be memory or file, not $EXPORT" >&2
	exit 2 ;;
esac
PIN=${PIN:-}
case $PIN in "") PINNED=() ;; same) PINNED=(taskset -c 1) ;; cross) PINNED=(taskset -c 0) ;; *)
	echo "profile.sh: PIN must be same or cross, not $PIN" >&2
	exit 2 ;;
esac
FIO_SECONDS=${FIO_SECONDS:-5}
SIZE=$((1 << 30))

bench_init
NBDD_BIN=${NBDD_BIN:-$WORK/nbdd} # the nbdd binary profiled: the tree's unless given
ROOT13=$("$ROOT/test/debian13/make-root.sh")
DEB13=("$ROOT/test/debian13/run" "$ROOT13")
make_source $SIZE

serve() { # serve NAME: start NAME with a fresh export; sets U
	local s=$1 sock="$WORK/$1.sock" listen=unix://$WORK/$1.sock kit=(-U "$WORK/$1.sock") g=(-socket "$WORK/$1.sock")
	local img="$SHM/$1.img" nbddexport=(--memory default=1G) kitexport=(memory 1G) gexport=()
	if [ "$EXPORT" = file ]; then
		rm -f "$img"
		truncate -s $SIZE "$img"
		nbddexport=(--export "default=$img") kitexport=(file "$img") gexport=(-file "$img")
	fi
	U=$(uri "$sock")
	if [ "$TRANSPORT" = tcp ]; then
		U=nbd://127.0.0.1:10910/ listen=tcp://127.0.0.1:10910 kit=(-i 127.0.0.1 -p 10910) g=(-tcp 127.0.0.1:10910)
	fi
	rm -f "$sock"
	case $s in
	nbdd) start_uri "$s" "$U" "$NBDD_BIN" serve --listen "$listen" "${nbddexport[@]}" --log-level warn ;;
	nbddp) start_uri "$s" "$U" "$NBDD_BIN" serve --listen "$listen" --memory default=1G,prealloc --log-level warn ;;
	gonbd) start_uri "$s" "$U" "$WORK/gonbd-server" "${g[@]}" -size $SIZE "${gexport[@]}" ;;
	kit13) start_uri "$s" "$U" "${DEB13[@]}" nbdkit -f "${kit[@]}" "${kitexport[@]}" ;;
	kit13m) start_uri "$s" "$U" "${DEB13[@]}" nbdkit -f "${kit[@]}" memory 1G allocator=malloc ;;
	*) echo "profile.sh: unknown server $s" >&2; exit 2 ;;
	esac
}

workload() { # workload ROW URI: run it once (on PIN's CPU); fio rows leave fio.json
	local c=(${PINNED[@]+"${PINNED[@]}"} "${DEB13[@]}")
	case $1 in
	fill | seqwrite) "${c[@]}" nbdcopy "$SHM/src.img" "$2" ;;
	seqwrite1) "${c[@]}" nbdcopy -C 1 -R 1 "$SHM/src.img" "$2" ;;
	seqread) "${c[@]}" nbdcopy "$2" null: ;;
	seqread1) "${c[@]}" nbdcopy -C 1 -R 1 "$2" null: ;;
	rand*)
		local rw=${1%%[0-9]*} depth=${1##*[a-z]}
		"${c[@]}" fio --name=b --ioengine=nbd --uri="$2" --rw="$rw" --bs=4k --iodepth="$depth" \
			--runtime="$FIO_SECONDS" --time_based --size=1G --output-format=json >"$WORK/fio.json" 2>/dev/null ;;
	esac >/dev/null 2>&1
}

# children_ticks: the CPU (user plus system, in clock ticks) of the
# script's finished children (proc(5) /proc/PID/stat cutime and cstime):
# the client's CPU, read before and after a workload.
children_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }

requests() { # requests ROW: how many requests the last run made
	case $1 in
	rand*) python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(j["read"]["total_ios"]+j["write"]["total_ios"])' "$WORK/fio.json" ;;
	*) echo 4096 ;;
	esac
}

for row in $ROWS; do
	for s in $SERVERS; do
		for pass in perf strace; do
			stop_server "$s"
			serve "$s"
			[ "$row" = fill ] || "${DEB13[@]}" nbdcopy "$SHM/src.img" "$U"
			pid=$(eval "echo \$PID_$s")
			[ -z "$PIN" ] || taskset -a -p -c 1 "$pid" >/dev/null
			quiesce
			if [ $pass = perf ]; then
				perf stat -x, -e task-clock,context-switches,page-faults,cpu-migrations -p "$pid" -o "$WORK/perf.txt" &
				tracer=$!
			else
				strace -c -f -p "$pid" -o "$WORK/strace.txt" &
				tracer=$!
			fi
			sleep 0.5
			t0=$(date +%s.%N)
			c0=$(children_ticks)
			workload "$row" "$U"
			c1=$(children_ticks)
			t1=$(date +%s.%N)
			n=$(requests "$row")
			kill -INT "$tracer"
			wait "$tracer" || true
			if [ $pass = perf ]; then
				awk -F, -v n="$n" -v s="$s" -v r="$row" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
					-v client="$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) / hz}')" '
					$3 == "task-clock" {cpu = $1 / 1000}
					$3 == "context-switches" {cs = $1}
					$3 == "page-faults" {pf = $1}
					$3 == "cpu-migrations" {mig = $1}
					END {printf "%s %s: %.2f s wall, %d requests; server per request: %.1f us CPU, %.2f context switches, %.2f page faults; client per request: %.1f us CPU; server migrations: %d\n", r, s, w, n, cpu * 1e6 / n, cs / n, pf / n, client * 1e6 / n, mig}' "$WORK/perf.txt"
			else
				awk -v n="$n" -v s="$s" -v r="$row" '
					/^-+/ {table = !table; next}
					table && NF >= 5 {calls[$NF] = $4; total += $4}
					END {
						line = sprintf("%s %s: %.2f system calls per request:", r, s, total / n)
						for (c in calls) if (calls[c] / n >= 0.05) line = line sprintf(" %s %.2f", c, calls[c] / n)
						print line
					}' "$WORK/strace.txt"
			fi
		done
		stop_server "$s"
	done
done
