#!/usr/bin/env bash
# s3.sh: block devices kept in S3, compared in one run against one local
# S3 server (versitygw, as internal/s3test runs it): nbdd's S3 export,
# nbdkit's S3 plugin and s3backer, each with its best documented settings.
# Prints medians of RUNS runs and nbdd's ratios.
#
#   bench/s3.sh                   # RUNS=3, SIZE=1G, FIO_SECONDS=15, OPEN_SIZE=8G
#   LATENCY_MS=10 bench/s3.sh     # every S3 response 10 ms later (toxiproxy)
#   PEERS="nbdkit256k s3backer" RUNS=1 SIZE=256M OPEN_SIZE=1G bench/s3.sh
#   ROWS=open PEERS="nbdd s3backer" RUNS=5 bench/s3.sh  # only the rows named
#                                 # (the table's row names, below; default all)
#   flock /tmp/nbdd-bench.lock env NBDD_BENCH_LOCKED=1 bench/s3.sh  # the
#                                 # caller holds the lock (several runs in one turn)
#
# Peers (PEERS, in this order by default):
#   nbdd          nbdd serve --s3 default=s3://BUCKET/PREFIX,cache=768M
#                 (skipped, with a message, while nbdd serve has no --s3):
#                 a read cache of about what s3backer holds by the end of
#                 the random reads (its block cache and the page cache of
#                 its FUSE file, which that cache does not bound; the
#                 memory row shows both). NBDD_S3_OPTS replaces ",cache=768M"
#                 (export options), NBDD_S3_FLAGS adds serve flags, NBDD_BIN
#                 names another nbdd binary than the one built from this tree
#   nbdkit256k    nbdkit's S3 plugin, object-size=256K, blocksize filter
#                 maxdata=256K, nbdcopy requests of 256K
#   nbdkit1m      the same with 1M objects and requests
#   s3backer      s3backer 1.5.4 (FUSE): 64K blocks, 256 MiB block cache,
#                 32 write-back threads, -o big_writes; its file served by
#                 nbdkit's file plugin. Its fsync returns before dirty blocks
#                 reach S3 (see docs/s3.md), so its FLUSH is not durable
#   s3backersync  the same with --blockCacheSync (and the write delay 0 it
#                 requires): every write reaches S3
#                 before it returns, so its FLUSH is durable
#
# Rows: nbdcopy sequential write of SIZE with a final FLUSH; nbdcopy
# sequential read on a fresh server process; fio 4 KiB random write at
# iodepth 32 with a FLUSH every 16 writes (fio fsync=16) and its FLUSH
# latency; fio 4 KiB random read at iodepth 32 on a fresh server process
# (cold) and again (warm); the memory the peer holds after them (the RSS
# of its processes and the page cache of a FUSE file); S3 requests and bytes uploaded per GiB written,
# from versitygw's access log, for both writes; seconds from starting the
# server to the first 4 KiB read of an OPEN_SIZE export half written
# (nbdkit's sparse-random plugin, percent=50, copied in once per peer but
# s3backersync, which opens as s3backer does).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
source "$BENCH/lib.sh"

RUNS=${RUNS:-3}
SIZE=${SIZE:-1G}
FIO_SECONDS=${FIO_SECONDS:-15}
OPEN_SIZE=${OPEN_SIZE:-8G}
LATENCY_MS=${LATENCY_MS:-0}
PEERS=${PEERS:-nbdd nbdkit256k nbdkit1m s3backer s3backersync}
ALL_ROWS="seqwrite seqread randwrite flush_p50 flush_p99 randread_cold randread_warm memory seqwrite_req seqwrite_mib randwrite_req randwrite_mib open"
ROWS=${ROWS:-$ALL_ROWS}
TOXIPROXY_VERSION=v2.12.0
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/nbdd-bench
BUCKET=bench

bytes() { numfmt --from=iec "$1"; }

