#!/usr/bin/python3
"""drm_ref.py — PyTorch references of DRM, KnOTS-TIES and TSV-M, and the
end-to-end comparison against `alloy merge` / `alloy extract-lora`.

The references are written from the papers (DRM arXiv 2505.23117 §3, KnOTS
arXiv 2410.19735, TSV arXiv 2412.00081) with the choices alloy documents in
src/merge/drm.c, knots.c, tsv.c: f64 SVDs, trims keep exactly
floor(density*N + 0.5) entries (at least 1; ties to the lower index), mass
sign election with zero masses taking the majority sign, weights applied
after the election, disjoint mean. Merged tensors are compared after
reconstruction, so the signs and order of singular vectors do not matter.

Usage: drm_ref.py ALLOY_BIN   (exit status 1 on any failure)
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


def keep_topk(v, density):
    """Zero all but the floor(density*N+0.5) largest |v| (ties: lower index)."""
    flat = v.reshape(-1)
    n = flat.numel()
    q = min(n, max(1, int(math.floor(density * n + 0.5))))
    if q >= n:
        return v.clone()
    order = torch.sort(-flat.abs(), stable=True).indices[:q]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    return out.reshape(v.shape)


def elect_mean(c, w):
    """c: [k, ...] trimmed coordinates; mass sign election, weights, disjoint mean."""
    gamma = torch.sign(c.sum(0))
    major = torch.sign(gamma.sum())
    gamma = torch.where(gamma == 0, major, gamma)
    kept = torch.where(torch.sign(c) == gamma.unsqueeze(0), c, torch.zeros_like(c))
    kept = kept * w.view(-1, *([1] * (c.dim() - 1)))
    cnt = (kept != 0).sum(0).clamp(min=1)
    return kept.sum(0) / cnt


def is_embedding(name):
    return any(s in name for s in ("embed", "lm_head", "wte.", "wpe."))


def ties_fallback(base, xs, w, dens, lam):
    d = torch.stack([(x - base) for x in xs])  # f32 deltas, trimmed in f32 like alloy
    d = torch.stack([keep_topk(d[i], dens[i]) for i in range(len(xs))]).double()
    return (base.double() + lam * elect_mean(d, w)).float()


def joint(base, xs, w, dens, lam, vertical, renorm, global_trim, rel_tol, rank_cap=0):
    """DRM (renorm, global trim) / KnOTS (no renorm, per-task trim) on one matrix."""
    k = len(xs)
    m, n = base.shape
    d = [x.double() - base.double() for x in xs]
    D = torch.cat(d, 0) if vertical else torch.cat(d, 1)
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    if S[0] <= 0:
        return base.clone()
    r = int((S > rel_tol * S[0]).sum())
    if rank_cap:
        r = min(r, rank_cap)
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    if vertical:
        X = torch.stack(torch.split(U, m, 0))  # [k, m, r]
        comp = lambda t: t.unsqueeze(1)  # noqa: E731  scale per column
        norm_dims = 1
    else:
        X = torch.stack(torch.split(Vh, n, 1))  # [k, r, n]
        comp = lambda t: t.unsqueeze(2)  # noqa: E731  scale per row
        norm_dims = 2
    if renorm:
        nrm = X.norm(dim=norm_dims)  # [k, r]
        X = torch.where(comp(nrm) > 0, X / comp(nrm).clamp(min=1e-300), torch.zeros_like(X))
        scale = nrm * S.unsqueeze(0)
    else:
        X = X * comp(S.unsqueeze(0).expand(k, -1))
        scale = None
    if global_trim:
        X = keep_topk(X, dens[0])
    else:
        X = torch.stack([keep_topk(X[i], dens[i]) for i in range(k)])
    if renorm:
        X = X * comp(scale)
    M = elect_mean(X, w)
    delta = M @ Vh if vertical else U @ M
    return (base.double() + lam * delta).float()


def drm(name, base, xs, w, density=0.2, lam=1.0, direction=0, rank=0):
    w = torch.tensor(w, dtype=torch.float64)
    if base.dim() == 2 and not is_embedding(name):
        if density >= 1 and rank == 0:
            d = torch.stack([x.double() - base.double() for x in xs]) * w.view(-1, 1, 1)
            return (base.double() + lam * d.sum(0) / (d != 0).sum(0).clamp(min=1)).float()
        return joint(base, xs, w, [density] * len(xs), lam, direction == 0, True, True, 1e-2, rank)
    return ties_fallback(base, xs, w, [density] * len(xs), lam)


def knots(name, base, xs, w, dens, lam=1.0):
    w = torch.tensor(w, dtype=torch.float64)
    if base.dim() == 2 and not is_embedding(name):
        return joint(base, xs, w, dens, lam, False, False, False, 1e-5)
    return ties_fallback(base, xs, w, dens, lam)


def polar(a):
    p, _, qt = torch.linalg.svd(a, full_matrices=False)
    return p @ qt


def tsv(name, base, xs, w, lam=1.0):
    k = len(xs)
    if base.dim() != 2 or is_embedding(name):
        s = sum(wi * (x.double() - base.double()) for wi, x in zip(w, xs))
        return (base.double() + lam * s / k).float()
    m, n = base.shape
    rr = max(1, min(m, n) // k)
    us, ss, vs = [], [], []
    for wi, x in zip(w, xs):
        U, S, Vh = torch.linalg.svd(x.double() - base.double(), full_matrices=False)
        us.append(U[:, :rr])
        ss.append(wi * S[:rr])
        vs.append(Vh[:rr])
    Up, Vp = polar(torch.cat(us, 1)), polar(torch.cat(vs, 0))
    return (base.double() + lam * (Up * torch.cat(ss).unsqueeze(0)) @ Vp).float()


# ---------------------------------------------------------------- end to end

def model_tensors(gen, hidden=16, inter=40, vocab=64, layers=2):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.02  # noqa: E731
    t = {"model.embed_tokens.weight": r(vocab, hidden)}
    for i in range(layers):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = 1 + r(hidden)
        for nm, (o, ii) in {"q_proj": (hidden, hidden), "k_proj": (hidden // 2, hidden),
                            "v_proj": (hidden // 2, hidden), "o_proj": (hidden, hidden)}.items():
            t[p + "self_attn.%s.weight" % nm] = r(o, ii)
            if nm != "o_proj":
                t[p + "self_attn.%s.bias" % nm] = r(o)
        t[p + "post_attention_layernorm.weight"] = 1 + r(hidden)
        t[p + "mlp.gate_proj.weight"] = r(inter, hidden)
        t[p + "mlp.up_proj.weight"] = r(inter, hidden)
        t[p + "mlp.down_proj.weight"] = r(hidden, inter)
    t["model.norm.weight"] = 1 + r(hidden)
    t["lm_head.weight"] = r(vocab, hidden)
    return t


CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 16,
          "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 64, "tie_word_embeddings": False, "torch_dtype": "float32", "rms_norm_eps": 1e-6,
          "rope_theta": 10000.0, "max_position_embeddings": 128}


def main():
    alloy = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/alloy")
    tmp = tempfile.mkdtemp(prefix="alloy-drm-")
    fails = []

    def check(case, ok, msg=""):
        print("%s %s %s" % ("ok  " if ok else "FAIL", case, msg), flush=True)
        if not ok:
            fails.append(case)

    def run(*args):
        return subprocess.run([alloy, *args], capture_output=True, text=True)

    try:
        gen = torch.Generator().manual_seed(0)
        base = model_tensors(gen)
        dirs = [os.path.join(tmp, "base")]
        st.save_dir(base, dirs[0], CONFIG)
        fts = []
        for v in range(1, 4):
            # low-rank plus dense updates with mixed signs, like a fine-tune
            t = {}
            for k_, x in base.items():
                d = torch.randn(x.shape, generator=gen) * 0.004 * v
                if x.dim() == 2:
                    a = torch.randn(x.shape[0], 3, generator=gen)
                    b = torch.randn(3, x.shape[1], generator=gen)
                    d = d + 0.01 * (a @ b)
                t[k_] = x + d
            d_ = os.path.join(tmp, "ft%d" % v)
            st.save_dir(t, d_, CONFIG)
            dirs.append(d_)
            fts.append(t)

        def merge_case(case, method, mparams, gparams, ref_fn):
            lines = ["merge_method: %s" % method, "base_model: %s" % dirs[0], "models:"]
            for d_, mp in zip(dirs[1:], mparams):
                lines.append("  - model: %s" % d_)
                if mp:
                    lines.append("    parameters:")
                    lines += ["      %s: %r" % kv for kv in mp.items()]
            if gparams:
                lines.append("parameters:")
                lines += ["  %s: %r" % kv for kv in gparams.items()]
            recipe = os.path.join(tmp, case + ".yml")
            with open(recipe, "w") as f:
                f.write("\n".join(lines) + "\n")
            out = os.path.join(tmp, "out-" + case)
            p = run("merge", recipe, out, "--threads", "2")
            if p.returncode != 0:
                return check(case, False, "alloy merge failed: %s" % p.stderr.strip())
            got = st.load_dir(out)
            worst, wname = 0.0, ""
            for name, b in base.items():
                ref = ref_fn(name, b.float(), [t[name].float() for t in fts[:len(mparams)]])
                den = ref.abs().max().item() or 1.0
                e = (got[name].float() - ref).abs().max().item() / den
                if not e <= worst:  # NaN counts as the worst
                    worst, wname = e, name
            check(case, worst <= 1e-4, "max rel err %.2e (%s)" % (worst, wname))

        w3 = [{"weight": 1.0}, {"weight": 0.7}, {"weight": 0.4}]
        wl = [m["weight"] for m in w3]
        merge_case("drm-v-default", "drm", [{}, {}, {}], None,
                   lambda nm, b, xs: drm(nm, b, xs, [1.0] * 3))
        merge_case("drm-v-weights", "drm", w3, {"density": 0.5, "lambda": 0.8},
                   lambda nm, b, xs: drm(nm, b, xs, wl, 0.5, 0.8, 0))
        merge_case("drm-h", "drm", w3, {"density": 0.3, "direction": 1},
                   lambda nm, b, xs: drm(nm, b, xs, wl, 0.3, 1.0, 1))
        merge_case("drm-h-rank", "drm", w3[:2], {"density": 0.4, "direction": 1, "rank": 3},
                   lambda nm, b, xs: drm(nm, b, xs, wl[:2], 0.4, 1.0, 1, 3))
        merge_case("drm-density1", "drm", w3, {"density": 1.0},
                   lambda nm, b, xs: drm(nm, b, xs, wl, 1.0))
        kd = [{"weight": 1.0, "density": 0.2}, {"weight": 0.7, "density": 0.5}, {"weight": 0.4, "density": 0.3}]
        merge_case("knots", "knots", kd, {"lambda": 0.6},
                   lambda nm, b, xs: knots(nm, b, xs, [m["weight"] for m in kd], [m["density"] for m in kd], 0.6))
        merge_case("tsv", "tsv", w3, None, lambda nm, b, xs: tsv(nm, b, xs, wl))
        merge_case("tsv-2", "tsv", [{}, {}], {"lambda": 0.9}, lambda nm, b, xs: tsv(nm, b, xs, [1.0, 1.0], 0.9))

        # ---- extract-lora ----
        ft = fts[0]
        lin = [n for n, x in base.items() if x.dim() == 2 and "embed" not in n and "lm_head" not in n]

        def apply_adapter(case, adapter):
            recipe = os.path.join(tmp, case + ".yml")
            with open(recipe, "w") as f:
                f.write("merge_method: linear\nmodels:\n  - model: %s+%s\n    parameters:\n      weight: 1.0\n"
                        % (dirs[0], adapter))
            out = os.path.join(tmp, "out-" + case)
            p = run("merge", recipe, out, "--threads", "2")
            if p.returncode != 0:
                check(case, False, "applying the adapter failed: %s" % p.stderr.strip())
                return None
            return st.load_dir(out)

        ad = os.path.join(tmp, "lora-full")
        p = run("extract-lora", dirs[1], dirs[0], ad, "--rank", "16", "--include", r"q_proj|o_proj")
        if p.returncode != 0:
            check("extract-full", False, p.stderr.strip())
        else:
            cfg = json.load(open(os.path.join(ad, "adapter_config.json")))
            check("extract-full-config", cfg["r"] == 16 and cfg["lora_alpha"] == 16 and cfg["peft_type"] == "LORA"
                  and sorted(cfg["target_modules"]) == ["o_proj", "q_proj"], str(cfg))
            got = apply_adapter("apply-full", ad)
            if got is not None:
                worst = 0.0
                for name in base:
                    want = ft[name] if ("q_proj.weight" in name or "o_proj.weight" in name) else base[name]
                    worst = max(worst, (got[name] - want).abs().max().item() / want.abs().max().item())
                check("extract-full-roundtrip", worst <= 1e-5, "max rel err %.2e" % worst)

        ad = os.path.join(tmp, "lora-r4")
        p = run("extract-lora", dirs[1], dirs[0], ad, "--rank", "4", "--threads", "2")
        if p.returncode != 0:
            check("extract-r4", False, p.stderr.strip())
        else:
            lines = {ln.split()[0]: float(ln.split()[-1]) for ln in p.stdout.splitlines() if "rel. error" in ln
                     and not ln.startswith("wrote")}
            ab = st.load_file(os.path.join(ad, "adapter_model.safetensors"))
            ok, msg = set(lines) == set(lin), ""
            for name in lin:
                mod = "base_model.model." + name[:-len(".weight")]
                A, B = ab[mod + ".lora_A.weight"].double(), ab[mod + ".lora_B.weight"].double()
                d = ft[name].double() - base[name].double()
                e = ((d - B @ A).norm() / d.norm()).item()
                U, S, Vh = torch.linalg.svd(d)
                best = (S[4:].norm() / S.norm()).item()  # Eckart-Young optimum
                if abs(e - lines.get(name, -1)) > 1e-3 * max(e, 1e-6) or e > best * 1.01 + 1e-6:
                    ok, msg = False, "%s: printed %.4e, actual %.4e, optimal %.4e" % (name, lines.get(name, -1), e,
                                                                                      best)
            check("extract-r4-errors", ok, msg)
            got = apply_adapter("apply-r4", ad)
            if got is not None:
                worst = 0.0
                for name in base:
                    want = base[name].double()
                    if name in lin:
                        mod = "base_model.model." + name[:-len(".weight")]
                        want = want + ab[mod + ".lora_B.weight"].double() @ ab[mod + ".lora_A.weight"].double()
                    worst = max(worst, (got[name].double() - want).abs().max().item() / want.abs().max().item())
                check("extract-r4-apply", worst <= 1e-5, "max rel err %.2e" % worst)

        # ---- bad input ----
        def bad(case, args, needle):
            p = run("extract-lora", *args)
            check(case, p.returncode != 0 and needle in p.stderr, p.stderr.strip()[:200])

        bad("extract-rank0", [dirs[1], dirs[0], os.path.join(tmp, "x0"), "--rank", "0"], "--rank")
        bad("extract-rank-too-big", [dirs[1], dirs[0], os.path.join(tmp, "x1"), "--rank", "9"], "exceeds")
        bad("extract-no-rank", [dirs[1], dirs[0], os.path.join(tmp, "x2")], "--rank")
        missing = {k_: v for k_, v in base.items() if "layers.1.mlp.up_proj" not in k_}
        st.save_dir(missing, os.path.join(tmp, "base-missing"), CONFIG)
        bad("extract-missing", [dirs[1], os.path.join(tmp, "base-missing"), os.path.join(tmp, "x3"), "--rank", "2"],
            "layers.1.mlp.up_proj.weight")
        shaped = dict(base)
        shaped["model.layers.0.mlp.up_proj.weight"] = torch.zeros(16, 40)
        st.save_dir(shaped, os.path.join(tmp, "base-shape"), CONFIG)
        bad("extract-shape", [dirs[1], os.path.join(tmp, "base-shape"), os.path.join(tmp, "x4"), "--rank", "2"],
            "layers.0.mlp.up_proj.weight")
        check("extract-bad-no-output", not any(os.path.exists(os.path.join(tmp, "x%d" % i)) for i in range(5)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("drm/tsv/knots/extract-lora: %d failed" % len(fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
