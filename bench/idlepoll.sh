#!/usr/bin/env bash
# idlepoll.sh: the reader's idle poll (server/idlepoll.go) on many
# connections: this tree's nbdd, served with THIS_FLAGS (none; e.g.
# --no-idle-poll), against the nbdd binaries in BEFORE (one or more earlier builds), each
# serving a 1 GiB memory export on a unix socket in turn, in alternating
# order, RUNS times; medians.
#
#   idle     CONNS connections (200) each read 4 KiB once, then sit idle:
#            the server's CPU (ms) from the first connect to HOLD seconds
#            of idleness, and over the idle seconds alone;
#   trickle  CONNS connections each read 4 KiB every EVERY (20ms) for HOLD
#            seconds (bench/nbdload -mode trickle): server CPU per request
#            (µs), where a reader that polled after every request would
#            spend pollFor more;
#   qd1xN    fio, JOBS (8) connections of 4 KiB random reads at queue
#            depth 1 for FIO_SECONDS: IOPS and server CPU per I/O (µs).
#
#   BEFORE="/tmp/nbdd-main" bench/idlepoll.sh
#   BEFORE="/tmp/nbdd-main /tmp/nbdd-other" RUNS=5 CONNS=400 bench/idlepoll.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BEFORE=${BEFORE:?set BEFORE to the nbdd binaries to compare with}
THIS_FLAGS=${THIS_FLAGS:-}
RUNS=${RUNS:-3} CONNS=${CONNS:-200} HOLD=${HOLD:-5} EVERY=${EVERY:-20ms} JOBS=${JOBS:-8} FIO_SECONDS=${FIO_SECONDS:-3}
bench_init
(cd "$ROOT" && go build -o "$WORK/nbdload" ./bench/nbdload)
TICK_MS=$((1000 / $(getconf CLK_TCK)))
BINS=("$WORK/nbdd" $BEFORE)
SOCK=$WORK/nbdd.sock

# one BIN: one repetition of the three loads against a fresh server BIN;
# prints "idle_total_ms idle_only_ms trickle_us_per_req iops us_per_io".
one() {
	local bin=$1 pid t0 t1 t2 reqs out flags=()
	[ "$bin" = "$WORK/nbdd" ] && read -ra flags <<<"$THIS_FLAGS"
	rm -f "$SOCK"
	start s "$SOCK" "$bin" serve --listen "unix://$SOCK" --memory default=1G --log-level warn "${flags[@]}"
	pid=$PID_s
	t0=$(cpu_ticks "$pid")
	"$WORK/nbdload" -socket "$SOCK" -mode conns -conns "$CONNS" -size 4096 -hold "${HOLD}s" 2>"$WORK/conns.err" >/dev/null &
	local load=$!
	until grep -q idle "$WORK/conns.err" 2>/dev/null; do sleep 0.05; done
	t1=$(cpu_ticks "$pid")
	wait $load
	t2=$(cpu_ticks "$pid")
	out="$(((t2 - t0) * TICK_MS)) $(((t2 - t1) * TICK_MS))"
	t0=$(cpu_ticks "$pid")
	reqs=$("$WORK/nbdload" -socket "$SOCK" -mode trickle -conns "$CONNS" -every "$EVERY" -hold "${HOLD}s" | awk '/requests/ {print $2}')
	t1=$(cpu_ticks "$pid")
	out+=" $(awk -v t=$((t1 - t0)) -v ms=$TICK_MS -v n="$reqs" 'BEGIN {printf "%.2f", t * ms * 1000 / n}')"
	t0=$(cpu_ticks "$pid")
	fio --name=b --ioengine=nbd --uri="$(uri "$SOCK")" --rw=randread --bs=4k --iodepth=1 --numjobs="$JOBS" \
		--runtime="$FIO_SECONDS" --time_based --size=1G --group_reporting --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
	t1=$(cpu_ticks "$pid")
	out+=" $(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; n=j["read"]["total_ios"]; print(round(j["read"]["iops"]), "%.2f" % (int(sys.argv[2]) * int(sys.argv[3]) * 1000 / n))' "$WORK/fio.json" $((t1 - t0)) "$TICK_MS")"
	stop_server s
	echo "$out"
}

declare -A R
for r in $(seq "$RUNS"); do
	order=("${BINS[@]}")
	[ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${BINS[@]}" | tac))
	for b in "${order[@]}"; do
		line=$(one "$b")
		echo "run $r $b: $line" >&2
		R[$b]+="$line;"
	done
done

printf '\n%d connections, %s runs; CPU is the server'"'"'s (clock ticks of %d ms)\n\n' "$CONNS" "$RUNS" "$TICK_MS"
printf '| nbdd | idle: CPU ms, connect to end | of which idle %ss | trickle every %s: CPU µs/request | qd1 x%d IOPS | CPU µs/I/O |\n|---|---|---|---|---|---|\n' "$HOLD" "$EVERY" "$JOBS"
for b in "${BINS[@]}"; do
	line="| $([ "$b" = "$WORK/nbdd" ] && echo "this tree" || echo "$b") |"
	for f in 1 2 3 4 5; do
		line+=" $(echo "${R[$b]}" | tr ';' '\n' | awk -v f=$f 'NF {print $f}' | median) |"
	done
	echo "$line"
done
