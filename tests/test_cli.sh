#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The usps command-line tool, end to end: help and version, usage errors,
# pub/sub round trip, JSON escaping, consumer groups, --count and
# --timeout-ms exits, invalid JSON, stdin mode, --rate, --local-only,
# signals, a closed stdout, status against a live broker, a dead one and
# nothing, and (when the interop peer is installed) a Node broker.
#
#   USPS_BIN=build/dev/usps bash tests/test_cli.sh
#
# Every process it starts is recorded by pid and ended by that pid; every
# wait has a deadline; its private directory is removed on exit. Prints
# "N passed, N failed" last and exits 1 if anything failed.
set -u -o pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USPS=${USPS_BIN:-$HERE/../build/dev/usps}
SRC=${USPS_SOURCE_DIR:-$HERE/..}
if [[ ! -x $USPS ]]; then
	echo "test_cli: $USPS is not built" >&2
	echo "0 passed, 1 failed"
	exit 1
fi

D=$(mktemp -d "${TMPDIR:-/tmp}/usps-cli.XXXXXX") || exit 1
PIDS=()
PASS=0
FAIL=0

cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if ((FAIL > 0)) && [[ -n ${USPS_TEST_KEEP:-} ]]; then
		echo "# kept $D"
	else
		rm -rf "$D"
	fi
}

# SIGKILL recorded pids, without bash reporting them "Killed".
kill9() {
	local p
	for p in "$@"; do disown "$p" 2>/dev/null; done
	kill -KILL "$@"
}
trap cleanup EXIT

ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() { # check NAME CMD...: passes if CMD succeeds
	local name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}
show() { sed 's/^/#   /' "$@" >&2; }

# Foreground commands get a deadline of their own.
u() { timeout 20 "$USPS" "$@"; }

# bg NAME CMD...: start in the background; stdout NAME.out, stderr
# NAME.err, stdin from $IN or /dev/null. The pid goes to PID[NAME].
declare -A PID
bg() {
	local name=$1
	shift
	"$@" <"${IN:-/dev/null}" >"$D/$name.out" 2>"$D/$name.err" &
	PID[$name]=$!
	PIDS+=("$!")
}

# wait_line FILE ERE [SECONDS]: until a line of FILE matches.
wait_line() {
	local i
	for ((i = 0; i < ${3:-10} * 100; i++)); do
		grep -Eq -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.01
	done
	echo "# timed out waiting for /$2/ in $1" >&2
	return 1
}

# wait_lines FILE N [SECONDS]: until FILE has at least N lines.
wait_lines() {
	local i n
	for ((i = 0; i < ${3:-10} * 100; i++)); do
		n=$(wc -l <"$1" 2>/dev/null) || n=0
		((n >= $2)) && return 0
		sleep 0.01
	done
	echo "# timed out waiting for $2 lines in $1 (have $n)" >&2
	return 1
}

# wait_exit NAME [SECONDS]: its exit status in RC, 124 (and killed) if it
# did not exit in time.
RC=
wait_exit() {
	local p=${PID[$1]} i
	for ((i = 0; i < ${2:-10} * 100; i++)); do
		if ! kill -0 "$p" 2>/dev/null; then
			wait "$p"
			RC=$?
			return 0
		fi
		sleep 0.01
	done
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	RC=124
	echo "# $1 (pid $p) did not exit in time" >&2
}

# sub NAME PATH TOPIC [ARGS...]: a subscriber, once it is subscribed.
sub() {
	local name=$1
	shift
	bg "$name" "$USPS" sub "$@"
	wait_line "$D/$name.err" '^usps: subscribed'
}

# Every line of FILE is a JSON object (strictly, with node when present).
json_lines() {
	[[ -s $1 ]] || return 1
	if command -v node >/dev/null; then
		node -e '
			const fs = require("fs");
			for (const l of fs.readFileSync(process.argv[1], "utf8")
					.split("\n").filter(Boolean)) {
				const v = JSON.parse(l);
				if (typeof v !== "object" || !v.event) process.exit(1);
			}' "$1" 2>/dev/null
	else
		! grep -qv '^{"topic":.*}}$' "$1"
	fi
}

