/* linear.c — the weighted average (mergekit/merge_methods/linear.py).
 * No base model: a base named in the recipe is merged like any other model. */
#include <math.h>
#include <stdbool.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_NORMALIZE, P_WEIGHT };

/* out = sum_i w_i x_i, divided by sum_i w_i when normalize is on.
 * Source: mergekit LinearMergeTask; "model soups", arXiv:2203.05482.
 * Streams its inputs in blocks, summing in model order. */
#define LIN_BLOCK 2048

static int linear_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k;
    float wsum = 0.0f;
    for (int i = 0; i < k; i++) wsum += (float)MPARAM(call, i, P_WEIGHT);
    bool normalize = call->gparam[P_NORMALIZE] != 0.0;
    if (normalize && wsum == 0.0f)
        return alloy_fail(err, "tensor '%s': linear weights sum to zero, cannot normalize (set normalize: false)",
                          call->tensor_name);
    size_t n = call->n, nb = (n + LIN_BLOCK - 1) / LIN_BLOCK, obad = n;
    int bad = 0;
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static) reduction(| : bad) \
    reduction(min : obad)
    for (size_t bi = 0; bi < nb; bi++) {
        size_t b0 = bi * LIN_BLOCK, m = n - b0 < LIN_BLOCK ? n - b0 : LIN_BLOCK;
        float x[LIN_BLOCK], o[LIN_BLOCK];
#pragma omp simd
        for (size_t j = 0; j < m; j++) o[j] = 0.0f;
        for (int i = 0; i < k; i++) {
            float w = (float)MPARAM(call, i, P_WEIGHT);
            bad |= merge_load(merge_input(call, i), b0, m, x);
#pragma omp simd
            for (size_t j = 0; j < m; j++) o[j] += w * x[j];
        }
        if (normalize) {
#pragma omp simd
            for (size_t j = 0; j < m; j++) o[j] /= wsum;
        }
        size_t at = merge_store(call, out, b0, o, m);
        if (at < m && b0 + at < obad) obad = b0 + at;
    }
    return merge_stream_result(call, "linear", bad, obad, err);
}

static const merge_param_def linear_params[] = {
    {"normalize", false, false, 1, 0, 1},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_linear = {"linear", BASE_NONE, 1, 0, linear_params, 2, linear_merge, true};
