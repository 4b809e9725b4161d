#!/usr/bin/python3
"""mergekit_ref.py — a PyTorch reference of mergekit's merge methods, for checking alloy.

Written from mergekit's formulas (mergekit/merge_methods/*.py, mergekit/sparsify.py),
one function per method, computing in float32. Entry points:

  merge(method, base, tensors, mparams, gparams) -> Tensor
      base: the base tensor or None; tensors: the other models' tensors; mparams: one dict
      of per-model parameters per tensor; gparams: global parameters. Missing parameters
      take mergekit's defaults.
  check_random(method, base, tensors, mparams, gparams, out) -> (ok, msg)
      for dare_ties, dare_linear, della, della_linear, whose random draws alloy makes
      with its own generator: verifies that `out` is exactly what mergekit's formula
      gives for *some* keep-masks, and that the kept fractions are plausible (within
      4 standard deviations of density, or of della's mean keep probability).

Rank ties (magnitude, breadcrumbs, sce selection) are broken by index with a stable
sort, as alloy does (mergekit leaves them to torch's unstable sort).
"""
import math
from typing import List, Optional

import torch

RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")

# consensus, sparsification, default normalize, default rescale (mergekit registry.py)
GTA = {
    "task_arithmetic": (False, None, False, False),
    "ties": (True, "magnitude", True, False),
    "dare_ties": (True, "random", False, True),
    "dare_linear": (False, "random", False, True),
    "breadcrumbs": (False, "magnitude_outliers", False, False),
    "breadcrumbs_ties": (True, "magnitude_outliers", False, False),
    "della": (True, "della_magprune", True, True),
    "della_linear": (False, "della_magprune", False, True),
}


def _f(x):
    return x.detach().to(torch.float32).clone()


def _g(gparams, name, default):
    v = (gparams or {}).get(name, default)
    return float(v) if not isinstance(v, bool) else v


# ---- sparsification (mergekit/sparsify.py) ----

def _rank_keep(key, lo, hi):
    """Mask of the elements whose ascending rank of key (stable: ties by index) is in [lo, hi)."""
    flat = key.reshape(-1)
    idx = torch.sort(flat, stable=True).indices
    mask = torch.zeros_like(flat)
    if hi > lo:
        mask[idx[lo:hi]] = 1
    return mask.view(key.shape)


def _l1_rescale(delta, mask):
    masked = delta * mask
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def magnitude_mask(delta, density):
    n = delta.numel()
    k = int(density * n)
    if k <= 0:
        raise ValueError("magnitude: density %g keeps no element" % density)
    return _rank_keep(-delta.abs(), 0, k)


def outliers_mask(delta, density, gamma):
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bot = n - target - top
    if bot < 0:
        top += bot
        bot = 0
    # mergekit's indices[n_bot:-0] is empty when top == 0 (drops everything);
    # alloy deliberately keeps [bot, n) then, as the method is described.
    return _rank_keep(delta.abs(), bot, n - top)


def della_probs(delta, density, epsilon):
    """Keep probabilities of della_magprune: rising with the |delta| rank in each row."""
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("della: density +/- epsilon must be inside (0, 1)")
    t = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    mag = t.abs().transpose(1, -1)
    ranks = torch.sort(mag, dim=-1, stable=True).indices.argsort(dim=-1).to(torch.float32)
    cols = mag.shape[-1]
    rn = ranks / (cols - 1) if cols > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rn.clamp(0, 1) * 2 * epsilon
    return probs.transpose(1, -1).reshape(delta.shape)


# ---- alloy's documented random draws (src/util/rng.h), for an exact DARE check ----

_M64 = (1 << 64) - 1


def _mix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _hash_str(s):
    h = 0xCBF29CE484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001B3) & _M64
    return _mix64(h)