B=$D/bus.sock

# ---- help, version, usage errors ----------------------------------------

u --help >"$D/help" 2>&1
check "--help exits 0" test $? -eq 0
check "--help lists the commands and exit codes" \
	grep -q 'Exit status' "$D/help"
u --version >"$D/version"
check "--version exits 0" test $? -eq 0
check "--version prints the version" grep -Eq '^usps [0-9]+\.[0-9]+\.[0-9]+' \
	"$D/version"
for c in sub pub status; do
	u "$c" --help >"$D/help.$c"
	check "usps $c --help exits 0" test $? -eq 0
	check "usps $c --help shows its usage" grep -q "^usage: usps $c" \
		"$D/help.$c"
done
u help pub >/dev/null
check "usps help pub exits 0" test $? -eq 0

u >/dev/null 2>&1
check "no command exits 2" test $? -eq 2
u frobnicate "$B" 2>"$D/err"
check "unknown command exits 2" test $? -eq 2
check "unknown command is named" grep -q "usps: unknown command 'frobnicate'" \
	"$D/err"
u sub "$B" t --bogus 2>"$D/err"
check "unknown option exits 2" test $? -eq 2
check "unknown option message" grep -q "^usps: sub: unknown option '--bogus'" \
	"$D/err"
u sub "$B" 2>/dev/null
check "sub without TOPIC exits 2" test $? -eq 2
u pub "$B" t 2>/dev/null
check "pub without TYPE exits 2" test $? -eq 2
u sub "$B" t --count 0 2>/dev/null
check "sub --count 0 exits 2" test $? -eq 2
u sub "$B" t --timeout-ms=x 2>/dev/null
check "sub --timeout-ms=x exits 2" test $? -eq 2
u pub "$B" t ty --rate 0 2>/dev/null
check "pub --rate 0 exits 2" test $? -eq 2
u status 2>/dev/null
check "status without PATH exits 2" test $? -eq 2
u pub "$B" $'bad\xff' ty 2>"$D/err"
check "a TOPIC that is not UTF-8 exits 2" test $? -eq 2
check "... and says so" grep -q 'not UTF-8' "$D/err"
check "usage errors touched nothing" test ! -e "$B"

long=$D/$(printf 'x%.0s' {1..120})/bus.sock
u sub "$long" t 2>"$D/err"
check "a path too long for sun_path exits 2" test $? -eq 2
check "... and says so as 'usps: PATH: reason'" \
	grep -q "^usps: $long: File name too long" "$D/err"
touch "$D/file"
u pub "$D/file/bus.sock" t ty 2>"$D/err"
check "an unusable directory exits 1" test $? -eq 1
check "... with 'usps: PATH: reason'" \
	grep -q "^usps: $D/file/bus.sock: Not a directory" "$D/err"

# ---- status against nothing --------------------------------------------

u status "$B" >"$D/st"
check "status with nothing at PATH exits 1" test $? -eq 1
check "... and says no broker" grep -q 'none at' "$D/st"
u status "$B" --json >"$D/st"
check "status --json with nothing exits 1" test $? -eq 1
check "... and says alive:false" grep -q '"alive":false' "$D/st"

# ---- round trip and the event's JSON -------------------------------------

sub s1 "$B" greet --count 1 --timeout-ms 10000
check "the first sub is broker" grep -q 'as broker' "$D/s1.err"
u pub "$B" greet hello '{"msg":"hi","n":[1,2.5,null,true]}' --run-id run-1
check "pub exits 0" test $? -eq 0
wait_exit s1
check "sub --count 1 exits 0 after one event" test "$RC" -eq 0
check "one line printed" test "$(wc -l <"$D/s1.out")" -eq 1
check "the line is JSON" json_lines "$D/s1.out"
line=$(cat "$D/s1.out")
check "topic and group" grep -q '^{"topic":"greet","group":null,"event":{' \
	<<<"$line"
