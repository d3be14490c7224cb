#!/usr/bin/env bash
# The whole test suite: vet, unit and e2e tests under the race detector,
# then bounded runs of every fuzz target. Used by the README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")"

FUZZTIME=${FUZZTIME:-10s}

go vet ./...
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -race -count=1 -timeout 25m ./... 2>&1 | tee "$out"

# Bounded fuzzing: each target for FUZZTIME (go test -fuzz takes one target
# per run).
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		log=$(mktemp)
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
		echo "fuzz $pkg $target: $(grep -o 'execs: [0-9]*' "$log" | tail -1)"
		rm -f "$log"
	done
done
echo "fuzzing: all targets ran for $FUZZTIME without a crasher"
echo "$(grep -c '^ok' "$out") passed, $(grep -c '^FAIL' "$out") failed"
