#!/usr/bin/env bash
# bench/ksm.sh: compare KSM policies on identical VM-sized images (see docs/ksm.md).
#
# For each policy, maps IMAGES identical images of MB MiB (private anonymous,
# MADV_MERGEABLE, as nbdd's memory exports are), applies the policy, and reports
# the time until 90% of their pages are merged and the CPU seconds ksmd burns in
# the first WINDOW seconds. Needs root and a writable /sys/kernel/mm/ksm. KSM is
# host-wide: the knobs are snapshotted and restored around every run, and runs
# hold /run/nbdd-ksm-test.lock.
#
#   POLICIES="default aggressive advisor throttler throttler-advisor" IMAGES=4 MB=256 WINDOW=300 bench/ksm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

policies=${POLICIES:-"default aggressive advisor throttler throttler-advisor"}
bin=$(mktemp -d)/ksm.test
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -o "$bin" ./ksm/

for p in $policies; do
	NBDD_KSM_REAL=1 NBDD_KSM_BENCH=$p NBDD_KSM_IMAGES=${IMAGES:-4} NBDD_KSM_MB=${MB:-256} \
		NBDD_KSM_WINDOW=${WINDOW:-300} "$bin" -test.run '^TestKSMBench$' -test.v -test.timeout 1h |
		sed -n 's/^.*bench: //p'
done