check "type, runId and data verbatim" grep -qF \
	'"type":"hello","runId":"run-1","data":{"msg":"hi","n":[1,2.5,null,true]}' \
	<<<"$line"
check "id is a UUID" grep -Eq \
	'"id":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"' \
	<<<"$line"
check "createdAt is an ISO-8601 string with ms" grep -Eq \
	'"createdAt":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"' \
	<<<"$line"
check "deliveryAttempt is 1" grep -q '"deliveryAttempt":1}}$' <<<"$line"
check "the broker left no socket behind" test ! -e "$B"

# Names and data that need escaping; no runId means no runId key.
sub s2 "$B" 'we"ird\topic' --count 1 --timeout-ms 10000
u pub "$B" 'we"ird\topic' "$(printf 'ty\tpe')" '"line1\nline2 \u00e9 \"q\""'
wait_exit s2
check "escaped names: exit 0" test "$RC" -eq 0
check "escaped names: valid JSON" json_lines "$D/s2.out"
check "topic escaped" grep -qF '"topic":"we\"ird\\topic"' "$D/s2.out"
check "type escaped" grep -qF '"type":"ty\tpe"' "$D/s2.out"
check "no runId key without --run-id" bash -c "! grep -q runId '$D/s2.out'"
check "string data verbatim" grep -qF '"data":"line1\nline2 \u00e9 \"q\""' \
	"$D/s2.out"

# ---- consumer groups --------------------------------------------------------

sub w1 "$B" jobs --group workers
sub w2 "$B" jobs --group workers
seq 1 10 | sed 's/.*/{"seq":&}/' | u pub "$B" jobs job -
check "pub of 10 from stdin exits 0" test $? -eq 0
for ((i = 0; i < 500; i++)); do
	(($(cat "$D/w1.out" "$D/w2.out" | wc -l) >= 10)) && break
	sleep 0.01
done
sleep 0.2 # a duplicate would show up by now
kill -TERM "${PID[w1]}" "${PID[w2]}"
wait_exit w1
check "worker-1 exits 143 on SIGTERM" test "$RC" -eq 143
wait_exit w2
check "worker-2 exits 143 on SIGTERM" test "$RC" -eq 143
got=$(cat "$D/w1.out" "$D/w2.out" | grep -o '"seq":[0-9]*' | cut -d: -f2 |
	sort -n | tr '\n' ' ')
check "each of 10 group events reached exactly one worker" \
	test "$got" = "1 2 3 4 5 6 7 8 9 10 "
check "both workers got some" test -s "$D/w1.out" -a -s "$D/w2.out"
check "group deliveries say their group" \
	bash -c "! grep -qv '\"group\":\"workers\"' '$D/w1.out' '$D/w2.out'"
check "the broker released the path on SIGTERM" test ! -e "$B"

# ---- --count and --timeout-ms ---------------------------------------------

sub c "$B" tick --count 2 --timeout-ms 10000
u pub "$B" tick t '1' --count 3
wait_exit c
check "--count 2 with 3 published exits 0" test "$RC" -eq 0
check "... after exactly 2 lines" test "$(wc -l <"$D/c.out")" -eq 2

sub tmo "$B" tick --count 5 --timeout-ms 600
u pub "$B" tick t '1' --count 2
wait_exit tmo
check "--timeout-ms with 2 of 5 events exits 3" test "$RC" -eq 3
check "... after printing the 2" test "$(wc -l <"$D/tmo.out")" -eq 2
check "... and says it timed out" grep -q 'timed out after 600 ms with 2 of 5' \
	"$D/tmo.err"

sub tmo0 "$B" tick --timeout-ms 300
wait_exit tmo0
check "--timeout-ms without --count exits 0" test "$RC" -eq 0

# ---- invalid JSON -----------------------------------------------------------

sub inv "$B" data --count 1 --timeout-ms 10000
u pub "$B" data bad '{"unterminated":' 2>"$D/err"
check "invalid DATA exits 2" test $? -eq 2
check "... with a message" grep -q '^usps: DATA: not one valid JSON value' \
	"$D/err"
