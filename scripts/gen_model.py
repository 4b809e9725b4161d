#!/usr/bin/python3
"""gen_model.py — the benchmark's Qwen2-shaped checkpoints, generated once.

usage: gen_model.py OUT_DIR [--variants 3] [--hidden 896 --inter 4864 --layers 24 --heads 14 --kv 2
                                           --vocab 151936]
Writes OUT_DIR/base and OUT_DIR/ft1..ftN in bf16: the base is normal(0, 0.02)
(norms 1), each variant adds a sparse-ish normal(0, 0.002) delta, like a fine-tune.
Written with numpy only, in row chunks, so memory stays small.
"""
import argparse
import json
import os
import struct
import zlib

import numpy as np


def bf16_bytes(a):
    u = a.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def shapes(a):
    h, i, v, hd = a.hidden, a.inter, a.vocab, a.hidden // a.heads
    out = [("model.embed_tokens.weight", (v, h))]
    for l in range(a.layers):
        p = "model.layers.%d." % l
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                (p + "self_attn.k_proj.weight", (a.kv * hd, h)), (p + "self_attn.k_proj.bias", (a.kv * hd,)),
                (p + "self_attn.v_proj.weight", (a.kv * hd, h)), (p + "self_attn.v_proj.bias", (a.kv * hd,)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i))]
    out.append(("model.norm.weight", (h,)))
    return out


def write(path, specs, fill):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shp in specs:
        nb = int(np.prod(shp)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + nb]}
        off += nb
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - (len(hb) + 8) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for name, shp in specs:
            rows = shp[0]
            step = max(1, (1 << 22) // max(1, int(np.prod(shp[1:])) if len(shp) > 1 else 1))
            for r0 in range(0, rows, step):
                sub = (min(step, rows - r0),) + tuple(shp[1:])
                f.write(bf16_bytes(fill(name, r0, sub)))
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--inter", type=int, default=4864)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    a = ap.parse_args()
    specs = shapes(a)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": a.hidden,
           "intermediate_size": a.inter, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
           "num_key_value_heads": a.kv, "vocab_size": a.vocab, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "max_position_embeddings": 32768, "hidden_act": "silu", "bos_token_id": 151643,
           "eos_token_id": 151643}
    for v in range(a.variants + 1):
        d = os.path.join(a.out, "base" if v == 0 else "ft%d" % v)
        if os.path.exists(os.path.join(d, "model.safetensors")):
            continue
        os.makedirs(d, exist_ok=True)

        def fill(name, r0, shp, v=v):
            seed = zlib.crc32(("%s:%d" % (name, r0)).encode())
            rng = np.random.default_rng(seed)
            x = np.ones(shp, np.float32) if "norm" in name else rng.standard_normal(shp, np.float32) * 0.02
            if v:
                d = np.random.default_rng(seed + 7919 * v).standard_normal(shp, np.float32) * 0.002
                x = x + d
            return x
        write(os.path.join(d, "model.safetensors"), specs, fill)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        print("wrote", d, flush=True)


if __name__ == "__main__":
    main()
