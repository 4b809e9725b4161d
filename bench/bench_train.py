"""bench_train.py — LoRA training speed: alloy vs the PyTorch reference.

Rank-16 LoRA on all seven projections of a random Qwen2-style model (hidden 512,
8 layers, ctx 256, batch 8), the same number of steps and threads on both sides;
prints tokens/s of each and the ratio (target >= 2x).

usage: /usr/bin/python3 bench/bench_train.py ALLOY [--dir CACHE] [--steps N] [--threads N]
"""
import argparse
import os
import random
import re
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
import train_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("alloy")
    ap.add_argument("--dir", default="/tmp/alloy-bench-train")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    model = os.path.join(a.dir, "model-d%d-l%d" % (a.dim, a.layers))
    if not os.path.exists(os.path.join(model, "config.json")):
        ns = argparse.Namespace(dir=model, arch="qwen2", vocab=2048, seed=0, tied=True, bias=False,
                                dtype="f32", layers=a.layers, dim=a.dim)
        train_ref.make_model(ns)
        # long enough context for the benchmark
        import json
        p = os.path.join(model, "config.json")
        cfg = json.load(open(p))
        cfg["max_position_embeddings"] = 4096
        json.dump(cfg, open(p, "w"))
    data = os.path.join(a.dir, "data.txt")
    if not os.path.exists(data):
        rng = random.Random(0)
        words = ["the", "model", "train", "alloy", "merge", "token", "layer", "in", "of", "weight", "then"]
        with open(data, "w") as f:
            f.write(" ".join(rng.choice(words) for _ in range(60000)))
    out = os.path.join(a.dir, "adapter")
    r = subprocess.run([a.alloy, "train", "-m", model, "-d", data, "-o", out, "--steps", str(a.steps),
                        "--batch", str(a.batch), "--ctx", str(a.ctx), "--lora-rank", "16", "--lora-alpha", "32",
                        "--threads", str(a.threads), "--log-every", "1"], capture_output=True, text=True)
    if r.returncode:
        sys.exit("alloy train failed: " + r.stderr)
    # tok/s over steps 2..N (step 1 includes first-touch page faults on both sides)
    lines = [l for l in r.stderr.splitlines() if l.startswith("step ")]
    tps = [float(re.search(r"([0-9.]+) tok/s", l).group(1)) for l in lines]
    ntok = a.batch * a.ctx
    # cumulative tok/s -> per-run time; use total after the first step
    t_all = ntok * len(tps) / tps[-1]
    t_first = ntok / tps[0]
    c_tps = ntok * (len(tps) - 1) / (t_all - t_first) if len(tps) > 1 else tps[0]

    torch.set_num_threads(a.threads)
    with open(os.path.join(model, "config.json")) as f:
        import json
        c = train_ref.Cfg(json.load(f))
    P = {k: v.float() for k, v in train_ref.st.load_dir(model).items()}
    g = torch.Generator().manual_seed(0)
    lora = {}
    for l in range(c.L):
        for m in train_ref.LIN:
            w = P["model.layers.%d.%s.%s.weight" % (l, train_ref.PARENT[m], m)]
            k = "base_model.model.model.layers.%d.%s.%s.lora_A.weight" % (l, train_ref.PARENT[m], m)
            lora[k] = ((torch.rand(16, w.shape[1], generator=g) * 2 - 1) / w.shape[1] ** 0.5).requires_grad_(True)
            lora[k.replace("lora_A", "lora_B")] = torch.zeros(w.shape[0], 16, requires_grad=True)
    opt = torch.optim.AdamW(list(lora.values()), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tok = torch.randint(0, 200, (a.batch, a.ctx + 1), generator=g)
    times = []
    for s in range(a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = train_ref.forward(c, P, lora, 2.0, tok[:, :-1], tok[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lora.values()), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    t_tps = ntok * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else ntok / times[0]
    print("train LoRA r16 d%d L%d ctx %d batch %d, %d threads: alloy %.0f tok/s, torch %.0f tok/s, ratio %.2fx"
          % (a.dim, a.layers, a.ctx, a.batch, a.threads, c_tps, t_tps, c_tps / t_tps))


if __name__ == "__main__":
    main()
