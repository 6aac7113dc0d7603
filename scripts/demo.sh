#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# make demo: usps in about ten seconds. On a private socket path it starts
#
#   worker-1   usps sub BUS jobs --group workers   (first in: the broker)
#   worker-2   usps sub BUS jobs --group workers
#   monitor    usps sub BUS jobs                   (sees every event)
#   publisher  usps pub BUS jobs job - --rate 200/s   ({"seq":1..1000})
#
# then SIGKILLs the broker (worker-1) while events flow, and reports the new
# broker, the failover time (from the kill to the first event that the new
# broker routed reaching the monitor, timed by a loop that stamps each of the
# monitor's lines as it arrives) and the events lost (sequence numbers the
# monitor, or the worker group, never saw). Everything runs in a
# mktemp -d directory; every process is recorded by pid and stopped, and the
# directory removed, however the script ends. Exits 0 if the bus survived
# the kill (a new broker, events flowing again), 1 otherwise.
#
# Environment: USPS_BIN (default build/dev/usps), DEMO_EVENTS (1000),
# DEMO_RATE (200 per second).
set -u -o pipefail
export LC_ALL=C # EPOCHREALTIME with a '.', plain sort

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USPS=${USPS_BIN:-$HERE/../build/dev/usps}
N=${DEMO_EVENTS:-1000}
RATE=${DEMO_RATE:-200}
KILL_AT=$((N * 2 / 5)) # kill once the monitor has seen this many

if ((BASH_VERSINFO[0] < 5)); then
	echo "demo: needs bash 5 or later (for EPOCHREALTIME)" >&2
	exit 1
fi
if [[ ! -x $USPS ]]; then
	echo "demo: $USPS is not built (run make build)" >&2
	exit 1
fi

D=$(mktemp -d "${TMPDIR:-/tmp}/usps-demo.XXXXXX") || exit 1
BUS=$D/bus.sock
declare -A NAME=() # pid -> role
declare -A PID=()  # role -> pid
PIDS=()

stop_all() {
	local p deadline=$((SECONDS + 3))

	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.02
		done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	PIDS=()
}
# shellcheck disable=SC2317 # run by the trap
cleanup() {
	stop_all
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -t 1 ]]; then
	B=$'\e[1m' R=$'\e[0m' RED=$'\e[31m'
else
	B='' R='' RED=''
fi

