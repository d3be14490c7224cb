#!/usr/bin/env bash
# strategies.sh: throughput and memory of each buffer strategy, with the
# go-nbd v0.3.2 server as the baseline, in one run (docs/strategies.md).
#
# Per configuration, on a fresh server each time:
#   (a) nbdcopy sequential read and write of 1 GiB      -> MB/s, median of REPS runs
#   (b) fio 4 KiB randread and randwrite at iodepth 32  -> IOPS, median of FIO_REPS runs
#   (c) 384 connections each read 32 MiB once, then idle (64 MiB export)
#   (d) 1 GiB of 4 KiB I/O with a 32 MiB read every 2 s
# and for (a+b), (c) and (d): peak RSS and RSS 30 s after the load stops.
#
#   bench/strategies.sh              # every configuration
#   CONFIGS="pool stream" bench/strategies.sh
#   EXPORT=file bench/strategies.sh   # every case on a file export in /dev/shm
#
# Memory exports answer READs from their own pages and take WRITE payloads
# straight into them (no buffer at all), so on a memory export the table
# shows the server, not the strategy. EXPORT=file puts the exports in
# /dev/shm files, whose payloads all go through the strategy's buffers
# (sendfile for stream), and serves go-nbd's FileBackend on the same kind
# of file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CONFIGS=${CONFIGS:-"grow resize pool stream grow-unbudgeted go-nbd"}
FIO_SECONDS=${FIO_SECONDS:-5}
REPS=${REPS:-5}
FIO_REPS=${FIO_REPS:-3}
SETTLE=${SETTLE:-30}
CONNS=${CONNS:-384}
EXPORT=${EXPORT:-memory}
CASES=${CASES:-"ab c d"}

bench_init
(cd "$ROOT" && go build -o "$WORK/nbdload" ./bench/nbdload)
head -c $((1 << 30)) /dev/urandom >"$WORK/src.img"

# serve CONFIG SIZE: start the server for CONFIG with a SIZE-byte export.
serve() {
	local sock="$WORK/$1.sock"
	rm -f "$sock"
	local exp=(--memory "d=$2")
	if [ "$EXPORT" = file ]; then
		rm -f /dev/shm/nbdd-strategies.img
		truncate -s "$2" /dev/shm/nbdd-strategies.img
		exp=(--export d=/dev/shm/nbdd-strategies.img)
	fi
	case $1 in
	go-nbd)
		local file=()
		[ "$EXPORT" = file ] && file=(-file /dev/shm/nbdd-strategies.img)
		start srv "$sock" "$WORK/gonbd-server" -socket "$sock" -size "$(numfmt --from=iec "$2")" "${file[@]}"
		;;
	grow-unbudgeted) start srv "$sock" "$WORK/nbdd" serve --listen "unix://$sock" "${exp[@]}" --strategy grow --memory-budget 64TiB --max-connections 0 --max-connections-per-host 0 --log-level warn ;;
	*) start srv "$sock" "$WORK/nbdd" serve --listen "unix://$sock" "${exp[@]}" --strategy "$1" --max-connections 0 --max-connections-per-host 0 --log-level warn ;;
	esac
	SOCK=$sock
}

stop() { kill "$PID_srv"; wait "$PID_srv" 2>/dev/null || true; rm -f /dev/shm/nbdd-strategies.img; }
has() { case " $CASES " in *" $1 "*) return 0 ;; esac; return 1; }

# mbps CMD...: median MB/s of REPS runs of CMD, each moving 1 GiB.
mbps() {
	local all=""
	for _ in $(seq "$REPS"); do
		all="$all $(awk -v s="$(seconds "$@")" 'BEGIN {printf "%d", 1073741824/s/1e6}')"
	done
	echo "$all" | median
}

# iops RW: median IOPS of FIO_REPS fio runs.
iops() {
	local all=""
	for _ in $(seq "$FIO_REPS"); do all="$all $(fio_iops "$u" "$1" 4k 32 "$FIO_SECONDS")"; done
	echo "$all" | median
}

printf '| config | seq read MB/s | seq write MB/s | randread IOPS | randwrite IOPS | (a+b) peak RSS MiB | (a+b) RSS +%ss | (c) peak RSS | (c) RSS +%ss | (d) MB/s | (d) peak RSS | (d) RSS +%ss |\n' "$SETTLE" "$SETTLE" "$SETTLE"
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for cfg in $CONFIGS; do
	rd=- wr=- rr=- rw=- abpeak=- abafter=- cpeak=- cafter=- dmb=- dpeak=- dafter=-
	if has ab; then
	serve "$cfg" 1G
	u=$(uri "$SOCK")
	nbdcopy "$WORK/src.img" "$u"
	rd=$(mbps nbdcopy "$u" null:)
	wr=$(mbps nbdcopy "$WORK/src.img" "$u")
	rr=$(iops randread)
	rw=$(iops randwrite)
	abpeak=$(peak_rss_mib "$PID_srv")
	sleep "$SETTLE"
	abafter=$(rss_mib "$PID_srv")
	stop
	fi

	if has c; then
	serve "$cfg" 64M
	"$WORK/nbdload" -socket "$SOCK" -mode conns -conns "$CONNS" -size $((32 << 20)) -hold $((SETTLE + 5))s >/dev/null 2>"$WORK/nbdload.log" &
	load=$!
	until grep -q idle "$WORK/nbdload.log" 2>/dev/null || ! kill -0 $load 2>/dev/null; do sleep 0.2; done
	cpeak=$(peak_rss_mib "$PID_srv")
	sleep "$SETTLE"
	cafter=$(rss_mib "$PID_srv")
	wait $load || echo "nbdload conns failed: $(cat "$WORK/nbdload.log")" >&2
	stop
	fi

	if has d; then
	serve "$cfg" 1G
	el=$("$WORK/nbdload" -socket "$SOCK" -mode spiky -total $((1 << 30)) -size $((32 << 20)) -every 2s | awk '/elapsed/ {print $2}')
	dmb=$(awk -v s="$el" 'BEGIN {printf "%d", 1073741824/s/1e6}')
	dpeak=$(peak_rss_mib "$PID_srv")
	sleep "$SETTLE"
	dafter=$(rss_mib "$PID_srv")
	stop
	fi
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$cfg" "$rd" "$wr" "$rr" "$rw" "$abpeak" "$abafter" "$cpeak" "$cafter" "$dmb" "$dpeak" "$dafter"
done
