#!/usr/bin/env bash
# ab.sh: this tree's nbdd against another nbdd binary (an earlier build)
# on compare.sh's rows: compare.sh with SERVERS="nbdd nbddb", whose last
# table gives, per row, the median of the paired ratios (this tree / B:
# above 1 is faster, for MB/s and IOPS alike) and their spread. The two
# take turns in every repetition, in alternating order.
#
#   BEFORE=/path/to/old/nbdd bench/ab.sh               # RUNS=3, FIO_SECONDS=5
#   EXPORT=file BEFORE=/path/to/old/nbdd bench/ab.sh   # a file in /dev/shm each
#   UNIX_WORKLOADS=seqread TCP_WORKLOADS= RUNS=9 BEFORE=... bench/ab.sh  # a close call, again
#
# Every other compare.sh variable (RUNS, FIO_SECONDS, STRATEGY, EXPORT,
# TRANSPORTS, CLIENTS, ...) applies.
set -euo pipefail
NBDD_B=${BEFORE:?set BEFORE to the nbdd binary to compare with} SERVERS="nbdd nbddb" \
	exec "$(dirname "$0")/compare.sh"