now_us() { local t=$EPOCHREALTIME; echo $((10#${t/./})); }
lines() { local n; n=$(wc -l <"$1" 2>/dev/null) || n=0; echo "$n"; }
fail() { echo "${RED}demo: $*${R}" >&2; exit 1; }

# wait_for FILE REGEX SECONDS: until a line of FILE matches.
wait_for() {
	local deadline=$(($(now_us) + $3 * 1000000))
	until grep -Eq "$2" "$1" 2>/dev/null; do
		(($(now_us) < deadline)) || return 1
		sleep 0.01
	done
}

# start NAME CMD...: in the background, stdout to $OUT (default
# $D/NAME.out), stderr to $D/NAME.err, stdin from $IN (default /dev/null).
start() {
	local name=$1
	shift
	"$@" <"${IN:-/dev/null}" >"${OUT:-$D/$name.out}" 2>"$D/$name.err" &
	PIDS+=("$!")
	NAME[$!]=$name
	PID[$name]=$!
}

# The broker's pid as usps status sees it, or nothing.
broker_pid() {
	timeout 5 "$USPS" status "$BUS" --json 2>/dev/null |
		grep -o '"pid":[0-9]*' | cut -d: -f2
}

echo "${B}usps demo${R}: one bus on the socket $BUS, no daemon."
echo "The first process to open it becomes the broker; the others connect."
echo

start worker-1 "$USPS" sub "$BUS" jobs --group workers
wait_for "$D/worker-1.err" subscribed 10 || fail "worker-1 did not start"
start worker-2 "$USPS" sub "$BUS" jobs --group workers
# The monitor's lines go through a FIFO to a loop that stamps each with the
# time it arrived, for measuring the failover.
mkfifo "$D/monitor.fifo"
while IFS= read -r line; do
	printf '%s %s\n' "$EPOCHREALTIME" "$line"
done <"$D/monitor.fifo" >"$D/monitor.log" &
PIDS+=("$!")
NAME[$!]=stamper
OUT=$D/monitor.fifo start monitor "$USPS" sub "$BUS" jobs
wait_for "$D/worker-2.err" subscribed 10 || fail "worker-2 did not start"
wait_for "$D/monitor.err" subscribed 10 || fail "monitor did not start"
printf '  %-10s pid %-7s %s\n' \
	worker-1 "${PID[worker-1]}" "usps sub BUS jobs --group workers" \
	worker-2 "${PID[worker-2]}" "usps sub BUS jobs --group workers" \
	monitor "${PID[monitor]}" "usps sub BUS jobs"
echo

echo "\$ usps status BUS"
timeout 5 "$USPS" status "$BUS" | sed 's/^/  /'
bpid=$(broker_pid)
[[ $bpid == "${PID[worker-1]}" ]] || fail "expected worker-1 (${PID[worker-1]}) as broker, got '$bpid'"
echo "The broker is ${B}worker-1${R} (pid $bpid): it was first."
echo

seq 1 "$N" | sed 's/.*/{"seq":&}/' >"$D/jobs.jsonl"
IN=$D/jobs.jsonl start publisher "$USPS" pub "$BUS" jobs job - --rate "$RATE/s"
printf '  %-10s pid %-7s %s\n' publisher "${PID[publisher]}" \
	"usps pub BUS jobs job - --rate $RATE/s < jobs.jsonl"
printf '  %-10s     %-7s %s\n' "" "" "(one JSON value per line: {\"seq\":1} .. {\"seq\":$N})"
echo

wait_for "$D/monitor.log" seq 10 || fail "the monitor got no event"
echo "Each subscriber prints every event it gets as one JSON line, e.g.:"
head -n1 "$D/monitor.log" | cut -d' ' -f2- | sed 's/^/  /'
echo

t0=$(now_us)
progress() {
	printf '  %5.1f s   monitor %4d   worker-1 %4d   worker-2 %4d\n' \
		"$((($(now_us) - t0) / 100000))e-1" "$(lines "$D/monitor.log")" \
		"$(lines "$D/worker-1.out")" "$(lines "$D/worker-2.out")"
}
echo "Events seen so far:"
next=$((t0 + 500000))
deadline=$((t0 + 20000000))
until (($(lines "$D/monitor.log") >= KILL_AT)); do
	(($(now_us) < deadline)) || fail "events stopped flowing"
	if (($(now_us) >= next)); then
		progress
		next=$((next + 500000))
	fi
	sleep 0.01
done

# The kill, then usps status until someone else is broker.
# (Disowned first, so that bash does not report it "Killed".)
disown "$bpid"
kill_us=$(now_us)
kill -KILL "$bpid"
printf '%s  %5.1f s   kill -9 %s (worker-1, the broker)%s\n' "$B" \
	"$(((kill_us - t0) / 100000))e-1" "$bpid" "$R"
newpid=""
until [[ -n $newpid && $newpid != "$bpid" ]]; do
	(($(now_us) < kill_us + 5000000)) || fail "no new broker within 5 s"
	newpid=$(broker_pid)
done
seen_ms=$((($(now_us) - kill_us) / 1000))
echo "${B}            new broker: ${NAME[$newpid]:-pid $newpid} (pid $newpid);" \
	"usps status saw it ${seen_ms} ms after the kill${R}"

# Until the publisher is done, then until the monitor has caught up.
next=$(($(now_us) + 500000))
while kill -0 "${PID[publisher]}" 2>/dev/null; do
	(($(now_us) < deadline)) || fail "the publisher did not finish"
	if (($(now_us) >= next)); then
		progress
		next=$((next + 500000))
	fi
	sleep 0.01
done
wait "${PID[publisher]}"
pub_rc=$?
settle=$(($(now_us) + 2000000))
while (($(lines "$D/monitor.log") < N && $(now_us) < settle)); do
	sleep 0.02
done
progress
echo
echo "\$ usps status BUS"
timeout 5 "$USPS" status "$BUS" | sed 's/^/  /'
lastpid=$(broker_pid)
if [[ -n $lastpid && $lastpid != "$newpid" ]]; then
	echo -n "The broker is now ${NAME[$lastpid]:-pid $lastpid}"
	if [[ $newpid == "${PID[publisher]}" ]]; then
		echo ": the publisher handed the role over as it exited."
	else
		echo "."
	fi
fi
echo

# ---- the numbers --------------------------------------------------------

# Failover: from the kill to the first event the monitor received that the
# new broker stamped (createdAt after the kill; ISO strings in one format
# compare as text). The pause: the longest gap between two events the
# monitor received, from the last one before the kill to that first one.
kill_iso=$(date -u -d "@$((kill_us / 1000000))" +%Y-%m-%dT%H:%M:%S)
kill_iso=$kill_iso.$(printf '%03d' $((kill_us / 1000 % 1000)))Z
failover_us=""
pause_us=0
prev=""
while read -r t rest; do
	t=$((10#${t/./}))
	if [[ -n $prev ]] && ((t > kill_us && t - prev > pause_us)); then
		pause_us=$((t - prev))
	fi
	prev=$t
	if ((t > kill_us)) && [[ $rest =~ \"createdAt\":\"([^\"]+)\" &&
		${BASH_REMATCH[1]} > "$kill_iso" ]]; then
		failover_us=$((t - kill_us))
		break
	fi
done <"$D/monitor.log"

seqs() { grep -ho '"seq":[0-9]*' "$@" | cut -d: -f2 | sort -n; }
missing() { comm -23 <(seq 1 "$N" | sort) <(seqs "$@" | sort -u) | sort -n; }
# "3 (seq 5 6 7)" or "0".
describe() {
	local n list
	n=$(grep -c . <<<"$1")
	[[ -z $1 ]] && n=0
	list=$(head -n 10 <<<"$1" | tr '\n' ' ')
	if ((n == 0)); then
		echo 0
	elif ((n > 10)); then
		echo "$n (seq ${list}...)"
	else
		echo "$n (seq ${list% })"
	fi
}
mon_got=$(seqs "$D/monitor.log" | uniq | wc -l)
mon_lost=$(missing "$D/monitor.log")
grp_lost=$(missing "$D/worker-1.out" "$D/worker-2.out")
w1=$(lines "$D/worker-1.out")
w2=$(lines "$D/worker-2.out")
dups=$(seqs "$D/worker-1.out" "$D/worker-2.out" | uniq -d | wc -l)
tenths=$((10000 / RATE))
interval_ms=$((tenths / 10)).$((tenths % 10))

echo "${B}Results${R}"
if [[ -n $failover_us ]]; then
	printf '  failover:    %d.%d ms from the kill to the first event routed by the new broker\n' \
		$((failover_us / 1000)) $((failover_us / 100 % 10))
else
	echo "  failover:    no event routed by the new broker reached the monitor"
fi
printf '               (the monitor'"'"'s stream paused %d.%d ms; events come every %s ms)\n' \
	$((pause_us / 1000)) $((pause_us / 100 % 10)) "$interval_ms"
echo "  monitor:     $mon_got of $N events; lost $(describe "$mon_lost")"
echo "  workers:     worker-1 handled $w1 (until killed), worker-2 $w2;" \
	"lost $(describe "$grp_lost"), handled twice $dups"
if [[ -n $grp_lost ]]; then
	echo "               (lost: routed to worker-1 as it died; delivery is at most once)"
fi
echo "  publisher:   exit status $pub_rc"
echo

# ---- clean up, and say so -------------------------------------------------

stop_all
rm -rf "$D"
trap - EXIT
[[ -e $D ]] && fail "$D is still there"
echo "Stopped every process by pid and removed $D."

[[ -n $failover_us && $pub_rc -eq 0 ]] || exit 1
exit 0
