/* passthrough.c — one model's tensor, optionally scaled
 * (mergekit/merge_methods/passthrough.py). Used for layer stacking with slices. */
#include <math.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_SCALE };

/* out = scale * x_0 (scale absent = 1). Source: mergekit PassthroughMergeTask. */
static int passthrough_merge(const merge_call *call, float *out, alloy_err *err) {
    if (call->k != 1)
        return alloy_fail(err, "tensor '%s': passthrough takes exactly one model, got %d", call->tensor_name, call->k);
    float s = (float)MPARAM(call, 0, P_SCALE);
    const float *x = call->x[0];
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static)
    for (size_t e = 0; e < call->n; e++) out[e] = x[e] * s;
    return 0;
}

static const merge_param_def passthrough_params[] = {
    {"scale", true, false, 1, -INFINITY, INFINITY},
};

const merge_method merge_passthrough = {"passthrough", BASE_NONE, 1, 1, passthrough_params, 1, passthrough_merge, false};
