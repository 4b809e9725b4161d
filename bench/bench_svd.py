#!/usr/bin/python3
"""bench_svd.py — SVD throughput on the matrix shapes of the Qwen2-0.5B merges.

Times, in the same run and with the same thread count: alloy's svd_thin
(LAPACKE dgesdd on f64, what drm/tsv/knots and out: lora use), LAPACKE
sgesdd on f32 (bench/svd_bench.c), dgesdd with the matrix handed to LAPACK tall ("f64
tall", the layout torch uses; see svd_bench.c), and torch.linalg.svd(full_matrices=False)
on f64 (the same precision as alloy's path) and on f32 (Debian torch, torch.set_num_threads). Shapes: the model's
896x896 (q/o_proj), 128x896 (k/v_proj), 4864x896 (gate/up_proj),
896x4864 (down_proj), and the concatenations DRM builds for 3 models
(direction 0 stacks the deltas vertically: 3m x n). Target: alloy's path no
slower than torch's. Best of REPS runs (default 2).
usage: bench_svd.py BUILD_DIR [--threads 2] [--reps 2]
"""
import os
import subprocess
import sys
import time

import torch

BUILD = sys.argv[1]
THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 2
SHAPES = [(128, 896), (896, 896), (4864, 896), (896, 4864), (3 * 896, 896), (3 * 4864, 896), (3 * 896, 4864)]
NAMES = ["k/v_proj", "q/o_proj", "gate/up_proj", "down_proj", "DRM 3x q/o", "DRM 3x gate/up", "DRM 3x down"]


def torch_svd(m, n, dtype=torch.float32):
    torch.set_num_threads(THREADS)
    a = torch.rand(m, n, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2 - 1
    best = float("inf")
    for _ in range(REPS):
        t0 = time.perf_counter()
        torch.linalg.svd(a, full_matrices=False)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    tool = os.path.join(BUILD, "bench", "svd_bench")
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS))
    print("\nSVD benchmark: thin SVD, %d threads, best of %d; load average before: %.2f"
          % (THREADS, REPS, os.getloadavg()[0]))
    print("%-15s %-12s %10s %10s %10s %10s %10s %9s %9s %11s" % (
        "matrix", "shape", "alloy f64", "f64 tall", "sgesdd f32", "torch f64", "torch f32", "f64/t64", "f64/t32",
        "f32 rel err"))
    for (m, n), name in zip(SHAPES, NAMES):
        out = subprocess.run([tool, str(THREADS), str(REPS), "%dx%d" % (m, n)], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        td, ts, rel, tl = float(out[2]), float(out[3]), float(out[4]), float(out[5])
        tt, t64 = torch_svd(m, n), torch_svd(m, n, torch.float64)
        print("%-15s %-12s %10.3f %10.3f %10.3f %10.3f %10.3f %9.2f %9.2f %11.1e"
              % (name, "%dx%d" % (m, n), td, tl, ts, t64, tt, td / t64, td / tt, rel), flush=True)
    print("load average after: %.2f" % os.getloadavg()[0])


if __name__ == "__main__":
    main()
