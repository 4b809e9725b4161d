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
 * Source: mergekit ModelStockMergeTask (pairwise-average cos, clamp 1e-6). */
static int model_stock_merge(const merge_call *call, float *out, alloy_err *err) {
    int N = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    const float *b = call->base;
    if (!b || N < 2)
        return alloy_fail(err, "tensor '%s': model_stock needs a base and at least two other models", call->tensor_name);
    bool fw = call->gparam[P_FILTER_WISE] != 0.0;
    vec_layout l = fw ? vec_layout_axis(call->ndim, call->shape, n, call->ndim - 1) : (vec_layout){1, n, 1};
    double *g = malloc(sizeof(double) * (size_t)N * (size_t)N * (fw ? l.count : 1) + 1);
    if (!g) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    int bad = 0;
    if (!fw) {
        for (int i = 0; i < N; i++)
            for (int j = i; j < N; j++) g[i * N + j] = g[j * N + i] = vec_dot_sub(call->x[i], call->x[j], b, n, nt);
        double t = 0.0;
        if (!stock_ratio(N, g, &t)) bad = 1;
        float tf = (float)t, fN = (float)N;
        if (!bad) {
#pragma omp parallel for num_threads(nt) schedule(static)
            for (size_t e = 0; e < n; e++) {
                float s = 0.0f;
                for (int i = 0; i < N; i++) s += call->x[i][e];
                out[e] = tf * (s / fN) + (1.0f - tf) * b[e];
            }
        }
    } else {
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad)
        for (size_t v = 0; v < l.count; v++) {
            double *gv = g + v * (size_t)N * (size_t)N;
            for (int i = 0; i < N; i++)
                for (int j = i; j < N; j++) {
                    double s = 0.0;
                    for (size_t q = 0; q < l.len; q++) {
                        size_t e = vec_at(&l, v, q);
                        s += ((double)call->x[i][e] - b[e]) * ((double)call->x[j][e] - b[e]);
                    }
                    gv[i * N + j] = gv[j * N + i] = s;
                }
            double t = 0.0;
            if (!stock_ratio(N, gv, &t)) {
                bad |= 1;
                continue;
            }
            float tf = (float)t, fN = (float)N;
            for (size_t q = 0; q < l.len; q++) {
                size_t e = vec_at(&l, v, q);
                float s = 0.0f;
                for (int i = 0; i < N; i++) s += call->x[i][e];
                out[e] = tf * (s / fN) + (1.0f - tf) * b[e];
            }
        }
    }
    free(g);
    if (bad)
        return alloy_fail(err, "tensor '%s': model_stock: the average cosine is -1/(N-1), the ratio is undefined",
                          call->tensor_name);
    return 0;
}

static const merge_param_def model_stock_params[] = {
    {"filter_wise", false, false, 0, 0, 1},
};

const merge_method merge_model_stock = {"model_stock", BASE_REQUIRED, 2, 0, model_stock_params, 1, model_stock_merge, false};