# ---- serve mode: bench/s3.sh __serve PEER PREFIX SIZE SOCKET ----------
# Runs one peer's server in the foreground until SIGTERM. The bench starts
# every server this way, in the background or under s3open.py, so a peer's
# command line is written once. The AWS_* variables and NBDD come from the
# bench's environment.
serve() {
	local peer=$1 prefix=$2 size=$3 sock=$4
	case $peer in
	nbdd)
		# shellcheck disable=SC2086 # NBDD_S3_FLAGS is a list of flags
		exec "$NBDD" serve --listen "unix://$sock" --s3 "default=s3://$BUCKET/$prefix${NBDD_S3_OPTS-,cache=768M}" --log-level warn ${NBDD_S3_FLAGS:-} ;;
	nbdkit256k | nbdkit1m)
		local os=${peer#nbdkit}
		exec nbdkit -f -U "$sock" --filter=blocksize python "$BENCH/s3-nbdkit-plugin.py" \
			endpoint-url="$AWS_ENDPOINT_URL" bucket="$BUCKET" key="$prefix" \
			size="$size" object-size="$os" maxdata="$os" ;;
	s3backer | s3backersync)
		serve_s3backer "$@" ;;
	*)
		echo "s3.sh: unknown peer $peer" >&2
		exit 2 ;;
	esac
}

# serve_s3backer PEER PREFIX SIZE SOCKET: s3backer's FUSE file, served by
# nbdkit's file plugin; on SIGTERM nbdkit stops first, then s3backer
# unmounts, which writes its dirty blocks back.
serve_s3backer() {
	local peer=$1 prefix=$2 size=$3 sock=$4 mnt="$sock.mnt" sync=()
	[ "$peer" = s3backersync ] && sync=(--blockCacheSync --blockCacheWriteDelay=0)
	mkdir -p "$mnt"
	s3backer -f --force --quiet --baseURL="$AWS_ENDPOINT_URL/" \
		--accessId="$AWS_ACCESS_KEY_ID" --accessKey="$AWS_SECRET_ACCESS_KEY" \
		--prefix="$prefix/" --size="$size" --blockSize=64K \
		--blockCacheSize=4096 --blockCacheThreads=32 "${sync[@]}" \
		-o big_writes "$BUCKET" "$mnt" &
	local s3b=$! kit=
	# shellcheck disable=SC2064 # the PIDs are known now, kit's is not
	trap 'stop_s3backer "$kit" '"$s3b"' "$mnt"' TERM
	until mountpoint -q "$mnt"; do
		kill -0 $s3b || exit 1
		sleep 0.01
	done
	nbdkit -f -U "$sock" file "$mnt/file" &
	kit=$!
	wait $kit
}

# stop_s3backer NBDKIT_PID S3BACKER_PID MOUNTPOINT: the SIGTERM path of
# serve_s3backer, also when it comes before nbdkit has started or before
# s3backer has mounted.
stop_s3backer() {
	if [ -n "$1" ]; then kill "$1" && wait "$1" || true; fi
	umount "$3" 2>/dev/null || kill "$2"
	wait "$2" || true
	exit 0
}

if [ "${1:-}" = __serve ]; then
	shift
	serve "$@"
fi

# ---- tools --------------------------------------------------------------

# versitygw: where internal/s3test looks (NBDD_VERSITYGW, PATH, the go
# install directory), else built into $TOOLS at the release s3test pins.
find_versitygw() {
	local v gobin
	v=$(sed -n 's/^const Version = "\(.*\)"$/\1/p' "$ROOT/internal/s3test/s3test.go")
	gobin=$(go env GOBIN)
	gobin=${gobin:-$(go env GOPATH | cut -d: -f1)/bin}
	for p in "${NBDD_VERSITYGW:-}" "$(command -v versitygw || true)" "$gobin/versitygw" "$TOOLS/versitygw-$v/versitygw"; do
		[ -n "$p" ] && [ -x "$p" ] && { echo "$p"; return; }
	done
	GOBIN="$TOOLS/versitygw-$v" go install "github.com/versity/versitygw/cmd/versitygw@$v" >&2
	echo "$TOOLS/versitygw-$v/versitygw"
}

