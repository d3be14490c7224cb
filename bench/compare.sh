#!/usr/bin/env bash
# compare.sh: nbdd against two generations of peers on the same machine in
# one run, each server with a 1 GiB export: Debian 13's nbdkit 1.42 and
# qemu-nbd 10 (run in the root test/debian13/make-root.sh makes), Debian
# 12's nbdkit 1.32 and qemu-nbd 7.2, and the go-nbd v0.3.2 server. Every
# server is driven by the same clients, Debian 13's nbdcopy 1.22 and fio
# 3.39 by default. Prints, per row, the median of RUNS runs for every
# server, nbdd against the best peer, and the server CPU per unit of work
# (from /proc/PID/stat of each server, before and after each run) beside
# the client's CPU.
#
#   bench/compare.sh                                    # every row, unix and TCP
#   RUNS=5 FIO_SECONDS=5 bench/compare.sh
#   SERVERS="nbdd kit13 gonbd" TRANSPORTS=unix bench/compare.sh
#   UNIX_WORKLOADS="fill seqwrite" TCP_WORKLOADS= bench/compare.sh
#   CLIENTS=host bench/compare.sh                        # Debian 12's nbdcopy and fio
#   STRATEGY=stream bench/compare.sh
#   EXPORT=file bench/compare.sh                         # every server on its own /dev/shm file
#   NBDD_B=/tmp/nbdd-old SERVERS="nbdd nbddb" bench/compare.sh   # A/B against another build
#   PIN=cross UNIX_WORKLOADS="randread1 randwrite1" TCP_WORKLOADS=randread1 bench/compare.sh
#   NBDD_FLAGS=--no-idle-poll BEFORE=/tmp/nbdd-old bench/ab.sh  # this tree's nbdd with more serve flags
#
# Servers (SERVERS): nbdd (--memory, STRATEGY, and NBDD_FLAGS); nbddp, nbdd with
# --memory default=1G,prealloc (the export held in memory from the start,
# as nbdkit's allocator=malloc); nbddb, the nbdd binary NBDD_B names, served
# as nbdd is (for A/B runs of two builds); kit13 and kit12, nbdkit's
# memory plugin (its sparse allocator, the default); kit13m, nbdkit 1.42's
# memory plugin with allocator=malloc (one malloc'd array, as go-nbd's
# memory backend); qemu13 and qemu12, qemu-nbd -f raw -t -e 16
# --cache=writeback on a 1 GiB file in /dev/shm (qemu-nbd has no memory
# export); gonbd, bench/gonbd-server with go-nbd's memory backend.
# EXPORT=file gives every server its own 1 GiB file in /dev/shm instead
# (nbdkit's file plugin; kit13m is then skipped).
#
# Workloads (UNIX_WORKLOADS, TCP_WORKLOADS): fill, nbdcopy writing 1 GiB
# into a freshly started server (a fresh, sparse export); seqread and
# seqwrite, nbdcopy at its default parallelism (on this 2-vCPU machine 2
# connections, 64 requests of 256 KiB in flight on each) reading the
# export to null: and overwriting it; seqread1 and seqwrite1, the same with
# one connection and one request in flight (nbdcopy -C 1 -R 1); randread1,
# randwrite1, randread32, randwrite32, fio's nbd engine with 4 KiB random
# I/O at queue depth 1 or 32 for FIO_SECONDS. Each transport starts every
# server anew (TCP on 127.0.0.1), and its fill rows restart them RUNS
# times; the servers take turns within each repetition, in reverse order
# every other one. With both nbdd and nbddb, a last table pairs their runs
# (bench/ab.sh).
#
# PIN places the server and the client on the machine's CPUs (taskset):
# PIN=same runs both on CPU 1, PIN=cross the server on CPU 1 and the client
# on CPU 0; unset, the kernel places them. A queue-depth-1 row is a round
# trip per I/O, which on a 2-vCPU VM takes about 8 times longer when server
# and client wake each other across the two vCPUs than on one; which of
# the two the kernel picks depends on how busy the machine is, so those
# rows compare servers only with PIN set (docs/performance.md, "Queue
# depth 1, profiled").
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
FIO_SECONDS=${FIO_SECONDS:-5}
STRATEGY=${STRATEGY:-pool}
EXPORT=${EXPORT:-memory}
SERVERS=${SERVERS:-"nbdd kit13 kit13m qemu13 gonbd kit12 qemu12"}
TRANSPORTS=${TRANSPORTS:-"unix tcp"}
UNIX_WORKLOADS=${UNIX_WORKLOADS-"fill seqread seqwrite seqread1 seqwrite1 randread1 randwrite1 randread32 randwrite32"}
TCP_WORKLOADS=${TCP_WORKLOADS-"fill seqread seqread1 randread1"}
CLIENTS=${CLIENTS:-debian13}
SIZE=$((1 << 30))
if [ "$EXPORT" != memory ]; then SERVERS=${SERVERS//kit13m/} SERVERS=${SERVERS//nbddp/}; fi
PIN=${PIN:-}
case $PIN in "" | same | cross) ;; *)
	echo "compare.sh: PIN must be same or cross, not $PIN" >&2
	exit 2 ;;
