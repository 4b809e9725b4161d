/* fastmath.h — exp and log in f32 written so that loops under `omp simd`
 * vectorise (libm's expf/logf are scalar calls). Used where a pass over a
 * whole vocabulary runs per token (mixtures, softmax statistics).
 *
 * fm_expf: exp(x) = 2^n · exp(r), n = rint(x·log2 e), r = x − n·ln 2 in two
 * parts (Cody & Waite), exp(r) by its degree-7 Taylor polynomial on
 * |r| ≤ ln 2 / 2: relative error < 3e-8 plus rounding. Inputs below −87 give
 * ~1e-38 (never 0, never a denormal), −inf included; above 88, exp(88).
 * fm_logf: x = 2^e · m, m in [√½, √2), log m = 2 atanh u, u = (m−1)/(m+1),
 * series to u^9 (|u| ≤ 0.172): absolute error < 1e-9 plus rounding. For
 * finite x > 0 only (callers guarantee it). */
#ifndef ALLOY_UTIL_FASTMATH_H
#define ALLOY_UTIL_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float fm_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860676533018708e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (int32_t)((uint32_t)((int32_t)n + 127) << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float fm_logf(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    /* exponent relative to m in [√½, √2): bias the split point by 0x3f3504f3 (√½) */
    int32_t e = (bits - 0x3f3504f3) >> 23; /* arithmetic shift: floor division by 2^23 */
    int32_t mb = (int32_t)((uint32_t)bits - ((uint32_t)e << 23));
    float m;
    memcpy(&m, &mb, sizeof m);
    float u = (m - 1.0f) / (m + 1.0f), u2 = u * u;
    float s = 1.0f / 9.0f;
    s = s * u2 + 1.0f / 7.0f;
    s = s * u2 + 1.0f / 5.0f;
    s = s * u2 + 1.0f / 3.0f;
    s = s * u2 + 1.0f;
    return 2.0f * u * s + (float)e * 0.693147180559945309f;
}

#endif