def alloy_dare_mask(run_seed, tensor_name, model, n, density):
    """alloy's DARE keep-mask of model `model` (0-based) in tensor `tensor_name` of a
    merge run with --seed run_seed: element e kept iff lowbias32(e * phi + key32) <
    ceil(density 2^32), key32 from the run seed, the tensor name and the model
    (rng_keep32 of rng_stream_key(call seed, model)). Returns a float32 0/1 tensor."""
    import numpy as np
    call_seed = _mix64(run_seed ^ _hash_str(tensor_name))
    key = _mix64(call_seed ^ _mix64((model * 0xD1B54A32D192ED03 + 1) & _M64))
    thr = min(math.ceil(density * 2.0 ** 32), 2 ** 32 - 1)
    e = np.arange(n, dtype=np.uint64)
    k32 = np.array([_mix64(key ^ hi) >> 32 for hi in range((n >> 32) + 1)], dtype=np.uint64)[e >> np.uint64(32)]
    x = ((e & np.uint64(0xFFFFFFFF)) * np.uint64(0x9E3779B9) + k32) & np.uint64(0xFFFFFFFF)
    for sh, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= x >> np.uint64(sh)
        x = (x * np.uint64(mul)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return torch.from_numpy((x < np.uint64(thr)).astype(np.float32))


def sparsify(delta, kind, density, gamma, epsilon, rescale, gen=None, mask=None):
    """Sparsify one task vector as mergekit does (the random kinds draw from gen, or
    take the given mask)."""
    if kind is None or density >= 1:
        return delta
    if mask is not None:
        mask = mask.reshape(delta.shape)
    elif kind == "magnitude":
        mask = magnitude_mask(delta, density)
    elif kind == "magnitude_outliers":
        mask = outliers_mask(delta, density, gamma)
    elif kind == "random":
        mask = (torch.rand(delta.shape, generator=gen) < density).to(torch.float32)
    elif kind == "della_magprune":
        if density <= 0:
            return torch.zeros_like(delta)
        mask = (torch.rand(delta.shape, generator=gen) < della_probs(delta, density, epsilon)).to(torch.float32)
    else:
        raise ValueError(kind)
    return _l1_rescale(delta, mask) if rescale else delta * mask


def _sign_mask(wd):
    """mergekit get_mask(method='sum'): sign(wd_i) == sign of the sum (>= 0 -> +1)."""
    maj = (wd.sum(dim=0) >= 0).to(torch.float32) * 2 - 1
    return (wd.sign() == maj).to(torch.float32)


def _gta_mix(method, base, deltas, weights, gparams):
    """Weighted deltas -> consensus -> normalise -> lambda -> + base (GTATask.execute)."""
    cons, _, dn, _ = GTA[method]
    normalize = _g(gparams, "normalize", dn)
    lam = _g(gparams, "lambda", 1.0)
    d = torch.stack(deltas)
    w = torch.tensor(weights, dtype=torch.float32).view(-1, *([1] * base.dim()))
    wd = d * w
    if cons:
        m = _sign_mask(wd)
        mixed = (wd * m).sum(0)
        div = (w * m).sum(0)
        div[div == 0] = 1
    else:
        mixed = wd.sum(0)
        div = w.sum(0)
        div[div.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


def gta(method, base, tensors, mparams, gparams, gen=None, masks=None):
    """task_arithmetic, ties, breadcrumbs(_ties) (and the random ones with a torch
    generator, or with given keep-masks, one per model)."""
    _, kind, _, dr = GTA[method]
    rescale = _g(gparams, "rescale", dr)
    base = _f(base)
    deltas, weights = [], []
    for i, (x, p) in enumerate(zip(tensors, mparams)):
        d = _f(x) - base
        d = sparsify(d, kind, p.get("density", 1.0), p.get("gamma", 0.01), p.get("epsilon", 0.15), rescale, gen,
                     masks[i] if masks is not None else None)
        deltas.append(d)
        weights.append(float(p["weight"]))
    return _gta_mix(method, base, deltas, weights, gparams)


# ---- the other methods ----

def linear(tensors, mparams, gparams):
    w = [float(p["weight"]) for p in mparams]
    s = sum(wi * _f(x) for wi, x in zip(w, tensors))
    return s / sum(w) if _g(gparams, "normalize", True) else s


def slerp(base, tensors, gparams):
    t = _g(gparams, "t", None)
    v0, v1 = _f(base), _f(tensors[0])
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > 1e-8 else v0
    u1 = v1 / n1 if n1 > 1e-8 else v1
    dot = (u0 * u1).sum()
    if dot.abs() > 0.9995:
        return (1 - t) * v0 + t * v1
    th = torch.arccos(dot)
    st = torch.sin(th)
    return torch.sin(th - th * t) / st * v0 + torch.sin(th * t) / st * v1


def _nuslerp(t, v0, v1, dim, flatten):
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True)
    th = torch.acos(cos.clamp(-1, 1))
    st = torch.sin(th)
    res = (torch.sin((1 - t) * th) * v0 + torch.sin(t * th) * v1) / st
    col = (st.abs() < 1e-8).expand_as(res)
    lerp = (1 - t) * v0 + t * v1
    res = torch.where(col, lerp, res)
    if dim != -1 and not flatten:
        res = res.transpose(dim, -1)
    return res.reshape(shape)


def nuslerp(base, tensors, mparams, gparams):
    w = [float(p["weight"]) for p in mparams]
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    dim = 0 if _g(gparams, "nuslerp_row_wise", False) else -1
    flat = _g(gparams, "nuslerp_flatten", True)
    a, b = _f(tensors[0]), _f(tensors[1])
    if base is None:
        return _nuslerp(t, a, b, dim, flat)
    base = _f(base)
    return base + _nuslerp(t, a - base, b - base, dim, flat)


def multislerp(base, tensors, mparams, gparams):
    if len(tensors) == 1:
        return _f(tensors[0])
    eps = _g(gparams, "eps", 1e-8)
    x = torch.stack([_f(t) for t in tensors])
    if base is not None:
        x = x - _f(base)
    flat = x.reshape(x.shape[0], -1)
    w = torch.tensor([float(p["weight"]) for p in mparams], dtype=torch.float32)
    if _g(gparams, "normalize_weights", True):
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    unit = flat / (norms + eps)
    mean = (unit * w.view(-1, 1)).sum(0)
    mn = mean.norm()
    if mn < eps:
        if len(tensors) != 2:
            raise ValueError("multislerp: zero mean")
        res = (x[0] * w[0] + x[1] * w[1])
        return res + _f(base) if base is not None else res
    mean = mean / mn
    dots = (unit * mean).sum(-1, keepdim=True)
    tan = ((unit - dots * mean) * w.view(-1, 1)).sum(0)
    tn = tan.norm() + eps
    res = mean * torch.cos(tn) + tan * (torch.sin(tn) / tn)
    res = (res * (norms.squeeze(-1) * w).sum()).view(x.shape[1:])
    return res + _f(base) if base is not None else res


def karcher(tensors, gparams):
    max_iter = int(_g(gparams, "max_iter", 10))
    tol = _g(gparams, "tol", 1e-5)
    xs = [_f(t) for t in tensors]
    if len(xs) == 1:
        return xs[0]
    alphas = [1.0 / len(xs)] * len(xs)
    norms = [x.norm().item() for x in xs]
    units = [x / n if n != 0 else torch.zeros_like(x) for x, n in zip(xs, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(xs[0])
    a = [1.0 / len(valid)] * len(valid)
    us = [units[i] for i in valid]
    u = sum(ai * ui for ai, ui in zip(a, us))
    nu = u.norm().item()
    u = us[0].clone() if nu < tol else u / nu
    for _ in range(max_iter):
        T = torch.zeros_like(u)
        for ai, ui in zip(a, us):
            dot = torch.clamp(torch.dot(u.flatten(), ui.flatten()), -1.0, 1.0)
            th = torch.arccos(dot)
            if th.item() < tol:
                continue
            T += ai * (th / torch.sin(th)) * (ui - dot * u)
        nT = T.norm()
        if nT.item() < tol:
            break
        u = torch.cos(nT) * u + torch.sin(nT) * (T / nT)
        un = u.norm()
        if un.item() > tol:
            u = u / un
    return sum(al * n for al, n in zip(alphas, norms)) * u


def model_stock(base, tensors, gparams):
    w0 = _f(base)
    ws = [_f(t) for t in tensors]
    shape = w0.shape
    if _g(gparams, "filter_wise", False):
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    off = [w - w0 for w in ws]
    cs = []
    for i in range(len(off)):
        for j in range(i + 1, len(off)):
            npd = off[i].norm(dim=-1) * off[j].norm(dim=-1)
            cs.append(((off[i] * off[j]).sum(-1) / npd.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cs).mean(0).unsqueeze(-1)
    N = len(ws)
    t = N * c / (1 + (N - 1) * c)
    return (t * (sum(ws) / N) + (1 - t) * w0).reshape(shape)


def sce(base, tensors, gparams):
    topk = _g(gparams, "select_topk", 1.0)
    base = _f(base)
    tv = torch.stack([_f(t) - base for t in tensors])
    if topk < 1:
        if topk <= 0:
            mask = torch.zeros_like(base)
        else:
            var = torch.var(tv, dim=0, unbiased=False)
            k = int(int(torch.count_nonzero(var)) * topk)
            mask = _rank_keep(-var.abs(), 0, k) if k > 0 else torch.zeros_like(base)
        tv = tv * mask.unsqueeze(0)
    erase = _sign_mask(tv)
    w = (tv ** 2).mean(dim=list(range(1, tv.dim())))
    ws = w.sum().item()
    w = torch.ones_like(w) / w.shape[0] if abs(ws) < 1e-6 else w / ws
    w = w.view(-1, *([1] * base.dim()))
    ew = w * erase
    return base + (tv * ew).sum(0) / ew.sum(0).clamp(min=1e-6)


def nearswap(base, tensors, gparams):
    t = _g(gparams, "t", None)
    a, b = _f(base), _f(tensors[0])
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(0, 1)
    return w * b + (1 - w) * a


def passthrough(tensors, mparams):
    s = mparams[0].get("scale") if mparams else None
    x = _f(tensors[0])
    return x * float(s) if s is not None else x


def merge(method: str, base: Optional[torch.Tensor], tensors: List[torch.Tensor], mparams: List[dict],
          gparams: dict) -> torch.Tensor:
    """The merged tensor for one method (deterministic methods only; see check_random)."""
    gparams = gparams or {}
    mparams = list(mparams) + [{}] * (len(tensors) - len(mparams))
    if method in GTA:
        if method in RANDOM_METHODS:
            raise ValueError("%s is random: use check_random (or gta(..., gen=torch.Generator()))" % method)
        return gta(method, base, tensors, mparams, gparams)
    if method == "linear":
        return linear(tensors, mparams, gparams)
    if method == "slerp":
        return slerp(base, tensors, gparams)
    if method == "nuslerp":
        return nuslerp(base, tensors, mparams, gparams)
    if method == "multislerp":
        return multislerp(base, tensors, mparams, gparams)
    if method == "karcher":
        return karcher(tensors, gparams)
    if method == "model_stock":
        return model_stock(base, tensors, gparams)
    if method == "sce":
        return sce(base, tensors, gparams)
    if method == "nearswap":
        return nearswap(base, tensors, gparams)
    if method == "passthrough":
        return passthrough(tensors, mparams)
    raise ValueError("unknown method %s" % method)


# ---- structural check of the random methods ----

def _keep_probs(method, delta, p):
    if GTA[method][1] == "random":
        return torch.full_like(delta, float(p.get("density", 1.0)))
    d, e = float(p.get("density", 1.0)), float(p.get("epsilon", 0.15))
    if d <= 0:
        return torch.zeros_like(delta)
    return della_probs(delta, d, e)


def _candidates(method, base, D, W, s, P, gparams):
    """Merged outputs [npat, n] for every keep pattern P [npat, k] (D: deltas [k, n])."""
    cons, _, dn, _ = GTA[method]
    normalize = _g(gparams, "normalize", dn)
    lam = _g(gparams, "lambda", 1.0)
    wd = P[:, :, None] * (W * s)[None, :, None] * D[None]
    if cons:
        maj = (wd.sum(1) >= 0).to(torch.float32) * 2 - 1
        c = (wd.sign() == maj[:, None, :]).to(torch.float32)
        mixed = (wd * c).sum(1)
        div = (W[None, :, None] * c).sum(1)
        div[div == 0] = 1
    else:
        mixed = wd.sum(1)
        div = W.sum()
        div = div if div.abs() >= 1e-8 else torch.tensor(1.0)
    if normalize:
        mixed = mixed / div
    if lam != 1:
        mixed = mixed * lam
    return base[None] + mixed


def _columns(method, D, W, s, M, gparams):
    """Contribution of each model at s_i = 1 [n, k], with the masks M [k, n] and the
    signs and divisors of the current s held fixed (so out - base is linear in s)."""
    cons, _, dn, _ = GTA[method]
    normalize = _g(gparams, "normalize", dn)
    lam = _g(gparams, "lambda", 1.0)
    raw = M * D * W[:, None]
    wd = raw * s[:, None]
    if cons:
        maj = (wd.sum(0) >= 0).to(torch.float32) * 2 - 1
        c = (wd.sign() == maj[None]).to(torch.float32)
        div = (W[:, None] * c).sum(0)
        div[div == 0] = 1
    else:
        c = torch.ones_like(wd)
        div = W.sum()
        div = div if div.abs() >= 1e-8 else torch.tensor(1.0)
    f = lam / div if normalize else lam
    return (raw * c * f).T


def _fit(method, base, D, W, s, P, whole, out, gparams, rescale, smax, iters=12):
    """Hard EM: best pattern per element given s, then s by least squares given the patterns."""
    y = (out - base).double()
    for _ in range(iters):
        C = _candidates(method, base, D, W, s, P, gparams)
        best = (C - out[None]).abs().argmin(0)
        if not rescale:
            break
        M = P[best].T
        A = _columns(method, D, W, s, M, gparams).double()
        free = [i for i in range(len(s)) if not whole[i] and A[:, i].abs().max() > 0]
        if not free:
            break
        fixed = [i for i in range(len(s)) if i not in free]
        yy = y - (A[:, fixed] * s[fixed].double()).sum(1) if fixed else y
        sol = torch.linalg.lstsq(A[:, free], yy.unsqueeze(1)).solution.squeeze(1)
        new = s.clone()
        new[free] = sol.to(torch.float32)
        new = torch.minimum(torch.maximum(new, torch.ones_like(new)), smax)  # s = sum|d| / sum|kept d| >= 1
        done = torch.allclose(new, s, rtol=1e-7, atol=0)
        s = new
        if done:
            break
    C = _candidates(method, base, D, W, s, P, gparams)
    emin, best = (C - out[None]).abs().min(0)
    return s, C, emin, best


def _exhaustive(method, base, D, W, whole, out, gparams, rescale, tol, max_bits=20):
    """For tiny tensors: try every combination of keep-masks over the nonzero deltas;
    returns rescale factors explaining out within tol, or None."""
    cons, _, dn, _ = GTA[method]
    normalize = _g(gparams, "normalize", dn)
    lam = _g(gparams, "lambda", 1.0)
    k, n = D.shape
    pos = [(i, e) for i in range(k) if not whole[i] for e in range(n) if D[i, e] != 0]
    nb = len(pos)
    if nb > max_bits:
        return None
    A1 = D.abs().sum(1)
    for lo in range(0, 1 << nb, 1 << 16):
        codes = torch.arange(lo, min(lo + (1 << 16), 1 << nb))
        M = torch.ones(len(codes), k, n)
        for bit, (i, e) in enumerate(pos):
            M[:, i, e] = ((codes >> bit) & 1).to(torch.float32)
        kept = (M * D.abs()[None]).sum(-1)
        sc = torch.where(kept > 0, A1[None] / kept.clamp(min=1e-30), torch.ones_like(kept))
        if not rescale:
            sc = torch.ones_like(sc)
        sc[:, [i for i in range(k) if whole[i]]] = 1.0
        wd = M * (sc * W[None])[:, :, None] * D[None]
        if cons:
            maj = (wd.sum(1) >= 0).to(torch.float32) * 2 - 1
            c = (wd.sign() == maj[:, None, :]).to(torch.float32)
            mixed = (wd * c).sum(1)
            div = (W[None, :, None] * c).sum(1)
            div[div == 0] = 1
        else:
            mixed = wd.sum(1)
            div = W.sum()
            div = div if div.abs() >= 1e-8 else torch.tensor(1.0)
        if normalize:
            mixed = mixed / div
        if lam != 1:
            mixed = mixed * lam
        err = (base[None] + mixed - out[None]).abs().amax(-1)
        j = int(err.argmin())
        if err[j] <= tol:
            return sc[j]
    return None


def check_random(method, base, tensors, mparams, gparams, out):
    """Is `out` mergekit's formula for some keep-masks, with plausible keep rates? -> (ok, msg).

    For one model with rescale, every element of out - base is 0 or lambda * w * s * delta
    (divided by w when normalised), s = sum|delta| / sum|kept delta| (mergekit's L1
    rescale, ~1/density: not exactly 1/density). For k models each element's 2^k keep
    patterns are enumerated and the rescale factors fitted (hard EM, restarted from factors
    of sampled masks when it stalls). Keep rates are counted where flipping a model's bit
    would visibly change the element, and compared with the keep probabilities."""
    gparams = gparams or {}
    _, kind, _, dr = GTA[method]
    rescale = _g(gparams, "rescale", dr)
    base, out = _f(base).reshape(-1), _f(out).reshape(-1)
    shape = tensors[0].shape
    k = len(tensors)
    D = torch.stack([_f(x).reshape(-1) - base for x in tensors])
    W = torch.tensor([float(p["weight"]) for p in mparams[:k]], dtype=torch.float32)
    dens = [float(p.get("density", 1.0)) for p in mparams[:k]]
    whole = [d >= 1 for d in dens]
    probs = torch.stack([_keep_probs(method, D[i].view(shape), mparams[i]).reshape(-1) for i in range(k)])
    P = torch.tensor([[1.0 if (whole[i] or (j >> i) & 1) else 0.0 for i in range(k)] for j in range(2 ** k)])
    bf16 = torch.equal(out, out.to(torch.bfloat16).float())
    scale = out.abs().max().item() or 1.0
    tol = (1e-2 if bf16 else 1e-5) * scale
    ulp = (out.abs() * 2 ** -8) if bf16 else (out.abs() * 1e-6 + 1e-7 * scale)
    A1 = D.abs().sum(1)
    nzmin = torch.where(D != 0, D.abs(), torch.full_like(D, float("inf"))).min(1).values
    smax = torch.where(torch.isfinite(nzmin), A1 / nzmin, torch.ones_like(A1))

    def s_of(m):
        kept = (D.abs() * m).sum(1)
        return torch.where(kept > 0, A1 / kept.clamp(min=1e-30), torch.ones_like(A1)) if rescale \
            else torch.ones_like(A1)

    g = torch.Generator().manual_seed(1234)
    s, C, emin, best = _fit(method, base, D, W, s_of(probs), P, whole, out, gparams, rescale, smax)
    tries = 0
    while emin.max().item() > tol and rescale and tries < 400:
        tries += 1
        # alternate: factors implied by the current best patterns, and by sampled masks
        m = P[best].T if tries % 2 else (torch.rand(probs.shape, generator=g) < probs).to(torch.float32)
        s2, C2, e2, b2 = _fit(method, base, D, W, s_of(m), P, whole, out, gparams, rescale, smax)
        if e2.max() < emin.max():
            s, C, emin, best = s2, C2, e2, b2
    if emin.max().item() > tol:
        sx = _exhaustive(method, base, D, W, whole, out, gparams, rescale, tol)
        if sx is not None:
            s = sx
            C = _candidates(method, base, D, W, s, P, gparams)
            emin, best = (C - out[None]).abs().min(0)
    worst = emin.max().item()
    fac = ["%.4g" % x for x in s.tolist()]
    if worst > tol:
        return False, "no keep-pattern explains element %d (error %.3g, tolerance %.3g, rescale %s)" % (
            int(emin.argmax()), worst, tol, fac)
    for i in range(k):
        if whole[i]:
            continue
        other = best ^ (1 << i)
        diff = (C.gather(0, other.unsqueeze(0)) - C.gather(0, best.unsqueeze(0))).abs().squeeze(0)
        ident = diff > 8 * ulp
        n_id = int(ident.sum())
        if n_id < 8:
            continue
        kept = ((best >> i) & 1).bool() & ident
        p = probs[i][ident].double()
        mu, sd = p.sum().item(), math.sqrt((p * (1 - p)).sum().item())
        got = int(kept.sum())
        if abs(got - mu) > 4 * sd + 1:
            return False, "model %d keeps %d of %d identifiable elements, expected %.1f +- %.1f" % (
                i, got, n_id, mu, sd)
    return True, "rescale factors %s" % fac


if __name__ == "__main__":
    torch.manual_seed(0)
    b = torch.randn(24, 40) * 0.02
    xs = [b + torch.randn(24, 40) * 0.01 * (i + 1) for i in range(3)]
    mp = [{"weight": 0.6, "density": 0.5, "gamma": 0.05, "epsilon": 0.1}, {"weight": 0.3, "density": 0.7},
          {"weight": 0.4, "density": 0.3, "epsilon": 0.2}]
    for m in ("linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "multislerp", "karcher",
              "model_stock", "sce"):
        r = merge(m, b, xs, mp, {"select_topk": 0.5})
        print("%-18s ok shape %s finite %s" % (m, tuple(r.shape), bool(torch.isfinite(r).all())))
    print("%-18s ok" % "slerp", float(merge("slerp", b, xs[:1], [{}], {"t": 0.3}).sum()))
    print("%-18s ok" % "nuslerp", float(merge("nuslerp", b, xs[:2], mp[:2], {}).sum()))
    print("%-18s ok" % "nearswap", float(merge("nearswap", b, xs[:1], [{}], {"t": 0.01}).sum()))
    g = torch.Generator().manual_seed(1)
    for m in RANDOM_METHODS:
        for k in (1, 3):
            out = gta(m, b, xs[:k], mp[:k], {}, gen=g)
            ok, msg = check_random(m, b, xs[:k], mp[:k], {}, out)
            bad = out.clone()
            bad[0, 0] += 0.01
            ok2, _ = check_random(m, b, xs[:k], mp[:k], {}, bad)
            print("%-18s k=%d check_random %s (%s); corrupted output rejected: %s" % (m, k, ok, msg, not ok2))
