#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The side-by-side benchmark (make bench): every workload over every
# transport, each run several times, interleaved (workload by workload,
# each repetition runs every transport once) so that a noisy moment on a
# shared machine does not fall on one transport only. Prints every run,
# then writes bench/results/latest.md: per workload and transport the
# median and every run, the ratio to the limit (the raw relay) and usps's
# advantage over each; then the issue's targets, checked against those
# medians.
#
# Transports (bench/peers/; a missing one is reported as skipped):
#   relay   the limit: a raw relay of length-prefixed bytes, no parsing
#   usps    this project
#   zmq     ZeroMQ XPUB/XSUB proxy over ipc://, HWM 0 (lossless)
#   redis   Redis pub/sub over a Unix socket (hiredis)
#   nats    NATS on 127.0.0.1 (cnats)
#   mastra  Mastra's UnixSocketPubSub (Node, @mastra/core)
# Servers (redis-server, nats-server, the relay, the brokers) are started
# and stopped by each benchmark program, in a private temporary directory.
#
# Uses the release build in $USPS_BUILD_DIR if set (as `make bench` does),
# else configures and builds the release preset first.
#
# Environment: USPS_BENCH_RUNS (repetitions, default 3), USPS_BENCH_SECONDS
# (each throughput run, default 3), USPS_BENCH_RTT_COUNT (round trips,
# default 20000), USPS_BENCH_TRIALS (failover trials, default 50),
# USPS_BENCH_CLIENTS (clients for the RSS run, default 100),
# USPS_BENCH_ONLY (run only the "<transport>-<workload>" ids that contain
# it, e.g. "usps-" or "-rtt"), USPS_BENCH_TIMEOUT (seconds per run,
# default 300).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${USPS_BENCH_RUNS:-3}
seconds=${USPS_BENCH_SECONDS:-3}
rtt_count=${USPS_BENCH_RTT_COUNT:-20000}
trials=${USPS_BENCH_TRIALS:-50}
clients=${USPS_BENCH_CLIENTS:-100}
only=${USPS_BENCH_ONLY:-}
run_timeout=${USPS_BENCH_TIMEOUT:-300}
out_md=$here/results/latest.md

if [[ -n ${USPS_BUILD_DIR:-} ]]; then
	build=$USPS_BUILD_DIR
else
	blog=$(mktemp)
	if ! (cd "$root" && cmake --preset release --log-level=WARNING &&
		cmake --build --preset release -j2) >"$blog" 2>&1; then
		cat "$blog" >&2
		rm -f "$blog"
		echo "run.sh: release build failed" >&2
		exit 1
	fi
	rm -f "$blog"
	build=$root/build/release
fi

# ---- transports and workloads --------------------------------------------

transports=(relay usps zmq redis nats mastra)
peers=(zmq redis nats mastra)
declare -A tlabel=(
	[relay]="limit: raw relay"
	[usps]="usps"
	[zmq]="ZeroMQ XPUB/XSUB, ipc"
	[redis]="Redis pub/sub, Unix socket"
	[nats]="NATS, loopback TCP"
	[mastra]="Mastra UnixSocketPubSub (Node)"
)
declare -A tskip=() # transport -> why it cannot run here

for t in "${transports[@]}"; do
	[[ $t == mastra ]] && continue
	[[ -x $build/bench_$t ]] ||
		tskip[$t]="bench_$t not built (its client library was not found)"
done
if ! command -v node >/dev/null; then
	tskip[mastra]="node not found"
elif ! mlog=$(bash "$root/tests/interop/setup.sh" 2>&1); then
	tskip[mastra]="@mastra/core could not be installed: ${mlog//$'\n'/ }"
fi

# The command that runs transport $1, into the array cmd.
cmd_of() {
	if [[ $1 == mastra ]]; then
		cmd=(node "$here/peers/mastra.mjs")
	else
		cmd=("$build/bench_$1")
	fi
}

# id, what, arguments, metrics (the first is the headline), hi|lo (which
# way is better for the headline).
wids=() wlabels=() wargs=() wmetrics=() wbetter=()
workload() {
	wids+=("$1") wlabels+=("$2") wargs+=("$3") wmetrics+=("$4")
	wbetter+=("$5")
}
workload tput16 "1 -> 1, 16 B events, events/s" \
	"throughput --size 16 --seconds $seconds" "events_per_s lost" hi
workload tput100 "1 -> 1, 100 B events, events/s" \
	"throughput --size 100 --seconds $seconds" "events_per_s lost" hi
workload tput4k "1 -> 1, 4 KiB events, events/s" \
	"throughput --size 4096 --seconds $seconds" "events_per_s lost" hi
workload rtt "ping-pong round trip through the broker, 100 B, us" \
	"rtt --count $rtt_count --size 100" "p50_us p99_us lost" lo
workload fanout "1 -> 16 subscribers, 100 B, deliveries/s" \
	"fanout --subs 16 --size 100 --seconds $seconds" \
	"deliveries_per_s lost" hi