esac
case $EXPORT in memory | file) ;; *)
	echo "compare.sh: EXPORT must be memory or file, not $EXPORT" >&2
	exit 2 ;;
esac

bench_init
RUN13="$ROOT/test/debian13/run"
ROOT13=""
if [[ " $SERVERS " =~ \ (kit13|kit13m|qemu13)\  ]] || [ "$CLIENTS" = debian13 ]; then
	ROOT13=$("$ROOT/test/debian13/make-root.sh") || {
		echo "compare.sh: no Debian 13 root; run with SERVERS and CLIENTS=host that need none" >&2
		exit 1
	}
fi
# DEB13 runs a command in the root; it execs, so a server started through
# it keeps the pid start_uri records. CLIENT prefixes the clients, the
# same for every server.
DEB13=("$RUN13" "$ROOT13")
CLIENT=()
[ "$CLIENTS" = debian13 ] && CLIENT=("${DEB13[@]}")
SERVER_CPU=""
case $PIN in
same) SERVER_CPU=1 CLIENT=(taskset -c 1 "${CLIENT[@]}") ;;
cross) SERVER_CPU=1 CLIENT=(taskset -c 0 "${CLIENT[@]}") ;;
esac
make_source $SIZE

declare -A PORT=([nbdd]=10901 [kit13]=10902 [kit13m]=10903 [qemu13]=10904 [gonbd]=10905 [kit12]=10906 [qemu12]=10907
	[nbddp]=10908 [nbddb]=10909)
declare -A URI

