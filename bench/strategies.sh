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
#   EXPORT=file EXPORT_DIR=/var/tmp bench/strategies.sh   # ... on disk
#   EXPORT=direct EXPORT_DIR=/var/tmp CASES="c d" bench/strategies.sh
#   DEFAULT_FLAGS=1 CONFIGS=pool CASES=c bench/strategies.sh   # (c) as a user runs it
#
# DEFAULT_FLAGS=1 starts nbdd with nothing but its socket, the export and
# --strategy: every limit (connections, per-host connections, handshake
# timeout, memory budget) at its default, which must serve (c), go-nbd
# issue 6's 384 connections over one unix socket.
#
# pool-simple is pool with --no-structured-replies: go-nbd has no
# structured replies, and a libnbd client (nbdcopy, fio) reads each
# structured READ reply in more pieces than a simple one, so this row
# compares the two servers on the same protocol.
#
# Memory exports answer READs from their own pages and take WRITE payloads
# straight into them (no buffer at all), so on a memory export the table
# shows the server, not the strategy. EXPORT=file puts the exports in
# /dev/shm files and serves go-nbd's FileBackend on the same kind of file:
# there READs of 64 KiB or more go out with sendfile(2) whatever the
# strategy, and WRITEs and small READs go through the strategy's buffers.
# EXPORT=file EXPORT_DIR=/var/tmp puts them on disk: the same, since the
# data filled in stays in the page cache, except for what is not cached
# yet. EXPORT=direct EXPORT_DIR=/var/tmp opens nbdd's files with O_DIRECT,
# which never uses the page cache, so every payload goes through the
# strategy's buffers (go-nbd, which has no O_DIRECT, reads the same file
# through the page cache): the configuration that compares the strategies
# on large READs, for example CASES="c d".
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CONFIGS=${CONFIGS:-"grow resize pool stream grow-unbudgeted pool-simple go-nbd"}
FIO_SECONDS=${FIO_SECONDS:-5}
REPS=${REPS:-5}
FIO_REPS=${FIO_REPS:-3}
SETTLE=${SETTLE:-30}
CONNS=${CONNS:-384}
EXPORT=${EXPORT:-memory}
EXPORT_DIR=${EXPORT_DIR:-/dev/shm} # where EXPORT=file puts the images
CASES=${CASES:-"ab c d"}

bench_init
(cd "$ROOT" && go build -o "$WORK/nbdload" ./bench/nbdload)
make_source $((1 << 30))

# key CONFIG: CONFIG as a shell variable name.
key() { echo "${1//-/_}"; }

# serve CONFIG SIZE: start the server for CONFIG with a SIZE-byte export
# on its own socket ($WORK/CONFIG.sock); its pid is in PID_srv_<key>.
serve() {
	local sock="$WORK/$1.sock" img="$EXPORT_DIR/nbdd-strategies-$1.img" name
	name=srv_$(key "$1")
	rm -f "$sock"
	local exp=(--memory "d=$2")
	if [ "$EXPORT" = file ] || [ "$EXPORT" = direct ]; then
		rm -f "$img"
		truncate -s "$2" "$img"
		exp=(--export "d=$img")
		[ "$EXPORT" = direct ] && exp=(--export "d=$img,direct")
	fi
	# No connection limits, and a handshake timeout long enough for (c):
	# grow-unbudgeted allocating 12 GiB for 384 connections at once can
	# keep the last handshakes waiting past the default 10 s.
	local limits=(--max-connections 0 --max-connections-per-host 0 --handshake-timeout 1m --log-level warn)
	[ -n "${DEFAULT_FLAGS:-}" ] && limits=()
	case $1 in
	go-nbd)
		local file=()
		[ "$EXPORT" != memory ] && file=(-file "$img")
		start "$name" "$sock" "$WORK/gonbd-server" -socket "$sock" -size "$(numfmt --from=iec "$2")" "${file[@]}"
		;;
	pool-simple) start "$name" "$sock" "$WORK/nbdd" serve --listen "unix://$sock" "${exp[@]}" --strategy pool --no-structured-replies "${limits[@]}" ;;
	grow-unbudgeted) start "$name" "$sock" "$WORK/nbdd" serve --listen "unix://$sock" "${exp[@]}" --strategy grow --memory-budget 64TiB "${limits[@]}" ;;
	*) start "$name" "$sock" "$WORK/nbdd" serve --listen "unix://$sock" "${exp[@]}" --strategy "$1" "${limits[@]}" ;;
	esac
}

pid() { local v="PID_srv_$(key "$1")"; echo "${!v}"; }
sock() { echo "$WORK/$1.sock"; }
stop() { local p; p=$(pid "$1"); kill "$p"; wait "$p" 2>/dev/null || true; rm -f "$EXPORT_DIR/nbdd-strategies-$1.img"; }
has() { case " $CASES " in *" $1 "*) return 0 ;; esac; return 1; }

