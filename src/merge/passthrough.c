/* passthrough.c — one model's tensor, optionally scaled
 * (mergekit/merge_methods/passthrough.py). Used for layer stacking with slices. */
#include <math.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"

enum { P_SCALE };

/* out = scale * x_0 (scale absent = 1). Source: mergekit PassthroughMergeTask.
 * Streams its input in blocks. */
#define PT_BLOCK 4096

static int passthrough_merge(const merge_call *call, float *out, alloy_err *err) {
    if (call->k != 1)
        return alloy_fail(err, "tensor '%s': passthrough takes exactly one model, got %d", call->tensor_name, call->k);
    float s = (float)MPARAM(call, 0, P_SCALE);
    merge_src src = merge_input(call, 0);
    size_t n = call->n, nb = (n + PT_BLOCK - 1) / PT_BLOCK, obad = n;
    int bad = 0;
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static) reduction(| : bad) \
    reduction(min : obad)
    for (size_t bi = 0; bi < nb; bi++) {
        size_t b0 = bi * PT_BLOCK, m = n - b0 < PT_BLOCK ? n - b0 : PT_BLOCK;
        float x[PT_BLOCK];
        bad |= merge_load(src, b0, m, x);
#pragma omp simd
        for (size_t j = 0; j < m; j++) x[j] *= s;
        size_t at = merge_store(call, out, b0, x, m);
        if (at < m && b0 + at < obad) obad = b0 + at;
    }
    return merge_stream_result(call, "passthrough", bad, obad, err);
}

static const merge_param_def passthrough_params[] = {
    {"scale", true, false, 1, -INFINITY, INFINITY},
};

const merge_method merge_passthrough = {"passthrough", BASE_NONE, 1, 1, passthrough_params, 1, passthrough_merge, true};
