/* task_arithmetic.c — mergekit's generalized task arithmetic family:
 * task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties,
 * della, della_linear (mergekit/merge_methods/generalized_task_arithmetic.py
 * and the GeneralizedTaskArithmeticMerge table in registry.py).
 *
 * Every variant is the same pipeline over task vectors delta_i = x_i - base:
 * sparsify each (sparsify.c), weight, optionally elect a sign per element and
 * drop the dissenters, sum, optionally normalise by the weights that took
 * part, scale by lambda and add to the base. The variants differ only in the
 * consensus, the sparsification and the defaults of normalize and rescale.
 * Parameter resolution is the planner's; this file only computes. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "merge/method.h"
#include "merge/sparsify.h"
#include "merge/vec.h"
#include "util/err.h"
#include "util/mem.h"

/* Parameter order of every table below (gamma / epsilon only where used). */
enum { P_INT8_MASK, P_NORMALIZE, P_RESCALE, P_LAMBDA, P_WEIGHT, P_DENSITY, P_EXTRA };

typedef struct gta_variant {
    bool consensus; /* mergekit ConsensusMethod.sum */
    sparsify_kind sparsify;
} gta_variant;

/* out = base + lambda * M, with w_i the weights, s_i the L1 rescale factors
 * (1 without rescale), m_i the sparsification masks and
 *   d_i = w_i * s_i * m_i * (x_i - base)                     (weighted deltas)
 *   without consensus: M = sum_i d_i [/ D], D = sum_i w_i (|D| < 1e-8 -> 1)
 *   with consensus "sum" (TIES): g = +1 if sum_i d_i >= 0 else -1,
 *     c_i = [sign(d_i) == g] (zeros never agree),
 *     M = sum_i c_i d_i [/ D], D = sum_i c_i w_i (0 -> 1)
 * where [/ D] applies when normalize is on. Source: mergekit GTATask.execute;
 * TIES arXiv:2306.01708, DARE arXiv:2311.03099, breadcrumbs arXiv:2312.06795,
 * DELLA arXiv:2406.11617. int8_mask only changes mergekit's mask dtype.
 * Computed in blocks of GTA_BLOCK elements: the k weighted deltas of a block
 * first (d, k x GTA_BLOCK), then the consensus, so every inner loop is a
 * straight vectorisable pass. */
#define GTA_BLOCK 1024

typedef struct gta_ctx {
    const merge_call *call;
    const float *w, *s;
    const bool *whole;
    const uint8_t *mask;
    bool consensus, normalize;
    float lambda, div_all;
} gta_ctx;

static void gta_block(const gta_ctx *g, size_t b0, size_t m, float *restrict d, float *restrict out) {
    const merge_call *call = g->call;
    int k = call->k;
    const float *restrict base = call->base + b0;
    for (int i = 0; i < k; i++) {
        const float *restrict x = call->x[i] + b0;
        float *restrict di = d + (size_t)i * GTA_BLOCK;
        float wi = g->w[i], si = g->s[i];
        if (g->whole[i]) {
#pragma omp simd
            for (size_t j = 0; j < m; j++) di[j] = (x[j] - base[j]) * wi;
        } else {
            const uint8_t *restrict mi = g->mask + (size_t)i * call->n + b0;
#pragma omp simd
            for (size_t j = 0; j < m; j++) di[j] = (mi[j] ? (x[j] - base[j]) * si : 0.0f) * wi;
        }
    }
    float sum[GTA_BLOCK], mixed[GTA_BLOCK], div[GTA_BLOCK];
#pragma omp simd
    for (size_t j = 0; j < m; j++) sum[j] = 0.0f;
    for (int i = 0; i < k; i++) {
        const float *restrict di = d + (size_t)i * GTA_BLOCK;
#pragma omp simd
        for (size_t j = 0; j < m; j++) sum[j] += di[j];
    }
    if (!g->consensus) {
#pragma omp simd
        for (size_t j = 0; j < m; j++) mixed[j] = sum[j], div[j] = g->div_all;
    } else {
#pragma omp simd
        for (size_t j = 0; j < m; j++) mixed[j] = 0.0f, div[j] = 0.0f;
        for (int i = 0; i < k; i++) {
            const float *restrict di = d + (size_t)i * GTA_BLOCK;
            float wi = g->w[i];
            /* sign(d_i) == g, g = +1 when the sum is >= 0: zeros never agree */
#pragma omp simd
            for (size_t j = 0; j < m; j++) {
                float dj = di[j];
                int pos = sum[j] >= 0.0f;
                int agree = (pos & (dj > 0.0f)) | ((pos ^ 1) & (dj < 0.0f));
                mixed[j] += agree ? dj : 0.0f;
                div[j] += agree ? wi : 0.0f;
            }
        }
#pragma omp simd
        for (size_t j = 0; j < m; j++) div[j] = div[j] == 0.0f ? 1.0f : div[j];
    }
    float lambda = g->lambda;
    if (g->normalize) {
#pragma omp simd
        for (size_t j = 0; j < m; j++) out[b0 + j] = base[j] + (mixed[j] / div[j]) * lambda;
    } else {
#pragma omp simd
        for (size_t j = 0; j < m; j++) out[b0 + j] = base[j] + mixed[j] * lambda;
    }
}

