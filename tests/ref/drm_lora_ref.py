#!/usr/bin/python3
"""drm_lora_ref.py — `out: lora` merges of LoRA inputs against PyTorch.

A small random checkpoint and three random PEFT adapters on the same target
modules with different ranks and alphas (adapters with different target
modules are refused: see src/merge/plan.h). For drm, knots, ties and linear the adapter alloy writes must
reproduce, at full rank, the reference merge's delta (merged - base, the
references of drm_ref.py on W_i = base + (alpha_i/r_i)·B_i·A_i) within 1e-4;
at a lower rank, the best rank-r approximation of that delta (Eckart-Young);
applied with `model: BASE+OUT` (linear, weight 1), base + B·A. Bad inputs
must fail with a message and leave no output.

Usage: drm_lora_ref.py ALLOY_BIN   (exit status 1 on any failure)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from drm_ref import CONFIG, drm, knots, model_tensors  # noqa: E402
from mergekit_ref import gta  # noqa: E402

# adapter name -> (rank, alpha, target leaf modules)
ADAPTERS = {"a1": (4, 8.0, ("q_proj", "v_proj", "up_proj")),
            "a2": (2, 2.0, ("q_proj", "v_proj", "up_proj")),
            "a3": (3, 6.0, ("q_proj", "v_proj", "up_proj")),
            "a4": (2, 4.0, ("q_proj", "o_proj"))}  # different targets: refused
PREFIX = "base_model.model."


def write_adapter(d, base, rank, alpha, targets, gen):
    """A PEFT adapter on the targeted 2-D weights; returns {weight name: dense delta} in f32."""
    os.makedirs(d, exist_ok=True)
    tensors, deltas = {}, {}
    for name, w in base.items():
        if w.dim() != 2 or not any(".%s." % t in name for t in targets):
            continue
        mod = name[:-len(".weight")]
        A = torch.randn(rank, w.shape[1], generator=gen) * 0.1
        B = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        tensors[PREFIX + mod + ".lora_A.weight"] = A
        tensors[PREFIX + mod + ".lora_B.weight"] = B
        deltas[name] = (alpha / rank) * (B @ A)
    st.save_file(tensors, os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
                   "base_model_name_or_path": "random"}, f)
    return deltas


def main():
    alloy = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/alloy")
    tmp = tempfile.mkdtemp(prefix="alloy-drm-lora-")
    fails = []

    def check(case, ok, msg=""):
        print("%s %s %s" % ("ok  " if ok else "FAIL", case, msg), flush=True)
        if not ok:
            fails.append(case)

    def run(*args):
        return subprocess.run([alloy, *args], capture_output=True, text=True)

    def write_recipe(case, text):
        path = os.path.join(tmp, case + ".yml")
        with open(path, "w") as f:
            f.write(text)
        return path

    try:
        gen = torch.Generator().manual_seed(1)
        base = model_tensors(gen)
        bdir = os.path.join(tmp, "base")
        st.save_dir(base, bdir, CONFIG)
        deltas = {}
        for a, (rank, alpha, targets) in ADAPTERS.items():
            deltas[a] = write_adapter(os.path.join(tmp, a), base, rank, alpha, targets, gen)
        targeted = sorted(deltas["a1"])
        names = ["a1", "a2", "a3"]

        def inputs(name, use):
            # what alloy merges: base + the adapter's delta in f32 (or the base weight)
            return [base[name] + deltas[a][name] if name in deltas[a] else base[name].clone() for a in use]

        def recipe_text(method, use, mparams, gparams, extra, base_model=True):
            lines = ["merge_method: %s" % method]
            if base_model:
                lines.append("base_model: %s" % bdir)
            lines.append("models:")
            for a, mp in zip(use, mparams):
                lines.append("  - model: %s+%s" % (bdir, os.path.join(tmp, a)))
                if mp:
                    lines.append("    parameters: {%s}" % ", ".join("%s: %r" % kv for kv in mp.items()))
            if gparams:
                lines.append("parameters: {%s}" % ", ".join("%s: %r" % kv for kv in gparams.items()))
            return "\n".join(lines + extra) + "\n"

        def apply(case, adapter):
            r = write_recipe(case, "merge_method: linear\nmodels:\n  - model: %s+%s\n    parameters: {weight: 1.0}\n"
                             % (bdir, adapter))
            out = os.path.join(tmp, "out-" + case)
            p = run("merge", r, out, "--threads", "2")
            if p.returncode != 0:
                check(case, False, "applying the adapter failed: %s" % p.stderr.strip())
                return None
            return st.load_dir(out)

        def lora_case(case, method, use, mparams, gparams, ref_fn, rank):
            extra = ["out: lora"] + (["rank: %d" % rank] if rank else [])
            r = write_recipe(case, recipe_text(method, use, mparams, gparams, extra))
            out = os.path.join(tmp, "out-" + case)
            p = run("merge", r, out, "--threads", "2")
            if p.returncode != 0:
                return check(case, False, "alloy merge failed: %s" % p.stderr.strip())
            cfg = json.load(open(os.path.join(out, "adapter_config.json")))
            want_targets = sorted({t for a in use for t in ADAPTERS[a][2]})
            want_rank = rank or min(sum(ADAPTERS[a][0] for a in use), 16)
            check(case + "-config", cfg["r"] == want_rank and cfg["lora_alpha"] == want_rank
                  and cfg["base_model_name_or_path"] == bdir and sorted(cfg["target_modules"]) == want_targets,
                  json.dumps(cfg)[:200])
            ab = st.load_file(os.path.join(out, "adapter_model.safetensors"))
            mods = sorted(n for n in targeted if any(n in deltas[a] for a in use))
            check(case + "-modules", sorted(ab) == sorted(PREFIX + n[:-7] + s for n in mods
                                                          for s in (".lora_A.weight", ".lora_B.weight")),
                  "%d tensors written" % len(ab))
            printed = {ln.split()[0]: float(ln.split()[-1]) for ln in p.stdout.splitlines() if "rel. error" in ln}
            worst, wname, perr = 0.0, "", 0.0
            for name in mods:
                b = base[name]
                ref = ref_fn(name, b.float(), inputs(name, use)).double() - b.double()
                got = ab[PREFIX + name[:-7] + ".lora_B.weight"].double() @ ab[PREFIX + name[:-7] + ".lora_A.weight"].double()
                U, S, Vh = torch.linalg.svd(ref, full_matrices=False)
                q = min(want_rank, S.numel())
                best = (U[:, :q] * S[:q]) @ Vh[:q]  # Eckart-Young: the best rank-q approximation
                e = (got - best).abs().max().item() / (best.abs().max().item() or 1.0)
                if not e <= worst:
                    worst, wname = e, name
                actual = ((ref - got).norm() / ref.norm()).item() if ref.norm() > 0 else 0.0
                perr = max(perr, abs(printed.get(name, -1) - actual) - 1e-3 * actual - 1e-6)
            check(case, worst <= 1e-4, "max rel err vs best rank-%d delta %.2e (%s)" % (want_rank, worst, wname))
            check(case + "-printed-errors", perr <= 0 and "wrote LoRA adapter" in p.stdout,
                  "printed vs actual truncation error off by %.2e" % perr)
            return out, ab

        w3 = [{"weight": 1.0}, {"weight": 0.7}, {"weight": 0.4}]
        wl = [m["weight"] for m in w3]
        out, ab = lora_case("drm-full", "drm", names, w3, {"density": 0.5},
                            lambda nm, b, xs: drm(nm, b, xs, wl, 0.5), 16)
        if out:
            got = apply("drm-full-apply", out)
            dense = os.path.join(tmp, "out-drm-dense")
            p = run("merge", write_recipe("drm-dense", recipe_text("drm", names, w3, {"density": 0.5}, [])), dense,
                    "--threads", "2")
            if got is None or p.returncode != 0:
                check("drm-full-vs-dense", False, p.stderr.strip())
            else:
                dn = st.load_dir(dense)
                e_apply, e_dense = 0.0, 0.0
                for name in base:
                    want = base[name].double()
                    if name in targeted:
                        mod = PREFIX + name[:-7]
                        want = want + ab[mod + ".lora_B.weight"].double() @ ab[mod + ".lora_A.weight"].double()
                        d = dn[name].double() - base[name].double()
                        e_dense = max(e_dense, ((got[name].double() - base[name].double()) - d).abs().max().item()
                                      / d.abs().max().item())
                    e_apply = max(e_apply, (got[name].double() - want).abs().max().item() / want.abs().max().item())
                check("drm-full-apply", e_apply <= 1e-5, "BASE+OUT vs base + B·A: max rel err %.2e" % e_apply)
                check("drm-full-vs-dense", e_dense <= 1e-4, "BASE+OUT delta vs dense drm delta: %.2e" % e_dense)
        lora_case("drm-r2", "drm", names, w3, {"density": 0.5}, lambda nm, b, xs: drm(nm, b, xs, wl, 0.5), 2)
        lora_case("drm-h-default-rank", "drm", names[:2], w3[:2], {"density": 0.4, "direction": 1},
                  lambda nm, b, xs: drm(nm, b, xs, wl[:2], 0.4, 1.0, 1), 0)
        kd = [{"weight": 1.0, "density": 0.3}, {"weight": 0.7, "density": 0.6}, {"weight": 0.5, "density": 0.5}]
        kw, kdn = [m["weight"] for m in kd], [m["density"] for m in kd]
        lora_case("knots-full", "knots", names, kd, {"lambda": 0.8},
                  lambda nm, b, xs: knots(nm, b, xs, kw, kdn, 0.8), 16)
        lora_case("knots-r3", "knots", names, kd, None, lambda nm, b, xs: knots(nm, b, xs, kw, kdn), 3)
        lora_case("ties-full", "ties", names, kd, None, lambda nm, b, xs: gta("ties", b, xs, kd, {}), 16)
        lin = [{"weight": 0.6}, {"weight": 0.4}]
        lora_case("linear-full", "linear", names[1:], lin, None,
                  lambda nm, b, xs: (0.6 * xs[0].double() + 0.4 * xs[1].double()).float(), 16)

        # ---- bad input: a message, no output ----
        def bad(case, text, needle):
            out = os.path.join(tmp, "bad-" + case)
            p = run("merge", write_recipe("bad-" + case, text), out)
            check("bad-" + case, p.returncode != 0 and needle in p.stderr and not os.path.exists(out),
                  p.stderr.strip()[:220])

        two = names[:2], w3[:2]
        bad("out-value", recipe_text("drm", *two, None, ["out: sparse"]), "out: expected 'dense' or 'lora'")
        bad("rank-zero", recipe_text("drm", *two, None, ["out: lora", "rank: 0"]), "rank: expected a positive")
        bad("rank-dense", recipe_text("drm", *two, None, ["rank: 4"]), "needs 'out: lora'")
        bad("no-base", recipe_text("linear", *two, None, ["out: lora"], base_model=False), "needs a base_model")
        bad("no-adapter", "merge_method: ties\nbase_model: %s/\nmodels:\n  - model: %s\n    parameters: "
            "{weight: 1, density: 0.5}\nout: lora\n" % (bdir, bdir), "no model is base_model+ADAPTER")
        other = os.path.join(tmp, "other")
        st.save_dir({k: v + 0.01 for k, v in base.items()}, other, CONFIG)
        bad("other-checkpoint", recipe_text("drm", *two, None, ["out: lora"]).replace(
            "models:\n", "models:\n  - model: %s\n" % other), "is not base_model+ADAPTER")
        bad("targets", recipe_text("drm", ["a1", "a4"], w3[:2], None, ["out: lora"]), "target different modules")
        bad("plain-model", recipe_text("drm", *two, None, ["out: lora"]).replace(
            "models:\n", "models:\n  - model: %s\n" % bdir).replace("base_model: %s\n" % bdir,
                                                                   "base_model: %s/\n" % bdir), "has no adapter")
        bad("slices", "merge_method: linear\nbase_model: %s\nslices:\n  - sources:\n      - model: %s+%s\n"
            "        layer_range: [0, 2]\nparameters: {weight: 1.0}\nout: lora\n" % (bdir, bdir, os.path.join(tmp, "a1")), "'models:' form")
        bad("base-adapter", recipe_text("drm", *two, None, ["out: lora"]).replace(
            "base_model: %s\n" % bdir, "base_model: %s+%s\n" % (bdir, os.path.join(tmp, "a3"))), "plain base_model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("out: lora merges: %d failed" % len(fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
