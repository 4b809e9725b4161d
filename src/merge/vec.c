/* vec.c — deterministic chunked reductions and strided layouts (see vec.h). */
#include "merge/vec.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define VEC_CHUNK_MIN 8192

size_t vec_nchunks(size_t n) {
    size_t c = (n + VEC_CHUNKS_MAX - 1) / VEC_CHUNKS_MAX;
    if (c < VEC_CHUNK_MIN) c = VEC_CHUNK_MIN;
    return n ? (n + c - 1) / c : 0;
}

void vec_chunk(size_t n, size_t i, size_t *lo, size_t *hi) {
    size_t c = (n + VEC_CHUNKS_MAX - 1) / VEC_CHUNKS_MAX;
    if (c < VEC_CHUNK_MIN) c = VEC_CHUNK_MIN;
    *lo = i * c;
    *hi = *lo + c < n ? *lo + c : n;
}

int vec_reduce(size_t n, int threads, int nacc, vec_chunk_fn f, const void *ctx, double *out, alloy_err *err) {
    size_t nc = vec_nchunks(n);
    double *part = calloc(nc * (size_t)nacc + 1, sizeof *part);
    if (!part) return alloy_fail(err, "out of memory (reduction over %zu elements)", n);
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(static)
    for (size_t i = 0; i < nc; i++) {
        size_t lo, hi;
        vec_chunk(n, i, &lo, &hi);
        f(ctx, lo, hi, part + i * (size_t)nacc);
    }
    for (int a = 0; a < nacc; a++) out[a] = 0.0;
    for (size_t i = 0; i < nc; i++)
        for (int a = 0; a < nacc; a++) out[a] += part[i * (size_t)nacc + (size_t)a];
    free(part);
    return 0;
}

double vec_dot_sub(const float *a, const float *b, const float *c, size_t n, int threads) {
    double part[VEC_CHUNKS_MAX];
    size_t nc = vec_nchunks(n);
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(static)
    for (size_t i = 0; i < nc; i++) {
        size_t lo, hi;
        vec_chunk(n, i, &lo, &hi);
        double s = 0.0;
        if (c)
            for (size_t e = lo; e < hi; e++) s += ((double)a[e] - c[e]) * ((double)b[e] - c[e]);
        else
            for (size_t e = lo; e < hi; e++) s += (double)a[e] * b[e];
        part[i] = s;
    }
    double s = 0.0;
    for (size_t i = 0; i < nc; i++) s += part[i];
    return s;
}

double vec_dot_diff(const float *a, const float *c, const float *m, size_t n, int threads) {
    double part[VEC_CHUNKS_MAX];
    size_t nc = vec_nchunks(n);
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(static)
    for (size_t i = 0; i < nc; i++) {
        size_t lo, hi;
        vec_chunk(n, i, &lo, &hi);
        double s = 0.0;
        for (size_t e = lo; e < hi; e++) s += ((double)a[e] - (c ? c[e] : 0.0f)) * m[e];
        part[i] = s;
    }
    double s = 0.0;
    for (size_t i = 0; i < nc; i++) s += part[i];
    return s;
}

vec_layout vec_layout_axis(int ndim, const int64_t *shape, size_t n, int axis) {
    vec_layout l = {1, n, 1};
    if (ndim <= 0 || n == 0) return l;
    if (axis < 0) axis = 0;
    if (axis >= ndim) axis = ndim - 1;
    size_t inner = 1;
    for (int d = axis + 1; d < ndim; d++) inner *= (size_t)shape[d];
    l.len = (size_t)shape[axis];
    l.inner = inner;
    l.count = l.len ? n / l.len : 0;
    return l;
}

/* vec_gram_block for N rows up to VEC_GRAM_REG, N and whether there is a
 * base constants of each instance; eight elements at a time as vectors
 * (converted whole: element by element the compiler builds them in memory). */
static inline __attribute__((always_inline)) void gram_reg(int N, bool has_b, const float *const *x, const float *b,
                                                           size_t m, double *out) {
    vec_v8d acc[VEC_GRAM_REG * (VEC_GRAM_REG + 1) / 2];
    int np = N * (N + 1) / 2;
#pragma GCC unroll 10
    for (int q = 0; q < np; q++) acc[q] = (vec_v8d){0, 0, 0, 0, 0, 0, 0, 0};
    size_t e = 0;
    for (; e + 8 <= m; e += 8) {
        vec_v8d d[VEC_GRAM_REG], bd = {0, 0, 0, 0, 0, 0, 0, 0};
        if (has_b) {
            vec_v8f bf;
            memcpy(&bf, b + e, sizeof bf);
            bd = __builtin_convertvector(bf, vec_v8d);
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            vec_v8f xf;
            memcpy(&xf, x[i] + e, sizeof xf);
            d[i] = has_b ? __builtin_convertvector(xf, vec_v8d) - bd : __builtin_convertvector(xf, vec_v8d);
        }
        int q = 0;
#pragma GCC unroll 4
        for (int i = 0; i < N; i++)
#pragma GCC unroll 4
            for (int j = i; j < N; j++, q++) acc[q] += d[i] * d[j];
    }
    for (size_t l = 0; e + l < m; l++) {
        double d[VEC_GRAM_REG];
        for (int i = 0; i < N; i++) d[i] = has_b ? (double)x[i][e + l] - (double)b[e + l] : (double)x[i][e + l];
        int q = 0; /* (not acc[q++][l] +=: GCC reads a vector element's index twice there) */
        for (int i = 0; i < N; i++)
            for (int j = i; j < N; j++, q++) acc[q][l] += d[i] * d[j];
    }
    for (int q = 0; q < np; q++) {
        vec_v8d a = acc[q];
        out[q] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

void vec_gram_block(int N, const float *const *x, const float *b, size_t m, double *out) {
#define VEC_GRAM(K) (b ? gram_reg(K, true, x, b, m, out) : gram_reg(K, false, x, b, m, out))
    switch (N) {
    case 1: VEC_GRAM(1); return;
    case 2: VEC_GRAM(2); return;
    case 3: VEC_GRAM(3); return;
    case 4: VEC_GRAM(4); return;
    default: break;
    }
#undef VEC_GRAM
    /* more rows: each pair in turn, its lanes as vec_sum8 fills them (lane
     * e % 8 takes element e, in order) */
    for (int i = 0, q = 0; i < N; i++)
        for (int j = i; j < N; j++, q++) {
            vec_v8d lane = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t e = 0; e < m; e++) {
                double bi = b ? (double)b[e] : 0.0;
                lane[e % 8] += ((double)x[i][e] - bi) * ((double)x[j][e] - bi);
            }
            out[q] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        }
}