# serve NAME TRANSPORT: start server NAME with a fresh export.
serve() {
	local s=$1 tr=$2 sock="$WORK/$1.sock" img="$SHM/$1.img" listen kit qemu u
	rm -f "$sock" "$img"
	truncate -s $SIZE "$img"
	if [ "$tr" = unix ]; then
		u=$(uri "$sock")
		kit=(-U "$sock") qemu=(-k "$sock")
		listen=unix://$sock
	else
		u="nbd://127.0.0.1:${PORT[$s]}/"
		kit=(-i 127.0.0.1 -p "${PORT[$s]}") qemu=(-b 127.0.0.1 -p "${PORT[$s]}")
		listen=tcp://127.0.0.1:${PORT[$s]}
	fi
	URI[$s]=$u
	local kitexport=(memory 1G) nbddexport=(--memory default=1G) gonbd=()
	if [ "$EXPORT" = file ]; then
		kitexport=(file "$img") nbddexport=(--export "default=$img") gonbd=(-file "$img")
	fi
	local gonbdlisten=(-socket "$sock")
	[ "$tr" = tcp ] && gonbdlisten=(-tcp "127.0.0.1:${PORT[$s]}")
	case $s in
	nbdd) start_uri "$s" "$u" "$WORK/nbdd" serve --listen "$listen" "${nbddexport[@]}" --strategy "$STRATEGY" --log-level warn ${NBDD_FLAGS:-} ;;
	nbddb) start_uri "$s" "$u" "${NBDD_B:?NBDD_B names the nbdd binary of server nbddb}" serve --listen "$listen" "${nbddexport[@]}" --strategy "$STRATEGY" --log-level warn ;;
	nbddp) start_uri "$s" "$u" "$WORK/nbdd" serve --listen "$listen" --memory default=1G,prealloc --strategy "$STRATEGY" --log-level warn ;;
	kit12) start_uri "$s" "$u" nbdkit -f "${kit[@]}" "${kitexport[@]}" ;;
	kit13) start_uri "$s" "$u" "${DEB13[@]}" nbdkit -f "${kit[@]}" "${kitexport[@]}" ;;
	kit13m) start_uri "$s" "$u" "${DEB13[@]}" nbdkit -f "${kit[@]}" memory 1G allocator=malloc ;;
	qemu12) start_uri "$s" "$u" qemu-nbd -f raw -t -e 16 --cache=writeback "${qemu[@]}" "$img" ;;
	qemu13) start_uri "$s" "$u" "${DEB13[@]}" qemu-nbd -f raw -t -e 16 --cache=writeback "${qemu[@]}" "$img" ;;
	gonbd) start_uri "$s" "$u" "$WORK/gonbd-server" "${gonbdlisten[@]}" -size $SIZE "${gonbd[@]}" ;;
	*) echo "compare.sh: unknown server $s" >&2; exit 2 ;;
	esac
	[ -z "$SERVER_CPU" ] || taskset -a -p -c "$SERVER_CPU" "$(pid_of "$s")" >/dev/null
}

pid_of() { eval "echo \$PID_$1"; }

# fio_run URI RW DEPTH: "IOPS IOS CLIENT_CPU_SECONDS" of one fio run.
fio_run() {
	quiesce
	"${CLIENT[@]}" fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth="$3" \
		--runtime="$FIO_SECONDS" --time_based --size=1G --output-format=json >"$WORK/fio.json" 2>/dev/null
	python3 -c '
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
secs = j["job_runtime"] / 1000
print(round(j["read"]["iops"] + j["write"]["iops"]), ios, (j["usr_cpu"] + j["sys_cpu"]) / 100 * secs)' "$WORK/fio.json"
}

# measure WORKLOAD SERVER: "VALUE SERVER_CPU_PER_UNIT CLIENT_CPU_PERCENT"
# of one run: MB/s and server CPU seconds per GiB for nbdcopy rows, IOPS
# and server CPU microseconds per I/O for fio rows.
measure() {
	local w=$1 s=$2 u=${URI[$2]} pid t0 t1 out
	pid=$(pid_of "$s")
	t0=$(cpu_ticks "$pid")
	case $w in
	fill | seqwrite) out=$(wall_cpu "${CLIENT[@]}" nbdcopy "$SHM/src.img" "$u") ;;
	seqwrite1) out=$(wall_cpu "${CLIENT[@]}" nbdcopy -C 1 -R 1 "$SHM/src.img" "$u") ;;
	seqread) out=$(wall_cpu "${CLIENT[@]}" nbdcopy "$u" null:) ;;
	seqread1) out=$(wall_cpu "${CLIENT[@]}" nbdcopy -C 1 -R 1 "$u" null:) ;;
	randread1) out=$(fio_run "$u" randread 1) ;;
	randwrite1) out=$(fio_run "$u" randwrite 1) ;;
	randread32) out=$(fio_run "$u" randread 32) ;;
	randwrite32) out=$(fio_run "$u" randwrite 32) ;;
	esac
	t1=$(cpu_ticks "$pid")
	local tck
	tck=$(getconf CLK_TCK)
	case $w in
	rand*) echo "$out" | awk -v d=$((t1 - t0)) -v hz="$tck" -v fs="$FIO_SECONDS" \
		'{printf "%d %.2f %.0f\n", $1, d / hz * 1e6 / $2, $3 / fs * 100}' ;;
	*) echo "$out" | awk -v d=$((t1 - t0)) -v hz="$tck" -v n=$SIZE \
		'{printf "%d %.3f %.0f\n", n / $1 / 1e6, d / hz / (n / 2^30), $2 / $1 * 100}' ;;
	esac
}

