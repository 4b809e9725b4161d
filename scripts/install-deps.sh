#!/usr/bin/env bash
# install-deps.sh — install the Debian packages alloy builds and tests with.
# Idempotent and quick when everything is present; `--check` only reports.
set -euo pipefail

PKGS=(build-essential pkg-config libopenblas-dev liblapacke-dev libyaml-dev libcjson-dev
      libpcre2-dev libcmocka-dev python3-torch python3-numpy python3-yaml)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${1:-}" = "--check" ]; then
    [ ${#missing[@]} -eq 0 ] && exit 0
    echo "missing: ${missing[*]}"; exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
