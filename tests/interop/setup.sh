#!/usr/bin/env bash
# Installs the Node side of the interop harness (tests/interop/node_modules)
# from package-lock.json. Idempotent and quiet on success: `npm ci` runs only
# when node_modules is missing or older than package.json/package-lock.json.
# Writes nothing outside tests/interop (npm's cache goes to .npm-cache here).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
STAMP="$HERE/node_modules/.usps-setup-stamp"
LOG="$HERE/.setup.log"

die() { echo "tests/interop/setup.sh: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found in PATH (need Node >= 20)"
command -v npm >/dev/null 2>&1 || die "npm not found in PATH"
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || die "cannot run node"
[ "$major" -ge 20 ] 2>/dev/null || die "Node $(node -v) is too old (need >= 20)"

fresh() {
  [ -f "$STAMP" ] && [ ! "$HERE/package-lock.json" -nt "$STAMP" ] && [ ! "$HERE/package.json" -nt "$STAMP" ]
}

fresh && exit 0

# Serialise concurrent runs (e.g. parallel tests) on the directory itself.
if command -v flock >/dev/null 2>&1; then
  exec 9<"$HERE"
  flock 9 || die "cannot lock $HERE"
  fresh && exit 0
fi

if ! (cd "$HERE" && npm_config_cache="$HERE/.npm-cache" npm_config_update_notifier=false \
      npm ci --no-audit --no-fund --loglevel=error) >"$LOG" 2>&1; then
  echo "tests/interop/setup.sh: 'npm ci' failed in $HERE; last lines of $LOG:" >&2
  tail -n 20 "$LOG" | sed 's/^/  /' >&2
  exit 1
fi
if ! (cd "$HERE" && node --input-type=module -e \
      'const m = await import("@mastra/core/events"); if (typeof m.UnixSocketPubSub !== "function") throw new Error("UnixSocketPubSub missing")') >"$LOG" 2>&1; then
  echo "tests/interop/setup.sh: @mastra/core installed but UnixSocketPubSub cannot be imported; see $LOG:" >&2
  tail -n 20 "$LOG" | sed 's/^/  /' >&2
  exit 1
fi
rm -f "$LOG"
touch "$STAMP"
