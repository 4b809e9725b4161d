/* nearswap.c — take the other model's value where it is near the base
 * (mergekit/merge_methods/nearswap.py). */
#include <math.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_T };

/* a = base, b = the model:  w = clamp(t / max(|a - b|, 1e-6), 0, 1),
 * out = w b + (1 - w) a. Source: mergekit nearswap_merge
 * (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001). */
static int nearswap_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!call->base || call->k != 1)
        return alloy_fail(err, "tensor '%s': nearswap needs a base and exactly one other model", call->tensor_name);
    float t = (float)call->gparam[P_T];
    const float *a = call->base, *b = call->x[0];
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static)
    for (size_t e = 0; e < call->n; e++) {
        float d = fabsf(a[e] - b[e]);
        float w = t / (d < 1e-6f ? 1e-6f : d);
        w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
        out[e] = w * b[e] + (1.0f - w) * a[e];
    }
    return 0;
}

static const merge_param_def nearswap_params[] = {
    {"t", false, true, 0, 0, INFINITY},
};

const merge_method merge_nearswap = {"nearswap", BASE_REQUIRED, 1, 1, nearswap_params, 1, nearswap_merge, false};