# toxiproxy's server, built once into $TOOLS.
find_toxiproxy() {
	local dir="$TOOLS/toxiproxy-$TOXIPROXY_VERSION"
	[ -x "$dir/server" ] || GOBIN=$dir go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >&2
	echo "$dir/server"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_http() { # wait_http URL: until it answers
	for _ in $(seq 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.02; done
	echo "s3.sh: $1 did not answer" >&2
	return 1
}

# start_s3: versitygw on a free port with an access log, keep-alive as
# every S3 service has it; with LATENCY_MS, a toxiproxy in front that
# delays every response by that much. Exports the AWS environment every
# peer reads.
start_s3() {
	local vgw addr port
	vgw=$(find_versitygw)
	port=$(free_port)
	addr=127.0.0.1:$port
	mkdir -p "$WORK/s3"
	ACCESS_LOG=$WORK/s3-access.log
	env -i PATH="$PATH" HOME="$HOME" "$vgw" --access benchkey --secret benchsecret \
		--port "$addr" --region us-east-1 --keep-alive --quiet --health /health \
		--access-log "$ACCESS_LOG" posix "$WORK/s3" >"$WORK/versitygw.log" 2>&1 &
	PIDS+=($!)
	wait_http "http://$addr/health"
	if [ "$LATENCY_MS" != 0 ]; then
		local toxi api
		toxi=$(find_toxiproxy)
		api=127.0.0.1:$(free_port)
		"$toxi" -host 127.0.0.1 -port "${api#*:}" >"$WORK/toxiproxy.log" 2>&1 &
		PIDS+=($!)
		wait_http "http://$api/version"
		addr=$(curl -fs -X POST "http://$api/proxies" \
			-d "{\"name\":\"s3\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"$addr\",\"enabled\":true}" |
			python3 -c 'import json,sys; print(json.load(sys.stdin)["listen"])')
		curl -fs -o /dev/null -X POST "http://$api/proxies/s3/toxics" \
			-d "{\"name\":\"latency\",\"type\":\"latency\",\"stream\":\"downstream\",\"toxicity\":1,\"attributes\":{\"latency\":$LATENCY_MS,\"jitter\":0}}"
	fi
	export AWS_ENDPOINT_URL=http://$addr AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret
	export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
	export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
	# Nothing of the machine's AWS setup either: the endpoint is plain
	# HTTP, and a CA bundle named here (as some environments do for every
	# tool) costs aws-sdk-go-v2 about 4 ms at start to parse, unused.
	unset AWS_CA_BUNDLE AWS_PROFILE
	/usr/bin/python3 -c 'import boto3,os,sys; boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=sys.argv[1])' "$BUCKET"
}

# ---- peers --------------------------------------------------------------

peer_sock() { echo "$WORK/$1.sock"; }

# peer_create PEER PREFIX SIZE: a new, empty export. Only nbdd has an
# image to create; the others start from an empty prefix.
peer_create() {
	[ "$1" = nbdd ] || return 0
	"$NBDD" image create --size "$3" "s3://$BUCKET/$2" >/dev/null
}

peer_start() { # peer_start PEER PREFIX SIZE
	rm -f "$(peer_sock "$1")"
	start "$1" "$(peer_sock "$1")" bash "$0" __serve "$1" "$2" "$3" "$(peer_sock "$1")"
}

peer_stop() { # peer_stop PEER: SIGTERM, and wait until it has exited
	local pid
	pid=$(eval echo "\$PID_$1")
	kill "$pid" && wait "$pid" || true
}

# settle PEER: wait until the peer has nothing left to upload, so that the
# access log holds all of a phase's requests. Only s3backer writes back
# after its FLUSH has returned.
settle() {
	local stats="$(peer_sock "$1").mnt/stats"
	[ -e "$stats" ] || return 0
	for _ in $(seq 6000); do
		awk '$1 == "block_cache_dirty_ratio" && $2 == 0 {ok=1} END {exit !ok}' "$stats" && return 0
		sleep 0.1
	done
	echo "s3.sh: $1 still has dirty blocks after 600 s" >&2
}

log_lines() { wc -l <"$ACCESS_LOG"; }

# timed CMD...: wall seconds of one run of CMD, started on a quiet page
# cache (lib.sh seconds, but a failed run stops the bench).
timed() {
	local t0 t1
	quiesce
	t0=$(date +%s.%N)
	if ! "$@" >"$WORK/timed.log" 2>&1; then
		echo "s3.sh: failed: $*" >&2
		cat "$WORK/timed.log" >&2
		exit 1
	fi
	t1=$(date +%s.%N)
	echo "$t0 $t1" | awk '{printf "%.4f\n", $2-$1}'
}

# s3_usage FROM BYTES: requests and MiB uploaded per GiB written, for the
# access log lines after line FROM, when BYTES were written.
s3_usage() {
	tail -n +"$(($1 + 1))" "$ACCESS_LOG" | awk -v w="$2" '
		$1 != "log" { n++; if ($8 == "s3_PutObject" || $8 == "s3_UploadPart") b += $14 }
		END { g = w / 2^30; printf "%d %.0f\n", n / g, b / 2^20 / g }'
}

# copy_size PEER: nbdcopy's request size for PEER: the object size for
# nbdkit's S3 plugin, whose documentation asks clients for requests that
# match it; nbdcopy's default (256 KiB) for the others.
copy_size() {
	case $1 in
	nbdkit1m) echo --request-size=1048576 ;;
	*) echo --request-size=262144 ;;
	esac
}

