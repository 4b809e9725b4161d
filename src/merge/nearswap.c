/* nearswap.c — take the other model's value where it is near the base
 * (mergekit/merge_methods/nearswap.py). */
#include <math.h>

#include "merge/method.h"
#include "util/err.h"

enum { P_T };

/* a = base, b = the model:  w = clamp(t / max(|a - b|, 1e-6), 0, 1),
 * out = w b + (1 - w) a. Source: mergekit nearswap_merge
 * (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
 * Element-wise: streams both inputs. */
static void nearswap_block(const void *ctx, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    float t = *(const float *)ctx;
    const float *restrict a = in[0], *restrict b = in[1];
#pragma omp simd
    for (size_t j = 0; j < m; j++) {
        float d = fabsf(a[j] - b[j]);
        float w = t / (d < 1e-6f ? 1e-6f : d);
        w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
        o[j] = w * b[j] + (1.0f - w) * a[j];
    }
}

static int nearswap_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!merge_has_base(call) || call->k != 1)
        return alloy_fail(err, "tensor '%s': nearswap needs a base and exactly one other model", call->tensor_name);
    float t = (float)call->gparam[P_T];
    static const int which[] = {-1, 0};
    return merge_stream_elementwise(call, out, "nearswap", 2, which, nearswap_block, &t, err);
}

static const merge_param_def nearswap_params[] = {
    {"t", false, true, 0, 0, INFINITY},
};

const merge_method merge_nearswap = {"nearswap", BASE_REQUIRED, 1, 1, nearswap_params, 1, nearswap_merge, true, false};