# mbps CMD...: MB/s of one run of CMD moving 1 GiB.
mbps() { awk -v s="$(seconds "$@")" 'BEGIN {printf "%d", 1073741824/s/1e6}'; }

# Cases (a) and (b) run every configuration at once, each on its own
# server, and take turns: repetition r runs each configuration once before
# repetition r+1 starts, so a slow spell of this shared machine hits every
# configuration alike instead of whichever ran during it. Each cell is the
# median of its runs. Results land in AB_<key>_<metric>.
run_ab() {
	local cfg k u
	for cfg in $CONFIGS; do
		serve "$cfg" 1G
		nbdcopy "$SHM/src.img" "$(uri "$(sock "$cfg")")"
	done
	for _ in $(seq "$REPS"); do
		for cfg in $CONFIGS; do
			k=$(key "$cfg") u=$(uri "$(sock "$cfg")")
			eval "S_${k}_rd+=\" $(mbps nbdcopy "$u" null:)\""
			eval "S_${k}_wr+=\" $(mbps nbdcopy "$SHM/src.img" "$u")\""
		done
	done
	for _ in $(seq "$FIO_REPS"); do
		for cfg in $CONFIGS; do
			k=$(key "$cfg") u=$(uri "$(sock "$cfg")")
			eval "S_${k}_rr+=\" $(fio_iops "$u" randread 4k 32 "$FIO_SECONDS")\""
			eval "S_${k}_rw+=\" $(fio_iops "$u" randwrite 4k 32 "$FIO_SECONDS")\""
		done
	done
	for cfg in $CONFIGS; do
		k=$(key "$cfg")
		for m in rd wr rr rw; do
			local v="S_${k}_$m"
			eval "AB_${k}_$m=$(echo "${!v}" | median)"
		done
		eval "AB_${k}_peak=$(peak_rss_mib "$(pid "$cfg")")"
	done
	sleep "$SETTLE"
	for cfg in $CONFIGS; do
		k=$(key "$cfg")
		eval "AB_${k}_after=$(rss_mib "$(pid "$cfg")")"
		stop "$cfg"
	done
}

printf '| config | seq read MB/s | seq write MB/s | randread IOPS | randwrite IOPS | (a+b) peak RSS MiB | (a+b) RSS +%ss | (c) peak RSS | (c) RSS +%ss | (d) MB/s | (d) peak RSS | (d) RSS +%ss |\n' "$SETTLE" "$SETTLE" "$SETTLE"
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
has ab && run_ab
for cfg in $CONFIGS; do
	rd=- wr=- rr=- rw=- abpeak=- abafter=- cpeak=- cafter=- dmb=- dpeak=- dafter=-
	if has ab; then
		k=$(key "$cfg")
		for m in rd wr rr rw peak after; do eval "ab_$m=\$AB_${k}_$m"; done
		rd=$ab_rd wr=$ab_wr rr=$ab_rr rw=$ab_rw abpeak=$ab_peak abafter=$ab_after
	fi

	if has c; then
	serve "$cfg" 64M
	# A fresh log, so the wait below cannot see the last configuration's
	# "idle" before this nbdload has opened (and truncated) the file.
	rm -f "$WORK/nbdload.log"
	"$WORK/nbdload" -socket "$(sock "$cfg")" -mode conns -conns "$CONNS" -size $((32 << 20)) -hold $((SETTLE + 5))s >/dev/null 2>"$WORK/nbdload.log" &
	load=$!
	until grep -q idle "$WORK/nbdload.log" 2>/dev/null || ! kill -0 $load 2>/dev/null; do sleep 0.2; done
	cpeak=$(peak_rss_mib "$(pid "$cfg")")
	sleep "$SETTLE"
	cafter=$(rss_mib "$(pid "$cfg")")
	wait $load || echo "nbdload conns failed: $(cat "$WORK/nbdload.log")" >&2
	stop "$cfg"
	fi

	if has d; then
	serve "$cfg" 1G
	el=$("$WORK/nbdload" -socket "$(sock "$cfg")" -mode spiky -total $((1 << 30)) -size $((32 << 20)) -every 2s | awk '/elapsed/ {print $2}')
	dmb=$(awk -v s="$el" 'BEGIN {printf "%d", 1073741824/s/1e6}')
	dpeak=$(peak_rss_mib "$(pid "$cfg")")
	sleep "$SETTLE"
	dafter=$(rss_mib "$(pid "$cfg")")
	stop "$cfg"
	fi
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$cfg" "$rd" "$wr" "$rr" "$rw" "$abpeak" "$abafter" "$cpeak" "$cafter" "$dmb" "$dpeak" "$dafter"
done
