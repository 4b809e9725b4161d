#!/usr/bin/python3
"""bench_drm.py — DRM and TIES on the Qwen2-0.5B-shaped model (base + 3 bf16
variants of the foundation benchmark, scripts/gen_model.py): wall time and
peak RSS of the alloy process (wait4), in the same run.

Cases: ties (density 0.5, the dense baseline), drm with a joint-rank cap of
64 (randomized truncated SVD), and drm at its defaults (density 0.2, full
joint SVD of every 2-D tensor: 2688x896 for q/o_proj, 14592x896 for
gate/up_proj, 2688x4864 for down_proj). Target: DRM in minutes, not hours.
usage: bench_drm.py BUILD_DIR BENCH_DIR [--threads 2] [--only ties,drm-r64,drm]
"""
import os
import shutil
import subprocess
import sys
import time

BUILD, BENCH = sys.argv[1], sys.argv[2]
THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
ONLY = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
ALLOY = os.path.join(BUILD, "alloy")
M = os.path.join(BENCH, "qwen2-0.5b")
CASES = {  # name: (method, global parameters)
    "ties": ("ties", {}),
    "drm-r64": ("drm", {"rank": 64}),
    "drm": ("drm", {}),
}


def run_rss(cmd, env):
    """Wall time and peak RSS (MB) of one child, via wait4 on its pid."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(cmd), err))
    return wall, ru.ru_maxrss / 1024.0


def recipe(name, method, gparams):
    path = os.path.join(BENCH, "drm-bench-%s.yml" % name)
    lines = ["merge_method: %s" % method, "base_model: %s/base" % M, "models:"]
    for i, (w, d) in enumerate(((0.5, 0.5), (0.3, 0.6), (0.2, 0.4))):
        lines.append("  - model: %s/ft%d" % (M, i + 1))
        lines.append("    parameters: {weight: %g%s}" % (w, ", density: %g" % d if method == "ties" else ""))
    if gparams:
        lines.append("parameters: {%s}" % ", ".join("%s: %s" % kv for kv in gparams.items()))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main():
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "scripts", "gen_model.py"), M],
                   check=True)
    env = dict(os.environ, OMP_NUM_THREADS=THREADS)
    out = os.path.join(BENCH, "drm-out")
    print("\nDRM benchmark: Qwen2-0.5B shape (hidden 896, inter 4864, 24 layers), base + 3 bf16 variants, "
          "%s threads; load average before: %.2f" % (THREADS, os.getloadavg()[0]))
    print("%-10s %9s %12s %9s" % ("case", "wall s", "peak RSS MB", "load avg"))
    for name, (method, gp) in CASES.items():
        if ONLY and name not in ONLY:
            continue
        r = recipe(name, method, gp)
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = run_rss([ALLOY, "merge", r, out, "--threads", THREADS], env)
        print("%-10s %9.1f %12.0f %9.2f" % (name, wall, rss, os.getloadavg()[0]), flush=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