# fio_run PEER RW [ARGS...]: one fio run of FIO_SECONDS; leaves its JSON
# in $WORK/fio.json.
fio_run() {
	local u
	u=$(uri "$(peer_sock "$1")")
	quiesce
	if ! fio --name=b --ioengine=nbd --uri="$u" --rw="$2" --bs=4k --iodepth=32 "${@:3}" \
		--runtime="$FIO_SECONDS" --time_based --size="$SIZE_BYTES" \
		--output-format=json --output="$WORK/fio.json" >"$WORK/fio.log" 2>&1; then
		echo "s3.sh: fio $2 on $1 failed" >&2
		cat "$WORK/fio.log" >&2
		exit 1
	fi
}

# peer_memory PEER: MiB the peer holds: the RSS of its server process and
# of that process's children, and the page cache of s3backer's FUSE file.
peer_memory() {
	local pid kib=0 c
	pid=$(eval echo "\$PID_$1")
	for c in $pid $(pgrep -P "$pid" || true); do
		kib=$((kib + $(awk '/^VmRSS/ {print $2}' "/proc/$c/status")))
	done
	local file="$(peer_sock "$1").mnt/file"
	[ -e "$file" ] && kib=$((kib + $(fincore -b -n -o RES "$file") / 1024))
	echo $((kib / 1024))
}

# fio_get EXPR: a figure from the last fio run (j is the job).
fio_get() { python3 -c "import json; j=json.load(open('$WORK/fio.json'))['jobs'][0]; print($1)"; }

declare -A R
add() { # add ROW PEER VALUE, also on stderr as it comes
	R[$1.$2]+=" $3"
	echo "s3.sh: $1 $2 $3" >&2
}

