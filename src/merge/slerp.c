/* slerp.c — spherical interpolation of two tensors: slerp (base + one model,
 * mergekit/merge_methods/slerp.py) and nuslerp (two models, optionally as task
 * vectors over a base, per row / column or flattened,
 * mergekit/merge_methods/nuslerp.py). Dot products are accumulated in double
 * in fixed chunks (vec.h); element arithmetic is f32 like mergekit's. slerp
 * streams its inputs (one pass for the norms and the dot product, one for the
 * result); nuslerp works on f32 copies. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "merge/gta_kernel.h"
#include "merge/method.h"
#include "merge/sink.h"
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

/* The sums' chunks go out in order, and the second pass's segments of
 * SL_SEG blocks in reverse (forwards inside each, so that results reach
 * the output in runs), each to whichever thread is free: what the first
 * pass read last is still in the shared last-level cache (two 0.5B MLP
 * matrices in bf16 are 17 MB), and a thread slowed by the writers or the
 * prefetcher does not keep the other waiting at the end of a pass. One
 * thread alone takes them in order, as one stream (task_arithmetic.c). The
 * sums are per fixed chunk, so they do not depend on the schedule. */
#define SL_SEG 128

/* The three sums of one chunk, 8 lanes each, added up in a fixed tree. */
static double lanes8(double *l) {
    for (int w = 4; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] += l[i + w];
    return l[0];
}

/* Both inputs bf16, or both f16, in place: the passes are gta_kernel.c's
 * loops. */
static bool slerp_half(merge_src v0, merge_src v1) {
    return GTA_KERNEL && (v0.dtype == ALLOY_BF16 || v0.dtype == ALLOY_F16) && v1.dtype == v0.dtype &&
           !((uintptr_t)v0.data & 1) && !((uintptr_t)v1.data & 1);
}

/* The norms' squares and the dot product of v0 and v1 in one pass over the
 * sources: per fixed chunk (vec.h) in double, in 8 lanes (element e of a
 * chunk into lane e % 8, in order) added up in a fixed tree, chunks added in
 * order, so the sums depend neither on the thread count nor on whether
 * gk_slerp_sums or the loop here made them. Returns true on a non-finite
 * input. */