u pub "$B" data bad '{"a":1} {"b":2}' 2>/dev/null
check "two JSON values as DATA exit 2" test $? -eq 2
u pub "$B" data good '{"valid":true}'
check "a valid pub after them exits 0" test $? -eq 0
wait_exit inv
check "the subscriber exits 0" test "$RC" -eq 0
check "... having seen only the valid event (nothing invalid published)" \
	grep -q '"type":"good","data":{"valid":true}' "$D/inv.out"

# ---- stdin mode ---------------------------------------------------------------

sub in1 "$B" lines --count 3 --timeout-ms 10000
printf '{"n":1}\n\n  \n[2]\r\n"three"\n' | u pub "$B" lines l -
check "pub - exits 0" test $? -eq 0
wait_exit in1
check "each stdin line is one event, blank lines skipped" test "$RC" -eq 0
check "... in order, verbatim" test "$(grep -o '"data":[^,]*' "$D/in1.out" |
	tr '\n' ' ')" = '"data":{"n":1} "data":[2] "data":"three" '

sub in2 "$B" lines --timeout-ms 1500
printf '1\n2\nnot json\n4\n' | u pub "$B" lines l - 2>"$D/err"
check "an invalid stdin line exits 2" test $? -eq 2
check "... naming the line" grep -q '^usps: stdin:3: not one valid JSON' \
	"$D/err"
wait_exit in2
check "... after publishing the lines before it, not after" \
	test "$(grep -o '"data":[^,]*' "$D/in2.out" | tr '\n' ' ')" = \
	'"data":1 "data":2 '

sub in3 "$B" lines --count 2 --timeout-ms 10000
seq 1 100 | u pub "$B" lines l - --count 2
check "pub - --count 2 exits 0" test $? -eq 0
wait_exit in3
check "... having published 2 lines" test "$RC" -eq 0

# ---- --rate and --local-only ----------------------------------------------------

sub r "$B" rate --count 5 --timeout-ms 10000
t0=$(date +%s%N)
u pub "$B" rate r '{}' --count 5 --rate 20/s
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
check "pub --rate exits 0" test $rc -eq 0
check "5 events at 20/s take about 200 ms (took $ms)" test "$ms" -ge 190
wait_exit r
check "... and all 5 arrive" test "$RC" -eq 0

sub lo "$B" local --count 1 --timeout-ms 10000
u pub "$B" local only '"local"' --local-only
check "pub --local-only exits 0" test $? -eq 0
u pub "$B" local remote '"remote"'
wait_exit lo
check "a --local-only event does not leave the process" \
	grep -q '"type":"remote"' "$D/lo.out"

# ---- signals and a closed stdout ------------------------------------------------

sub sig "$B" quiet
kill -INT "${PID[sig]}"
wait_exit sig
check "sub exits 130 on SIGINT" test "$RC" -eq 130

bg headpipe bash -c "\"$USPS\" sub '$B' h | head -n 1; echo \"\${PIPESTATUS[0]}\" >'$D/head.rc'"
wait_line "$D/headpipe.err" '^usps: subscribed'
# Paced, so that some writes come after head has exited.
u pub "$B" h a '1' --count 30 --rate 100/s
wait_exit headpipe
check "sub | head -n 1 gets one line" test "$(wc -l <"$D/headpipe.out")" -eq 1
check "... and sub exits 0 once its stdout is closed" \
	test "$(cat "$D/head.rc" 2>/dev/null)" = 0

# ---- status against a live C broker, and a dead one --------------------------------

sub brk "$B" idle
sub cl1 "$B" idle
sub cl2 "$B" other --group g
u status "$B" >"$D/st"
check "status with a live broker exits 0" test $? -eq 0
check "... names its pid" grep -q "^pid: *${PID[brk]}\$" "$D/st"
check "... and uid" grep -q "^uid: *$(id -u)" "$D/st"
check "... its command" grep -q '^command: *usps$' "$D/st"
check "... as usps" grep -q '^implementation: *usps' "$D/st"
check "... with its 2 clients" grep -q '^clients: *2$' "$D/st"
check "... and how long" grep -q '^broker since: *[0-9]' "$D/st"
u status "$B" --json >"$D/st"
check "status --json exits 0" test $? -eq 0
check "status --json fields" grep -Eq \
	"^\{\"path\":\"$B\",\"alive\":true,\"pid\":${PID[brk]},\"uid\":$(id -u),\"command\":\"usps\",\"usps\":true,\"clients\":2,\"brokerSince\":\"[^\"]+\",\"processStartedAt\":\"[^\"]+\"\}\$" \
	"$D/st"
