/* source.c — reading merge inputs where they lie (merge_src in method.h),
 * blocks converted to f32 on the fly, and storing results straight in the
 * output dtype: streaming methods hold no whole f32 copy of any tensor. */
#include "merge/method.h"
#include <math.h>
#include <string.h>

#include "util/dtype.h"

bool merge_load(merge_src s, size_t lo, size_t m, float *dst) {
    if (!m) return false;
    return dtype_to_f32((const char *)s.data + lo * dtype_size(s.dtype), s.dtype, dst, m) >= 0;
}

size_t merge_store(const merge_call *call, float *out, size_t lo, const float *v, size_t m) {
    if (!call->out_packed) {
        memcpy(out + lo, v, m * sizeof *v);
        return m;
    }
    int fin = 1;
#pragma omp simd reduction(& : fin)
    for (size_t j = 0; j < m; j++) fin &= v[j] - v[j] == 0.0f;
    size_t bad = m;
    if (!fin)
        for (size_t j = 0; j < m && bad == m; j++)
            if (!(v[j] - v[j] == 0.0f)) bad = j;
    dtype_from_f32(v, call->out_dtype, (char *)call->out_packed + lo * dtype_size(call->out_dtype), m);
    return bad;
}

bool merge_load1(merge_src s, size_t e, float *dst) {
    const char *p = (const char *)s.data + e * dtype_size(s.dtype);
    uint16_t h;
    switch (s.dtype) {
    case ALLOY_BF16:
        memcpy(&h, p, 2);
        *dst = bf16_to_f32(h);
        break;
    case ALLOY_F16:
        memcpy(&h, p, 2);
        *dst = f16_to_f32(h);
        break;
    default:
        memcpy(dst, p, 4);
        break;
    }
    return !isfinite(*dst);
}