static bool slerp_sums(merge_src v0, merge_src v1, size_t n, int nt, double *s00, double *s11, double *s01) {
    size_t nc = vec_nchunks(n);
    double part[VEC_CHUNKS_MAX][3];
    bool kern = slerp_half(v0, v1), f16 = v0.dtype == ALLOY_F16;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : bad)
    for (size_t c = 0; c < nc; c++) {
        size_t lo, hi;
        vec_chunk(n, c, &lo, &hi);
        double sums[24] = {0}; /* lanes of p p, q q, p q */
        float x0[SL_BLOCK], x1[SL_BLOCK];
        for (size_t b0 = lo; b0 < hi; b0 += SL_BLOCK) {
            size_t m = hi - b0 < SL_BLOCK ? hi - b0 : SL_BLOCK;
            if (kern) {
                bad |= gk_slerp_sums(v0.data, v1.data, b0, m, f16, sums);
                continue;
            }
            bad |= merge_load(v0, b0, m, x0);
            bad |= merge_load(v1, b0, m, x1);
            for (size_t j = 0; j < m; j++) { /* b0 - lo is a multiple of 8 */
                double p = x0[j], q = x1[j];
                sums[j % 8] += p * p;
                sums[8 + j % 8] += q * q;
                sums[16 + j % 8] += p * q;
            }
        }
        part[c][0] = lanes8(sums), part[c][1] = lanes8(sums + 8), part[c][2] = lanes8(sums + 16);
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
    alloy_dtype odt = call->sink ? merge_sink_dtype(call->sink) : ALLOY_F32;
    bool f16 = v0.dtype == ALLOY_F16;
    if (slerp_half(v0, v1) && (f16 ? odt == ALLOY_F16 : odt == ALLOY_BF16 || odt == ALLOY_F32)) {
        size_t nseg = (nb + SL_SEG - 1) / SL_SEG;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(min : obad)
        for (size_t back = 0; back < nseg; back++) {
            size_t sg = nt == 1 ? back : nseg - 1 - back;
            for (size_t bi = sg * SL_SEG; bi < nb && bi < (sg + 1) * SL_SEG; bi++) {
                size_t b0 = bi * SL_BLOCK, m = n - b0 < SL_BLOCK ? n - b0 : SL_BLOCK, ob = m;
                void *dst = call->sink ? merge_sink_slot(call->sink, b0, m) : (void *)(out + b0);
                gk_lerp(v0.data, v1.data, s0, s1, f16, odt == ALLOY_BF16, b0, m, dst, &ob);
                /* as merge_store: results are checked on their way to the sink */
                if (call->sink && ob < m && b0 + ob < obad) obad = b0 + ob;
            }
        }
        return merge_stream_result(call, "slerp", false, obad, err);
    }
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

const merge_method merge_slerp = {"slerp", BASE_REQUIRED, 1, 1, slerp_params, 1, slerp_merge, true, true};

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

/* The inputs of a block: in[0] = x_0, in[1] = x_1, in[2] = the base (if any). */
typedef struct nu_ctx {
    const merge_call *call;
    bool base;
    double t;
    float c0, c1;          /* one pair of coefficients (flatten) ... */
    const float *col;      /* ... or per column (axis 0): col[2v], col[2v + 1] */
    size_t inner;          /* columns (axis 0) */
} nu_ctx;

static bool nu_load(const nu_ctx *c, size_t lo, size_t m, float *const *in) {
    bool bad = merge_load(merge_input(c->call, 0), lo, m, in[0]);
    bad |= merge_load(merge_input(c->call, 1), lo, m, in[1]);
    if (c->base) bad |= merge_load(merge_input(c->call, -1), lo, m, in[2]);
    return bad;
}

/* v_0 . v_0, v_1 . v_1, v_0 . v_1 of elements [0, m) added to s[0..3), each
 * in vec_sum8's lanes per piece of 1024, the pieces in order (v_i = x_i -
 * base in double, or x_i). */
static void nu_sums(const float *const *in, bool base, size_t m, double *s) {
    const float *b = base ? in[2] : NULL;
    enum { PIECE = 1024 };
    /* per piece, each sum in vec_sum8's lanes (vec_gram_block: the pairs
     * (0, 0), (0, 1), (1, 1)) */
    for (size_t s0 = 0; s0 < m; s0 += PIECE) {
        size_t mm = m - s0 < PIECE ? m - s0 : PIECE;
        const float *x[2] = {in[0] + s0, in[1] + s0};
        double p[3];
        vec_gram_block(2, x, b ? b + s0 : NULL, mm, p);
        s[0] += p[0], s[1] += p[2], s[2] += p[1];
    }
}

/* vec_reduce chunk (flatten): acc[0..3) the sums, acc[3] non-finite inputs,
 * acc[4] allocation failures. */
static void nu_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const nu_ctx *c = p;
    float *buf = malloc(3 * SL_BLOCK * sizeof *buf);
    if (!buf) {
        acc[4] += 1.0;
        return;
    }
    float *in[3] = {buf, buf + SL_BLOCK, buf + 2 * SL_BLOCK};
    for (size_t b0 = lo; b0 < hi; b0 += SL_BLOCK) {
        size_t m = hi - b0 < SL_BLOCK ? hi - b0 : SL_BLOCK;
        if (nu_load(c, b0, m, in)) acc[3] += 1.0;
        nu_sums((const float *const *)in, c->base, m, acc);
    }
    free(buf);
}

/* out = c0 v0 + c1 v1 (+ base), the coefficients of the block's vectors */
static void nu_out_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    const nu_ctx *c = p;
    const float *x0 = in[0], *x1 = in[1], *b = c->base ? in[2] : NULL;
    for (size_t e = 0; e < m; e++) {
        float c0 = c->c0, c1 = c->c1;
        if (c->col) {
            size_t v = (lo + e) % c->inner;
            c0 = c->col[2 * v], c1 = c->col[2 * v + 1];
        }
        o[e] = b ? b[e] + (c0 * (x0[e] - b[e]) + c1 * (x1[e] - b[e])) : c0 * x0[e] + c1 * x1[e];
    }
}

/* Contiguous vectors (the last axis): each row read once, merged, written. */
static int nu_rows(nu_ctx *c, float *out, size_t len, alloy_err *err) {
    const merge_call *call = c->call;
    size_t count = len ? call->n / len : 0, obad = call->n;
    int bad = 0, oom = 0;
#pragma omp parallel num_threads(vec_threads(call->threads)) reduction(| : bad, oom) reduction(min : obad)
    {
        float *buf = malloc((4 * len + 1) * sizeof *buf);
        oom = !buf;
        float *in[3] = {buf, buf + len, buf + 2 * len}, *o = buf + 3 * len;
        nu_ctx mine = *c;
#pragma omp for schedule(static)
        for (size_t v = 0; v < count; v++) {
            if (oom) continue;
            size_t lo = v * len;
            bad |= nu_load(c, lo, len, in);
            double s[3] = {0, 0, 0};
            nu_sums((const float *const *)in, c->base, len, s);
            nuslerp_coef(c->t, s[0], s[1], s[2], &mine.c0, &mine.c1);
            nu_out_block(&mine, lo, (const float *const *)in, len, o);
            size_t at = merge_store(call, out, lo, o, len);
            if (at < len && lo + at < obad) obad = lo + at;
        }
        free(buf);
    }
    if (oom) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    return merge_stream_result(call, "nuslerp", bad, obad, err);
}