workload fanin "4 publishers -> 1, 100 B, events/s" \
	"fanin --pubs 4 --size 100 --seconds $seconds" "events_per_s lost" hi
workload rss "server RSS with $clients clients, kB" \
	"rss --clients $clients" "server_rss_kb server_rss_idle_kb" lo

# ---- running ---------------------------------------------------------------

# The value of key $2 in RESULT line $1, or "?".
value_of() {
	local kv
	for kv in $1; do
		[[ $kv == "$2="* ]] && {
			echo "${kv#*=}"
			return
		}
	done
	echo "?"
}

# The median of the numbers on stdin (mean of the middle two if even).
median() {
	{ grep -E '^-?[0-9.]+$' || true; } | sort -g | awk '{ v[NR] = $1 }
		END {
			if (NR == 0) { print "n/a"; exit }
			if (NR % 2) m = v[(NR + 1) / 2]
			else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
			if (m == int(m)) printf "%d\n", m; else printf "%.1f\n", m
		}'
}

wanted() {
	[[ -z $only || $1 == *"$only"* ]]
}

declare -A vals=()  # "<transport> <workload> <metric>" -> values, run order
declare -A notes=() # "<transport> <workload>" -> failures, skips
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Run $1 (transport) with workload index $2 once; record its RESULT.
run_one() {
	local t=$1 i=$2 w=${wids[$2]} rc=0 line m
	local -a cmd
	cmd_of "$t"
	# shellcheck disable=SC2086 # the arguments are words
	timeout -k 10 "$run_timeout" "${cmd[@]}" ${wargs[$i]} \
		>"$log" 2>&1 </dev/null || rc=$?
	line=$(grep -E '^(RESULT|SKIP) ' "$log" | tail -n 1 || true)
	if [[ $line == SKIP* ]]; then
		echo "   $t: $line"
		notes["$t $w"]="skipped: ${line#SKIP }"
		return 1
	fi
	if [[ $rc -ne 0 || -z $line ]]; then
		echo "   $t: FAILED (exit $rc)"
		sed 's/^/     | /' "$log" | tail -n 15
		notes["$t $w"]="${notes["$t $w"]:-}a run failed (exit $rc); "
		failed=1
		return 0
	fi
	echo "   $t: $line"
	for m in ${wmetrics[$i]}; do
		vals["$t $w $m"]="${vals["$t $w $m"]:-} $(value_of "$line" "$m")"
	done
}

for i in "${!wids[@]}"; do
	w=${wids[$i]}
	echo "== $w: ${wlabels[$i]}"
	declare -A gone=()
	for ((rep = 1; rep <= runs; rep++)); do
		echo "  -- repetition $rep of $runs"
		for t in "${transports[@]}"; do
			wanted "$t-$w" || continue
			[[ -n ${gone[$t]:-} ]] && continue
			if [[ -n ${tskip[$t]:-} ]]; then
				notes["$t $w"]="skipped: ${tskip[$t]}"
				gone[$t]=1
				continue
			fi
			run_one "$t" "$i" || gone[$t]=1
		done
	done
	unset gone
done

# Failover is usps's alone: SIGKILL of the broker, $trials trials in one run.
fo_line=""
if wanted "usps-failover"; then
	echo "== failover: SIGKILL of the broker, $trials trials"
	rc=0
	timeout -k 10 "$run_timeout" "$build/bench_pubsub" failover \
		--trials "$trials" >"$log" 2>&1 </dev/null || rc=$?
	fo_line=$(grep -E '^RESULT ' "$log" | tail -n 1 || true)
	if [[ $rc -ne 0 || -z $fo_line ]]; then
		echo "   FAILED (exit $rc)"
		sed 's/^/     | /' "$log" | tail -n 15
		fo_line=""
		failed=1
	else
		echo "   $fo_line"
	fi
fi

# ---- the report --------------------------------------------------------------

med() { tr ' ' '\n' <<<"${vals["$1 $2 $3"]:-}" | median; }
# $1 / $2 with two decimals, or "n/a".
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) print "n/a"
		else printf "%.2f\n", a / b }'
}
# Is $1 $2 $3 (e.g. "2.1 >= 2")?
holds() {
	awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
		if (a !~ /^[0-9.]+$/) exit 1
		if (op == ">=") exit !(a + 0 >= b + 0)
		exit !(a + 0 <= b + 0) }'
}
# The best peer's median for workload $1 metric $2 (hi or lo in $3):
# prints "value transport", or nothing.
best_peer() {
	local t v best="" who=""
	for t in "${peers[@]}"; do
		v=$(med "$t" "$1" "$2")
		[[ $v == n/a ]] && continue
		if [[ -z $best ]] || { [[ $3 == hi ]] && holds "$v" ">=" "$best"; } ||
			{ [[ $3 == lo ]] && holds "$v" "<=" "$best"; }; then
			best=$v who=$t
		fi
	done
	[[ -n $best ]] && echo "$best $who"
	return 0
}

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "none")
[[ -n $(git -C "$root" status --porcelain --untracked-files=no -- src include \
	bench ':!bench/results' 2>/dev/null) ]] && commit="$commit (modified since)"

