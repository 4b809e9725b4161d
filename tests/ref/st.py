"""st.py — a minimal safetensors reader/writer for the reference tests.

Written from the format description (8-byte little-endian header length, JSON
header, raw little-endian data), independent of alloy's C implementation, so
that tests check alloy against the format rather than against itself.
"""
import json
import os
import struct

import numpy as np
import torch

_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_TORCH = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def load_file(path):
    """Return {name: torch.Tensor} (bf16 stays bf16)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = data[a:b]
        shape = info["shape"]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(buf, dtype=np.uint16).astype(np.int32) << 16
            t = torch.from_numpy(u16.view(np.float32).copy()).reshape(shape).to(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(buf, dtype=_NP[info["dtype"]]).copy()).reshape(shape)
        out[name] = t
    return out


def load_dir(d):
    """All tensors of a checkpoint directory (sharded or single)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        out.update(load_file(os.path.join(d, fn)))
    return out


def save_file(tensors, path):
    header, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            b = (t.view(torch.int16).numpy().tobytes())
        else:
            b = t.numpy().tobytes()
        header[name] = {"dtype": _TORCH[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def save_dir(tensors, d, config=None, shard_max=None):
    """Write a checkpoint dir; shard_max (bytes) splits into shards with an index."""
    os.makedirs(d, exist_ok=True)
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    if not shard_max:
        save_file(tensors, os.path.join(d, "model.safetensors"))
        return
    shards, cur, size = [], {}, 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        if cur and size + nb > shard_max:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += nb
    shards.append(cur)
    wm, total = {}, 0
    for i, sh in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        save_file(sh, os.path.join(d, fn))
        for name, t in sh.items():
            wm[name] = fn
            total += t.numel() * t.element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
