/* slerp.c — spherical interpolation of two tensors: slerp (base + one model,
 * mergekit/merge_methods/slerp.py) and nuslerp (two models, optionally as task
 * vectors over a base, per row / column or flattened,
 * mergekit/merge_methods/nuslerp.py). Dot products are accumulated in double
 * in fixed chunks (vec.h); element arithmetic is f32 like mergekit's. slerp
 * streams its inputs (one pass for the norms and the dot product, one for the
 * result); nuslerp works on f32 copies. */
#include <math.h>
#include <stdbool.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

/* ---- slerp ---- */

enum { SL_T };

/* v0 = base, v1 = the model, both flattened. With u = v / |v| (only when
 * |v| > 1e-8) and dot = u0 . u1: if |dot| > 0.9995 the result is the lerp
 * (1-t) v0 + t v1; else with theta = acos(dot),
 *   out = sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1.
 * Source: mergekit slerp() (DOT_THRESHOLD 0.9995, eps 1e-8); Shoemake 1985. */
#define SL_BLOCK 1024

/* The norms' squares and the dot product of v0 and v1 in one pass over the
 * sources: per fixed chunk (vec.h) in double, chunks added in order, so the
 * sums do not depend on the thread count. Returns true on a non-finite input. */
static bool slerp_sums(merge_src v0, merge_src v1, size_t n, int nt, double *s00, double *s11, double *s01) {
    size_t nc = vec_nchunks(n);
    double part[VEC_CHUNKS_MAX][3];
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad)
    for (size_t c = 0; c < nc; c++) {
        size_t lo, hi;
        vec_chunk(n, c, &lo, &hi);
        double a = 0.0, b = 0.0, d = 0.0;
        float x0[SL_BLOCK], x1[SL_BLOCK];
        for (size_t b0 = lo; b0 < hi; b0 += SL_BLOCK) {
            size_t m = hi - b0 < SL_BLOCK ? hi - b0 : SL_BLOCK;
            bad |= merge_load(v0, b0, m, x0);
            bad |= merge_load(v1, b0, m, x1);
#pragma omp simd reduction(+ : a, b, d)
            for (size_t j = 0; j < m; j++) {
                double p = x0[j], q = x1[j];
                a += p * p;
                b += q * q;
                d += p * q;
            }
        }
        part[c][0] = a, part[c][1] = b, part[c][2] = d;
    }
    *s00 = *s11 = *s01 = 0.0;
    for (size_t c = 0; c < nc; c++) *s00 += part[c][0], *s11 += part[c][1], *s01 += part[c][2];
    return bad;
}

static int slerp_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!merge_has_base(call) || call->k != 1)
        return alloy_fail(err, "tensor '%s': slerp needs a base and exactly one other model", call->tensor_name);
    merge_src v0 = merge_input(call, -1), v1 = merge_input(call, 0);
    size_t n = call->n, nb = (n + SL_BLOCK - 1) / SL_BLOCK;
    int nt = vec_threads(call->threads);
    double t = call->gparam[SL_T], s00, s11, s01;
    if (slerp_sums(v0, v1, n, nt, &s00, &s11, &s01)) return MERGE_NONFINITE_INPUT;
    double n0 = sqrt(s00), n1 = sqrt(s11);
    double dot = s01 / ((n0 > 1e-8 ? n0 : 1.0) * (n1 > 1e-8 ? n1 : 1.0));
    float s0, s1;
    if (fabs(dot) > 0.9995) {
        s0 = (float)(1.0 - t);
        s1 = (float)t;
    } else {
        double th = acos(dot), st = sin(th);
        s0 = (float)(sin(th - th * t) / st);
        s1 = (float)(sin(th * t) / st);
    }
    int bad = 0;
    size_t obad = n;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad) reduction(min : obad)
    for (size_t bi = 0; bi < nb; bi++) {
        size_t b0 = bi * SL_BLOCK, m = n - b0 < SL_BLOCK ? n - b0 : SL_BLOCK;
        float x0[SL_BLOCK], x1[SL_BLOCK], o[SL_BLOCK];
        bad |= merge_load(v0, b0, m, x0);
        bad |= merge_load(v1, b0, m, x1);
#pragma omp simd
        for (size_t j = 0; j < m; j++) o[j] = s0 * x0[j] + s1 * x1[j];
        size_t at = merge_store(call, out, b0, o, m);
        if (at < m && b0 + at < obad) obad = b0 + at;
    }
    return merge_stream_result(call, "slerp", bad, obad, err);
}

