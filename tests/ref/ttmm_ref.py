#!/usr/bin/env python3
"""ttmm_ref.py — reference of TTMM's expert coefficients (Local Mixtures of Experts,
arXiv 2505.14136, as the authors' ttmerge/merging_model.py computes them), checked
against `alloy experts info LIB -p TEXT` output.

Usage: ttmm_ref.py LIB_DIR INFO_OUTPUT_FILE [--top-k K]
Reads the query vector and the selection printed by alloy, the centroids from
LIB/centroids.safetensors, recomputes s, kappa, w, the tau cut, the cap and the
renormalisation in float64, and exits non-zero on a mismatch."""
import json, os, sys
import numpy as np


def load_centroids(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    h = json.loads(raw[8:8 + n])
    t = h["centroids"]
    a, b = t["data_offsets"]
    return np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"]).astype(np.float64)


def coefficients(q, C, beta, tau, cap, top_k=0):
    s = C @ q
    kappa = np.exp(-(1.0 - s) / beta ** 2)
    w = kappa / kappa.sum()
    if np.isnan(w).any():
        return [int(np.nanargmax(s))], [1.0]
    if top_k > 0:
        sel = sorted(np.argsort(-kappa, kind="stable")[:top_k].tolist())
    else:
        sel = [i for i in range(len(w)) if w[i] > tau]
        if len(sel) > cap:
            sel = sorted(np.argsort(-kappa, kind="stable")[:cap].tolist())
    if not sel:
        return [], []
    ws = w[sel] / w[sel].sum()
    return sel, ws.tolist()


def main():
    lib, info = sys.argv[1], sys.argv[2]
    top_k = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--top-k" else 0
    man = json.load(open(os.path.join(lib, "alloy_experts.json")))
    C = load_centroids(os.path.join(lib, "centroids.safetensors"))
    lines = open(info).read().splitlines()
    q = np.array([float(x) for x in next(l for l in lines if l.startswith("query:")).split()[1:]])
    sims = np.array([float(x) for x in next(l for l in lines if l.startswith("similarity:")).split()[1:]])
    got = [(int(l.split()[1]), float(l.split()[3])) for l in lines if l.strip().startswith("expert ") and "weight" in l]
    assert abs(np.linalg.norm(q) - 1) < 1e-5, "query not unit norm"
    assert np.allclose(np.linalg.norm(C, axis=1), 1, atol=1e-5), "centroids not unit norm"
    assert np.allclose(sims, C @ q, atol=1e-6), "similarities differ"
    sel = man["select"]
    ref_i, ref_w = coefficients(q, C, sel["beta"], sel["tau"], sel["max_experts"], top_k)
    assert [i for i, _ in got] == ref_i, f"selected {[i for i, _ in got]} vs reference {ref_i}"
    assert np.allclose([w for _, w in got], ref_w, atol=1e-7), f"weights {got} vs {ref_w}"
    print(f"  ttmm_ref: {len(ref_i)} experts, weights {np.round(ref_w, 6).tolist()} agree")


if __name__ == "__main__":
    main()
