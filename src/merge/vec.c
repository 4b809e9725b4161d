/* vec.c — deterministic chunked reductions and strided layouts (see vec.h). */
#include "merge/vec.h"

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
