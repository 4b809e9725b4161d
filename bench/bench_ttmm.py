"""bench_ttmm.py — TTMM (test-time model merging) against its baselines.

Two parts, both run by `make bench`:

speed   On the 0.5B Qwen2-shaped bench model ($BENCH_DIR/qwen2-0.5b/base, made
        by bench_merge.py) with a library of 64 rank-16 LoRA experts (all seven
        projections) built by `alloy experts build` on a corpus of Debian text
        (one optimizer step per expert: the adapters' values do not change the
        cost), measure in one run:
          - the base model's decode time per token and for 100 tokens;
          - per prompt: embedding, selection (coefficients) and merging, for the
            default sparse rule and for a fixed top-4, in both execution modes
            (merged weights / run-time adapters);
          - decode speed of the library itself (auto mode);
          - TTT (`alloy ttt`): per-prompt time to retrieve neighbours and train
            a fresh LoRA on them.
        Targets (the paper's "essentially free"): selection + merge <= one
        decoded token, and >= 100x faster than TTT.

quality A small base model the bench trains itself on four kinds of text Debian
        ships (licenses, Python, C headers, Perl), held-out perplexity per
        domain of: the base, a multitask LoRA (one adapter, as many steps as all
        experts together), TTMM, the ensemble baseline and TTT.

Models and corpora are cached under $BENCH_DIR/ttmm.

usage: /usr/bin/python3 bench/bench_ttmm.py BUILD BENCH_DIR [--threads N] [--only speed|quality]
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_mod import member_dir  # noqa: E402  (the 0.5B base with a tokenizer)

PY = "/usr/bin/python3"
PROMPT = ("def parse_arguments(argv):\n    \"\"\"Parse the command line and return the options as a "
          "namespace; unknown options raise an error naming them.\"\"\"\n    parser = argparse.")
DOMAINS = {
    "lic": lambda: [p for p in sorted(glob.glob("/usr/share/common-licenses/*")) if os.path.isfile(p)],
    "py": lambda: sorted(glob.glob("/usr/lib/python3.11/*.py")),
    "c": lambda: sorted(glob.glob("/usr/include/*.h")),
    "perl": lambda: sorted(glob.glob("/usr/share/perl/5.*/**/*.pm", recursive=True)),
}


def run(cmd, what, **kw):
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        sys.exit("bench_ttmm: %s failed (%s): %s" % (what, " ".join(cmd), r.stderr.strip()[-2000:]))
    return r, time.time() - t0


def domain_text(name, limit):
    out = []
    for p in DOMAINS[name]():
        try:
            out.append(open(p, errors="ignore").read())
        except OSError:
            continue
        if sum(map(len, out)) > limit:
            break
    return "".join(out)


def chunks(s, n, size):
    return [s[i * size:(i + 1) * size] for i in range(n) if len(s) >= (i + 1) * size]


def make_corpus(d, per_domain, size, held):
    """corpus/<domain>NNN.txt documents and held/<domain>.txt held-out text."""
    if os.path.isdir(os.path.join(d, "corpus")):
        return
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "corpus"))
    os.makedirs(os.path.join(tmp, "held"))
    for name in DOMAINS:
        c = chunks(domain_text(name, (per_domain + held + 1) * size * 2), per_domain + held, size)
        if len(c) < per_domain + held:
            sys.exit("bench_ttmm: not enough %s text on this machine" % name)
        for i, doc in enumerate(c[:per_domain]):
            open(os.path.join(tmp, "corpus", "%s%03d.txt" % (name, i)), "w").write(doc)
        open(os.path.join(tmp, "held", name + ".txt"), "w").write("\n\n".join(c[per_domain:]))
        open(os.path.join(tmp, "all.txt"), "a").write("\n\n".join(c[:per_domain]) + "\n\n")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(tmp):
        os.replace(os.path.join(tmp, f), os.path.join(d, f))
    shutil.rmtree(tmp)


def library_complete(lib):
    try:
        return json.load(open(os.path.join(lib, "alloy_experts.json"))).get("complete", False)
    except (OSError, ValueError):
        return False


def experts_times(alloy, lib, extra, threads):
    r, _ = run([alloy, "experts", "logits", lib, "-p", PROMPT, "-o", "/dev/null", "--threads", str(threads)] + extra,
               "experts logits")
    m = re.search(r"experts: (\d+) selected \((\w+)\)", r.stderr)
    t = re.search(r"embed ([0-9.]+) s, select ([0-9.]+) s, merge ([0-9.]+) s", r.stderr)
    if not m or not t:
        sys.exit("bench_ttmm: no selection/timing line in: %s" % r.stderr)
    return int(m.group(1)), m.group(2), float(t.group(1)), float(t.group(2)), float(t.group(3))


def decode(alloy, model, threads, n=100):
    r, _ = run([alloy, "generate", "-m", model, "-p", PROMPT, "-n", str(n), "--temp", "0", "--threads", str(threads)],
               "generate")
    m = re.search(r"prompt: (\d+) tokens, ([0-9.]+) tokens/s; generation: (\d+) tokens, ([0-9.]+) tokens/s", r.stderr)
    if not m:
        sys.exit("bench_ttmm: no speed line in: %s" % r.stderr)
    return int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4))


def ttt_time(alloy, base, corpus, threads, extra):
    r, wall = run([alloy, "ttt", "-m", base, "--corpus", corpus, "-p", PROMPT, "-n", "1", "--temp", "0",
                   "--threads", str(threads)] + extra, "ttt")
    m = re.search(r"ttt: mean per-prompt time ([0-9.]+) s", r.stderr)
    if not m:
        sys.exit("bench_ttmm: no per-prompt time in: %s" % r.stderr)
    return float(m.group(1)), wall


def speed(alloy, bench, threads):
    if not os.path.isfile(os.path.join(bench, "qwen2-0.5b", "base", "config.json")):
        sys.exit("bench_ttmm: %s/qwen2-0.5b/base missing (bench_merge.py creates it)" % bench)
    base = member_dir(bench, "base")
    d = os.path.join(bench, "ttmm", "speed")
    make_corpus(d, 32, 600, 1)
    corpus = os.path.join(d, "corpus")
    lib = os.path.join(d, "lib64")
    if not library_complete(lib):
        print("building the 64-expert library (cached in %s) ..." % lib, flush=True)
        _, t = run([alloy, "experts", "build", "-m", base, "-d", corpus, "-o", lib, "--clusters", "64",
                    "--lora-rank", "16", "--steps", "1", "--batch", "1", "--ctx", "32", "--doc-tokens", "32",
                    "--threads", str(threads)], "experts build")
        print("  built in %.0f s" % t)
    np_, ptps, ng, tps = decode(alloy, base, threads)
    t_tok = 1.0 / tps
    print("\n== TTMM speed: 0.5B Qwen2-shaped (bf16), 64 rank-16 experts, %d threads" % threads)
    print("base: prompt %d tokens at %.1f tok/s; decode %.1f tok/s = %.1f ms/token, 100 tokens %.2f s"
          % (np_, ptps, tps, 1e3 * t_tok, 100 * t_tok))
    print("%-26s %5s %-9s %10s %10s %10s %14s" % ("selection", "k", "mode", "embed ms", "select ms", "merge ms",
                                                  "(sel+merge)/tok"))
    rows = {}
    for label, extra in (("sparse rule (beta, tau)", []), ("top-4", ["--top-k", "4"])):
        for mode in ("unmerged", "merge"):
            k, used, te, ts, tm = experts_times(alloy, lib, extra + ["--mode", mode], threads)
            rows[(label, mode)] = (te, ts, tm)
            print("%-26s %5d %-9s %10.2f %10.3f %10.2f %14.3f" % (label, k, used, 1e3 * te, 1e3 * ts, 1e3 * tm,
                                                                 (ts + tm) / t_tok))
    _, _, _, ltps = decode(alloy, lib, threads)
    print("library decode (auto mode): %.1f tok/s (%.2fx the base's time per token)" % (ltps, tps / ltps))
    tt, wall = ttt_time(alloy, base, corpus, threads, ["--neighbors", "8", "--steps-per-neighbor", "1"])
    te, ts, tm = rows[("sparse rule (beta, tau)", "unmerged")]
    print("TTT (8 neighbours, 1 step each): %.2f s per prompt (run %.1f s incl. corpus embedding)" % (tt, wall))
    print("ratios: (select+merge)/decode token = %.3f (target <= 1); TTT/(select+merge) = %.0fx (target >= 100); "
          "TTT/(embed+select+merge) = %.1fx" % ((ts + tm) / t_tok, tt / (ts + tm), tt / (te + ts + tm)))


def ppl(alloy, model, text, threads, extra=()):
    r, _ = run([alloy, "ppl", "-m", model, "-f", text, "--ctx", "128", "--threads", str(threads)] + list(extra), "ppl")
    return float(re.search(r"^perplexity: ([0-9.eE+-]+)", r.stdout, re.M).group(1))


def quality(alloy, bench, threads):
    d = os.path.join(bench, "ttmm", "quality")
    make_corpus(d, 40, 1000, 4)
    corpus, held = os.path.join(d, "corpus"), os.path.join(d, "held")
    base = os.path.join(d, "base")
    steps_expert, clusters = 60, 4
    if not os.path.isfile(os.path.join(base, "config.json")):
        tok = os.path.join(d, "tok")
        run([PY, os.path.join(ROOT, "tests", "ref", "train_ref.py"), "make-model", tok, "--arch", "qwen2", "--tied",
             "--seed", "1", "--vocab", "300"], "make-model")
        cfg = json.load(open(os.path.join(tok, "config.json")))
        cfg.update(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256)
        cfg.pop("head_dim", None)
        json.dump(cfg, open(os.path.join(d, "cfg.json"), "w"))
        run([alloy, "init", os.path.join(d, "cfg.json"), os.path.join(d, "init"), "--seed", "3", "--dtype", "f32",
             "--tokenizer", tok], "init")
        _, t = run([alloy, "train", "-m", os.path.join(d, "init"), "-d", os.path.join(d, "all.txt"), "-o", base,
                    "--full", "--steps", "300", "--batch", "8", "--ctx", "128", "--lr", "3e-3", "--warmup", "10",
                    "--threads", str(threads), "--log-every", "1000"], "base training")
        print("base trained in %.0f s" % t)
    multi = os.path.join(d, "multitask")
    if not os.path.isfile(os.path.join(multi, "adapter_config.json")):
        run([alloy, "train", "-m", base, "-d", os.path.join(d, "all.txt"), "-o", multi, "--lora-rank", "8",
             "--steps", str(steps_expert * clusters), "--batch", "4", "--ctx", "128", "--lr", "3e-3",
             "--threads", str(threads), "--log-every", "1000"], "multitask LoRA")
    lib = os.path.join(d, "lib")
    if not library_complete(lib):
        run([alloy, "experts", "build", "-m", base, "-d", corpus, "-o", lib, "--clusters", str(clusters),
             "--lora-rank", "8", "--steps", str(steps_expert), "--lr", "3e-3", "--batch", "4", "--ctx", "128",
             "--doc-tokens", "64", "--seed", "7", "--threads", str(threads)], "experts build")
    print("\n== TTMM quality: held-out perplexity (base: %s, 128-wide, 4 layers, trained here)" % os.path.basename(d))
    print("corpus: %d documents of licenses, Python, C headers, Perl; %d experts of rank 8, %d steps each; "
          "multitask LoRA: rank 8, %d steps; TTT: 8 neighbours x 4 steps per 128-token window; lr 3e-3 for all"
          % (len(os.listdir(corpus)), clusters, steps_expert, steps_expert * clusters))
    cols = ["base", "multitask LoRA", "TTMM", "TTMM top-1", "ensemble", "TTT"]
    print("%-6s" % "domain" + "".join("%16s" % c for c in cols))
    sums = [0.0] * len(cols)
    for name in DOMAINS:
        f = os.path.join(held, name + ".txt")
        t0 = time.time()
        vals = [ppl(alloy, base, f, threads), ppl(alloy, base, f, threads, ["--lora", multi]),
                ppl(alloy, lib, f, threads), ppl(alloy, lib, f, threads, ["--experts-top-k", "1"]),
                ppl(alloy, lib, f, threads, ["--experts-mode", "ensemble"])]
        r, _ = run([alloy, "ttt", "-m", base, "--corpus", corpus, "-f", f, "--ctx", "128", "--threads", str(threads),
                    "--neighbors", "8", "--steps-per-neighbor", "4", "--lr", "3e-3", "--lora-rank", "8",
                    "--train-ctx", "128"], "ttt ppl")
        vals.append(float(re.search(r"^perplexity: ([0-9.eE+-]+)", r.stdout, re.M).group(1)))
        sums = [s + v for s, v in zip(sums, vals)]
        print("%-6s" % name + "".join("%16.3f" % v for v in vals) + "   (%.0f s)" % (time.time() - t0), flush=True)
    print("%-6s" % "mean" + "".join("%16.3f" % (s / len(DOMAINS)) for s in sums))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("bench_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["speed", "quality"])
    a = ap.parse_args()
    alloy = os.path.abspath(os.path.join(a.build, "alloy"))
    if a.only != "speed":
        quality(alloy, a.bench_dir, a.threads)
    if a.only != "quality":
        speed(alloy, a.bench_dir, a.threads)


if __name__ == "__main__":
    main()
