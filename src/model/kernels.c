/* kernels.c — RMSNorm, RoPE, softmax, SwiGLU and the weight-dtype matrix
 * products (see kernels.h). */
#include "model/kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "util/dtype.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif

/* Below this many weights a product runs on one thread. */
#define PAR_MIN_WEIGHTS (1 << 16)

void k_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * r);
}

void k_softmax(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void k_rope(float *x, int n_heads, int head_dim, int pos, const float *inv_freq) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i]; /* f32 product, as transformers */
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim;
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

void k_swiglu(float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* ---- weight rows: conversion and dot products ---- */

static inline uint16_t load_u16(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

#ifdef HAVE_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load8_bf16(const unsigned char *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

#ifdef __AVX512F__
static inline __m512 load16_bf16(const unsigned char *p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#endif

static float dot_bf16(const unsigned char *w, const float *x, int n) {
    int i = 0;
    float s = 0;
#ifdef __AVX512F__
    /* 64 weights per step in four independent accumulators */
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(),
           b3 = _mm512_setzero_ps();
    for (; i + 64 <= n; i += 64) {
        b0 = _mm512_fmadd_ps(load16_bf16(w + 2 * i), _mm512_loadu_ps(x + i), b0);
        b1 = _mm512_fmadd_ps(load16_bf16(w + 2 * i + 32), _mm512_loadu_ps(x + i + 16), b1);
        b2 = _mm512_fmadd_ps(load16_bf16(w + 2 * i + 64), _mm512_loadu_ps(x + i + 32), b2);
        b3 = _mm512_fmadd_ps(load16_bf16(w + 2 * i + 96), _mm512_loadu_ps(x + i + 48), b3);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
#endif
#ifdef HAVE_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load8_bf16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load8_bf16(w + 2 * i + 16), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load8_bf16(w + 2 * i + 32), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load8_bf16(w + 2 * i + 48), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load8_bf16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
    s += hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; i < n; i++) s += bf16_to_f32(load_u16(w + 2 * i)) * x[i];
    return s;
}

static float dot_f16(const unsigned char *w, const float *x, int n) {
    int i = 0;
    float s = 0;
#if defined(HAVE_AVX2) && defined(__F16C__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i))),
                             _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i + 16))),
                             _mm256_loadu_ps(x + i + 8), a1);
    }
    s = hsum(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++) s += f16_to_f32(load_u16(w + 2 * i)) * x[i];
    return s;
}

/* (AVX2 only: 512-bit loads measured slower on this memory-bound f32 path.) */
float k_dot(const float *w, const float *x, int n) {
    int i = 0;
#ifdef HAVE_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#else
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += w[i] * x[i];
        s1 += w[i + 1] * x[i + 1];
        s2 += w[i + 2] * x[i + 2];
        s3 += w[i + 3] * x[i + 3];
    }
    float s = (s0 + s1) + (s2 + s3);
#endif
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

void k_axpy(float *y, float a, const float *x, int n) {
    int i = 0;
#ifdef HAVE_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

static inline const unsigned char *row_ptr(const Mat *m, int r) {
    return (const unsigned char *)m->w + (size_t)r * m->cols * dtype_size(m->dtype);
}

float k_dot_row(const Mat *m, int r, const float *x) {
    const unsigned char *p = row_ptr(m, r);
    switch (m->dtype) {
    case ALLOY_BF16: return dot_bf16(p, x, m->cols);
    case ALLOY_F16: return dot_f16(p, x, m->cols);
    default: return k_dot((const float *)(const void *)p, x, m->cols);
    }
}

void k_row_f32(float *out, const Mat *m, int r) {
    const unsigned char *p = row_ptr(m, r);
    int n = m->cols, i = 0;
    if (m->dtype == ALLOY_F32) {
        memcpy(out, p, (size_t)n * sizeof(float));
        return;
    }
    if (m->dtype == ALLOY_BF16) {
#ifdef __AVX512F__
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, load16_bf16(p + 2 * i));
#endif
#ifdef HAVE_AVX2
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load8_bf16(p + 2 * i));
#endif
        for (; i < n; i++) out[i] = bf16_to_f32(load_u16(p + 2 * i));
        return;
    }
#if defined(HAVE_AVX2) && defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
#endif
    for (; i < n; i++) out[i] = f16_to_f32(load_u16(p + 2 * i));
}

void k_matvec(float *out, const float *x, const Mat *m) {
    int rows = m->rows;
#pragma omp parallel for schedule(static) if ((size_t)rows * m->cols >= PAR_MIN_WEIGHTS)
    for (int r = 0; r < rows; r++) out[r] = k_dot_row(m, r, x);
}

/* rows [r0, r1) of out = x @ m^T on the calling thread's BLAS, converting
 * bf16/f16 rows into scratch (scratch_floats >= m->cols) block by block. */
static void matmul_rows(float *out, int ldo, const float *x, int n, const Mat *m, int r0, int r1, float *scratch,
                        size_t scratch_floats, bool par_convert) {
    int cols = m->cols;
    if (m->dtype == ALLOY_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r1 - r0, cols, 1.0f, x, cols,
                    (const float *)m->w + (size_t)r0 * cols, cols, 0.0f, out + r0, ldo);
        return;
    }
    int block = (int)(scratch_floats / (size_t)cols);
    for (int b0 = r0; b0 < r1; b0 += block) {
        int b = r1 - b0 < block ? r1 - b0 : block;
#pragma omp parallel for schedule(static) if (par_convert && (size_t)b * cols >= PAR_MIN_WEIGHTS)
        for (int i = 0; i < b; i++) k_row_f32(scratch + (size_t)i * cols, m, b0 + i);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, b, cols, 1.0f, x, cols, scratch, cols, 0.0f,
                    out + b0, ldo);
    }
}

void k_matmul(float *out, int ldo, const float *x, int n, const Mat *m, float *scratch, size_t scratch_floats) {
    if (n == 1) {
        k_matvec(out, x, m);
        return;
    }
    int rows = m->rows, cols = m->cols, nt = omp_get_max_threads();
    /* With a single-threaded BLAS (lm_open sets it so), each OpenMP
     * thread multiplies its own slice of rows: one pool of threads, no
     * hand-over between OpenMP and OpenBLAS workers at every product. */
    size_t per = scratch_floats / (size_t)(nt > 0 ? nt : 1);
    if (nt > 1 && openblas_get_num_threads() == 1 && per >= (size_t)cols && rows >= 16 * nt) {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            int r0 = (int)((int64_t)rows * t / T), r1 = (int)((int64_t)rows * (t + 1) / T);
            if (r1 > r0) matmul_rows(out, ldo, x, n, m, r0, r1, scratch + per * t, per, false);
        }
        return;
    }
    matmul_rows(out, ldo, x, n, m, 0, rows, scratch, scratch_floats, true);
}
