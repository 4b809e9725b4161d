#!/usr/bin/python3
"""test_merge_cli.py — `alloy merge` end to end: slices, gradients and filters,
LoRA inputs, sharded output, side files, determinism, dry runs, and bad input
(each must give one `alloy: error:` line naming the culprit, exit 1, and leave
no output directory behind).
Usage: test_merge_cli.py ALLOY_BIN
"""
import filecmp
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
import mergekit_ref  # noqa: E402
import st  # noqa: E402
from test_merge_ref import config, qwen_tensors  # noqa: E402

ALLOY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/alloy")
TMP = tempfile.mkdtemp(prefix="alloy-cli-")
results = []


def record(name, ok, msg=""):
    results.append((name, ok))
    print("%s %s %s" % ("ok  " if ok else "FAIL", name, msg), flush=True)


def run(*args):
    return subprocess.run([ALLOY, *args], capture_output=True, text=True)


def model(name, seed, layers=3, dtype=torch.float32, tied=False, mutate=None):
    gen = torch.Generator().manual_seed(seed)
    t = {k: v.to(dtype) for k, v in qwen_tensors(gen, layers=layers, tied=tied).items()}
    if mutate:
        mutate(t)
    d = os.path.join(TMP, name)
    st.save_dir(t, d, config(layers=layers, tied=tied))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write('{"model": {"type": "BPE"}, "marker": "%s"}' % name)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        f.write('{"eos_token": "<|endoftext|>"}')
    return d


def bf16_family(name, seed, shape):
    """A bf16 base and two fine-tunes of it (small deltas) in TMP/name-{0,1,2}; the dirs and the
    base's f32 tensors."""
    gen = torch.Generator().manual_seed(seed)
    t0 = qwen_tensors(gen, **shape)
    dirs = []
    for i in range(3):
        t = {k: (v if i == 0 else v + 0.002 * torch.randn(v.shape, generator=gen)).to(torch.bfloat16)
             for k, v in t0.items()}
        d = os.path.join(TMP, "%s-%d" % (name, i))
        st.save_dir(t, d, config(dtype="bfloat16", **shape))
        dirs.append(d)
    return dirs, t0


def recipe(name, text):
    p = os.path.join(TMP, name + ".yml")
    with open(p, "w") as f:
        f.write(text)
    return p


def no_leftovers(out):
    parent = os.path.dirname(out)
    base = os.path.basename(out)
    return not os.path.exists(out) and not glob.glob(os.path.join(parent, "." + base + ".tmp-*"))


def expect_error(name, args, must_contain, out=None):
    p = run(*args)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    ok = p.returncode == 1 and len(lines) >= 1 and lines[-1].startswith("alloy: error:")
    err_lines = [ln for ln in lines if ln.startswith("alloy: error:")]
    ok = ok and len(err_lines) == 1
    missing = [s for s in must_contain if s not in p.stderr]
    ok = ok and not missing
    if out is not None:
        ok = ok and no_leftovers(out)
    record("error: " + name, ok, ("" if ok else "rc=%d stderr=%r missing=%s" % (p.returncode, p.stderr, missing)))


