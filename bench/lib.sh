# Shared helpers for the bench scripts: build, start and stop servers on
# unix sockets, time commands, and take medians. Sourced, not run.

bench_init() {
	ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	WORK=$(mktemp -d /tmp/nbdd-bench.XXXXXX)
	# Sources for write benchmarks live in tmpfs: from a disk file nbdcopy
	# reads through to the disk (it drops the pages it read from the
	# cache), so every server's write figure measured the disk instead.
	SHM=$(mktemp -d /dev/shm/nbdd-bench.XXXXXX)
	PIDS=()
	trap bench_cleanup EXIT
	(cd "$ROOT" && go build -o "$WORK/nbdd" ./cmd/nbdd && go build -o "$WORK/gonbd-server" ./bench/gonbd-server)
}

bench_cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$WORK" "$SHM"
}

# make_source BYTES: random data in $SHM/src.img, the source of the write
# benchmarks.
make_source() { head -c "$1" /dev/urandom >"$SHM/src.img"; }

# start NAME SOCKET CMD...: start a server in the background and wait for
# its socket.
start() {
	local name=$1 sock=$2
	shift 2
	start_uri "$name" "$(uri "$sock")" "$@"
}

# start_uri NAME URI CMD...: start a server in the background and wait
# until an NBD client reaches it at URI. Its pid is in PID_NAME (NAME must
# be a shell name).
start_uri() {
	local name=$1 u=$2
	shift 2
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	eval "PID_$name=$!"
	for _ in $(seq 100); do
		nbdinfo --size "$u" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "bench: $name did not start:" >&2
	cat "$WORK/$name.log" >&2
	return 1
}

# stop_server NAME: stop the server start_uri started as NAME.
stop_server() {
	local pid
	eval "pid=\${PID_$1:-}"
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	eval "PID_$1="
}

# cpu_ticks PID: user plus system CPU of process PID and all its threads,
# in clock ticks (proc(5) /proc/PID/stat fields 14 and 15).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# wall_cpu CMD...: run CMD, output discarded, and print its wall seconds
# and the CPU seconds (user + system) it and its children used.
wall_cpu() {
	quiesce
	python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.4f %.4f" % (time.monotonic() - t, r.ru_utime + r.ru_stime))' "$@"
}

uri() { echo "nbd+unix:///?socket=$1"; }

# quiesce writes back every dirty page before a timed run, so that no run
# pays for another's writeback: nbdd makes a file export durable when a
# client disconnects, go-nbd leaves the writeback to the kernel, and
# either would otherwise land in whichever run comes next. Free for
# memory and tmpfs exports.
quiesce() { sync; }

# seconds CMD...: wall seconds of one run, started on a quiet page cache.
seconds() {
	local t0 t1
	quiesce
	t0=$(date +%s.%N)
	"$@" >/dev/null 2>&1
	t1=$(date +%s.%N)
	echo "$t0 $t1" | awk '{printf "%.4f\n", $2-$1}'
}

# fio_iops URI RW BS DEPTH SECONDS: IOPS of one fio run with the nbd engine
# (bench/compare.sh has fio_run, which reports I/Os and fio's CPU too).
fio_iops() {
	quiesce
	fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
		--runtime="$5" --time_based --size=1G --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
	python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["read"]["iops"]+j["write"]["iops"]))' "$WORK/fio.json"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# peak_rss_mib PID: the process's peak RSS (VmHWM) in MiB.
peak_rss_mib() { awk '/VmHWM/ {printf "%d\n", $2/1024}' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ {printf "%d\n", $2/1024}' "/proc/$1/status"; }
