#!/usr/bin/python3
"""bench_merge.py — merge throughput and memory on a Qwen2-0.5B-shaped model.

For linear, ties and dare_ties over a base + 3 bf16 variants (slerp of the
base with one variant, and linear, ties and dare_ties over the same four in
f16: METHOD@f16): wall time, peak
RSS (of the alloy process alone, from wait4), and the ratio to the I/O floor
(stream_floor: reading every input byte once and writing the output through
the same path), measured in the same run. Each is the best of ROUNDS (5) runs,
floor and merge alternating, each after a sync() so that neither pays for
the other's writeback, with the inputs read back into the page cache just
before (and, before an input's first row, dropped from it and read back, so
that it is cached as a cold read leaves it: in 2 MiB folios), and each round begins with an unmeasured floor, so that the measured
floor and merge both follow a floor (a floor right after a merge measured
2.3-3.5 s here, right after a floor 0.54-0.73 s; merges 1.0 s after either). Target: ratio <= 1.3. The ratio is best wall over best floor; the
median of the rounds' own ratios (each merge over the floor run just before
it) is printed beside it, as a check on a VM whose speed drifts. While the
best floor is above the best merge, up to ROUNDS more rounds run; a ratio
whose floor stayed there is marked * (that run's writes were slow, and the
ratio means nothing). Beside them, the median CPU time (user + system, all
threads) of the merges and of the floors: on a 2-core machine the floor alone
keeps both cores nearly busy, so what a method computes beyond the I/O adds to
its wall time almost one for one. Then one
run of every mergekit method: wall time and peak RSS against the largest
tensor.
usage: bench_merge.py BUILD_DIR BENCH_DIR [--threads 2] [--methods linear,ties,...]
"""
import os
import shutil
import subprocess
import sys
import time

BUILD, BENCH = sys.argv[1], sys.argv[2]
THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
METHODS = (sys.argv[sys.argv.index("--methods") + 1].split(",") if "--methods" in sys.argv
           else ["linear", "ties", "dare_ties", "slerp", "linear@f16", "ties@f16", "dare_ties@f16"])
ROUNDS = 5
ALLOY = os.path.join(BUILD, "alloy")
FLOOR = os.path.join(BUILD, "bench", "stream_floor")
M = os.path.join(BENCH, "qwen2-0.5b")
M16 = os.path.join(BENCH, "qwen2-0.5b-f16")  # the same checkpoints in f16 (METHOD@f16 rows)


def warm(paths):
    """Read the inputs back into the page cache: this VM's DAMON reclaims idle
    page cache at up to 128 MB/s, so without this a run may find part of its
    inputs on disk and part in memory, differently each time."""
    buf = bytearray(1 << 24)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def recache(paths):
    """Drop the inputs from the page cache and read them back, once per input
    before its first row: the cache then holds them as a cold read leaves
    them (2 MiB folios, each mapped by one page-table entry) whatever earlier
    runs left. Pages reclaimed and faulted back one at a time come back as
    4 KiB folios and stay so; with them the mappings cost 0.07-0.1 s per GB
    more, which the floor and the merges would pay by turns as the cache
    drifts (this VM's medians moved by up to 15 % within minutes)."""
    for path in paths:
        if path in RECACHED:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        warm([path])
        RECACHED.add(path)


RECACHED = set()


def timed(cmd, env=None, inputs=()):
    os.sync()
    warm(inputs)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(cmd), err))
    return wall, ru.ru_maxrss / 1024.0, out, ru.ru_utime + ru.ru_stime