# measure PEER RUN: every row but the open time, for one run of one peer.
measure() {
	local p=$1 prefix="$1/r$2" u from t
	u=$(uri "$(peer_sock "$p")")
	peer_create "$p" "$prefix" "$SIZE"
	peer_start "$p" "$prefix" "$SIZE"
	from=$(log_lines)
	# shellcheck disable=SC2046 # copy_size is one flag
	t=$(timed nbdcopy --flush $(copy_size "$p") "$SHM/src.img" "$u")
	settle "$p"
	read -r req mib < <(s3_usage "$from" "$SIZE_BYTES")
	add seqwrite "$p" "$(awk -v s="$t" -v n="$SIZE_BYTES" 'BEGIN {printf "%d", n/s/2^20}')"
	add seqwrite_req "$p" "$req"
	add seqwrite_mib "$p" "$mib"

	peer_stop "$p"
	peer_start "$p" "$prefix" "$SIZE"
	# shellcheck disable=SC2046
	t=$(timed nbdcopy $(copy_size "$p") "$u" null:)
	add seqread "$p" "$(awk -v s="$t" -v n="$SIZE_BYTES" 'BEGIN {printf "%d", n/s/2^20}')"

	peer_stop "$p"
	peer_start "$p" "$prefix" "$SIZE"
	fio_run "$p" randread
	add randread_cold "$p" "$(fio_get 'round(j["read"]["iops"])')"
	fio_run "$p" randread
	add randread_warm "$p" "$(fio_get 'round(j["read"]["iops"])')"
	add memory "$p" "$(peer_memory "$p")"

	from=$(log_lines)
	fio_run "$p" randwrite --fsync=16
	add randwrite "$p" "$(fio_get 'round(j["write"]["iops"])')"
	add flush_p50 "$p" "$(fio_get 'round(j["sync"]["lat_ns"]["percentile"]["50.000000"]/1e6, 2)')"
	add flush_p99 "$p" "$(fio_get 'round(j["sync"]["lat_ns"]["percentile"]["99.000000"]/1e6, 2)')"
	local written
	written=$(fio_get 'j["write"]["io_bytes"]')
	settle "$p"
	read -r req mib < <(s3_usage "$from" "$written")
	add randwrite_req "$p" "$req"
	add randwrite_mib "$p" "$mib"
	peer_stop "$p"
	rm -rf "${WORK:?}/s3/$BUCKET/$prefix" # versitygw's posix backend: the objects are files
}

# open_time PEER: write half of an OPEN_SIZE export once, then RUNS times
# the seconds from starting the server to the first 4 KiB read from the
# middle of the export.
open_time() {
	local p=$1 prefix="$1/open" sock
	sock=$(peer_sock "$p")
	peer_create "$p" "$prefix" "$OPEN_SIZE"
	peer_start "$p" "$prefix" "$OPEN_SIZE"
	nbdcopy --destination-is-zero --flush -- \
		[ nbdkit --exit-with-parent sparse-random "$OPEN_SIZE" percent=50 seed=1 ] "$(uri "$sock")"
	settle "$p"
	peer_stop "$p"
	local t
	for _ in $(seq "$RUNS"); do
		rm -f "$sock"
		t=$(/usr/bin/python3 "$BENCH/s3open.py" "$(uri "$sock")" $((OPEN_BYTES / 2)) \
			bash "$0" __serve "$p" "$prefix" "$OPEN_SIZE" "$sock" 2>>"$WORK/$p.log") ||
			{ cat "$WORK/$p.log" >&2; exit 1; }
		add open "$p" "$t"
	done
	rm -rf "${WORK:?}/s3/$BUCKET/$prefix"
}

# ---- main ---------------------------------------------------------------

SIZE_BYTES=$(bytes "$SIZE")
OPEN_BYTES=$(bytes "$OPEN_SIZE")
bench_init
NBDD=${NBDD_BIN:-$WORK/nbdd}
# nbdd's journal and cache directory, gone with the bench's.
NBDD_S3_CACHE_DIR=$WORK/nbdd-s3
export NBDD NBDKIT_S3_PLUGIN NBDD_S3_CACHE_DIR
NBDKIT_S3_PLUGIN=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')/nbdkit-S3-plugin
# (grep reads all of the help: with -q it could exit first, and nbdd's
# SIGPIPE would fail the pipeline under pipefail.)
if [[ " $PEERS " == *" nbdd "* ]] && ! "$NBDD" serve --help | grep -- '--s3' >/dev/null; then
	echo "s3.sh: nbdd serve has no --s3 yet; leaving nbdd out" >&2
	PEERS=$(echo " $PEERS " | sed 's/ nbdd / /; s/^ *//; s/ *$//')
