#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The side-by-side benchmark driver (bench/peers/), in miniature: every
# workload of bench_usps and bench_relay with tiny sizes and durations must
# exit 0, print its RESULT line with the right keys and lost=0, and leave
# no file behind in its TMPDIR. A bad --size is refused with exit 2.
#
#   USPS_BUILD_DIR=build/dev bash tests/test_bench.sh
#
# Skips (exit 0) when the binaries are not built. Prints "N passed,
# N failed" last and exits 1 if anything failed.
set -u -o pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${USPS_BUILD_DIR:-$HERE/../build/dev}
PASS=0
FAIL=0

for b in bench_usps bench_relay; do
	if [[ ! -x $BUILD/$b ]]; then
		echo "test_bench: $BUILD/$b is not built: skipped"
		echo "0 passed, 0 failed"
		exit 0
	fi
done

# The driver makes its own directory under TMPDIR: this private one, so
# that anything it leaves behind shows.
D=$(mktemp -d "${TMPDIR:-/tmp}/usps-bench-test.XXXXXX") || exit 1
trap 'rm -rf "$D"' EXIT

ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

# The RESULT line $1 has every key=value in $2 (a regex per value).
has_keys() {
	local line=$1 kv
	shift
	for kv in "$@"; do
		grep -Eq " ${kv%%=*}=${kv#*=}( |$)" <<<"$line" || return 1
	done
}

POS='[1-9][0-9]*(\.[0-9]+)?'

# run NAME BINARY ARGS...: exit 0, a last line "RESULT <id> ...".
run() {
	local name=$1 bin=$2
	shift 2
	rc=0
	TMPDIR=$D timeout -k 5 30 "$BUILD/$bin" "$@" >"$D/out" 2>"$D/err" || rc=$?
	line=$(grep -E '^(RESULT|SKIP) ' "$D/out" | tail -n 1)
	sed 's/^/#   /' "$D/out" "$D/err"
	check "$name exits 0" test "$rc" -eq 0
}

for t in usps relay; do
	b=bench_$t
	run "$t throughput" "$b" throughput --size 64 --seconds 0.3
	check "$t throughput RESULT" has_keys "$line" \
		"events_per_s=$POS" "lost=0" "published=$POS" "size=64"
	check "$t throughput id" grep -q "^RESULT $t-throughput " <<<"$line"

	run "$t fanout" "$b" fanout --subs 3 --size 40 --seconds 0.3 \
		--inflight 2000
	check "$t fanout RESULT" has_keys "$line" "deliveries_per_s=$POS" \
		"events_per_s=$POS" "lost=0" "published=$POS" "subs=3"

	run "$t fanin" "$b" fanin --pubs 2 --size 20 --seconds 0.3 \
		--inflight 100000
	check "$t fanin RESULT" has_keys "$line" "events_per_s=$POS" \
		"lost=0" "published=$POS"

	run "$t rtt" "$b" rtt --count 200 --warmup 20 --size 30
	check "$t rtt RESULT" has_keys "$line" "p50_us=$POS" "p99_us=$POS" \
		"mean_us=$POS" "lost=0" "count=200"

	run "$t rss" "$b" rss --clients 5
	check "$t rss RESULT" has_keys "$line" "server_rss_kb=$POS" \
		"server_rss_idle_kb=$POS" "clients=5"
	check "$t rss grows" awk -v l="$line" 'BEGIN {
		match(l, /server_rss_kb=[0-9]+/); a = substr(l, RSTART + 14, RLENGTH - 14)
		match(l, /server_rss_idle_kb=[0-9]+/); b = substr(l, RSTART + 19, RLENGTH - 19)
		exit !(a + 0 >= b + 0) }'
done

rc=0
TMPDIR=$D timeout 10 "$BUILD/bench_relay" throughput --size 15 >"$D/out" 2>"$D/err" || rc=$?
check "--size 15 is refused with exit 2" test "$rc" -eq 2
check "and says why" grep -q 'at least 16 bytes' "$D/err"
rm -f "$D/out" "$D/err"

left=$(find "$D" -mindepth 1)
check "no file left behind${left:+ ($left)}" test -z "$left"

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
