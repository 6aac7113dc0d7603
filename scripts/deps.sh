#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Install the Debian packages needed to build and test usps, if missing.
# Extra package names may be given as arguments (e.g. libzmq3-dev for the
# benchmarks). Quick and silent when everything is already installed.
set -euo pipefail

pkgs=(cmake make gcc g++ clang libclang-rt-14-dev pkg-config libssl-dev nodejs npm
	"$@")

# Node.js may come from elsewhere than Debian (e.g. NodeSource's nodejs, which
# ships npm itself and conflicts with Debian's npm): a working command counts.
declare -A have_cmd=([nodejs]=node [npm]=npm)

installed=" $(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${pkgs[@]}" \
	2>/dev/null | awk '$2 == "ii" { printf "%s ", $1 }' || true)"

missing=()
for p in "${pkgs[@]}"; do
	[[ $installed == *" ${p%%:*} "* ]] && continue
	if [[ -n ${have_cmd[$p]:-} ]] && command -v "${have_cmd[$p]}" >/dev/null; then
		continue
	fi
	missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
	echo "deps.sh: install them with:" >&2
	echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
