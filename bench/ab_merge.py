#!/usr/bin/python3
"""ab_merge.py — is one alloy build faster than another at a merge? Paired runs.

On the bench VM a merge's wall time drifts by 10-15 % within minutes, and
consecutive runs alternate between slow and fast (the output deleted before
each run is discarded on the host), so the medians of two builds measured
apart, or even interleaved, differ by more than most changes do. Here the
two builds run in pairs, A then B in even rounds and B then A in odd ones,
each run after a sync() (as in bench_merge.py), and what is reported is the
distribution of the differences within a pair: its median, quartiles and
mean, for wall time, CPU time (user + system) and user time. A change is
real when the quartiles of its differences lie on one side of zero. The
outputs of the last pair are compared byte for byte.
usage: ab_merge.py RECIPE.yml ROUNDS A=ALLOY[:VAR=VALUE...] B=ALLOY[:VAR=VALUE...] [--threads N]
  (VAR=VALUE: environment of that build's runs, e.g. ALLOY_LANE_BYTES=0)
"""
import filecmp
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def parse(arg):
    name, rest = arg.split("=", 1)
    parts = rest.split(":")
    env = dict(os.environ)
    for kv in parts[1:]:
        k, v = kv.split("=", 1)
        env[k] = v
    return name, parts[0], env


def main():
    args = sys.argv[1:]
    threads = "2"
    if "--threads" in args:
        i = args.index("--threads")
        threads = args[i + 1]
        del args[i:i + 2]
    if len(args) != 4:
        raise SystemExit(__doc__.strip().splitlines()[-2])
    recipe, rounds = args[0], int(args[1])
    cfgs = [parse(args[2]), parse(args[3])]
    if cfgs[0][0] == cfgs[1][0]:
        raise SystemExit("ab_merge.py: the two builds need different names")
    tmp = tempfile.mkdtemp(prefix="alloy-ab-")
    res = {name: [] for name, _, _ in cfgs}
    try:
        for r in range(rounds):
            for name, alloy, env in (cfgs if r % 2 == 0 else cfgs[::-1]):
                out = os.path.join(tmp, name)
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                t0 = time.monotonic()
                p = subprocess.Popen([alloy, "merge", recipe, out, "--threads", threads], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                _, status, ru = os.wait4(p.pid, 0)
                wall = time.monotonic() - t0
                err = p.stderr.read().decode()
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit("ab_merge.py: %s failed:\n%s" % (name, err))
                res[name].append((wall, ru.ru_utime + ru.ru_stime, ru.ru_utime))
        a, b = cfgs[0][0], cfgs[1][0]
        files = [sorted(glob.glob(os.path.join(tmp, n, "*.safetensors"))) for n in (a, b)]
        same = len(files[0]) == len(files[1]) and all(
            filecmp.cmp(x, y, shallow=False) for x, y in zip(*files))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d pairs of %s (A) and %s (B), %s threads; seconds; B - A within each pair" % (rounds, a, b, threads))
    for i, what in enumerate(("wall", "cpu", "user")):
        d = sorted(y[i] - x[i] for x, y in zip(res[a], res[b]))
        q = len(d) // 4
        print("%-5s A %.3f  B %.3f  B-A median %+.3f  quartiles [%+.3f, %+.3f]  mean %+.3f" % (
            what, statistics.median(x[i] for x in res[a]), statistics.median(x[i] for x in res[b]),
            statistics.median(d), d[q], d[len(d) - 1 - q], statistics.mean(d)))
    print("outputs identical" if same else "outputs DIFFER")


if __name__ == "__main__":
    main()
