/* linear.c — the weighted average (mergekit/merge_methods/linear.py).
 * No base model: a base named in the recipe is merged like any other model. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "merge/gta_kernel.h"
#include "merge/method.h"
#include "merge/sink.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_NORMALIZE, P_WEIGHT };

/* out = sum_i w_i x_i, divided by sum_i w_i when normalize is on.
 * Source: mergekit LinearMergeTask; "model soups", arXiv:2203.05482.
 * Streams its inputs, summing in model order. */
typedef struct lin_ctx {
    int k;
    const float *w;
    bool normalize;
    float wsum;
} lin_ctx;

static void linear_block(const void *ctx, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    const lin_ctx *c = ctx;
#pragma omp simd
    for (size_t j = 0; j < m; j++) o[j] = 0.0f;
    for (int i = 0; i < c->k; i++) {
        float w = c->w[i];
        const float *restrict x = in[i];
#pragma omp simd
        for (size_t j = 0; j < m; j++) o[j] += w * x[j];
    }
    if (c->normalize) {
        float wsum = c->wsum;
#pragma omp simd
        for (size_t j = 0; j < m; j++) o[j] /= wsum;
    }
}

typedef struct lin_kernel {
    const lin_ctx *c;
    const uint16_t *const *x;
    bool f16, out_bf16;
} lin_kernel;

static bool lin_kernel_block(const void *p, size_t b0, size_t m, void *dst, size_t *ob) {
    const lin_kernel *q = p;
    return gk_linear(q->x, q->c->w, q->c->k, q->c->normalize, q->c->wsum, q->f16, q->out_bf16, b0, m, dst, ob);
}

/* The merge as gta_kernel.c's loop: bf16 inputs, at most GK_MAX_MODELS of
 * them, results in bf16 or f32; or f16 inputs, results in f16; 1 when it
 * does not apply. */
static int linear_kernel(const merge_call *call, float *out, const lin_ctx *c, alloy_err *err) {
    if (!GTA_KERNEL || c->k < 1 || c->k > GK_MAX_MODELS) return 1;
    alloy_dtype odt = call->sink ? merge_sink_dtype(call->sink) : ALLOY_F32;
    alloy_dtype idt = merge_input(call, 0).dtype;
    bool f16 = idt == ALLOY_F16 && odt == ALLOY_F16;
    if (!f16 && (idt != ALLOY_BF16 || (odt != ALLOY_BF16 && odt != ALLOY_F32))) return 1;
    const uint16_t *x[GK_MAX_MODELS];
    for (int i = 0; i < c->k; i++) {
        merge_src in = merge_input(call, i);
        if (in.dtype != idt || ((uintptr_t)in.data & 1)) return 1;
        x[i] = in.data;
    }
    lin_kernel q = {c, x, f16, odt == ALLOY_BF16};
    return merge_stream_blocks(call, out, "linear", lin_kernel_block, &q, err);
}

static int linear_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k;
    float *w = malloc((size_t)k * sizeof *w);
    int *which = malloc((size_t)k * sizeof *which);
    if (!w || !which) {
        free(w), free(which);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    float wsum = 0.0f;
    for (int i = 0; i < k; i++) wsum += w[i] = (float)MPARAM(call, i, P_WEIGHT), which[i] = i;
    lin_ctx c = {k, w, call->gparam[P_NORMALIZE] != 0.0, wsum};
    int rc = c.normalize && wsum == 0.0f
                 ? alloy_fail(err, "tensor '%s': linear weights sum to zero, cannot normalize (set normalize: false)",
                              call->tensor_name)
                 : linear_kernel(call, out, &c, err);
    if (rc == 1) rc = merge_stream_elementwise(call, out, "linear", k, which, linear_block, &c, err);
    free(w), free(which);
    return rc;
}

static const merge_param_def linear_params[] = {
    {"normalize", false, false, 1, 0, 1},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_linear = {"linear", BASE_NONE, 1, 0, linear_params, 2, linear_merge, true, false};
