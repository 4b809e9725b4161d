#!/usr/bin/python3
"""test_merge_ref.py — alloy merge against a PyTorch reference of mergekit's methods.

Generates small Qwen2-shaped checkpoints (f32, bf16 and f16, tied and untied
embeddings, biases, sharded and single-file inputs), writes a mergekit recipe
per case, runs `build/alloy merge`, and compares every output tensor with the
reference in mergekit_ref.py (f32: max |diff| / max |ref| <= 1e-5; bf16: 1e-2;
f16: 2e-3).
DARE (dare_*) is compared with the formula applied to alloy's documented keep-mask
(mergekit_ref.alloy_dare_mask); della* is checked structurally by mergekit_ref.check_random.
Usage: test_merge_ref.py ALLOY_BIN
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mergekit_ref  # noqa: E402
import st  # noqa: E402

ALLOY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/alloy")
TMP = tempfile.mkdtemp(prefix="alloy-ref-")
N_LAYERS = 3
results = []


def qwen_tensors(gen, hidden=16, inter=40, vocab=64, layers=N_LAYERS, tied=False, bias=True):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.02  # noqa: E731
    t = {"model.embed_tokens.weight": r(vocab, hidden)}
    for i in range(layers):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = 1 + r(hidden)
        for n, (o, ii) in {"q_proj": (hidden, hidden), "k_proj": (hidden // 2, hidden), "v_proj": (hidden // 2, hidden),
                           "o_proj": (hidden, hidden)}.items():
            t[p + "self_attn.%s.weight" % n] = r(o, ii)
            if bias and n != "o_proj":
                t[p + "self_attn.%s.bias" % n] = r(o)
        t[p + "post_attention_layernorm.weight"] = 1 + r(hidden)
        t[p + "mlp.gate_proj.weight"] = r(inter, hidden)
        t[p + "mlp.up_proj.weight"] = r(inter, hidden)
        t[p + "mlp.down_proj.weight"] = r(hidden, inter)
    t["model.norm.weight"] = 1 + r(hidden)
    if not tied:
        t["lm_head.weight"] = r(vocab, hidden)
    return t


def config(layers=N_LAYERS, tied=False, dtype="float32", hidden=16, inter=40, vocab=64):
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": vocab, "tie_word_embeddings": tied, "torch_dtype": dtype,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128}


def make_family(name, dtype=torch.float32, tied=False, n_variants=3, shard=None, seed=0, shape=None):
    """Base + fine-tunes whose deltas have mixed signs and magnitudes. shape:
    dict(hidden, inter, vocab, layers) for larger tensors."""
    gen = torch.Generator().manual_seed(seed)
    shape = shape or {}
    base = qwen_tensors(gen, tied=tied, **shape)
    dirs = []
    cfg_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    for v in range(n_variants + 1):
        if v == 0:
            t = base
        else:
            t = {}
            for k, x in base.items():
                d = torch.randn(x.shape, generator=gen) * 0.01 * v
                d = d * (torch.rand(x.shape, generator=gen) < 0.7)  # some exact zeros
                t[k] = x + d
        t = {k: x.to(dtype) for k, x in t.items()}
        d = os.path.join(TMP, "%s-%s" % (name, "base" if v == 0 else "ft%d" % v))
        st.save_dir(t, d, config(tied=tied, dtype=cfg_dtype, **shape), shard_max=shard if v == 1 else None)
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump({"model": {"type": "BPE", "vocab": {}, "merges": []}, "marker": name}, f)
        dirs.append(d)
    return dirs


def yaml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    return repr(v)


def write_recipe(path, method, base, models, gparams=None, extra=""):
    lines = ["merge_method: %s" % method]
    if base:
        lines.append("base_model: %s" % base)
    lines.append("models:")
    for m, p in models:
        lines.append("  - model: %s" % m)
        if p:
            lines.append("    parameters:")
            for k, v in p.items():
                lines.append("      %s: %s" % (k, yaml_value(v)))
    if gparams:
        lines.append("parameters:")
        for k, v in gparams.items():
            lines.append("  %s: %s" % (k, yaml_value(v)))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + extra)


def run_alloy(*args, expect_ok=True):
    p = subprocess.run([ALLOY, *args], capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        raise RuntimeError("alloy %s failed: %s" % (" ".join(args), p.stderr.strip()))
    return p


def rel_err(a, b):
    a, b = a.float(), b.float()
    den = b.abs().max().item()
    return (a - b).abs().max().item() / (den if den > 0 else 1.0)


def record(name, ok, msg=""):
    results.append((name, ok))
    print("%s %s %s" % ("ok  " if ok else "FAIL", name, msg), flush=True)


def check_method(case, method, dirs, mparams, gparams, use_base=True, base_in_models=False, dtype=torch.float32,
                 n_models=None, seed=None, names_filter=None):
    base_dir, fts = dirs[0], dirs[1:]
    fts = fts[:n_models] if n_models else fts
    models = [(d, mp) for d, mp in zip(fts, mparams)]
    if base_in_models:
        models = [(base_dir, {})] + models
    recipe = os.path.join(TMP, case + ".yml")
    write_recipe(recipe, method, base_dir if use_base else None, models, gparams)
    out = os.path.join(TMP, "out-" + case)
    args = ["merge", recipe, out, "--threads", "2"]
    if seed is not None:
        args += ["--seed", str(seed)]
    run_alloy(*args)
    got = st.load_dir(out)
    base_t = st.load_dir(base_dir)
    ins = [st.load_dir(d) for d in fts]
    tol = {torch.float32: 1e-5, torch.float16: 2e-3}.get(dtype, 1e-2)
    worst, worst_name = 0.0, ""
    if set(got) != set(base_t):
        return record(case, False, "tensor names differ: %s" % sorted(set(got) ^ set(base_t))[:4])
    for name in base_t:
        if names_filter and names_filter not in name:
            continue
        xs = [m[name].float() for m in ins]
        b = base_t[name].float() if use_base else None
        if got[name].dtype != dtype:
            return record(case, False, "%s: dtype %s, expected %s" % (name, got[name].dtype, dtype))
        if method.startswith("dare_"):
            # alloy's mask is a documented function of (seed, tensor, model, element):
            # the formula with that mask, exactly
            masks = [mergekit_ref.alloy_dare_mask(seed or 0, name, i, b.numel(), float(p["density"]))
                     for i, p in enumerate(mparams[:len(xs)])]
            ref = mergekit_ref.gta(method, b, xs, mparams, gparams or {}, masks=masks).to(dtype).float()
            e = rel_err(got[name], ref)
            if e > worst:
                worst, worst_name = e, name
            continue
        if method in mergekit_ref.RANDOM_METHODS:
            ok, msg = mergekit_ref.check_random(method, b, xs, mparams, gparams, got[name].float())
            if not ok:
                return record(case, False, "%s: %s" % (name, msg))
            continue
        members = xs
        if base_in_models and not use_base:
            members = [base_t[name].float()] + xs
        ref = mergekit_ref.merge(method, b, members, ([{"weight": 1.0}] if base_in_models and not use_base else [])
                                 + list(mparams), gparams or {})
        ref = ref.to(dtype).float()
        e = rel_err(got[name], ref)
        if e > worst:
            worst, worst_name = e, name
    record(case, worst <= tol, "max rel err %.2e (%s)" % (worst, worst_name))


def main():
    if not os.access(ALLOY, os.X_OK):
        print("alloy binary not found: %s" % ALLOY)
        return 1
    f32 = make_family("f32", torch.float32, tied=False, shard=3000)
    b16 = make_family("bf16", torch.bfloat16, tied=True, seed=1)
    w3 = [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]
    w3d = [{"weight": 0.6, "density": 0.5}, {"weight": 0.3, "density": 0.7}, {"weight": 0.4, "density": 0.3}]
    for fam, dt in ((f32, torch.float32), (b16, torch.bfloat16)):
        tag = "f32" if dt == torch.float32 else "bf16"
        check_method("linear-" + tag, "linear", fam, w3, None, use_base=False, dtype=dt)
        check_method("linear-nonorm-" + tag, "linear", fam, w3, {"normalize": False}, use_base=False, dtype=dt)
        check_method("task_arithmetic-" + tag, "task_arithmetic", fam, w3, {"lambda": 0.8}, dtype=dt)
        check_method("ties-" + tag, "ties", fam, w3d, None, dtype=dt, base_in_models=True)
        check_method("ties-nonorm-" + tag, "ties", fam, w3d, {"normalize": False, "lambda": 1.5}, dtype=dt)
        check_method("breadcrumbs-" + tag, "breadcrumbs", fam,
                     [dict(d, gamma=0.05) for d in w3d], None, dtype=dt)
        check_method("breadcrumbs_ties-" + tag, "breadcrumbs_ties", fam,
                     [dict(d, gamma=0.02) for d in w3d], None, dtype=dt)
        check_method("slerp-" + tag, "slerp", fam, [{}], {"t": 0.3}, dtype=dt, n_models=1)
        check_method("nuslerp-" + tag, "nuslerp", fam, [{"weight": 0.7}, {"weight": 0.4}], None, dtype=dt,
                     use_base=False, n_models=2)
        check_method("nuslerp-base-" + tag, "nuslerp", fam, [{"weight": 0.7}, {"weight": 0.4}],
                     {"nuslerp_row_wise": True, "nuslerp_flatten": False}, dtype=dt, n_models=2)
        check_method("nuslerp-rows-" + tag, "nuslerp", fam, [{"weight": 0.7}, {"weight": 0.4}],
                     {"nuslerp_flatten": False}, dtype=dt, use_base=False, n_models=2)
        check_method("multislerp-" + tag, "multislerp", fam, w3, None, dtype=dt, use_base=False)
        check_method("multislerp-base-" + tag, "multislerp", fam, w3, None, dtype=dt)
        check_method("karcher-" + tag, "karcher", fam, [{}, {}, {}], {"max_iter": 20}, dtype=dt, use_base=False)
        check_method("model_stock-" + tag, "model_stock", fam, [{}, {}, {}], None, dtype=dt)
        check_method("model_stock-fw-" + tag, "model_stock", fam, [{}, {}, {}], {"filter_wise": True}, dtype=dt)
        check_method("sce-" + tag, "sce", fam, [{}, {}, {}], {"select_topk": 0.5}, dtype=dt)
        check_method("nearswap-" + tag, "nearswap", fam, [{}], {"t": 0.005}, dtype=dt, n_models=1)
        check_method("dare_ties-" + tag, "dare_ties", fam, w3d, None, dtype=dt, seed=7)
        check_method("dare_linear-" + tag, "dare_linear", fam, w3d, None, dtype=dt, seed=7)
        check_method("della-" + tag, "della", fam, [dict(d, epsilon=0.1) for d in w3d], None, dtype=dt, seed=3)
        check_method("della_linear-" + tag, "della_linear", fam, [dict(d, epsilon=0.1) for d in w3d], None,
                     dtype=dt, seed=3)
    # Tensors of >= 2^15 elements take the streaming rank cuts (merge/rankcut.c)
    # instead of the exact select (TIES, breadcrumbs, SCE's variance cut):
    # bf16 deltas (large tie groups) and f32.
    big = {"hidden": 64, "inter": 96, "vocab": 8192, "layers": 1}
    for dt in (torch.bfloat16, torch.float32):
        tag = "big-" + ("bf16" if dt == torch.bfloat16 else "f32")
        fam = make_family(tag, dt, seed=5, shape=big)
        check_method("ties-" + tag, "ties", fam, w3d, None, dtype=dt)
        check_method("ties-dense-" + tag, "ties", fam, [dict(d, density=0.95) for d in w3d], None, dtype=dt)
        check_method("ties-rescale-" + tag, "ties", fam, w3d, {"rescale": True}, dtype=dt)
        check_method("breadcrumbs_ties-" + tag, "breadcrumbs_ties", fam, [dict(d, gamma=0.05) for d in w3d], None,
                     dtype=dt)
        check_method("task_arithmetic-" + tag, "task_arithmetic", fam, w3, None, dtype=dt)
        check_method("linear-" + tag, "linear", fam, w3, None, use_base=False, dtype=dt)
        check_method("dare_ties-" + tag, "dare_ties", fam, w3d, None, dtype=dt, seed=11)
        check_method("slerp-" + tag, "slerp", fam, [{}], {"t": 0.3}, dtype=dt, n_models=1)
        check_method("sce-" + tag, "sce", fam, [{}, {}, {}], {"select_topk": 0.3}, dtype=dt)
    # f16 checkpoints: the 16-bit scan, the kernel's f16 loop (whole vectors
    # of 32; the rest, small biases, the generic blocks), linear's (also
    # multislerp's output pass) and slerp's where the CPU has them; small
    # tensors and streamed rank cuts.
    for tag, shape in (("f16", None), ("big-f16", big)):
        fam = make_family(tag, torch.float16, tied=True, seed=9, shape=shape)
        dt = torch.float16
        check_method("ties-" + tag, "ties", fam, w3d, None, dtype=dt)
        check_method("ties-nonorm-" + tag, "ties", fam, w3d, {"normalize": False, "lambda": 1.5}, dtype=dt)
        check_method("ties-rescale-" + tag, "ties", fam, w3d, {"rescale": True}, dtype=dt)
        check_method("breadcrumbs_ties-" + tag, "breadcrumbs_ties", fam, [dict(d, gamma=0.05) for d in w3d], None,
                     dtype=dt)
        check_method("task_arithmetic-" + tag, "task_arithmetic", fam, w3, {"lambda": 0.8}, dtype=dt)
        check_method("dare_ties-" + tag, "dare_ties", fam, w3d, None, dtype=dt, seed=13)
        check_method("dare_linear-" + tag, "dare_linear", fam, w3d, None, dtype=dt, seed=13)
        check_method("linear-" + tag, "linear", fam, w3, None, use_base=False, dtype=dt)
        check_method("linear-nonorm-" + tag, "linear", fam, w3, {"normalize": False}, use_base=False, dtype=dt)
        check_method("slerp-" + tag, "slerp", fam, [{}], {"t": 0.3}, dtype=dt, n_models=1)
        check_method("multislerp-" + tag, "multislerp", fam, w3, None, dtype=dt, use_base=False)
        check_method("multislerp-base-" + tag, "multislerp", fam, w3, None, dtype=dt)
    n_fail = sum(1 for _, ok in results if not ok)
    print("merge reference: %d passed, %d failed" % (len(results) - n_fail, n_fail))
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
