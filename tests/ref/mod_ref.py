"""mod_ref.py — PyTorch reference of MoD mixtures (src/mix), to check
`alloy logits` / `alloy generate` on mixtures of random checkpoints.

The members' logits come from model_ref.py's independent float64 forward
pass; the mixture is computed from its definition (arXiv 2411.00406, Eq. 1):
    arithmetic  log p = log Σ_i α_i softmax(z_i)
    geometric   log p = log_softmax(Σ_i α_i log_softmax(z_i))
with α = weights / Σ weights.

usage: mod_ref.py tok QWEN_TOKENIZER_DIR OUT_DIR [perturb]
         A small byte-level BPE tokenizer (ids < 384) cut from Qwen3's, for
         random models of vocab 384; `perturb` swaps two merges.
       mod_ref.py config SRC.json OUT.json key=value ...
         A config.json with some keys replaced (ints).
       mod_ref.py check NAME RULE W1,W2,.. IDS NPY TOL DIR [DIR ...]
         Compare alloy's mixed log-probs (NPY, [T, vocab]) with the reference.
       mod_ref.py same NPY_A NPY_B TOL
         log_softmax(A) == log_softmax(B) up to TOL (max abs).
       mod_ref.py greedy RULE W1,W2,.. IDS N DIR [DIR ...]
         Greedy continuation of IDS from the reference mixture (N tokens).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref  # noqa: E402


def make_tok(src, out, perturb):
    with open(os.path.join(src, "tokenizer.json")) as f:
        tj = json.load(f)
    keep = 370
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < keep}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(m)
    if perturb:
        merges[3], merges[4] = merges[4], merges[3]
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = merges
    added = []
    for k, t in enumerate(x for x in tj["added_tokens"] if x["content"] in ("<|endoftext|>", "<|im_start|>",
                                                                             "<|im_end|>")):
        t = dict(t, id=380 + k)
        added.append(t)
    tj["added_tokens"] = added
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False)
    cfg = os.path.join(src, "tokenizer_config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            tc = json.load(f)
        tc.pop("added_tokens_decoder", None)
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(tc, f, ensure_ascii=False)


def mixed_logp(rule, weights, dirs, ids):
    w = torch.tensor(weights, dtype=torch.float64)
    a = w / w.sum()
    lps = []
    for d in dirs:
        cfg, W = model_ref.load(d)
        lps.append(model_ref.forward(cfg, W, ids).log_softmax(-1))
    lp = torch.stack(lps)  # (K, T, V)
    if rule == "arithmetic":
        keep = a > 0
        return torch.logsumexp(lp[keep] + a[keep].log()[:, None, None], dim=0)
    return (lp * a[:, None, None]).sum(0).log_softmax(-1)


def check(name, rule, weights, ids, npy, tol, dirs):
    ref = mixed_logp(rule, weights, dirs, ids)
    got = torch.from_numpy(np.load(npy)).double()
    if got.shape != ref.shape:
        print("FAIL %-24s shape %s, reference %s" % (name, tuple(got.shape), tuple(ref.shape)))
        return False
    err = float((got - ref).abs().max() / ref.abs().max())
    # negative control: the plain first member must be far from the mixture
    cfg, W = model_ref.load(dirs[0])
    first = model_ref.forward(cfg, W, ids).log_softmax(-1)
    ctrl = float((first - ref).abs().max() / ref.abs().max())
    single = len(set(dirs)) == 1 or sum(1 for x in weights if x > 0) == 1
    ok = err <= tol and (single or ctrl > 10 * tol)
    print("%s %-24s K=%d %s T=%d rel_err=%.2e (tol %.0e) control(first member)=%.1e" % (
        "ok  " if ok else "FAIL", name, len(dirs), rule, len(ids), err, tol, ctrl))
    return ok


def main(argv):
    cmd = argv[0] if argv else ""
    if cmd == "tok":
        make_tok(argv[1], argv[2], len(argv) > 3 and argv[3] == "perturb")
        return 0
    if cmd == "config":
        with open(argv[1]) as f:
            cfg = json.load(f)
        for kv in argv[3:]:
            k, v = kv.split("=")
            cfg[k] = int(v)
        with open(argv[2], "w") as f:
            json.dump(cfg, f, indent=1)
        return 0
    if cmd == "check":
        name, rule, ws, ids, npy, tol = argv[1:7]
        ok = check(name, rule, [float(x) for x in ws.split(",")], [int(x) for x in ids.split(",")], npy,
                   float(tol), argv[7:])
        return 0 if ok else 1
    if cmd == "same":
        a = torch.from_numpy(np.load(argv[1])).double().log_softmax(-1)
        b = torch.from_numpy(np.load(argv[2])).double().log_softmax(-1)
        d = float((a - b).abs().max())
        ok = a.shape == b.shape and d <= float(argv[3])
        print("%s same %s %s max_abs=%.2e" % ("ok  " if ok else "FAIL", os.path.basename(argv[1]),
                                              os.path.basename(argv[2]), d))
        return 0 if ok else 1
    if cmd == "greedy":
        rule, ws, ids, n = argv[1], [float(x) for x in argv[2].split(",")], [int(x) for x in argv[3].split(",")], \
            int(argv[4])
        out = []
        for _ in range(n):
            nxt = int(mixed_logp(rule, ws, argv[5:], ids)[-1].argmax())
            ids.append(nxt)
            out.append(nxt)
        print(",".join(str(t) for t in out))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
