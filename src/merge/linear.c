/* linear.c — the weighted average (mergekit/merge_methods/linear.py).
 * No base model: a base named in the recipe is merged like any other model. */
#include <math.h>
#include <stdbool.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_NORMALIZE, P_WEIGHT };

/* out = sum_i w_i x_i, divided by sum_i w_i when normalize is on.
 * Source: mergekit LinearMergeTask; "model soups", arXiv:2203.05482. */
static int linear_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k;
    float wsum = 0.0f;
    for (int i = 0; i < k; i++) wsum += (float)MPARAM(call, i, P_WEIGHT);
    bool normalize = call->gparam[P_NORMALIZE] != 0.0;
    if (normalize && wsum == 0.0f)
        return alloy_fail(err, "tensor '%s': linear weights sum to zero, cannot normalize (set normalize: false)",
                          call->tensor_name);
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static)
    for (size_t e = 0; e < call->n; e++) {
        float s = 0.0f;
        for (int i = 0; i < k; i++) s += (float)MPARAM(call, i, P_WEIGHT) * call->x[i][e];
        out[e] = normalize ? s / wsum : s;
    }
    return 0;
}

static const merge_param_def linear_params[] = {
    {"normalize", false, false, 1, 0, 1},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_linear = {"linear", BASE_NONE, 1, 0, linear_params, 2, linear_merge};
