#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Run each libFuzzer target of a fuzz build (make fuzz) for SECONDS on a
# scratch copy of its committed corpus, and report executions and coverage.
# A crash fails the run and leaves its input in the scratch directory's
# place, printed. Usage: fuzz.sh BUILD_DIR [SECONDS]
set -uo pipefail

build=$(cd "${1:?usage: fuzz.sh BUILD_DIR [SECONDS]}" && pwd) || exit 2
seconds=${2:-30}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/usps-fuzz-XXXXXX")
keep=0
trap '[[ $keep -eq 1 ]] || rm -rf "$scratch"' EXIT
passed=0 failed=0

for f in "$build"/fuzz_*; do
	[[ -x $f ]] || continue
	name=${f##*/fuzz_}
	mkdir -p "$scratch/$name"
	cp -r "$root/fuzz/corpus/$name/." "$scratch/$name/" 2>/dev/null
	if (cd "$scratch" && "$f" -max_total_time="$seconds" -max_len=65536 \
		-print_final_stats=1 "$scratch/$name" >"$scratch/$name.log" 2>&1); then
		passed=$((passed + 1))
		runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' \
			"$scratch/$name.log" | grep -o '[0-9]*$')
		cov=$(grep -o 'cov: [0-9]*' "$scratch/$name.log" | tail -n 1)
		echo "ok   fuzz_$name: $runs executions in ${seconds} s, $cov edges"
	else
		failed=$((failed + 1))
		keep=1
		echo "FAIL fuzz_$name; crash inputs and log in $scratch:"
		tail -n 30 "$scratch/$name.log"
	fi
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
