#!/usr/bin/env bash
# Node-to-Node smoke test of peer.mjs against the real @mastra/core package.
#
#   tests/interop/smoke.sh
#
# Part 1: two peers on one socket: subscribe / publish / codec round trip /
#         status / SIGKILL of the broker and failover to the survivor.
# Part 2: a raw fake broker records the exact bytes a Node client sends and
#         compares them with spec §2.2.
# Every wait has a timeout; every process is ended by its pid; the temp dir
# is removed on exit. Prints "N passed, N failed" at the end.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/setup.sh" || exit 1

D=$(mktemp -d "${TMPDIR:-/tmp}/usps-smoke.XXXXXX")
PIDS=()
PASS=0
FAIL=0

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT

ok()   { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }

declare -A FD PID USED

# start_peer NAME [peer options...]
start_peer() {
  local name=$1; shift
  mkfifo "$D/$name.in"
  node "$HERE/peer.mjs" "${SOCK:-$D/bus.sock}" "$@" <"$D/$name.in" >"$D/$name.out" 2>"$D/$name.err" &
  PID[$name]=$!
  PIDS+=("$!")
  local fd
  exec {fd}>"$D/$name.in"
  FD[$name]=$fd
  USED[$name]=""
}

send() { echo "$2" >&"${FD[$1]}"; }

# expect NAME ERE [TIMEOUT_S]: waits for the first line of NAME's output that
# matches ERE and was not matched before (answers and event lines interleave,
# so lines are consumed individually rather than by a cursor). Sets $LINE.
expect() {
  local name=$1 re=$2 t=${3:-5} deadline n
  deadline=$(($(date +%s%N) + t * 1000000000))
  while :; do
    while IFS=: read -r n _; do
      case " ${USED[$name]} " in *" $n "*) continue ;; esac
      USED[$name]="${USED[$name]} $n"
      LINE=$(sed -n "${n}p" "$D/$name.out")
      return 0
    done < <(grep -nE -- "$re" "$D/$name.out")
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      LINE=""
      echo "  (timeout waiting on $name for /$re/; its output:)" >&2
      sed 's/^/    | /' "$D/$name.out" "$D/$name.err" >&2
      return 1
    fi
    sleep 0.02
  done
}

check() { # check DESCRIPTION NAME ERE [TIMEOUT]
  if expect "$2" "$3" "${4:-5}"; then ok "$1"; else bad "$1"; fi
}

# ---------------------------------------------------------------- part 1
start_peer A --ack-timeout-ms 1000
check "A ready" A '^ready pid=[0-9]+$'
send A start
check "A starts as broker" A '^started isBroker=true$'

start_peer B --ack-timeout-ms 1000
check "B ready" B '^ready pid=[0-9]+$'
send B start
check "B starts as client" B '^started isBroker=false$'

send B "sub s1 demo"
check "B subscribes" B '^subscribed s1 [0-9]+$'

send A status
check "A: one broker, 1 client" A '^status isBroker=true clients=1$'
send B status
check "B: status is client" B '^status isBroker=false clients=0$'

send A 'pub demo hello run-1 {"msg":"hi","n":[1,2,null]}'
check "A publish resolves" A '^published$'
check "B receives A's event" B '^event s1 \{"topic":"demo","type":"hello","runId":"run-1","id":"[0-9a-f-]{36}","createdAtIsDate":true,"createdAt":"[0-9T:.-]+Z","deliveryAttempt":1,"data":\{"msg":"hi","n":\[1,2,null\]\}\}$'

send A "pubcodec demo codec run-2 nested"
check "A codec publish" A '^published$'
nested='"data":{"when":{"$date":"2024-06-15T12:34:56.789Z"},"inner":{"err":{"$error":{"name":"MyError","message":"boom","code":"E_BOOM"}},"link":{"$url":"https://example.com/p?q=1#h"},"deeper":{"re":{"$regexp":["foo.*bar","gi"]},"tags":{"$set":["a"]}}},"list":[1,{"$date":"2024-01-01T00:00:00.000Z"}]}}'
if expect B '^event s1 ' && [[ "$LINE" == *"$nested" ]]; then
  ok "nested codec values survive broker -> client"
else
  bad "nested codec values survive broker -> client (got: $LINE)"
fi

