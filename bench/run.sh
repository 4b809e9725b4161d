#!/usr/bin/env bash
# run.sh — `make bench`: builds the bench tools and runs every benchmark.
# Generated models are cached in $BENCH_DIR (default ~/.cache/alloy-bench), outside git.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/alloy-bench}
mkdir -p "$BENCH_DIR" "$BUILD/bench"
CFLAGS="-std=c11 -O2 -march=native -mprefer-vector-width=512 -fno-trapping-math -g -Wall -Wextra -Werror -D_GNU_SOURCE -fopenmp -Iinclude -Isrc $(pkg-config --cflags openblas lapacke yaml-0.1 libcjson libpcre2-8)"
LIBS="$(pkg-config --libs openblas lapacke yaml-0.1 libcjson libpcre2-8) -lm -lpthread"
cc $CFLAGS bench/stream_floor.c "$BUILD/liballoy.a" $LIBS -fopenmp -o "$BUILD/bench/stream_floor"
cc $CFLAGS bench/svd_bench.c "$BUILD/liballoy.a" $LIBS -fopenmp -o "$BUILD/bench/svd_bench"
cc $CFLAGS bench/infer_bench.c "$BUILD/liballoy.a" $LIBS -fopenmp -o "$BUILD/bench/infer_bench"
cc $CFLAGS bench/kernel_bench.c "$BUILD/liballoy.a" $LIBS -fopenmp -o "$BUILD/bench/kernel_bench"
/usr/bin/python3 bench/bench_merge.py "$BUILD" "$BENCH_DIR" --threads "${THREADS:-2}"
"$BUILD/bench/kernel_bench" "${THREADS:-2}" 20
/usr/bin/python3 bench/bench_svd.py "$BUILD" --threads "${THREADS:-2}"
/usr/bin/python3 bench/bench_drm.py "$BUILD" "$BENCH_DIR" --threads "${THREADS:-2}"
/usr/bin/python3 bench/bench_infer.py "$BUILD" "$BENCH_DIR" --threads "${THREADS:-2}"
/usr/bin/python3 bench/bench_mod.py "$BUILD" "$BENCH_DIR" --threads "${THREADS:-2}"
/usr/bin/python3 bench/bench_train.py "$BUILD/alloy" --threads "${THREADS:-2}"
/usr/bin/python3 bench/bench_ttmm.py "$BUILD" "$BENCH_DIR" --threads "${THREADS:-2}"