static int gta_merge(const gta_variant *v, const merge_call *call, float *out, alloy_err *err) {
    int k = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    const float *base = call->base;
    if (!base) return alloy_fail(err, "tensor '%s': this method needs a base model", call->tensor_name);
    bool normalize = call->gparam[P_NORMALIZE] != 0.0, rescale = call->gparam[P_RESCALE] != 0.0;
    float lambda = (float)call->gparam[P_LAMBDA];
    if (k == 0) {
        memcpy(out, base, n * sizeof *out);
        return 0;
    }
    float *w = calloc((size_t)k, sizeof *w);   /* w_i */
    float *ws = calloc((size_t)k, sizeof *ws); /* s_i */
    bool *whole = calloc((size_t)k, sizeof *whole);
    uint8_t *mask = NULL;
    float *key = NULL, *scratch = NULL;
    int rc = 0;
    if (!w || !ws || !whole) rc = alloy_fail(err, "out of memory");
    bool own = false; /* mask, key and scratch allocated here rather than in call->work */
    if (!rc && v->sparsify != SPARSIFY_NONE) {
        size_t need = 2 * n * sizeof(float) + (size_t)k * n + 1;
        char *wk = call->work_bytes >= need ? call->work : NULL;
        if (!wk) {
            wk = mem_big_alloc(need);
            own = true;
        }
        if (!wk) {
            rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        } else {
            key = (float *)(void *)wk;
            scratch = key + n;
            mask = (uint8_t *)(scratch + n);
        }
    }
    float wsum = 0.0f;
    for (int i = 0; i < k && !rc; i++) {
        w[i] = (float)MPARAM(call, i, P_WEIGHT);
        wsum += w[i];
        float s = 1.0f;
        whole[i] = true;
        if (v->sparsify != SPARSIFY_NONE) {
            sparsify_args a = {.kind = v->sparsify,
                               .density = MPARAM(call, i, P_DENSITY),
                               .gamma = v->sparsify == SPARSIFY_OUTLIERS ? MPARAM(call, i, P_EXTRA) : 0.0,
                               .epsilon = v->sparsify == SPARSIFY_DELLA ? MPARAM(call, i, P_EXTRA) : 0.0,
                               .seed = call->seed,
                               .stream = (uint64_t)i};
            uint8_t *m = mask + (size_t)i * n;
            int r = sparsify_mask(&a, call->x[i], base, call->ndim, call->shape, n, key, scratch, m, nt,
                                  call->tensor_name, err);
            if (r < 0) rc = -1;
            whole[i] = r == 1;
            if (r == 0 && rescale) s = (float)sparsify_l1_factor(call->x[i], base, m, n, nt);
        }
        ws[i] = s;
    }
    if (!rc) {
        gta_ctx g = {call, w, ws, whole, mask, v->consensus, normalize, lambda, fabsf(wsum) < 1e-8f ? 1.0f : wsum};
        size_t nblocks = (n + GTA_BLOCK - 1) / GTA_BLOCK;
        int oom = 0;
#pragma omp parallel num_threads(nt) reduction(| : oom)
        {
            float *d = malloc((size_t)k * GTA_BLOCK * sizeof *d);
            if (!d) oom = 1;
#pragma omp for schedule(static)
            for (size_t bi = 0; bi < nblocks; bi++) {
                size_t b0 = bi * GTA_BLOCK;
                if (d) gta_block(&g, b0, n - b0 < GTA_BLOCK ? n - b0 : GTA_BLOCK, d, out);
            }
            free(d);
        }
        if (oom) rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    free(w);
    free(ws);
    free(whole);
    if (own) free(key);
    return rc;
}

/* ---- the registered variants (mergekit registry.py) ---- */

#define GTA_GLOBALS(norm, resc)                                                       \
    {"int8_mask", false, false, 0, 0, 1}, {"normalize", false, false, norm, 0, 1},    \
        {"rescale", false, false, resc, 0, 1}, {"lambda", false, false, 1, -INFINITY, INFINITY}
#define GTA_MODEL {"weight", true, true, 0, -INFINITY, INFINITY}, {"density", true, false, 1, 0, 1}

static const merge_param_def ta_params[] = {GTA_GLOBALS(0, 0), GTA_MODEL};
static const merge_param_def ties_params[] = {GTA_GLOBALS(1, 0), GTA_MODEL};
static const merge_param_def dare_params[] = {GTA_GLOBALS(0, 1), GTA_MODEL};
static const merge_param_def bc_params[] = {GTA_GLOBALS(0, 0), GTA_MODEL, {"gamma", true, false, 0.01, 0, 1}};
static const merge_param_def della_params[] = {GTA_GLOBALS(1, 1), GTA_MODEL, {"epsilon", true, false, 0.15, 0, 1}};
static const merge_param_def della_lin_params[] = {GTA_GLOBALS(0, 1), GTA_MODEL,
                                                   {"epsilon", true, false, 0.15, 0, 1}};

#define GTA_METHOD(fn, cons, kind)                                          \
    static int fn(const merge_call *call, float *out, alloy_err *err) {     \
        static const gta_variant v = {cons, kind};                          \
        return gta_merge(&v, call, out, err);                               \
    }

/* task_arithmetic (arXiv:2212.04089): base + lambda * sum w_i delta_i. */
GTA_METHOD(ta_merge, false, SPARSIFY_NONE)
/* ties: magnitude top-k per task vector, sign election, normalised by default. */
GTA_METHOD(ties_merge, true, SPARSIFY_MAGNITUDE)
/* dare_ties / dare_linear: bernoulli(density) drops with L1 rescale by default. */
GTA_METHOD(dare_ties_merge, true, SPARSIFY_RANDOM)
GTA_METHOD(dare_linear_merge, false, SPARSIFY_RANDOM)
/* breadcrumbs / breadcrumbs_ties: drop the largest gamma fraction and the smallest. */
GTA_METHOD(bc_merge, false, SPARSIFY_OUTLIERS)
GTA_METHOD(bc_ties_merge, true, SPARSIFY_OUTLIERS)
/* della / della_linear: rank-dependent drop probabilities (della_magprune). */
GTA_METHOD(della_merge, true, SPARSIFY_DELLA)
GTA_METHOD(della_linear_merge, false, SPARSIFY_DELLA)

#define NP(t) ((int)(sizeof t / sizeof t[0]))

const merge_method merge_task_arithmetic = {"task_arithmetic", BASE_REQUIRED, 1, 0, ta_params, NP(ta_params), ta_merge};
const merge_method merge_ties = {"ties", BASE_REQUIRED, 1, 0, ties_params, NP(ties_params), ties_merge};
const merge_method merge_dare_ties = {"dare_ties", BASE_REQUIRED, 1, 0, dare_params, NP(dare_params),
                                      dare_ties_merge};
const merge_method merge_dare_linear = {"dare_linear", BASE_REQUIRED, 1, 0, dare_params, NP(dare_params),
                                        dare_linear_merge};
const merge_method merge_breadcrumbs = {"breadcrumbs", BASE_REQUIRED, 1, 0, bc_params, NP(bc_params), bc_merge};
const merge_method merge_breadcrumbs_ties = {"breadcrumbs_ties", BASE_REQUIRED, 1, 0, bc_params, NP(bc_params),
                                             bc_ties_merge};
const merge_method merge_della = {"della", BASE_REQUIRED, 1, 0, della_params, NP(della_params), della_merge};
const merge_method merge_della_linear = {"della_linear", BASE_REQUIRED, 1, 0, della_lin_params,
                                         NP(della_lin_params), della_linear_merge};