send A "sub s2 demo"
check "A subscribes locally" A '^subscribed s2 [0-9]+$'
send B "pubcodec demo codec run-3 undef"
check "B publish resolves" B '^published$'
check "A gets B's event with undefined key kept" A '^event s2 .*"runId":"run-3".*"data":\{"headers":\{"\$undefined":true\},"value":7\}\}$'
check "B gets its own event back via the broker" B '^event s1 .*"runId":"run-3"'

# SIGKILL the broker; B must take over.
disown "${PID[A]}" 2>/dev/null  # no "Killed" job notice
kill -9 "${PID[A]}"
for _ in $(seq 100); do kill -0 "${PID[A]}" 2>/dev/null || break; sleep 0.02; done
if kill -0 "${PID[A]}" 2>/dev/null; then bad "A killed"; else ok "A killed"; fi

send B 'pub demo after run-4 {"k":"v"}'
check "B publishes after failover" B '^published$' 10
send B status
check "B became the broker" B '^status isBroker=true clients=0$'
check "B still receives on its subscription" B '^event s1 .*"runId":"run-4"'

send B close
check "B closes" B '^closed$'
for _ in $(seq 250); do kill -0 "${PID[B]}" 2>/dev/null || break; sleep 0.02; done
if kill -0 "${PID[B]}" 2>/dev/null; then bad "B exited"; else
  wait "${PID[B]}"; rc=$?
  if [ "$rc" = 0 ]; then ok "B exited 0"; else bad "B exited $rc"; fi
fi
if [ -e "$D/bus.sock" ]; then bad "socket file removed by close()"; else ok "socket file removed by close()"; fi

# ---------------------------------------------------------------- part 2
# A raw broker that acks memberships and records every line it receives.
FAKE_LOG="$D/frames.log"
: >"$FAKE_LOG"
node --input-type=module -e '
import net from "node:net";
import fs from "node:fs";
const [sock, log] = process.argv.slice(1);
const srv = net.createServer((c) => {
  let buf = Buffer.alloc(0);
  c.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    let i;
    while ((i = buf.indexOf(10)) >= 0) {
      const line = buf.subarray(0, i).toString("utf8");
      buf = buf.subarray(i + 1);
      fs.appendFileSync(log, line + "\n");
      let f;
      try { f = JSON.parse(line); } catch { continue; }
      if (f.type === "subscribe" || f.type === "unsubscribe") {
        const ack = { type: f.type + "d", topic: f.topic };
        if (typeof f.group === "string") ack.group = f.group;
        c.write(JSON.stringify(ack) + "\n");
      }
    }
  });
});
srv.listen(sock, () => process.stdout.write("listening\n"));
' "$D/fake.sock" "$FAKE_LOG" </dev/null >"$D/fake.out" 2>"$D/fake.err" &
PID[fake]=$!
PIDS+=("$!")
USED[fake]=""
check "fake broker listening" fake '^listening$'

SOCK="$D/fake.sock" start_peer C --ack-timeout-ms 2000
check "C ready" C '^ready pid=[0-9]+$'
send C "sub a demo"
check "C subscribe acked (fast, not by timeout)" C '^subscribed a [0-9]{1,3}$'
send C "sub b jobs workers"
check "C grouped subscribe acked" C '^subscribed b [0-9]{1,3}$'
send C 'pub demo hello run-1 {"msg":"hi"}'
check "C publish" C '^published$'
send C "unsub a"
check "C unsubscribe" C '^unsubscribed a$'
send C "unsub b"
check "C grouped unsubscribe" C '^unsubscribed b$'
send C close
check "C closes" C '^closed$'

cat >"$D/frames.expected" <<'EOF2'
{"type":"subscribe","topic":"demo","group":{"__m_codec__":"Undefined"}}
{"type":"subscribe","topic":"jobs","group":"workers"}
{"type":"publish","topic":"demo","event":{"type":"hello","runId":"run-1","data":{"msg":"hi"}},"localOnly":{"__m_codec__":"Undefined"}}
{"type":"unsubscribe","topic":"demo","group":{"__m_codec__":"Undefined"}}
{"type":"unsubscribe","topic":"jobs","group":"workers"}
EOF2
if cmp -s "$D/frames.expected" "$FAKE_LOG"; then
  ok "client frames match spec 2.2 byte for byte"
else
  bad "client frames match spec 2.2 byte for byte"
  diff "$D/frames.expected" "$FAKE_LOG" | sed 's/^/    | /'
fi
if [ -n "${SMOKE_SHOW_FRAMES:-}" ]; then sed 's/^/  frame: /' "$FAKE_LOG"; fi

echo "smoke: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