targets_rows=()
target() { # what, measured, ok|no
	targets_rows+=("| $1 | $2 | $3 |")
}
verdict() {
	if [[ $1 == n/a ]]; then
		echo "not measured"
	elif holds "$@"; then
		echo yes
	else
		echo "**no**"
	fi
}

for spec in "tput100 events_per_s 2 100 B throughput" \
	"tput4k events_per_s 1.5 4 KiB throughput" \
	"fanout deliveries_per_s 2 fan-out deliveries/s"; do
	read -r w m want what <<<"$spec"
	u=$(med usps "$w" "$m")
	read -r bv bt <<<"$(best_peer "$w" "$m" hi)" || true
	r=$(ratio "$u" "${bv:-}")
	target "$what >= ${want}x the best peer" \
		"usps $u, best peer ${bt:-none} ${bv:-n/a}: ${r}x" \
		"$(verdict "$r" ">=" "$want")"
done
u=$(med usps rtt p50_us)
l=$(med relay rtt p50_us)
r=$(ratio "$u" "$l")
target "RTT p50 <= 1.3x the raw relay's" "usps $u us, relay $l us: ${r}x" \
	"$(verdict "$r" "<=" 1.3)"
if [[ -n $fo_line ]]; then
	fm=$(value_of "$fo_line" median_ms)
	fp=$(value_of "$fo_line" p99_ms)
	target "failover median <= 5 ms" "$fm ms over $trials trials" \
		"$(verdict "$fm" "<=" 5)"
	target "failover p99 <= 20 ms" "$fp ms; lost $(value_of "$fo_line" lost) of $(value_of "$fo_line" published) events" \
		"$(verdict "$fp" "<=" 20)"
fi
u=$(med usps rss server_rss_kb)
target "broker RSS with $clients clients <= 20 MB" "$u kB" \
	"$(verdict "$u" "<=" 20000)"
lost_all=0
for i in "${!wids[@]}"; do
	[[ ${wmetrics[$i]} == *lost* ]] || continue
	for v in ${vals["usps ${wids[$i]} lost"]:-}; do
		[[ $v =~ ^[0-9]+$ ]] && lost_all=$((lost_all + v))
	done
done
target "usps loses nothing (throughput, fan-out, fan-in, rtt)" \
	"$lost_all events lost over every run" "$(verdict "$lost_all" "<=" 0)"

mkdir -p "$(dirname "$out_md")"
{
	echo "# usps benchmarks"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $commit"
	echo "- machine: nproc $(nproc), $(uname -sr)"
	echo "- $runs repetitions of each run, interleaved across transports;" \
		"median, then every run in order"
	echo "- throughput runs: $seconds s each; rtt: $rtt_count round trips;" \
		"failover: $trials trials; rss: $clients clients"
	echo "- ÷ limit: this transport's median over the raw relay's" \
		"(the same metric)."
	echo "- usps ×: how many times better usps is than this row" \
		"(higher rate, or lower latency and memory)."
	echo
	echo "## Targets"
	echo
	echo "| target | measured (medians) | met |"
	echo "| --- | --- | --- |"
	printf '%s\n' "${targets_rows[@]}"
	echo
	echo "## Results"
	for i in "${!wids[@]}"; do
		w=${wids[$i]}
		read -r -a ms <<<"${wmetrics[$i]}"
		echo
		echo "### $w: ${wlabels[$i]}"
		echo
		hdr=""
		for m in "${ms[@]:1}"; do hdr+=" $m |"; done
		echo "| transport | ${ms[0]} | ÷ limit | usps × |$hdr runs (${ms[0]}) | note |"
		echo "| --- | ---: | ---: | ---: |$(printf ' ---: |%.0s' "${ms[@]:1}") --- | --- |"
		for t in "${transports[@]}"; do
			v=$(med "$t" "$w" "${ms[0]}")
			[[ $v == n/a && -z ${notes["$t $w"]:-} ]] && continue
			l=$(med relay "$w" "${ms[0]}")
			u=$(med usps "$w" "${ms[0]}")
			if [[ ${wbetter[$i]} == hi ]]; then adv=$(ratio "$u" "$v"); else adv=$(ratio "$v" "$u"); fi
			rest=""
			for m in "${ms[@]:1}"; do rest+=" $(med "$t" "$w" "$m") |"; done
			runs_list=$(xargs <<<"${vals["$t $w ${ms[0]}"]:-}")
			echo "| ${tlabel[$t]} | $v | $(ratio "$v" "$l") | $adv |$rest ${runs_list// /, } | ${notes["$t $w"]:-} |"
		done
	done
	if [[ -n $fo_line ]]; then
		echo
		echo "### failover: SIGKILL of the usps broker ($trials trials)"
		echo
		echo '```'
		echo "$fo_line"
		echo '```'
	fi
} >"$out_md"

echo
echo "== written to ${out_md#"$root"/}"
sed -n '/^## Targets/,/^## Results/p' "$out_md" | sed '$d'
exit $failed
