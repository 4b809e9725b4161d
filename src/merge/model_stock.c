/* model_stock.c — Model Stock (mergekit/merge_methods/model_stock.py,
 * arXiv:2403.19522): interpolate between the base and the average of the
 * fine-tunes by a ratio derived from the angle between their task vectors. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_FILTER_WISE };

/* The interpolation ratio t from the Gram entries g[i*N+j] = o_i . o_j of the
 * task vectors o_i = x_i - base: cos = mean over pairs i<j of
 * clamp(g_ij / max(|o_i||o_j|, 1e-6), -1, 1), t = N cos / (1 + (N-1) cos).
 * Returns false when the denominator is zero. */
static bool stock_ratio(int N, const double *g, double *t) {
    double c = 0.0;
    int np = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) {
            double np_ = sqrt(g[i * N + i]) * sqrt(g[j * N + j]);
            double ct = g[i * N + j] / (np_ > 1e-6 ? np_ : 1e-6);
            c += ct < -1.0 ? -1.0 : (ct > 1.0 ? 1.0 : ct);
            np++;
        }
    c /= np;
    double den = 1.0 + (N - 1) * c;
    if (den == 0.0) return false;
    *t = N * c / den;
    return true;
}

/* out = t * mean_i(x_i) + (1 - t) * base, t from stock_ratio over the whole
 * tensor, or per row (last axis; a 1-D tensor is one row) when filter_wise.
 * Source: mergekit ModelStockMergeTask (pairwise-average cos, clamp 1e-6).
 *
 * Streams its inputs: the whole-tensor Gram matrix in one pass (each entry
 * summed in double per fixed chunk, in vec_sum8's order per block), the result in a
 * second; filter_wise reads each row once and writes it. */
#define MS_BLOCK 1024

typedef struct ms_ctx {
    const merge_call *call;
    int N;
} ms_ctx;

/* Upper-triangle Gram entries g[i*N+j] += sum over e of o_i o_j for the
 * N + 1 rows in[0] = base, in[1 + i] = x_i, m elements: per block of
 * MS_BLOCK in eight double lanes (lane l: elements l, l + 8, ... in
 * order), the lanes added pairwise, the blocks in order (vec_gram_block).
 * False when out of memory (past MS_STACK models its arrays are the heap's). */
#define MS_STACK 16 /* models whose block pointers and pair sums fit on the stack */
static bool gram_add(int N, float *const *in, size_t m, double *g) {
    const float *b = in[0];
    const float *xs[MS_STACK], **x = xs;
    double ps[MS_STACK * (MS_STACK + 1) / 2], *pair = ps;
    if (N > MS_STACK) {
        x = malloc((size_t)N * sizeof *x);
        pair = malloc((size_t)N * (size_t)(N + 1) / 2 * sizeof *pair);
    }
    bool ok = x && pair;
    for (size_t s0 = 0; ok && s0 < m; s0 += MS_BLOCK) {
        size_t mm = m - s0 < MS_BLOCK ? m - s0 : MS_BLOCK;
        for (int i = 0; i < N; i++) x[i] = in[1 + i] + s0;
        vec_gram_block(N, x, b + s0, mm, pair);
        for (int i = 0, q = 0; i < N; i++)
            for (int j = i; j < N; j++, q++) g[i * N + j] += pair[q];
    }
    if (x != xs) free(x);
    if (pair != ps) free(pair);
    return ok;
}

/* Load elements [lo, lo + m) of the base and the N models into in[0..N]. */
static bool load_all(const merge_call *call, int N, size_t lo, size_t m, float *const *in) {
    bool bad = merge_load(merge_input(call, -1), lo, m, in[0]);
    for (int i = 0; i < N; i++) bad |= merge_load(merge_input(call, i), lo, m, in[1 + i]);
    return bad;
}

/* vec_reduce chunk: the Gram entries, then acc[N*N] += non-finite input,
 * acc[N*N + 1] += out of memory. */
static void gram_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const ms_ctx *c = p;
    int N = c->N;
    float *buf = malloc((size_t)(N + 1) * MS_BLOCK * sizeof *buf);
    float **in = malloc((size_t)(N + 1) * sizeof *in);
    if (!buf || !in) {
        acc[N * N + 1] += 1.0;
    } else {
        for (int i = 0; i <= N; i++) in[i] = buf + (size_t)i * MS_BLOCK;
        for (size_t b0 = lo; b0 < hi; b0 += MS_BLOCK) {
            size_t m = hi - b0 < MS_BLOCK ? hi - b0 : MS_BLOCK;
            if (load_all(c->call, N, b0, m, in)) acc[N * N] += 1.0;
            if (!gram_add(N, in, m, acc)) acc[N * N + 1] += 1.0;
        }
    }
    free(in);
    free(buf);
}

