"""gguf_ref.py — helpers of test_gguf.sh: random Qwen2/Llama checkpoints, a
PyTorch reference forward pass (Hugging Face semantics: rotate_half RoPE,
GQA, RMSNorm, SwiGLU, llama3 RoPE scaling), and logits comparison.

The reference is written from the transformers model definitions' math, in
float64, independently of alloy and of llama.cpp, so the test checks that
alloy's GGUF (including llama.cpp's q/k row permutation for "llama") makes
llama.cpp compute the same function as the Hugging Face checkpoint.

  make DIR --arch qwen2|llama --tokenizer TOKDIR --seed S
  ref DIR --ids 1,2,3 -o OUT.npy
  compare A.npy B.npy --rtol R [--label L]   (exit 1 on failure)
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
import st  # noqa: E402

CONFIGS = {
    # Qwen2-shaped: GQA, q/k/v biases, tied embeddings, Qwen3 tokenizer
    # (151669 tokens padded to 151936).
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=64,
                  intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, vocab_size=151936,
                  bos_token_id=151643, eos_token_id=151645, torch_dtype="float32"),
    # Llama-shaped: untied, no biases, rope theta 5e5 with llama3 scaling
    # (small original context so that the scaling changes several
    # frequencies), head_dim != hidden/heads, Llama-3 tokenizer.
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64,
                  intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=32),
                  vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
                  attention_bias=False, mlp_bias=False, torch_dtype="float32"),
}


def make(args):
    cfg = CONFIGS[args.arch]
    g = torch.Generator().manual_seed(args.seed)
    E, F, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    H, KV, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    hd = cfg.get("head_dim", E // H)
    bias = args.arch == "qwen2"

    # Larger than the usual 0.02 so that logits are far from uniform and an
    # argmax comparison means something.
    def lin(o, i, gain=1.0):
        return torch.randn(o, i, generator=g) * (gain / math.sqrt(i))

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    w = {"model.embed_tokens.weight": torch.randn(V, E, generator=g)}
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(E)
        w[p + "self_attn.q_proj.weight"] = lin(H * hd, E, 2.0)
        w[p + "self_attn.k_proj.weight"] = lin(KV * hd, E, 2.0)
        w[p + "self_attn.v_proj.weight"] = lin(KV * hd, E)
        if bias:
            w[p + "self_attn.q_proj.bias"] = 0.5 * torch.randn(H * hd, generator=g)
            w[p + "self_attn.k_proj.bias"] = 0.5 * torch.randn(KV * hd, generator=g)
            w[p + "self_attn.v_proj.bias"] = 0.2 * torch.randn(KV * hd, generator=g)
        w[p + "self_attn.o_proj.weight"] = lin(E, H * hd)
        w[p + "post_attention_layernorm.weight"] = norm(E)
        w[p + "mlp.gate_proj.weight"] = lin(F, E)
        w[p + "mlp.up_proj.weight"] = lin(F, E)
        w[p + "mlp.down_proj.weight"] = lin(E, F)
    w["model.norm.weight"] = norm(E)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = lin(V, E, 4.0)
    st.save_dir(w, args.dir, config=cfg)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.dir, f))


def rms(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def inv_freqs(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def ref(args):
    with open(os.path.join(args.dir, "config.json")) as f:
        cfg = json.load(f)
    w = {k: v.to(torch.float64) for k, v in st.load_dir(args.dir).items()}
    ids = torch.tensor([int(s) for s in args.ids.split(",")])
    E, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or E // H
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freqs(cfg, hd)[None, :]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    x = w["model.embed_tokens.weight"][ids]

    def linear(h, name):
        y = h @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj").view(T, H, hd).transpose(0, 1)
        k = linear(h, p + "self_attn.k_proj").view(T, KV, hd).transpose(0, 1)
        v = linear(h, p + "self_attn.v_proj").view(T, KV, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, 0)
        v = v.repeat_interleave(H // KV, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1)
        o = (att @ v).transpose(0, 1).reshape(T, H * hd)
        x = x + linear(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = linear(h, p + "mlp.gate_proj")
        x = x + linear(torch.nn.functional.silu(g) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    np.save(args.o, (x @ head.T).to(torch.float32).numpy())


def compare(args):
    a, b = np.load(args.a).astype(np.float64), np.load(args.b).astype(np.float64)
    if a.shape != b.shape:
        print(f"  {args.label}: shape {a.shape} != {b.shape}")
        sys.exit(1)
    scale = np.abs(b).max()
    rel = np.abs(a - b).max() / scale
    am, bm = a.argmax(-1), b.argmax(-1)
    agree = (am == bm).mean()
    # Positions whose top-2 margin in the reference is below the tolerance
    # may legitimately flip; count disagreements only elsewhere.
    top2 = np.sort(b, -1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * args.rtol * scale
    bad = int(((am != bm) & clear).sum())
    ok = rel <= args.rtol and (bad == 0 if args.argmax else True)
    print(f"  {args.label}: max|diff|/max|ref| = {rel:.2e} (tol {args.rtol:.0e}), max|ref| = {scale:.2f}, "
          f"argmax agree {agree * 100:.0f}% of {len(am)}, clear-margin mismatches {bad} -> "
          f"{'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--arch", choices=sorted(CONFIGS), required=True)
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("ref")
    r.add_argument("dir")
    r.add_argument("--ids", required=True)
    r.add_argument("-o", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--rtol", type=float, required=True)
    c.add_argument("--label", default="logits")
    c.add_argument("--argmax", action="store_true", help="also require equal argmax where the margin is clear")
    args = ap.parse_args()
    {"make": make, "ref": ref, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
