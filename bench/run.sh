#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Run the benchmarks several times each, print every run and the median of
# each metric, and write the same as a markdown table to
# bench/results/latest.md (with the date, nproc and the git commit).
#
# Uses the release build in $USPS_BUILD_DIR if set (as `make bench` does),
# else configures and builds the release preset first.
#
# Environment: USPS_BENCH_RUNS (runs per benchmark, default 5),
# USPS_BENCH_SECONDS (throughput duration, default 3), USPS_BENCH_SIZE
# (event bytes, default 100), USPS_BENCH_RTT_COUNT (round trips, default
# 20000), USPS_BENCH_ONLY (run only the benchmarks whose id contains it).
#
# Each benchmark is one register line below: an id, a label, the metrics to
# take from its "RESULT ... key=value" line (the first is the headline), and
# a shell function that runs it once. A peer (ZeroMQ, Redis, NATS, Node) is
# one more function and one more register line; a peer whose tools are
# missing may print "SKIP reason" instead of a RESULT line.
#
# The benchmark functions are called through the fns array:
# shellcheck disable=SC2317
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${USPS_BENCH_RUNS:-5}
seconds=${USPS_BENCH_SECONDS:-3}
size=${USPS_BENCH_SIZE:-100}
rtt_count=${USPS_BENCH_RTT_COUNT:-20000}
only=${USPS_BENCH_ONLY:-}
out_md=$here/results/latest.md

# Only the benchmark programs are built: a test that does not compile must
# not stop a benchmark run. A peer adds its target here.
targets=(bench_pubsub)

if [[ -n ${USPS_BUILD_DIR:-} ]]; then
	build=$USPS_BUILD_DIR
else
	blog=$(mktemp)
	if ! (cd "$root" && cmake --preset release --log-level=WARNING &&
		cmake --build --preset release -j2 --target "${targets[@]}") \
		>"$blog" 2>&1; then
		cat "$blog" >&2
		rm -f "$blog"
		echo "run.sh: release build failed" >&2
		exit 1
	fi
	rm -f "$blog"
	build=$root/build/release
fi
for t in "${targets[@]}"; do
	[[ -x $build/$t ]] || {
		echo "run.sh: $build/$t not found (build the release preset)" >&2
		exit 1
	}
done

# ---- the benchmarks ----------------------------------------------------

ids=() labels=() metrics=() fns=()
register() {
	ids+=("$1") labels+=("$2") metrics+=("$3") fns+=("$4")
}

usps_throughput() {
	"$build/bench_pubsub" throughput --size "$size" --seconds "$seconds"
}
usps_rtt() {
	"$build/bench_pubsub" rtt --count "$rtt_count"
}
# The same with every process on one CPU. On a VM a wakeup across vCPUs
# costs far more than one on the same vCPU, and the scheduler places the
# threads differently from run to run; this row shows the library's own
# cost without that lottery.
usps_rtt_1cpu() {
	if ! command -v taskset >/dev/null; then
		echo "SKIP taskset not found"
		return 0
	fi
	taskset -c 0 "$build/bench_pubsub" rtt --count "$rtt_count"
}

register usps-throughput \
	"usps: client -> broker -> client, ${size} B events, ${seconds} s" \
	"events_per_s lost published cpu_ns_per_event" usps_throughput
register usps-rtt \
	"usps: ping-pong round trip through a broker, ${rtt_count} trips" \
	"p50_us p99_us mean_us lost cpu_us_per_trip" usps_rtt
register usps-rtt-1cpu \
	"usps: the same round trip, all processes on CPU 0" \
	"p50_us p99_us mean_us lost cpu_us_per_trip" usps_rtt_1cpu

# ---- running and summing up ----------------------------------------------

# The median of the numbers on stdin (mean of the middle two if even).
median() {
	sort -g | awk '{ v[NR] = $1 }
		END {
			if (NR == 0) { print "n/a"; exit }
			if (NR % 2) m = v[(NR + 1) / 2]
			else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
			if (m == int(m)) printf "%d\n", m; else printf "%.1f\n", m
		}'
}

# The value of key $2 in RESULT line $1.
value_of() {
	local kv
	for kv in $1; do
		[[ $kv == "$2="* ]] && { echo "${kv#*=}"; return; }
	done
	echo "?"
}

declare -A vals=()	# "<id> <metric>" -> space-separated values, in run order
declare -A notes=()	# "<id>" -> failures and skips
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for i in "${!ids[@]}"; do
	id=${ids[$i]}
	[[ -z $only || $id == *"$only"* ]] || continue
	echo "== $id: ${labels[$i]}"
	for ((run = 1; run <= runs; run++)); do
		rc=0
		"${fns[$i]}" >"$log" 2>&1 || rc=$?
		line=$(grep -E '^(RESULT|SKIP) ' "$log" | tail -n 1 || true)
		if [[ $line == SKIP* ]]; then
			echo "   run $run: $line"
			notes[$id]="skipped: ${line#SKIP }"
			break
		fi
		if [[ $rc -ne 0 || -z $line ]]; then
			echo "   run $run: FAILED (exit $rc)"
			sed 's/^/     | /' "$log" | tail -n 20
			notes[$id]="${notes[$id]:-}run $run failed (exit $rc); "
			failed=1
			continue
		fi
		echo "   run $run: $line"
		for m in ${metrics[$i]}; do
			vals["$id $m"]="${vals["$id $m"]:-} $(value_of "$line" "$m")"
		done
	done
done

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "none")
[[ -n $(git -C "$root" status --porcelain --untracked-files=no -- src include 2>/dev/null) ]] &&
	commit="$commit (src/ or include/ modified since)"
date=$(date -u '+%Y-%m-%d %H:%M UTC')

mkdir -p "$(dirname "$out_md")"
{
	echo "# usps benchmarks"
	echo
	echo "- date: $date"
	echo "- commit: $commit"
	echo "- nproc: $(nproc); $(uname -sr)"
	echo "- runs: $runs per benchmark; median, then every run in order"
	echo "- build: ${build#"$root"/}"
	echo "- targets (this milestone): >= 1,000,000 events/s for 100 B events, lost = 0; RTT p50 <= 80 us"
	echo
	echo "| benchmark | metric | median | runs |"
	echo "| --- | --- | ---: | --- |"
	for i in "${!ids[@]}"; do
		id=${ids[$i]}
		[[ -z $only || $id == *"$only"* ]] || continue
		for m in ${metrics[$i]}; do
			v=${vals["$id $m"]:-}
			med=$(tr ' ' '\n' <<<"$v" | grep -E '^[0-9.]+$' | median)
			v=$(xargs <<<"$v")	# trim
			echo "| ${labels[$i]} | $m | $med | ${v// /, } |"
		done
		[[ -n ${notes[$id]:-} ]] && echo "| ${labels[$i]} | note | | ${notes[$id]} |"
	done
} >"$out_md"

echo
echo "== medians ($runs runs each; written to ${out_md#"$root"/})"
sed -n '/^| benchmark/,$p' "$out_md" | column -t -s '|' 2>/dev/null ||
	sed -n '/^| benchmark/,$p' "$out_md"
exit $failed
