/* nearswap.c — take the other model's value where it is near the base
 * (mergekit/merge_methods/nearswap.py). */
#include <math.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_T };

/* a = base, b = the model:  w = clamp(t / max(|a - b|, 1e-6), 0, 1),
 * out = w b + (1 - w) a. Source: mergekit nearswap_merge
 * (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001).
 * Element-wise: streams both inputs in blocks. */
#define NS_BLOCK 2048

static int nearswap_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!merge_has_base(call) || call->k != 1)
        return alloy_fail(err, "tensor '%s': nearswap needs a base and exactly one other model", call->tensor_name);
    float t = (float)call->gparam[P_T];
    merge_src sa = merge_input(call, -1), sb = merge_input(call, 0);
    size_t n = call->n, nb = (n + NS_BLOCK - 1) / NS_BLOCK, obad = n;
    int bad = 0;
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static) reduction(| : bad) \
    reduction(min : obad)
    for (size_t bi = 0; bi < nb; bi++) {
        size_t b0 = bi * NS_BLOCK, m = n - b0 < NS_BLOCK ? n - b0 : NS_BLOCK;
        float a[NS_BLOCK], b[NS_BLOCK], o[NS_BLOCK];
        bad |= merge_load(sa, b0, m, a);
        bad |= merge_load(sb, b0, m, b);
#pragma omp simd
        for (size_t j = 0; j < m; j++) {
            float d = fabsf(a[j] - b[j]);
            float w = t / (d < 1e-6f ? 1e-6f : d);
            w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
            o[j] = w * b[j] + (1.0f - w) * a[j];
        }
        size_t at = merge_store(call, out, b0, o, m);
        if (at < m && b0 + at < obad) obad = b0 + at;
    }
    return merge_stream_result(call, "nearswap", bad, obad, err);
}

static const merge_param_def nearswap_params[] = {
    {"t", false, true, 0, 0, INFINITY},
};

const merge_method merge_nearswap = {"nearswap", BASE_REQUIRED, 1, 1, nearswap_params, 1, nearswap_merge, true};
