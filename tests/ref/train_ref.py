"""train_ref.py — PyTorch reference for alloy's training engine (src/train).

  make-model DIR --arch qwen2|llama [--vocab V] [--seed S] [--tied] [--dtype f32|bf16] [--layers L] [--dim D]
      A random tiny Qwen2/Llama checkpoint (config.json, model.safetensors) with a
      tiny byte-level BPE tokenizer.json (256 byte tokens, a few merges, <|endoftext|>).
  compare DUMP_DIR MODEL_DIR --mode full|lora [--rank R --alpha A --targets LIST]
          --lr LR --warmup W --wd WD --clip C
      Re-runs the steps dumped by `alloy train --dump-ref DUMP_DIR` in PyTorch (same batches),
      an independent implementation of the model, loss, clipping, schedule and
      torch.optim.AdamW, and compares the loss, every gradient of every step and the
      final parameters. Prints the max relative difference per tensor; exits 1 above 1e-4.

The model is written from the architecture description (RMSNorm, HF rotate_half RoPE,
causal GQA attention, SwiGLU, tied/untied lm_head), without transformers.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

LIN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PARENT = {m: ("self_attn" if m in LIN[:4] else "mlp") for m in LIN}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_tokenizer():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("t", "h"), ("Ġ", "t"), ("e", "r"), ("i", "n"), ("Ġt", "he"), ("h", "e"), ("a", "n")]
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    # merges must only use tokens that exist when applied
    eos = len(vocab)
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": eos, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }
    return tok, eos + 1


def make_model(a):
    g = torch.Generator().manual_seed(a.seed)
    tok, ntok = tiny_tokenizer()
    V = max(a.vocab, ntok)
    D, L, Hq, Hkv, hd, Fd = a.dim, a.layers, 4, 2, a.dim // 4, a.dim * 3
    qwen = a.arch == "qwen2"
    cfg = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"], "model_type": a.arch,
           "vocab_size": V, "hidden_size": D, "intermediate_size": Fd, "num_hidden_layers": L,
           "num_attention_heads": Hq, "num_key_value_heads": Hkv, "head_dim": hd,
           "max_position_embeddings": 64, "rope_theta": 10000.0 if qwen else 500000.0,
           "rms_norm_eps": 1e-6 if qwen else 1e-5, "tie_word_embeddings": bool(a.tied), "hidden_act": "silu",
           "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32", "eos_token_id": ntok - 1}
    if not qwen:
        cfg["attention_bias"] = bool(a.bias)

    def rnd(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    t = {"model.embed_tokens.weight": rnd(V, D, s=0.5), "model.norm.weight": 1 + rnd(D, s=0.1)}
    dims = {"q_proj": (Hq * hd, D), "k_proj": (Hkv * hd, D), "v_proj": (Hkv * hd, D), "o_proj": (D, Hq * hd),
            "gate_proj": (Fd, D), "up_proj": (Fd, D), "down_proj": (D, Fd)}
    for l in range(L):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = 1 + rnd(D, s=0.1)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(D, s=0.1)
        for m in LIN:
            t[p + PARENT[m] + "." + m + ".weight"] = rnd(*dims[m], s=1 / math.sqrt(dims[m][1]))
        if qwen or a.bias:
            for m in ["q_proj", "k_proj", "v_proj"] + ([] if qwen else ["o_proj"]):
                t[p + "self_attn." + m + ".bias"] = rnd(dims[m][0], s=0.1)
    if not a.tied:
        t["lm_head.weight"] = rnd(V, D, s=1 / math.sqrt(D))
    if a.dtype == "bf16":
        t = {k: v.to(torch.bfloat16) for k, v in t.items()}
    st.save_dir(t, a.dir, config=cfg)
    with open(os.path.join(a.dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(a.dir, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "add_bos_token": False}, f)


# ---- the model ----

class Cfg:
    def __init__(self, d):
        self.V, self.D, self.F = d["vocab_size"], d["hidden_size"], d["intermediate_size"]
        self.L, self.Hq = d["num_hidden_layers"], d["num_attention_heads"]
        self.Hkv = d.get("num_key_value_heads", self.Hq)
        self.hd = d.get("head_dim", self.D // self.Hq)
        self.theta, self.eps = d.get("rope_theta", 10000.0), d.get("rms_norm_eps", 1e-6)
        self.tied = d.get("tie_word_embeddings", False)


def rmsnorm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(c, P, lora, scale, tokens, targets):
    B, T = tokens.shape
    inv = 1.0 / (c.theta ** (torch.arange(0, c.hd, 2, dtype=torch.int64).float() / c.hd))
    fr = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat((fr, fr), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)

    def lin(l, m, x):
        p = "model.layers.%d.%s.%s." % (l, PARENT[m], m)
        y = F.linear(x, P[p + "weight"], P.get(p + "bias"))
        k = "base_model.model." + p + "lora_A.weight"
        if k in lora:
            y = y + scale * F.linear(F.linear(x, lora[k]), lora[k.replace("lora_A", "lora_B")])
        return y

    x = P["model.embed_tokens.weight"][tokens]
    for l in range(c.L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, P[p + "input_layernorm.weight"], c.eps)
        q = lin(l, "q_proj", h).view(B, T, c.Hq, c.hd).transpose(1, 2)
        k = lin(l, "k_proj", h).view(B, T, c.Hkv, c.hd).transpose(1, 2)
        v = lin(l, "v_proj", h).view(B, T, c.Hkv, c.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = c.Hq // c.Hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(c.hd) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, c.Hq * c.hd)
        x = x + lin(l, "o_proj", y)
        h = rmsnorm(x, P[p + "post_attention_layernorm.weight"], c.eps)
        x = x + lin(l, "down_proj", F.silu(lin(l, "gate_proj", h)) * lin(l, "up_proj", h))
    x = rmsnorm(x, P["model.norm.weight"], c.eps)
    W = P["model.embed_tokens.weight"] if c.tied else P["lm_head.weight"]
    logits = x @ W.t()
    return F.cross_entropy(logits.view(-1, c.V), targets.reshape(-1).long(), ignore_index=-1)


def lr_at(lr, step, warmup, total):
    if step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def reldiff(a, b):
    d = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    m = b.double().abs().max().item() if b.numel() else 0.0
    return d / max(m, 1e-6)


def compare(a):
    dump = st.load_file(os.path.join(a.dump, "model.safetensors"))
    with open(os.path.join(a.model, "config.json")) as f:
        c = Cfg(json.load(f))
    base = {k: v.float() for k, v in st.load_dir(a.model).items()}
    nsteps = sum(1 for k in dump if k.endswith(".loss"))
    worst, bad = 0.0, []

    def check(name, got, ref, tol=1e-4):
        nonlocal worst
        r = reldiff(got, ref)
        worst = max(worst, r)
        if a.verbose or r > tol:
            print("  %-80s max rel diff %.2e%s" % (name, r, "  FAIL" if r > tol else ""))
        if r > tol:
            bad.append(name)

    if a.mode == "full":
        P = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        lora, scale = {}, 0.0
        train = P
    else:
        P = base
        lora = {k[5:]: v.clone().requires_grad_(True) for k, v in dump.items() if k.startswith("init.")}
        scale = a.alpha / a.rank
        train = lora
        for k, v in lora.items():
            if "lora_B" in k:
                assert v.abs().max().item() == 0.0, k + " not zero-initialised"
            else:
                bound = 1 / math.sqrt(v.shape[1])
                assert v.abs().max().item() <= bound and v.std().item() > 0.3 * bound, k + " bad kaiming init"
        mods = sorted({k.split(".")[-3] for k in lora})
        assert mods == sorted(a.targets.split(",")), (mods, a.targets)
    for k, v in train.items():
        check("init." + k, dump["init." + k], v.detach())
    names = list(train.keys())
    decay = [train[k] for k in names if train[k].dim() == 2]
    nodecay = [train[k] for k in names if train[k].dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    # Each step starts from C's parameters (s<k>.param.*): the gradients are then a
    # strict check of forward+backward, and torch's AdamW fed with C's gradients a
    # strict check of clipping, schedule and AdamW (no chaotic drift through Adam's
    # sign-like first steps). The free-running torch loss is checked separately.
    free = {k: v.detach().clone().requires_grad_(True) for k, v in train.items()}
    fopt = torch.optim.AdamW([{"params": [free[k] for k in names if free[k].dim() == 2], "weight_decay": a.wd},
                              {"params": [free[k] for k in names if free[k].dim() != 2], "weight_decay": 0.0}],
                             lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    for s in range(nsteps):
        tok, tgt = dump["s%d.tokens" % s].long(), dump["s%d.targets" % s]
        with torch.no_grad():
            for k in names:
                if s > 0:
                    check("s%d.param.%s" % (s, k), dump["s%d.param.%s" % (s, k)], train[k].detach())
                train[k].copy_(dump["s%d.param.%s" % (s, k)])
        opt.zero_grad()
        loss = forward(c, P if a.mode == "lora" else train, lora if a.mode == "lora" else {}, scale, tok, tgt)
        loss.backward()
        lc = dump["s%d.loss" % s].item()
        rl = abs(lc - loss.item()) / max(abs(loss.item()), 1e-6)
        for k in names:
            check("s%d.grad.%s" % (s, k), dump["s%d.grad.%s" % (s, k)], train[k].grad)
            train[k].grad = dump["s%d.grad.%s" % (s, k)].clone()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_([train[k] for k in names], a.clip)
        for gr in opt.param_groups + fopt.param_groups:
            gr["lr"] = lr_at(a.lr, s, a.warmup, nsteps)
        opt.step()
        # free-running torch model (its own parameters from the start)
        fopt.zero_grad()
        floss = forward(c, P if a.mode == "lora" else free, free if a.mode == "lora" else {}, scale, tok, tgt)
        floss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_([free[k] for k in names], a.clip)
        fopt.step()
        rf = abs(lc - floss.item()) / max(abs(floss.item()), 1e-6)
        print("step %d: loss C %.6f torch %.6f (rel %.1e), free-running torch %.6f (rel %.1e)"
              % (s, lc, loss.item(), rl, floss.item(), rf))
        if rl > 1e-5 or rf > 1e-4:
            bad.append("s%d.loss" % s)
    for k in names:
        check("final." + k, dump["final." + k], train[k].detach())
    print("%d steps, %d tensors: worst max rel diff %.2e" % (nsteps, len(names), worst))
    if bad:
        print("FAIL: %d tensors above tolerance" % len(bad))
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("dir")
    m.add_argument("--arch", default="qwen2")
    m.add_argument("--vocab", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--tied", action="store_true")
    m.add_argument("--bias", action="store_true")
    m.add_argument("--dtype", default="f32")
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--dim", type=int, default=32)
    c = sub.add_parser("compare")
    c.add_argument("dump")
    c.add_argument("model")
    c.add_argument("--mode", default="full")
    c.add_argument("--rank", type=int, default=16)
    c.add_argument("--alpha", type=float, default=32)
    c.add_argument("--targets", default=",".join(LIN))
    c.add_argument("--lr", type=float, default=2e-4)
    c.add_argument("--warmup", type=int, default=0)
    c.add_argument("--wd", type=float, default=0.0)
    c.add_argument("--clip", type=float, default=1.0)
    c.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    make_model(a) if a.cmd == "make-model" else compare(a)


if __name__ == "__main__":
    main()