if command -v node >/dev/null; then
	check "status --json is JSON" node -e \
		'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' \
		"$D/st"
fi

# SIGKILL the broker: a survivor takes over and status follows.
kill9 "${PID[brk]}"
newpid=""
for ((i = 0; i < 500; i++)); do
	newpid=$(u status "$B" --json 2>/dev/null | grep -o '"pid":[0-9]*' |
		cut -d: -f2)
	[[ -n $newpid && $newpid != "${PID[brk]}" ]] && break
	sleep 0.01
done
check "after SIGKILL of the broker, status shows a survivor ($newpid)" \
	test "$newpid" = "${PID[cl1]}" -o "$newpid" = "${PID[cl2]}"
# cl1 may still be resubscribing to the new broker: publish until it sees one.
for ((i = 0; i < 10; i++)); do
	u pub "$B" idle after '"failover"'
	wait_line "$D/cl1.out" failover 1 2>/dev/null && break
done
check "events flow after the failover" grep -q failover "$D/cl1.out"

# Kill everyone: a socket file is left that nobody listens on.
kill9 "${PID[cl1]}" "${PID[cl2]}"
for ((i = 0; i < 500; i++)); do
	kill -0 "${PID[cl1]}" 2>/dev/null || kill -0 "${PID[cl2]}" 2>/dev/null ||
		break
	sleep 0.01
done
check "a SIGKILLed broker leaves its socket file" test -S "$B"
u status "$B" >"$D/st"
check "status on a dead broker's socket exits 1" test $? -eq 1
check "... and says nobody listens" grep -q 'nobody listens' "$D/st"
sub revive "$B" t --timeout-ms 100
wait_exit revive
check "a new sub takes over the dead socket" test "$RC" -eq 0
check "... as broker" grep -q 'as broker' "$D/revive.err"

# ---- a Node broker (Mastra's UnixSocketPubSub), when installed -------------------

if command -v node >/dev/null &&
	[[ -d $SRC/tests/interop/node_modules/@mastra/core ]]; then
	NB=$D/node.sock
	mkfifo "$D/node.in"
	IN=$D/node.in bg node node "$SRC/tests/interop/peer.mjs" "$NB"
	exec {nfd}>"$D/node.in"
	echo start >&"$nfd"
	if wait_line "$D/node.out" 'started isBroker=true' 30; then
		sub ns "$NB" fromc --count 2 --timeout-ms 10000
		u status "$NB" >"$D/st"
		check "status on a Node broker exits 0" test $? -eq 0
		check "... names its pid" grep -q "^pid: *${PID[node]}\$" "$D/st"
		check "... says it is not usps" \
			grep -q '^implementation: *not usps' "$D/st"
		check "... counts its client" grep -q '^clients: *1$' "$D/st"
		u pub "$NB" fromc c '{"via":"node broker"}' --run-id r
		echo 'pub fromc n run-n {"from":"node"}' >&"$nfd"
		wait_exit ns
		check "sub through a Node broker gets C and Node events" \
			test "$RC" -eq 0
		check "... C's" grep -q '"data":{"via":"node broker"}' "$D/ns.out"
		check "... Node's" grep -q '"runId":"run-n","data":{"from":"node"}' \
			"$D/ns.out"
	else
		bad "the Node peer did not start"
		show "$D/node.out" "$D/node.err"
	fi
	echo close >&"$nfd"
	exec {nfd}>&-
	wait_exit node 10
else
	echo "skip - Node broker (no node or tests/interop not set up)"
fi

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