fi
for w in $ROWS; do
	[[ " $ALL_ROWS " == *" $w "* ]] || { echo "s3.sh: ROWS: no row $w (rows: $ALL_ROWS)" >&2; exit 2; }
done
# measure() makes every row but the open time in one pass (the reads
# read what the writes wrote), so any of them selects it.
MEASURE=
for w in $ROWS; do [ "$w" = open ] || MEASURE=1; done
start_s3
[ -z "$MEASURE" ] || make_source "$SIZE_BYTES"

# The machine's benchmark lock, unless the caller holds it already
# (NBDD_BENCH_LOCKED=1: several benchmarks in one turn).
exec 9>/tmp/nbdd-bench.lock
[ -n "${NBDD_BENCH_LOCKED:-}" ] || flock 9
if [ -n "$MEASURE" ]; then
	for run in $(seq "$RUNS"); do
		for p in $PEERS; do measure "$p" "$run"; done
	done
fi
# s3backersync starts as s3backer does (only its writes differ), and
# writing half of its export through synchronous writes takes longest.
if [[ " $ROWS " == *" open "* ]]; then
	for p in $PEERS; do [ "$p" = s3backersync ] || open_time "$p"; done
fi
flock -u 9
declare -A LABEL=(
	[seqwrite]="nbdcopy sequential write + FLUSH, MiB/s"
	[seqread]="nbdcopy sequential read, fresh process, MiB/s"
	[randwrite]="fio 4 KiB randwrite qd32 fsync=16, IOPS"
	[flush_p50]="FLUSH latency p50 in that run, ms (lower is better)"
	[flush_p99]="FLUSH latency p99 in that run, ms (lower is better)"
	[randread_cold]="fio 4 KiB randread qd32, fresh process, IOPS"
	[randread_warm]="fio 4 KiB randread qd32, warm, IOPS"
	[memory]="memory after the random reads: RSS + FUSE page cache, MiB (lower is better)"
	[seqwrite_req]="S3 requests per GiB, sequential write (lower is better)"
	[seqwrite_mib]="MiB uploaded per GiB, sequential write (lower is better)"
	[randwrite_req]="S3 requests per GiB, random write (lower is better)"
	[randwrite_mib]="MiB uploaded per GiB, random write (lower is better)"
	[open]="$OPEN_SIZE export, half written: start to first read, s (lower is better)")

printf '\nS3 exports against versitygw on loopback (%s ms added latency), %s export, median of %s runs\n\n' "$LATENCY_MS" "$SIZE" "$RUNS"
header="| workload |"
sep="|---|"
for p in $PEERS; do header+=" $p |"; sep+="---|"; done
if [[ " $PEERS " == *" nbdd "* ]]; then
	for p in $PEERS; do [ "$p" = nbdd ] || { header+=" nbdd/$p |"; sep+="---|"; }; done
fi
echo "$header"
echo "$sep"
for w in $ROWS; do
	declare -A M=()
	line="| ${LABEL[$w]} |"
	for p in $PEERS; do
		M[$p]=$(echo "${R[$w.$p]:-}" | median || true)
		line+=" ${M[$p]} |"
	done
	if [[ " $PEERS " == *" nbdd "* ]]; then
		for p in $PEERS; do
			[ "$p" = nbdd ] && continue
			line+=" $(awk -v a="${M[nbdd]}" -v b="${M[$p]}" 'BEGIN {if (b == 0) print "-"; else printf "%.2f", a/b}') |"
		done
	fi
	echo "$line"
done
printf '\nraw runs:\n'
for w in $ROWS; do for p in $PEERS; do printf '%s %s:%s\n' "$w" "$p" "${R[$w.$p]:-}"; done; done