static const merge_param_def slerp_params[] = {
    {"t", false, true, 0, 0, 1},
};

const merge_method merge_slerp = {"slerp", BASE_REQUIRED, 1, 1, slerp_params, 1, slerp_merge, true};

/* ---- nuslerp ---- */

enum { NU_ROW_WISE, NU_FLATTEN, NU_WEIGHT };

/* Coefficients of v0 and v1 for one pair of vectors, from their norms and dot
 * product, as mergekit's nuslerp(): unit vectors use max(|v|, 1e-7); if
 * |sin theta| < 1e-8 the pair is colinear and lerped. */
static void nuslerp_coef(double t, double nn0, double nn1, double d01, float *c0, float *c1) {
    double a = sqrt(nn0), b = sqrt(nn1);
    double c = d01 / ((a > 1e-7 ? a : 1e-7) * (b > 1e-7 ? b : 1e-7));
    c = c < -1.0 ? -1.0 : (c > 1.0 ? 1.0 : c);
    double th = acos(c), st = sin(th);
    if (fabs(st) < 1e-8) {
        *c0 = (float)(1.0 - t);
        *c1 = (float)t;
    } else {
        *c0 = (float)(sin((1.0 - t) * th) / st);
        *c1 = (float)(sin(t * th) / st);
    }
}

/* t = w_1 / (w_0 + w_1) (0.5 when |w_0 + w_1| < 1e-6); v_i = x_i, or x_i - base
 * with a base (then the base is added back). Vectors: the whole tensor when
 * nuslerp_flatten, else along the last axis, or along axis 0 when
 * nuslerp_row_wise (mergekit's dim=0 transposed to the end). Each pair is
 *   out = (sin((1-t) theta) v0 + sin(t theta) v1) / sin(theta),
 * theta the angle between them. Source: mergekit NuSlerpTask / nuslerp(). */
static int nuslerp_merge(const merge_call *call, float *out, alloy_err *err) {
    if (call->k != 2)
        return alloy_fail(err, "tensor '%s': nuslerp merges exactly two models (plus an optional base), got %d",
                          call->tensor_name, call->k);
    double w0 = MPARAM(call, 0, NU_WEIGHT), w1 = MPARAM(call, 1, NU_WEIGHT);
    double t = fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const float *x0 = call->x[0], *x1 = call->x[1], *b = call->base;
    size_t n = call->n;
    int nt = vec_threads(call->threads);
    if (call->gparam[NU_FLATTEN] != 0.0) {
        float c0, c1;
        nuslerp_coef(t, vec_dot_sub(x0, x0, b, n, nt), vec_dot_sub(x1, x1, b, n, nt), vec_dot_sub(x0, x1, b, n, nt),
                     &c0, &c1);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) {
            if (b)
                out[e] = b[e] + (c0 * (x0[e] - b[e]) + c1 * (x1[e] - b[e]));
            else
                out[e] = c0 * x0[e] + c1 * x1[e];
        }
        return 0;
    }
    int axis = call->gparam[NU_ROW_WISE] != 0.0 ? 0 : call->ndim - 1;
    vec_layout l = vec_layout_axis(call->ndim, call->shape, n, axis);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t v = 0; v < l.count; v++) {
        double s00 = 0, s11 = 0, s01 = 0;
        for (size_t j = 0; j < l.len; j++) {
            size_t e = vec_at(&l, v, j);
            double a = b ? (double)x0[e] - b[e] : x0[e], c = b ? (double)x1[e] - b[e] : x1[e];
            s00 += a * a, s11 += c * c, s01 += a * c;
        }
        float c0, c1;
        nuslerp_coef(t, s00, s11, s01, &c0, &c1);
        for (size_t j = 0; j < l.len; j++) {
            size_t e = vec_at(&l, v, j);
            if (b)
                out[e] = b[e] + (c0 * (x0[e] - b[e]) + c1 * (x1[e] - b[e]));
            else
                out[e] = c0 * x0[e] + c1 * x1[e];
        }
    }
    return 0;
}

static const merge_param_def nuslerp_params[] = {
    {"nuslerp_row_wise", false, false, 0, 0, 1},
    {"nuslerp_flatten", false, false, 1, 0, 1},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_nuslerp = {"nuslerp", BASE_OPTIONAL, 2, 2, nuslerp_params, 3, nuslerp_merge, false};
