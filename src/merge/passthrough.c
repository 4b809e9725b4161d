/* passthrough.c — one model's tensor, optionally scaled
 * (mergekit/merge_methods/passthrough.py). Used for layer stacking with slices. */
#include <math.h>

#include "merge/method.h"
#include "util/err.h"

enum { P_SCALE };

/* out = scale * x_0 (scale absent = 1). Source: mergekit PassthroughMergeTask.
 * Streams its input. */
static void passthrough_block(const void *ctx, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    float s = *(const float *)ctx;
    const float *restrict x = in[0];
#pragma omp simd
    for (size_t j = 0; j < m; j++) o[j] = x[j] * s;
}

static int passthrough_merge(const merge_call *call, float *out, alloy_err *err) {
    if (call->k != 1)
        return alloy_fail(err, "tensor '%s': passthrough takes exactly one model, got %d", call->tensor_name, call->k);
    float s = (float)MPARAM(call, 0, P_SCALE);
    static const int which[] = {0};
    return merge_stream_elementwise(call, out, "passthrough", 1, which, passthrough_block, &s, err);
}

static const merge_param_def passthrough_params[] = {
    {"scale", true, false, 1, -INFINITY, INFINITY},
};

const merge_method merge_passthrough = {"passthrough", BASE_NONE, 1, 1, passthrough_params,
                                        1, passthrough_merge, true, false};