# turns I: the servers in the order they take turns in repetition I,
# reversed every other repetition, so that a machine whose speed drifts
# weighs on each alike.
turns() {
	if [ $(($1 % 2)) = 1 ]; then echo "$SERVERS"; else echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '; fi
}

declare -A V C K # value, server CPU per unit, client CPU %: "TRANSPORT.WORKLOAD.SERVER" -> runs
run_rows() { # run_rows TRANSPORT WORKLOAD...
	local tr=$1 w s r m
	shift
	for w in "$@"; do
		for i in $(seq "$RUNS"); do
			for s in $(turns "$i"); do
				if [ "$w" = fill ]; then
					stop_server "$s"
					serve "$s" "$tr"
				fi
				read -r -a m <<<"$(measure "$w" "$s")"
				V[$tr.$w.$s]+=" ${m[0]}" C[$tr.$w.$s]+=" ${m[1]}" K[$tr.$w.$s]+=" ${m[2]}"
			done
		done
	done
}

ROWS=()
for tr in $TRANSPORTS; do
	ws=$UNIX_WORKLOADS
	[ "$tr" = tcp ] && ws=$TCP_WORKLOADS
	[ -n "$ws" ] || continue
	for s in $SERVERS; do stop_server "$s"; serve "$s" "$tr"; done
	# Every export holds the source before any read or overwrite row.
	[[ " $ws " == *" fill "* ]] || for s in $SERVERS; do "${CLIENT[@]}" nbdcopy "$SHM/src.img" "${URI[$s]}"; done
	if [[ " $ws " == *" fill "* ]]; then run_rows "$tr" fill; fi
	rest=${ws//fill/}
	# shellcheck disable=SC2086
	run_rows "$tr" $rest
	for w in $ws; do ROWS+=("$tr.$w"); done
	for s in $SERVERS; do stop_server "$s"; done
done

declare -A NAME=([nbdd]="nbdd" [nbddp]="nbdd prealloc" [nbddb]="nbdd (B)" [kit13]="nbdkit 1.42" [kit13m]="nbdkit 1.42 malloc" [qemu13]="qemu-nbd 10"
	[gonbd]="go-nbd 0.3.2" [kit12]="nbdkit 1.32" [qemu12]="qemu-nbd 7.2")
declare -A LABEL=([fill]="first fill, MB/s" [seqread]="seq read, MB/s" [seqwrite]="seq overwrite, MB/s"
	[seqread1]="serial seq read (-C1 -R1), MB/s" [seqwrite1]="serial seq overwrite (-C1 -R1), MB/s"
	[randread1]="4 KiB randread qd1, IOPS" [randwrite1]="4 KiB randwrite qd1, IOPS"
	[randread32]="4 KiB randread qd32, IOPS" [randwrite32]="4 KiB randwrite qd32, IOPS")
med() { echo "$1" | median; }

printf '\nnbdd (strategy %s) against its peers, 1 GiB %s export, clients: %s, median of %s runs (FIO_SECONDS=%s)\n\n' \
	"$STRATEGY" "$EXPORT" "$CLIENTS" "$RUNS" "$FIO_SECONDS"
OURS=()
for s in $SERVERS; do [[ $s == nbdd* ]] && OURS+=("$s"); done
header="| row |"
sep="|---|"
for s in $SERVERS; do header+=" ${NAME[$s]} |" sep+="---|"; done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a/b; else print "-"}'; }
# best_peer ROW: the peer (not an nbdd) with the highest median on ROW;
# none when only nbdd builds were served (an A/B run).
NAME[none]="-"
best_peer() {
	local s v best=none bestv=0
	for s in $SERVERS; do
		[[ $s == nbdd* ]] && continue
		v=$(med "${V[$1.$s]}")
		if [ "$v" -gt "$bestv" ]; then best=$s bestv=$v; fi
	done
	echo "$best"
}
h2="" s2=""
for o in "${OURS[@]}"; do h2+=" ${NAME[$o]}/best |" s2+="---|"; done
printf '%s best peer |%s\n%s---|%s\n' "$header" "$h2" "$sep" "$s2"
for row in "${ROWS[@]}"; do
	tr=${row%%.*} w=${row#*.}
	line="| $tr ${LABEL[$w]} |"
	for s in $SERVERS; do line+=" $(med "${V[$row.$s]}") |"; done
	best=$(best_peer "$row")
	line+=" ${NAME[$best]:-} |"
	for o in "${OURS[@]}"; do line+=" $(ratio "$(med "${V[$row.$o]}")" "$(med "${V[$row.$best]:-0}")") |"; done
	echo "$line"
done

printf '\nServer CPU per unit of work (seconds per GiB for nbdcopy rows, microseconds per I/O for fio rows), medians, against the best peer'"'"'s (by throughput); client CPU is the %% of one core that nbdcopy or fio used in each nbdd'"'"'s runs\n\n'
h2="" s2=""
for o in "${OURS[@]}"; do h2+=" ${NAME[$o]}/best peer's | client CPU % (${NAME[$o]}) |" s2+="---|---|"; done
printf '%s best peer'"'"'s |%s\n%s---|%s\n' "$header" "$h2" "$sep" "$s2"
for row in "${ROWS[@]}"; do
	tr=${row%%.*} w=${row#*.}
	line="| $tr ${LABEL[$w]%%,*} |"
	for s in $SERVERS; do line+=" $(med "${C[$row.$s]}") |"; done
	best=$(best_peer "$row")
	bc=$(med "${C[$row.$best]:-0}")
	line+=" $bc |"
	for o in "${OURS[@]}"; do line+=" $(ratio "$(med "${C[$row.$o]}")" "$bc") | $(med "${K[$row.$o]}") |"; done
	echo "$line"
done

# An A/B run (nbdd and nbddb both served): the ratio of each repetition's
# pair, nbdd/nbddb (above 1: this tree is faster), and their spread.
if [[ " $SERVERS " == *" nbdd "* && " $SERVERS " == *" nbddb "* ]]; then
	printf '\nnbdd against nbdd (B) = %s, paired by repetition (%s pairs a row)\n\n' "$NBDD_B" "$RUNS"
	printf '| row | nbdd | nbdd (B) | nbdd/B, median of pairs | pair ratios min–max | server CPU per unit, nbdd/B |\n|---|---|---|---|---|---|\n'
	for row in "${ROWS[@]}"; do
		tr=${row%%.*} w=${row#*.}
		ratios=$(paste <(echo "${V[$row.nbdd]}" | tr ' ' '\n' | grep -v '^$') <(echo "${V[$row.nbddb]}" | tr ' ' '\n' | grep -v '^$') |
			awk '$2 > 0 {printf "%.4f\n", $1/$2}')
		printf '| %s %s | %s | %s | %.3f | %.2f–%.2f | %s |\n' "$tr" "${LABEL[$w]}" "$(med "${V[$row.nbdd]}")" "$(med "${V[$row.nbddb]}")" \
			"$(echo "$ratios" | median)" "$(echo "$ratios" | sort -g | head -1)" "$(echo "$ratios" | sort -g | tail -1)" \
			"$(ratio "$(med "${C[$row.nbdd]}")" "$(med "${C[$row.nbddb]}")")"
	done
fi

printf '\nraw runs (value / server CPU per unit / client CPU %%):\n'
for row in "${ROWS[@]}"; do
	for s in $SERVERS; do printf '%s %s:%s /%s /%s\n' "$row" "$s" "${V[$row.$s]}" "${C[$row.$s]}" "${K[$row.$s]}"; done
done
