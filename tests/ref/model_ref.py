"""model_ref.py — an independent PyTorch forward pass of Hugging Face
Qwen2 / Llama / Mistral checkpoints, to check `alloy logits` against.

Written from the transformers modeling code's math (no transformers import):
RMSNorm, rotate_half RoPE (with llama3 / linear rope_scaling), grouped-query
causal attention with an optional sliding window, SwiGLU MLP, tied or untied
lm_head. Weights are read with st.py and computed in float64, so the
reference is the exact value of the model that alloy approximates in f32.

usage: model_ref.py CASE [CASE ...]
         CASE = NAME:DIR:IDS:NPY:TOL   (IDS comma-separated; NPY alloy's logits)
         Prints one line per case; exits 1 if any fails.
       model_ref.py sharpen DIR [DIR ...]
         Multiply every q_proj / k_proj weight and bias by 8 in place. Random
         weights of std 0.02 give near-uniform attention, which would hide
         RoPE, masking and window bugs; x8 on q and k makes the scores x64.
       model_ref.py greedy DIR IDS N
         Print the N token ids that greedy decoding appends to IDS (full
         recomputation each step, float64; no stop tokens).
       model_ref.py ppl DIR IDS CTX
         Print the perplexity and the scored-token count of IDS cut into
         non-overlapping windows of CTX tokens, each scored on every token but
         its first (the definition `alloy ppl` documents).
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


def load(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, {k: v.to(torch.float64) for k, v in st.load_dir(d).items()}


def inv_freq(cfg, hd):
    # transformers computes these in float32
    base = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = torch.where(medium, smoothed, scaled)
    elif kind != "default":
        raise ValueError("rope_scaling type %r" % kind)
    return inv


def layer_window(cfg, layer):
    arch = cfg["architectures"][0]
    if arch == "MistralForCausalLM":
        return cfg.get("sliding_window") or 0
    if arch == "Qwen2ForCausalLM" and cfg.get("use_sliding_window") and cfg.get("sliding_window"):
        return cfg["sliding_window"] if layer >= cfg.get("max_window_layers", cfg["num_hidden_layers"]) else 0
    return 0


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, W, ids, rope=True, window=True):
    """Logits (T, vocab) in float64. rope/window=False are the negative controls."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    hd = cfg.get("head_dim") or D // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(ids)
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq(cfg, hd)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().double(), emb.sin().double()
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        lin = lambda h, name: h @ W[p + name + ".weight"].T + W.get(p + name + ".bias", 0)  # noqa: E731
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, "self_attn.q_proj").view(T, H, hd).transpose(0, 1)
        k = lin(h, "self_attn.k_proj").view(T, KV, hd).transpose(0, 1)
        v = lin(h, "self_attn.v_proj").view(T, KV, hd).transpose(0, 1)
        if rope:
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, dim=0), v.repeat_interleave(H // KV, dim=0)
        allowed = j <= i
        w = layer_window(cfg, layer) if window else 0
        if w:
            allowed = allowed & (j > i - w)
        att = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = (att @ v).transpose(0, 1).reshape(T, H * hd)
        x = x + lin(o, "self_attn.o_proj")
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(torch.nn.functional.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.T


def rel_err(a, ref):
    return float((a - ref).abs().max() / ref.abs().max())


def check(name, d, ids, npy, tol):
    cfg, W = load(d)
    ref = forward(cfg, W, ids)
    got = torch.from_numpy(np.load(npy)).double()
    if got.shape != ref.shape:
        print("FAIL %-28s shape %s, reference %s" % (name, tuple(got.shape), tuple(ref.shape)))
        return False
    err = rel_err(got, ref)
    # argmax must agree except where the reference's top two are a near tie
    top2 = ref.topk(2, dim=-1).values
    tie = (top2[:, 0] - top2[:, 1]) < tol * ref.abs().max()
    argmax_bad = int(((got.argmax(-1) != ref.argmax(-1)) & ~tie).sum())
    # negative controls: the comparison must be able to see RoPE, its scaling and the window
    controls = [("no-rope", rel_err(forward(cfg, W, ids, rope=False), ref))]
    if any(layer_window(cfg, layer) and layer_window(cfg, layer) < len(ids)
           for layer in range(cfg["num_hidden_layers"])):
        controls.append(("no-window", rel_err(forward(cfg, W, ids, window=False), ref)))
    if cfg.get("rope_scaling"):
        plain = dict(cfg, rope_scaling=None)
        controls.append(("no-rope-scaling", rel_err(forward(plain, W, ids), ref)))
    blind = [c for c, e in controls if e < 10 * tol]
    ok = err <= tol and argmax_bad == 0 and not blind
    print("%s %-28s T=%-3d rel_err=%.2e (tol %.0e) max_abs=%.2e logit_std=%.3f argmax_mismatch=%d %s" % (
        "ok  " if ok else "FAIL", name, len(ids), err, tol, float((got - ref).abs().max()), float(ref.std()),
        argmax_bad, " ".join("%s=%.1e" % c for c in controls) + (" (control too close: %s)" % blind if blind else "")))
    return ok


def sharpen(d):
    path = os.path.join(d, "model.safetensors")
    tensors = st.load_file(path)
    for name, t in tensors.items():
        if ".q_proj." in name or ".k_proj." in name:
            tensors[name] = (t.float() * 8).to(t.dtype)  # a power of two: exact in every dtype
    st.save_file(tensors, path)


def greedy(d, ids, n):
    cfg, W = load(d)
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(forward(cfg, W, ids)[-1].argmax())
        ids.append(nxt)
        out.append(nxt)
    return out


def ppl(d, ids, ctx):
    cfg, W = load(d)
    nll, scored = 0.0, 0
    for w0 in range(0, len(ids), ctx):
        win = ids[w0:w0 + ctx]
        if len(win) < 2:
            break
        logp = forward(cfg, W, win[:-1]).log_softmax(-1)
        nll -= float(logp[torch.arange(len(win) - 1), torch.tensor(win[1:])].sum())
        scored += len(win) - 1
    return math.exp(nll / scored), scored


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    if argv[0] == "greedy":
        print(",".join(str(t) for t in greedy(argv[1], [int(t) for t in argv[2].split(",")], int(argv[3]))))
        return 0
    if argv[0] == "ppl":
        p, n = ppl(argv[1], [int(t) for t in argv[2].split(",")], int(argv[3]))
        print("perplexity: %.9f\ntokens: %d" % (p, n))
        return 0
    if argv[0] == "sharpen":
        for d in argv[1:]:
            sharpen(d)
        return 0
    ok = True
    for case in argv:
        name, d, ids, npy, tol = case.split(":")
        ok &= check(name, d, [int(t) for t in ids.split(",")], npy, float(tol))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
