#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The README's example program (examples/hello.c) runs and prints what the
# README says: its own event, then that it is the broker.
set -u
dir=$(mktemp -d "${TMPDIR:-/tmp}/usps-example-XXXXXX")
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0
check() {
	if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $*"; fi
}
out=$(timeout 20 "$USPS_BUILD_DIR/example_hello" "$dir/events.sock")
rc=$?
echo "$out"
check test "$rc" -eq 0
check grep -qx 'got workflow.start: {"runId":1}' <<<"$out"
check grep -qx 'broker: me' <<<"$out"
check test ! -e "$dir/events.sock"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