def main():
    base = model("base", 0)
    a = model("a", 1)
    b = model("b", 2)
    A, B, BASE = st.load_dir(a), st.load_dir(b), st.load_dir(base)

    # 1. passthrough frankenmerge with slices: layers renumbered, config updated.
    r = recipe("franken", """merge_method: passthrough
slices:
  - sources:
      - model: %s
        layer_range: [0, 2]
  - sources:
      - model: %s
        layer_range: [1, 3]
dtype: float32
""" % (a, b))
    out = os.path.join(TMP, "out-franken")
    p = run("merge", r, out)
    ok = p.returncode == 0
    if ok:
        got = st.load_dir(out)
        cfg = json.load(open(os.path.join(out, "config.json")))
        ok = cfg["num_hidden_layers"] == 4
        ok = ok and torch.equal(got["model.layers.0.mlp.up_proj.weight"], A["model.layers.0.mlp.up_proj.weight"])
        ok = ok and torch.equal(got["model.layers.2.mlp.up_proj.weight"], B["model.layers.1.mlp.up_proj.weight"])
        ok = ok and torch.equal(got["model.layers.3.self_attn.q_proj.bias"], B["model.layers.2.self_attn.q_proj.bias"])
        ok = ok and torch.equal(got["model.embed_tokens.weight"], A["model.embed_tokens.weight"])
        ok = ok and torch.equal(got["lm_head.weight"], B["lm_head.weight"])
        ok = ok and "model.layers.4.mlp.up_proj.weight" not in got
    record("passthrough slices", ok, p.stderr.strip())

    # 2. slerp with per-layer gradients and name filters (the classic mergekit recipe).
    r = recipe("slerp-grad", """slices:
  - sources:
      - model: %s
        layer_range: [0, 3]
      - model: %s
        layer_range: [0, 3]
merge_method: slerp
base_model: %s
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - filter: mlp
      value: [1, 0.25]
    - value: 0.5
dtype: float32
""" % (base, a, base))
    out = os.path.join(TMP, "out-slerp-grad")
    p = run("merge", r, out)
    ok = p.returncode == 0
    worst = 0.0
    if ok:
        got = st.load_dir(out)
        for name in BASE:
            layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            tl = (layer / 2) if layer is not None else 0.0
            if "self_attn" in name:
                t = [0, 0.5, 1][layer]
            elif "mlp" in name:
                t = 1 - 0.75 * tl
            else:
                t = 0.5
            ref = mergekit_ref.merge("slerp", BASE[name].float(), [A[name].float()], [{}], {"t": t})
            den = ref.abs().max().item() or 1.0
            worst = max(worst, (got[name] - ref).abs().max().item() / den)
        ok = worst <= 1e-5
    record("slerp gradient + filters", ok, "max rel err %.1e %s" % (worst, p.stderr.strip()))

    # 3. LoRA input: `base+adapter` equals W + (alpha/r) B A (and alpha/sqrt(r) with rsLoRA).
    for rs in (False, True):
        ad = os.path.join(TMP, "lora-rs%d" % rs)
        os.makedirs(ad, exist_ok=True)
        gen = torch.Generator().manual_seed(5)
        lt, rank, alpha = {}, 4, 16
        for l in range(3):
            for mod, (o, i) in {"self_attn.q_proj": (16, 16), "mlp.down_proj": (16, 40)}.items():
                pre = "base_model.model.model.layers.%d.%s" % (l, mod)
                lt[pre + ".lora_A.weight"] = torch.randn(rank, i, generator=gen) * 0.1
                lt[pre + ".lora_B.weight"] = torch.randn(o, rank, generator=gen) * 0.1
        st.save_file(lt, os.path.join(ad, "adapter_model.safetensors"))
        json.dump({"r": rank, "lora_alpha": alpha, "use_rslora": rs, "peft_type": "LORA",
                   "target_modules": ["q_proj", "down_proj"]}, open(os.path.join(ad, "adapter_config.json"), "w"))
        r = recipe("lora%d" % rs, "merge_method: linear\nmodels:\n  - model: %s+%s\n    parameters:\n      weight: 1.0\n"
                   % (base, ad))
        out = os.path.join(TMP, "out-lora%d" % rs)
        p = run("merge", r, out)
        ok = p.returncode == 0
        worst = 0.0
        if ok:
            got = st.load_dir(out)
            scale = alpha / math.sqrt(rank) if rs else alpha / rank
            for name, w in BASE.items():
                pre = "base_model.model." + name[:-len(".weight")]
                exp = w.clone()
                if pre + ".lora_A.weight" in lt:
                    exp = exp + scale * lt[pre + ".lora_B.weight"] @ lt[pre + ".lora_A.weight"]
                worst = max(worst, (got[name] - exp).abs().max().item() / (exp.abs().max().item() or 1))
            ok = worst <= 1e-5
        record("LoRA input (rslora=%s)" % rs, ok, "max rel err %.1e %s" % (worst, p.stderr.strip()))

    # 4. sharded output, out_dtype, side files, recipe copy, model card.
    rtext = "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n  - model: %s\n" \
            "    parameters: {weight: 3}\nout_dtype: bfloat16\ntokenizer_source: %s\n" % (a, b, b)
    r = recipe("sharded", rtext)
    out = os.path.join(TMP, "out-sharded")
    p = run("merge", r, out, "--out-shard-size", "4K")
    ok = p.returncode == 0
    msg = p.stderr.strip()
    if ok:
        idx = json.load(open(os.path.join(out, "model.safetensors.index.json")))
        shards = sorted(set(idx["weight_map"].values()))
        got = st.load_dir(out)
        total = sum(t.numel() * t.element_size() for t in got.values())
        n = len(shards)
        ok = n > 1 and shards[0] == "model-00001-of-%05d.safetensors" % n and idx["metadata"]["total_size"] == total
        ok = ok and all(os.path.getsize(os.path.join(out, s)) <= 4000 + 4096 for s in shards)
        ok = ok and all(t.dtype == torch.bfloat16 for t in got.values())
        exp = ((A["model.norm.weight"] + 3 * B["model.norm.weight"]) / 4).to(torch.bfloat16)
        ok = ok and torch.equal(got["model.norm.weight"], exp)
        cfg = json.load(open(os.path.join(out, "config.json")))
        ok = ok and cfg["torch_dtype"] == "bfloat16"
        ok = ok and filecmp.cmp(os.path.join(out, "tokenizer.json"), os.path.join(b, "tokenizer.json"), shallow=False)
        ok = ok and open(os.path.join(out, "alloy_recipe.yml")).read() == rtext
        ok = ok and "linear" in open(os.path.join(out, "README.md")).read()
        msg = "%d shards" % n
    record("sharded output + side files", ok, msg)

    # 5. --no-copy-tokenizer, re-running into an earlier alloy output replaces it.
    p = run("merge", r, out, "--no-copy-tokenizer")
    ok = p.returncode == 0 and not os.path.exists(os.path.join(out, "tokenizer.json")) \
        and os.path.exists(os.path.join(out, "model.safetensors"))
    record("--no-copy-tokenizer, replace earlier output", ok, p.stderr.strip())

    # 6. --dry-run writes nothing and describes the plan.
    out = os.path.join(TMP, "out-dry")
    p = run("merge", r, out, "--dry-run")
    record("--dry-run", p.returncode == 0 and not os.path.exists(out) and "linear" in p.stdout, p.stderr.strip())

    # 7. random methods: same seed → same bytes (any thread count); other seed → different.
    #    f32 checkpoints, and bf16 ones (which take the fused AVX-512 kernels where the CPU has them).
    #    The bf16 ones are a base and two fine-tunes of it, with matrices large enough (64k elements)
    #    for the streaming rank cuts.
    shape = dict(hidden=128, inter=512, vocab=512, layers=2)
    b16, t0 = bf16_family("bf16", 40, shape)
    for tag, (mb, ma, mbb) in (("f32", (base, a, b)), ("bf16", b16)):
        r = recipe("dare-" + tag, "merge_method: dare_ties\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: "
                   "{weight: 0.5, density: 0.5}\n  - model: %s\n    parameters: {weight: 0.5, density: 0.4}\n"
                   % (mb, ma, mbb))
        outs = []
        for i, (seed, th) in enumerate(((1, 1), (1, 2), (1, 3), (2, 2))):
            o = os.path.join(TMP, "out-dare-%s%d" % (tag, i))
            run("merge", r, o, "--seed", str(seed), "--threads", str(th))
            outs.append(os.path.join(o, "model.safetensors"))
        ok = all(os.path.exists(o) for o in outs) and filecmp.cmp(outs[0], outs[1], shallow=False) \
            and filecmp.cmp(outs[0], outs[2], shallow=False) and not filecmp.cmp(outs[0], outs[3], shallow=False)
        record("dare_ties (%s) reproducible across threads, seed-dependent" % tag, ok)

    #    bf16 inputs merged to f32 (out_dtype) round to exactly the bf16 merge: the f32 output
    #    path of the fused kernels against its bf16 one, for ties and dare_ties.
    for meth in ("ties", "dare_ties"):
        body = "merge_method: %s\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: " \
               "{weight: 0.6, density: 0.5}\n  - model: %s\n    parameters: {weight: 0.4, density: 0.3}\n" \
               % (meth, b16[0], b16[1], b16[2])
        o16, o32 = os.path.join(TMP, "out-%s-16" % meth), os.path.join(TMP, "out-%s-32" % meth)
        p16 = run("merge", recipe(meth + "-16", body), o16, "--seed", "3")
        p32 = run("merge", recipe(meth + "-32", body + "out_dtype: float32\n"), o32, "--seed", "3")
        ok = p16.returncode == 0 and p32.returncode == 0
        if ok:
            g16, g32 = st.load_dir(o16), st.load_dir(o32)
            ok = set(g16) == set(g32) and all(g32[k].dtype == torch.float32 and torch.equal(
                g32[k].to(torch.bfloat16).view(torch.int16), g16[k].view(torch.int16)) for k in g16)
        record("%s on bf16: the f32 output rounds to the bf16 output" % meth, ok, "" if ok else p16.stderr + p32.stderr)

    #    Mixed dtypes: a bf16 base with f32 models merges exactly as the same base widened to f32
    #    (bf16 -> f32 is exact): the first pass reads the bf16 base in place and the f32 models
    #    through their own path.
    t_base = st.load_dir(b16[0])
    d_b32 = os.path.join(TMP, "bf16-0-as-f32")
    st.save_dir({k: v.to(torch.float32) for k, v in t_base.items()}, d_b32, config(**shape))
    f32m = []
    for i in (1, 2):
        d = os.path.join(TMP, "f32-of-bf16-%d" % i)
        st.save_dir({k: v.to(torch.float32) for k, v in st.load_dir(b16[i]).items()}, d, config(**shape))
        f32m.append(d)
    for meth in ("ties", "dare_ties", "task_arithmetic"):
        outs = []
        for tag, bdir in (("mixed", b16[0]), ("f32", d_b32)):
            body = "merge_method: %s\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: " \
                   "{weight: 0.6, density: 0.5}\n  - model: %s\n    parameters: {weight: 0.4, density: 0.3}\n" \
                   "dtype: float32\nout_dtype: float32\n" % (meth, bdir, f32m[0], f32m[1])
            o = os.path.join(TMP, "out-%s-%s" % (meth, tag))
            pr = run("merge", recipe("%s-%s" % (meth, tag), body), o, "--seed", "4")
            outs.append(os.path.join(o, "model.safetensors") if pr.returncode == 0 else None)
        ok = all(outs) and filecmp.cmp(outs[0], outs[1], shallow=False)
        record("%s: bf16 base with f32 models == the base widened to f32" % meth, ok)

    # 7b. Two lanes: the tensors merge on two lanes of half the threads each (exec.c), and two
    #     of at least ALLOY_LANE_BYTES of output never at once; the output is the same bytes as on
    #     one lane (ALLOY_LANE_BYTES=0), on 2 threads (1 + 1) and on 3 (1 + 2, nested teams).
    #     Here the embedding and the head (4096 x 128 bf16, 1 MiB each) are the large ones.
    #     And with direct writes (ALLOY_DIRECT_IO=1; by default only for outputs of 64 MB or
    #     more): a lane's results are then made in the ring of direct writes itself (dio_stream)
    #     while one lane stages and copies, and the bytes are the same again.
    lanes, _ = bf16_family("lanes", 41, dict(hidden=128, inter=512, vocab=4096, layers=3))
    big = 4096 * 128 * 2
    for meth in ("ties", "dare_ties", "slerp"):
        if meth == "slerp":
            body = "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: %s\nparameters: {t: 0.3}\n" \
                   % (lanes[0], lanes[1])
        else:
            body = "merge_method: %s\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: " \
                   "{weight: 0.6, density: 0.5}\n  - model: %s\n    parameters: {weight: 0.4, density: 0.3}\n" \
                   % (meth, lanes[0], lanes[1], lanes[2])
        r = recipe("lanes-" + meth, body)
        outs, errs = [], ""
        for tag, lb, th, dio in (("one", "0", 2, "0"), ("two", str(big), 2, "0"), ("three", str(big), 3, "0"),
                                 ("one-direct", "0", 2, "1"), ("two-direct", str(big), 2, "1")):
            o = os.path.join(TMP, "out-lanes-%s-%s" % (meth, tag))
            pr = subprocess.run([ALLOY, "merge", r, o, "--seed", "5", "--threads", str(th)], capture_output=True,
                                text=True, env=dict(os.environ, ALLOY_LANE_BYTES=lb, ALLOY_DIRECT_IO=dio))
            errs += pr.stderr if pr.returncode else ""
            outs.append(os.path.join(o, "model.safetensors") if pr.returncode == 0 else None)
        ok = all(outs) and all(filecmp.cmp(outs[0], x, shallow=False) for x in outs[1:])
        record("%s: two lanes, the same bytes as one" % meth, ok, errs.strip())

    # 8. kill -9 mid-merge: OUT_DIR is either absent or complete, never partial.
    gen = torch.Generator().manual_seed(11)
    big = []
    for i in range(2):
        t = qwen_tensors(gen, hidden=256, inter=1024, vocab=8192, layers=4)
        d = os.path.join(TMP, "big%d" % i)
        cfg = config(layers=4)
        cfg.update(hidden_size=256, intermediate_size=1024, vocab_size=8192)
        st.save_dir(t, d, cfg)
        big.append(d)
    r = recipe("big", "merge_method: ties\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: "
               "{weight: 1, density: 0.5}\n" % (big[0], big[1]))
    out = os.path.join(TMP, "out-killed")
    outcomes = set()
    for delay in (0.02, 0.05, 0.1, 0.2, 0.4):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([ALLOY, "merge", r, out, "--threads", "1"], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if os.path.exists(out):
            # complete: it finished before the kill; every file of a finished merge is there
            got = st.load_dir(out)
            ok = os.path.exists(os.path.join(out, "alloy_recipe.yml")) and len(got) == len(st.load_dir(big[0]))
            outcomes.add("complete" if ok else "PARTIAL")
        else:
            outcomes.add("absent")
    record("kill -9 leaves no partial OUT_DIR", "PARTIAL" not in outcomes, "outcomes: %s" % sorted(outcomes))
    p = run("merge", r, out)
    record("merge after a killed one", p.returncode == 0 and os.path.exists(os.path.join(out, "model.safetensors")),
           p.stderr.strip())

    # 9. bad input.
    good = "merge_method: ties\nbase_model: %s\nmodels:\n  - model: %s\n    parameters: {weight: 1, density: 0.5}\n"
    out = os.path.join(TMP, "out-bad")

    def bad_model(name, fn):
        d = model(name, 9)
        fn(os.path.join(d, "model.safetensors"))
        return d

    def truncate(path):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)

    def header_past_eof(path):
        with open(path, "r+b") as f:
            f.write(struct.pack("<Q", 10 ** 7))

    def rewrite_header(path, fn):
        raw = open(path, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        h = json.loads(raw[8:8 + n])
        fn(h)
        hb = json.dumps(h).encode()
        hb += b" " * (n - len(hb)) if len(hb) <= n else b""
        open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])

    def overlap(h):
        h["model.norm.weight"]["data_offsets"] = list(h["model.embed_tokens.weight"]["data_offsets"][:1]) + \
            [h["model.embed_tokens.weight"]["data_offsets"][0] + 64]

    def wrong_dtype(h):
        h["model.norm.weight"]["dtype"] = "F16"

    cases = [
        ("truncated file", bad_model("trunc", truncate), ["model.safetensors"]),
        ("header length past EOF", bad_model("hdr", header_past_eof), ["model.safetensors"]),
        ("overlapping offsets", bad_model("ovl", lambda p: rewrite_header(p, overlap)), ["model.safetensors"]),
        ("wrong dtype size", bad_model("dts", lambda p: rewrite_header(p, wrong_dtype)), ["model.norm.weight"]),
    ]
    for name, d, needles in cases:
        expect_error(name, ["merge", recipe("bad-" + os.path.basename(d), good % (base, d)), out], needles, out)

    def drop_tensor(t):
        del t["model.layers.1.mlp.up_proj.weight"]

    def reshape(t):
        t["model.layers.2.mlp.gate_proj.weight"] = torch.zeros(41, 16)

    def nan(t):
        t["lm_head.weight"][3, 5] = float("nan")

    d = model("missing", 3, mutate=drop_tensor)
    expect_error("missing tensor", ["merge", recipe("miss", good % (base, d)), out],
                 ["model.layers.1.mlp.up_proj.weight", d], out)
    d = model("shape", 3, mutate=reshape)
    expect_error("shape mismatch", ["merge", recipe("shape", good % (base, d)), out],
                 ["model.layers.2.mlp.gate_proj.weight", "[41, 16]", "[40, 16]"], out)
    d = model("nan", 3, mutate=nan)
    expect_error("NaN in a weight", ["merge", recipe("nan", good % (base, d)), out], ["lm_head.weight", d], out)
    # the streaming methods find it in their blocks; the error is the same
    streaming = {
        "linear": "models:\n  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n    parameters: {weight: 0.5}\n"
                  % (a, d),
        "model_stock": "base_model: %s\nmodels:\n  - model: %s\n  - model: %s\n" % (base, a, d),
        "nearswap": "base_model: %s\nmodels:\n  - model: %s\nparameters: {t: 0.001}\n" % (base, d),
        "passthrough": "models:\n  - model: %s\n" % d,
        "slerp": "base_model: %s\nmodels:\n  - model: %s\nparameters: {t: 0.3}\n" % (base, d),
        "nuslerp": "models:\n  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n    parameters: {weight: 0.5}\n"
                   "parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}\n" % (a, d),
        "della": "base_model: %s\nmodels:\n  - model: %s\n    parameters: {weight: 0.5, density: 0.5, epsilon: 0.1}\n"
                 % (base, d),
        "karcher": "models:\n  - model: %s\n  - model: %s\n" % (a, d),
        "sce": "base_model: %s\nmodels:\n  - model: %s\n  - model: %s\nparameters: {select_topk: 0.5}\n" % (base, a, d),
        "multislerp": "models:\n  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n    parameters: {weight: 0.5}\n"
                      % (a, d),
    }
    for meth, body in streaming.items():
        expect_error("NaN in a weight (%s)" % meth, ["merge", recipe("nan-" + meth, "merge_method: %s\n%s" % (meth, body)),
                                                     out], ["lm_head.weight", d], out)
    # a NaN in a bf16 base, in a matrix large enough for the streaming rank cuts: the first pass
    # checks the base inside the first model's scan (or on its own for DARE's survey)
    t = {k: v.to(torch.bfloat16) for k, v in t0.items()}
    t["model.layers.1.mlp.up_proj.weight"][300, 77] = float("nan")
    nan_base = os.path.join(TMP, "bf16-nan-base")
    st.save_dir(t, nan_base, config(dtype="bfloat16", **shape))
    for meth, extra in (("ties", ""), ("breadcrumbs_ties", ", gamma: 0.05"), ("dare_ties", "")):
        body = "base_model: %s\nmodels:\n  - model: %s\n    parameters: {weight: 0.5, density: 0.5%s}\n" \
               "  - model: %s\n    parameters: {weight: 0.5, density: 0.4%s}\n" % (nan_base, b16[1], extra, b16[2], extra)
        expect_error("NaN in a bf16 base (%s)" % meth,
                     ["merge", recipe("nan-base-" + meth, "merge_method: %s\n%s" % (meth, body)), out],
                     ["model.layers.1.mlp.up_proj.weight", nan_base], out)
    d = model("layers", 3, layers=2)
    expect_error("layer count mismatch", ["merge", recipe("layers", good % (base, d)), out], ["layer"], out)
    expect_error("unknown method", ["merge", recipe("unk", good.replace("ties", "tise") % (base, a)), out],
                 ["tise", "ties"], out)
    expect_error("bad YAML", ["merge", recipe("yaml", "merge_method: ties\nmodels: [\n  - {model: x\n"), out],
                 ["yaml.yml"], out)
    expect_error("missing weight", ["merge", recipe("now", good.replace("weight: 1, ", "") % (base, a)), out],
                 ["weight"], out)
    expect_error("density out of range", ["merge", recipe("dens", good.replace("0.5", "1.5") % (base, a)), out],
                 ["density", "1.5"], out)
    expect_error("model dir missing", ["merge", recipe("nodir", good % (base, "/nonexistent/model")), out],
                 ["/nonexistent/model"], out)
    expect_error("tokenizer_source union", ["merge", recipe("union", (good % (base, a)) + "tokenizer_source: union\n"),
                                            out], ["union"], out)
    expect_error("slerp needs one model", ["merge", recipe("slerp2", "merge_method: slerp\nbase_model: %s\nmodels:\n"
                                                           "  - model: %s\n  - model: %s\nparameters: {t: 0.5}\n"
                                                           % (base, a, b)), out], ["slerp"], out)
    keep = os.path.join(TMP, "precious")
    os.makedirs(keep)
    open(os.path.join(keep, "data.txt"), "w").write("x")
    expect_error("refuses to replace a foreign dir", ["merge", recipe("keep", good % (base, a)), keep], [keep])
    record("foreign dir untouched", os.path.exists(os.path.join(keep, "data.txt")))

    n_fail = sum(1 for _, ok in results if not ok)
    print("merge cli: %d passed, %d failed" % (len(results) - n_fail, n_fail))
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