/* Vectors along axis 0 (columns of a [len, inner] view): the sums per column
 * in row order over column strips, then the result element-wise. */
#define NU_STRIP 512
static int nu_columns(nu_ctx *c, float *out, size_t len, size_t inner, alloy_err *err) {
    const merge_call *call = c->call;
    double *sum = calloc(3 * inner + 1, sizeof *sum);
    float *col = malloc((2 * inner + 1) * sizeof *col);
    int bad = 0, oom = !sum || !col;
    size_t strips = (inner + NU_STRIP - 1) / NU_STRIP;
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(dynamic, 1) reduction(| : bad, oom)
    for (size_t st = 0; st < strips; st++) {
        if (!sum || !col) continue;
        size_t c0 = st * NU_STRIP, w = inner - c0 < NU_STRIP ? inner - c0 : NU_STRIP;
        float x[3][NU_STRIP];
        float *in[3] = {x[0], x[1], x[2]};
        for (size_t j = 0; j < len; j++) {
            bad |= nu_load(c, j * inner + c0, w, in);
            const float *b = c->base ? x[2] : NULL;
            for (size_t q = 0; q < w; q++) {
                double a = b ? (double)x[0][q] - b[q] : x[0][q], d = b ? (double)x[1][q] - b[q] : x[1][q];
                double *s = sum + 3 * (c0 + q);
                s[0] += a * a, s[1] += d * d, s[2] += a * d;
            }
        }
    }
    int rc = oom ? alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name) : bad ? MERGE_NONFINITE_INPUT : 0;
    if (!rc) {
        for (size_t v = 0; v < inner; v++)
            nuslerp_coef(c->t, sum[3 * v], sum[3 * v + 1], sum[3 * v + 2], &col[2 * v], &col[2 * v + 1]);
        c->col = col;
        c->inner = inner;
        static const int which[] = {0, 1, -1};
        rc = merge_stream_elementwise(call, out, "nuslerp", c->base ? 3 : 2, which, nu_out_block, c, err);
    }
    free(sum);
    free(col);
    return rc;
}

/* t = w_1 / (w_0 + w_1) (0.5 when |w_0 + w_1| < 1e-6); v_i = x_i, or x_i - base
 * with a base (then the base is added back). Vectors: the whole tensor when
 * nuslerp_flatten, else along the last axis, or along axis 0 when
 * nuslerp_row_wise (mergekit's dim=0 transposed to the end). Each pair is
 *   out = (sin((1-t) theta) v0 + sin(t theta) v1) / sin(theta),
 * theta the angle between them. Source: mergekit NuSlerpTask / nuslerp().
 * Streams its inputs: flatten takes a reduction pass and a result pass,
 * rows along the last axis one pass, columns (axis 0) two. */
static int nuslerp_merge(const merge_call *call, float *out, alloy_err *err) {
    if (call->k != 2)
        return alloy_fail(err, "tensor '%s': nuslerp merges exactly two models (plus an optional base), got %d",
                          call->tensor_name, call->k);
    double w0 = MPARAM(call, 0, NU_WEIGHT), w1 = MPARAM(call, 1, NU_WEIGHT);
    nu_ctx c = {call, merge_has_base(call), fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1), 0.0f, 0.0f, NULL, 1};
    if (call->gparam[NU_FLATTEN] != 0.0) {
        double s[5];
        int rc = merge_stream_reduce(call, 3, nu_chunk, &c, s, err);
        if (rc) return rc;
        nuslerp_coef(c.t, s[0], s[1], s[2], &c.c0, &c.c1);
        static const int which[] = {0, 1, -1};
        return merge_stream_elementwise(call, out, "nuslerp", c.base ? 3 : 2, which, nu_out_block, &c, err);
    }
    int axis = call->gparam[NU_ROW_WISE] != 0.0 ? 0 : call->ndim - 1;
    vec_layout l = vec_layout_axis(call->ndim, call->shape, call->n, axis);
    return l.inner == 1 ? nu_rows(&c, out, l.len, err) : nu_columns(&c, out, l.len, l.inner, err);
}

static const merge_param_def nuslerp_params[] = {
    {"nuslerp_row_wise", false, false, 0, 0, 1},
    {"nuslerp_flatten", false, false, 1, 0, 1},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_nuslerp = {"nuslerp", BASE_OPTIONAL, 2, 2, nuslerp_params, 3, nuslerp_merge, true, true};