typedef struct ms_mix {
    int N;
    float t;
} ms_mix;

/* t * mean + (1 - t) * base of one block: in[0] = base, in[1 + i] = x_i */
static void mix_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    const ms_mix *c = p;
    float tf = c->t, fN = (float)c->N;
    const float *restrict b = in[0];
    /* per element: s = 0 + x_0 + x_1 + ..., summed in o, model by model */
    for (size_t e = 0; e < m; e++) o[e] = 0.0f;
    for (int i = 0; i < c->N; i++) {
        const float *restrict x = in[1 + i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) o[e] += x[e];
    }
#pragma omp simd
    for (size_t e = 0; e < m; e++) o[e] = tf * (o[e] / fN) + (1.0f - tf) * b[e];
}

static int stock_whole(const merge_call *call, float *out, int N, alloy_err *err) {
    size_t nacc = (size_t)N * (size_t)N + 2;
    double *g = calloc(nacc, sizeof *g);
    int *which = malloc((size_t)(N + 1) * sizeof *which);
    ms_ctx c = {call, N};
    int rc = !g || !which ? alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name)
                          : merge_stream_reduce(call, N * N, gram_chunk, &c, g, err);
    double t = 0.0;
    if (!rc) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < i; j++) g[i * N + j] = g[j * N + i];
        if (!stock_ratio(N, g, &t)) rc = 1;
    }
    if (!rc) {
        ms_mix mx = {N, (float)t};
        for (int i = 0; i <= N; i++) which[i] = i - 1;
        rc = merge_stream_elementwise(call, out, "model_stock", N + 1, which, mix_block, &mx, err);
    }
    free(g);
    free(which);
    return rc;
}

/* filter_wise: row by row (rows are the last axis, so contiguous). */
static int stock_rows(const merge_call *call, float *out, int N, alloy_err *err) {
    vec_layout l = vec_layout_axis(call->ndim, call->shape, call->n, call->ndim - 1);
    size_t len = l.len, obad = call->n;
    int bad = 0, undefined = 0, oom = 0;
#pragma omp parallel num_threads(vec_threads(call->threads)) reduction(| : bad, undefined, oom) reduction(min : obad)
    {
        float *buf = malloc(((size_t)(N + 2) * len + 1) * sizeof *buf);
        float **in = malloc((size_t)(N + 1) * sizeof *in);
        double *g = malloc((size_t)N * (size_t)N * sizeof *g);
        oom = !buf || !in || !g;
        for (int i = 0; !oom && i <= N; i++) in[i] = buf + (size_t)i * len;
#pragma omp for schedule(static)
        for (size_t v = 0; v < l.count; v++) {
            if (oom) continue;
            size_t lo = v * len;
            bad |= load_all(call, N, lo, len, in);
            for (int q = 0; q < N * N; q++) g[q] = 0.0;
            if (!gram_add(N, in, len, g)) {
                oom = 1;
                continue;
            }
            for (int i = 0; i < N; i++)
                for (int j = 0; j < i; j++) g[i * N + j] = g[j * N + i];
            double t = 0.0;
            if (!stock_ratio(N, g, &t)) {
                undefined = 1;
                continue;
            }
            ms_mix mx = {N, (float)t};
            float *o = buf + (size_t)(N + 1) * len;
            mix_block(&mx, lo, (const float *const *)in, len, o);
            size_t at = merge_store(call, out, lo, o, len);
            if (at < len && lo + at < obad) obad = lo + at;
        }
        free(g);
        free(in);
        free(buf);
    }
    if (oom) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    if (undefined) return 1;
    return merge_stream_result(call, "model_stock", bad, obad, err);
}

static int model_stock_merge(const merge_call *call, float *out, alloy_err *err) {
    int N = call->k;
    if (!merge_has_base(call) || N < 2)
        return alloy_fail(err, "tensor '%s': model_stock needs a base and at least two other models", call->tensor_name);
    int rc = call->gparam[P_FILTER_WISE] != 0.0 ? stock_rows(call, out, N, err) : stock_whole(call, out, N, err);
    if (rc == 1)
        return alloy_fail(err, "tensor '%s': model_stock: the average cosine is -1/(N-1), the ratio is undefined",
                          call->tensor_name);
    return rc;
}

static const merge_param_def model_stock_params[] = {
    {"filter_wise", false, false, 0, 0, 1},
};

const merge_method merge_model_stock = {"model_stock", BASE_REQUIRED, 2, 0, model_stock_params,
                                        1, model_stock_merge, true, true};