def make_f16(env):
    """The bench checkpoints converted to f16 by alloy itself (a linear merge
    of one model with weight 1 and dtype float16: exact where the values fit
    f16), once."""
    for d in ("base", "ft1", "ft2", "ft3"):
        dst = os.path.join(M16, d)
        if os.path.exists(os.path.join(dst, "model.safetensors")):
            continue
        r = os.path.join(BENCH, "to-f16-%s.yml" % d)
        open(r, "w").write("merge_method: linear\ndtype: float16\nmodels:\n  - model: %s/%s\n"
                           "    parameters: {weight: 1.0}\n" % (M, d))
        os.makedirs(M16, exist_ok=True)
        p = subprocess.run([ALLOY, "merge", r, dst, "--threads", THREADS], env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit("failed: converting %s/%s to f16\n%s" % (M, d, p.stderr))


def method_dir(method):
    """A row's method and checkpoint directory: METHOD over the bf16
    checkpoints, METHOD@f16 over their f16 copies."""
    return (method.split("@")[0], M16) if method.endswith("@f16") else (method, M)


def recipe(method):
    path = os.path.join(BENCH, "%s.yml" % method.replace("@", "-"))
    method, m = method_dir(method)
    lines = ["merge_method: %s" % method]
    if method != "linear":
        lines.append("base_model: %s/base" % m)
    lines.append("models:")
    if method == "slerp":
        lines += ["  - model: %s/ft1" % m, "parameters: {t: 0.3}"]
    for i, (w, d) in enumerate(((0.5, 0.5), (0.3, 0.6), (0.2, 0.4)) if method != "slerp" else ()):
        lines.append("  - model: %s/ft%d" % (m, i + 1))
        lines.append("    parameters: {weight: %g%s}" % (w, ", density: %g" % d if method != "linear" else ""))
    open(path, "w").write("\n".join(lines) + "\n")
    return path


def every_recipe(method):
    """A recipe of each mergekit method over the bench model (base + 3, or the
    models the method takes)."""
    fts = ["%s/ft%d" % (M, i + 1) for i in range(3)]
    dens = "".join("  - model: %s\n    parameters: {weight: %g, density: 0.5%s}\n"
                   % (f, w, ", epsilon: 0.1" if method.startswith("della") else ", gamma: 0.05"
                      if method.startswith("breadcrumbs") else "") for f, w in zip(fts, (0.5, 0.3, 0.2)))
    weighted = "".join("  - model: %s\n    parameters: {weight: %g}\n" % (f, w) for f, w in zip(fts, (0.5, 0.3, 0.2)))
    plain = "".join("  - model: %s\n" % f for f in fts)
    base = "base_model: %s/base\n" % M
    body = {
        "linear": "models:\n" + weighted,
        "slerp": base + "models:\n  - model: %s\nparameters: {t: 0.3}\n" % fts[0],
        "nuslerp": "models:\n" + weighted.split("  - model: %s" % fts[2])[0],
        "multislerp": "models:\n" + weighted,
        "karcher": "models:\n" + plain,
        "model_stock": base + "models:\n" + plain,
        "sce": base + "models:\n" + plain + "parameters: {select_topk: 0.5}\n",
        "nearswap": base + "models:\n  - model: %s\nparameters: {t: 0.001}\n" % fts[0],
        "passthrough": "models:\n  - model: %s\n" % fts[0],
        "task_arithmetic": base + "models:\n" + weighted,
    }.get(method, base + "models:\n" + dens)
    path = os.path.join(BENCH, "every-%s.yml" % method)
    open(path, "w").write("merge_method: %s\n%s" % (method, body))
    return path


EVERY = ("linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties",
         "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "sce",
         "nearswap", "passthrough")


def every_method(env, out):
    """One run of every method: wall time and peak RSS, against the largest
    tensor (the embedding, in f32) that the memory rule is stated in."""
    largest = 151936 * 896 * 4 / 1e6
    print("\nevery method (one run each; largest tensor %.0f MB in f32)" % largest)
    print("%-17s %9s %12s %14s" % ("method", "wall s", "peak RSS MB", "RSS / largest"))
    inputs = [os.path.join(M, d, "model.safetensors") for d in ("base", "ft1", "ft2", "ft3")]
    for method in EVERY:
        shutil.rmtree(out, ignore_errors=True)
        w, m, _, _ = timed([ALLOY, "merge", every_recipe(method), out, "--threads", THREADS, "--seed", "1"], env,
                           inputs)
        print("%-17s %9.2f %12.0f %14.2f" % (method, w, m, m / largest), flush=True)


def main():
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "scripts", "gen_model.py"), M], check=True)
    env = dict(os.environ, OMP_NUM_THREADS=THREADS)
    out = os.path.join(BENCH, "out")
    size = sum(os.path.getsize(os.path.join(M, d, "model.safetensors")) for d in ("base", "ft1"))
    print("\nmerge benchmark: Qwen2-0.5B shape (hidden 896, inter 4864, 24 layers, vocab 151936), bf16, "
          "%d threads, model %.2f GB" % (int(THREADS), size / 2e9))
    print("%-10s %9s %12s %11s %7s %12s %9s %12s" % ("method", "wall s", "peak RSS MB", "floor s", "ratio",
                                                   "median pair", "cpu s", "floor cpu s"))
    noisy_any = False
    for method in METHODS:
        name, mdir = method_dir(method)
        if mdir == M16:
            make_f16(env)
        r = recipe(method)
        fts = ("ft1",) if name == "slerp" else ("ft1", "ft2", "ft3")
        inputs = [os.path.join(mdir, d, "model.safetensors") for d in fts]
        if name != "linear":
            inputs.append(os.path.join(mdir, "base", "model.safetensors"))
        recache(inputs)
        floor = wall = rss = float("inf")
        paired, cpu, fcpu = [], [], []
        rounds = 0
        # a floor above the merge's wall time is no floor: this VM's page-cache writes
        # sometimes slow down several-fold for seconds (host faults on memory the guest
        # had given back); up to ROUNDS more rounds look for a quiet one
        while rounds < ROUNDS or (floor > wall and rounds < 2 * ROUNDS):
            rounds += 1
            # an unmeasured floor first: on this VM a floor that follows a merge
            # runs 3-6x slower (its page-cache copies hit the pages the merge
            # process gave back, which the host takes away), one that follows a
            # floor does not, and a merge runs as fast after either; so both
            # measured runs start after a floor
            shutil.rmtree(out, ignore_errors=True)
            timed([FLOOR, r, out], env, inputs)
            shutil.rmtree(out, ignore_errors=True)
            f, _, fout, fc = timed([FLOOR, r, out], env, inputs)
            f = float(fout.strip() or f)
            fcpu.append(fc)
            floor = min(floor, f)
            shutil.rmtree(out, ignore_errors=True)
            w, m, _, c = timed([ALLOY, "merge", r, out, "--threads", THREADS], env, inputs)
            cpu.append(c)
            wall, rss = min(wall, w), min(rss, m)
            paired.append(w / f)
        paired.sort()
        noisy = floor > wall
        noisy_any = noisy_any or noisy
        cpu.sort()
        fcpu.sort()
        print("%-10s %9.2f %12.0f %11.2f %7.2f%s %11.2f %9.2f %12.2f" % (
            method, wall, rss, floor, wall / floor, "*" if noisy else " ", paired[len(paired) // 2],
            cpu[len(cpu) // 2], fcpu[len(fcpu) // 2]), flush=True)
    print("cpu s, floor cpu s: median user + system time of the merge and of the floor runs, all their "
          "threads (%s merge threads on %d cores): a merge whose cpu s is near threads x wall is bound by "
          "its computation, not by the I/O the floor measures" % (THREADS, os.cpu_count()))
    if noisy_any:
        print("* the floor stayed above the merge's wall time in %d rounds: the machine's writes were "
              "slow in this run, and this ratio says nothing; run it again" % (2 * ROUNDS))
    if "--methods" not in sys.argv:
        every_method(env, out)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
