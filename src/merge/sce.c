/* sce.c — SCE: select, calculate, erase (mergekit/merge_methods/sce.py,
 * arXiv:2408.07990). Selection by variance uses sparsify_rank_mask
 * (quickselect); sign election is mergekit's "sum" consensus. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "merge/method.h"
#include "merge/sparsify.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_INT8_MASK, P_SELECT_TOPK };

typedef struct {
    const merge_call *call;
    const uint8_t *sel; /* NULL: all selected */
    int i;
} sq_ctx;

static void tv_sq(const void *p, size_t lo, size_t hi, double *acc) {
    const sq_ctx *c = p;
    const float *x = c->call->x[c->i], *b = c->call->base;
    double s = 0.0;
    for (size_t e = lo; e < hi; e++) {
        if (c->sel && !c->sel[e]) continue;
        double d = x[e] - b[e];
        s += d * d;
    }
    acc[0] += s;
}

/* tau_i = x_i - base. Select (select_topk < 1): keep the elements whose
 * population variance across models is among the int(topk * #nonzero-var)
 * largest (ties by index), zero the rest (topk <= 0: all). Calculate:
 * w_i = mean(tau_i^2), normalised to sum 1 (|sum| < 1e-6: 1/K). Erase:
 * g = sign(sum_i tau_i) (>= 0 -> +1), c_i = [sign(tau_i) == g].
 * out = base + sum_i w_i c_i tau_i / max(sum_i w_i c_i, 1e-6).
 * Source: mergekit sce_merge / sce_mask / sce_weight. */
static int sce_merge(const merge_call *call, float *out, alloy_err *err) {
    int K = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    const float *b = call->base;
    if (!b) return alloy_fail(err, "tensor '%s': sce needs a base model", call->tensor_name);
    if (K == 0) {
        memcpy(out, b, n * sizeof *out);
        return 0;
    }
    double topk = call->gparam[P_SELECT_TOPK];
    uint8_t *sel = NULL;
    float *w = malloc(sizeof(float) * (size_t)K);
    if (!w) return alloy_fail(err, "out of memory");
    int rc = 0;
    if (topk < 1.0) {
        sel = calloc(n + 1, 1);
        float *key = malloc(sizeof(float) * n + 1), *scratch = malloc(sizeof(float) * n + 1);
        if (!sel || !key || !scratch) rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        if (!rc && topk > 0.0) {
            size_t nz = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : nz)
            for (size_t e = 0; e < n; e++) {
                double m = 0.0, v = 0.0;
                for (int i = 0; i < K; i++) m += (double)(call->x[i][e] - b[e]);
                m /= K;
                for (int i = 0; i < K; i++) {
                    double d = (double)(call->x[i][e] - b[e]) - m;
                    v += d * d;
                }
                float vf = (float)(v / K);
                key[e] = -vf;
                nz += vf != 0.0f;
            }
            size_t kk = (size_t)((double)nz * topk);
            if (kk > 0) sparsify_rank_mask(key, n, 0, kk, scratch, sel, nt);
        }
        free(key);
        free(scratch);
    }
    double wsum = 0.0;
    for (int i = 0; i < K && !rc; i++) {
        sq_ctx c = {call, sel, i};
        double s;
        if (vec_reduce(n, nt, 1, tv_sq, &c, &s, err)) rc = -1;
        w[i] = (float)(s / (double)n);
        wsum += w[i];
    }
    if (!rc) {
        if (fabs(wsum) < 1e-6)
            for (int i = 0; i < K; i++) w[i] = 1.0f / (float)K;
        else
            for (int i = 0; i < K; i++) w[i] = (float)(w[i] / wsum);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) {
            if (sel && !sel[e]) {
                out[e] = b[e];
                continue;
            }
            float sum = 0.0f;
            for (int i = 0; i < K; i++) sum += call->x[i][e] - b[e];
            float g = sum >= 0.0f ? 1.0f : -1.0f, num = 0.0f, den = 0.0f;
            for (int i = 0; i < K; i++) {
                float d = call->x[i][e] - b[e];
                if ((float)((d > 0.0f) - (d < 0.0f)) == g) num += w[i] * d, den += w[i];
            }
            out[e] = b[e] + num / (den > 1e-6f ? den : 1e-6f);
        }
    }
    free(sel);
    free(w);
    return rc;
}

static const merge_param_def sce_params[] = {
    {"int8_mask", false, false, 0, 0, 1},
    {"select_topk", false, false, 1, 0, 1},
};

const merge_method merge_sce = {"sce", BASE_REQUIRED, 1, 0, sce_params, 2, sce_merge, false};
