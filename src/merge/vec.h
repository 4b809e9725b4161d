/* vec.h — deterministic reductions and vector layouts shared by the merge methods.
 *
 * Sums over a tensor are split into fixed chunks whose size depends only on
 * n (never on the thread count); each chunk is accumulated in double in a
 * fixed order (index order, or vec_sum8's lanes per block), and the chunk
 * partials are added in chunk order. A reduction
 * therefore gives the same bits with 1 or 64 threads. This file owns no
 * method semantics; the methods live in one file per family. */
#ifndef ALLOY_MERGE_VEC_H
#define ALLOY_MERGE_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "alloy.h"

/* A reduction never uses more than this many chunks. */
#define VEC_CHUNKS_MAX 1024

/* Accumulate chunk [lo, hi) of the reduction into acc[0..nacc) (zeroed by the caller). */
typedef void (*vec_chunk_fn)(const void *ctx, size_t lo, size_t hi, double *acc);

/* out[0..nacc) = the sums of f over [0, n), deterministic as described above.
 * Returns 0, or -1 (out of memory, err filled). */
int vec_reduce(size_t n, int threads, int nacc, vec_chunk_fn f, const void *ctx, double *out, alloy_err *err);

/* Σ (a[e]-c[e]) (b[e]-c[e]) in double; c may be NULL (plain dot product).
 * Uses a stack buffer, so it cannot fail. */
double vec_dot_sub(const float *a, const float *b, const float *c, size_t n, int threads);

/* Σ (a[e]-c[e]) m[e] in double; c may be NULL. Cannot fail. */
double vec_dot_diff(const float *a, const float *c, const float *m, size_t n, int threads);

/* Sum of a[0..m) in eight double lanes (lane l: a[l], a[l + 8], ... in
 * order), the lanes then added pairwise: a fixed order that vectorises
 * (an index-order sum is one long chain of dependent adds). A GCC vector
 * type: one register on AVX-512, split where narrower. */
typedef double vec_v8d __attribute__((vector_size(64)));
static inline double vec_sum8(const double *a, size_t m) {
    vec_v8d lane = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t e = 0;
    for (; e + 8 <= m; e += 8) {
        vec_v8d t;
        memcpy(&t, a + e, sizeof t);
        lane += t;
    }
    for (size_t l = 0; e + l < m; l++) lane[l] += a[e + l];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* vec_sum8 of the products (double)a[e] * b[e], e < m, without storing
 * them: the same lanes in the same order, the same bits. */
typedef float vec_v8f __attribute__((vector_size(32)));
static inline double vec_dot8f(const float *a, const float *b, size_t m) {
    vec_v8d lane = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t e = 0;
    for (; e + 8 <= m; e += 8) {
        vec_v8f af, bf;
        memcpy(&af, a + e, sizeof af);
        memcpy(&bf, b + e, sizeof bf);
        lane += __builtin_convertvector(af, vec_v8d) * __builtin_convertvector(bf, vec_v8d);
    }
    for (size_t l = 0; e + l < m; l++) lane[l] += (double)a[e + l] * b[e + l];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* The pair sums of N rows over m elements: out[q] = sum_e d_i[e] d_j[e]
 * for the pairs i <= j in row order (q = 0 is (0, 0), then (0, 1), ...),
 * d_i = (double)x_i - (double)b (b NULL: (double)x_i), each summed as
 * vec_sum8 sums its array (lane l: elements l, l + 8, ... in order, the
 * lanes then pairwise), so the same bits as the products stored and
 * vec_sum8'd; up to VEC_GRAM_REG rows each delta made once and every sum
 * kept in registers. */
#define VEC_GRAM_REG 4
void vec_gram_block(int N, const float *const *x, const float *b, size_t m, double *out);

/* Number of chunks vec_reduce uses for n elements, and the bounds of chunk i;
 * for passes that need per-chunk prefix counts. */
size_t vec_nchunks(size_t n);
void vec_chunk(size_t n, size_t i, size_t *lo, size_t *hi);

/* A tensor seen as `count` vectors of `len` elements along one axis: vector v
 * holds elements vec_at(l, v, j), j < len. */
typedef struct vec_layout {
    size_t count, len, inner; /* inner = product of the dims after the axis (the stride) */
} vec_layout;

/* The layout of vectors along `axis` (clamped into [0, ndim)); ndim 0 is one vector. */
vec_layout vec_layout_axis(int ndim, const int64_t *shape, size_t n, int axis);

static inline size_t vec_at(const vec_layout *l, size_t v, size_t j) {
    size_t outer = v / l->inner, in = v % l->inner;
    return (outer * l->len + j) * l->inner + in;
}

/* Index of the first non-finite value of v[0..m), or m: a vectorised test
 * of the whole block first, the walk only when it fails. */
static inline size_t vec_first_nonfinite(const float *v, size_t m) {
    int fin = 1;
#pragma omp simd reduction(& : fin)
    for (size_t j = 0; j < m; j++) fin &= v[j] - v[j] == 0.0f;
    if (fin) return m;
    size_t j = 0;
    while (j < m && v[j] - v[j] == 0.0f) j++;
    return j;
}

/* Thread count to pass to OpenMP (at least 1). */
static inline int vec_threads(int t) { return t > 0 ? t : 1; }

#endif
