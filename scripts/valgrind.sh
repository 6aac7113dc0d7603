#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Run every C test executable of a build under valgrind's memcheck: any
# memory error or definite leak fails it (forked children are checked too;
# exec'd ones, the Node peers, are not). Usage: valgrind.sh BUILD_DIR
set -uo pipefail

build=${1:?usage: valgrind.sh BUILD_DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export USPS_BUILD_DIR=$build USPS_SOURCE_DIR=$root USPS_BIN=$build/usps
passed=0 failed=0

for t in "$build"/test_*; do
	[[ -x $t && ! -d $t ]] || continue
	name=$(basename "$t")
	# The interop tests race real Node processes against deadlines made
	# for C at full speed, and valgrind checks none of the Node side; the
	# C paths they use are checked here through the other suites.
	if [[ $name == test_interop ]]; then
		echo "skip $name (timed against Node peers)"
		continue
	fi
	start=$SECONDS
	if timeout 1800 valgrind -q --error-exitcode=99 --leak-check=full \
		--errors-for-leak-kinds=definite --show-leak-kinds=definite \
		--child-silent-after-fork=no --trace-children=no \
		"$t" >"$build/valgrind-$name.log" 2>&1; then
		passed=$((passed + 1))
		echo "ok   $name ($((SECONDS - start)) s)"
	else
		failed=$((failed + 1))
		echo "FAIL $name ($((SECONDS - start)) s); its log:"
		tail -n 40 "$build/valgrind-$name.log"
	fi
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
