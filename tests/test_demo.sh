#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# make demo's script, as a test: scripts/demo.sh must finish within a minute
# with exit 0, print its key lines (the broker, the kill, the new broker,
# the failover time, the events lost) and leave no process or file behind.
#
#   USPS_BIN=build/dev/usps bash tests/test_demo.sh
#
# Prints "N passed, N failed" last and exits 1 if anything failed.
set -u -o pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USPS=${USPS_BIN:-$HERE/../build/dev/usps}
SRC=${USPS_SOURCE_DIR:-$HERE/..}
PASS=0
FAIL=0

# The demo makes its own directory under TMPDIR: this private one, so that
# anything it leaves behind shows.
D=$(mktemp -d "${TMPDIR:-/tmp}/usps-demo-test.XXXXXX") || exit 1
trap 'rm -rf "$D"' EXIT

ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}
has() { grep -Eq -- "$1" "$D/out"; }

start=$(date +%s)
TMPDIR=$D USPS_BIN=$USPS timeout -k 5 60 bash "$SRC/scripts/demo.sh" \
	>"$D/out" 2>"$D/err"
rc=$?
secs=$(($(date +%s) - start))
sed 's/^/#   /' "$D/out" "$D/err"

check "the demo exits 0" test "$rc" -eq 0
check "in under a minute ($secs s)" test "$secs" -lt 60
check "it names the first broker" has '^The broker is worker-1 \(pid [0-9]+\)'
check "it shows usps status" has '^  implementation: usps'
check "it shows an event as JSON" has '^  \{"topic":"jobs","group":null,"event":\{"type":"job","data":\{"seq":1\}'
check "it SIGKILLs the broker" has 'kill -9 [0-9]+ \(worker-1, the broker\)'
check "it names the new broker" \
	has 'new broker: (worker-2|monitor|publisher) \(pid [0-9]+\)'
check "it gives the failover time" has '^  failover: +[0-9]+\.[0-9] ms from the kill'
check "it counts the monitor's lost events" \
	has '^  monitor: +[0-9]+ of 1000 events; lost [0-9]+'
check "it counts the workers' events" \
	has '^  workers: +worker-1 handled [0-9]+ \(until killed\), worker-2 [0-9]+'
check "the publisher succeeded" has '^  publisher: +exit status 0$'
check "it says it cleaned up" has '^Stopped every process by pid and removed '
check "nothing on stderr" test ! -s "$D/err"
left=$(find "$D" -mindepth 1 -not -name out -not -name err)
check "no file left behind${left:+ ($left)}" test -z "$left"
alive=""
while read -r p; do
	# Only our own leftovers: a usps process with that pid.
	if [[ $(cat "/proc/$p/comm" 2>/dev/null) == usps ]]; then
		alive="$alive $p"
	fi
done < <(grep -Eo 'pid [0-9]+' "$D/out" | cut -d' ' -f2 | sort -u)
check "no process left behind${alive:+ (alive:$alive)}" test -z "$alive"

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
