/* svd.h — singular value decompositions for the SVD merge family (drm.c,
 * tsv.c, knots.c) and LoRA extraction (cli/extract_lora.c).
 *
 * Everything is row-major double: the methods convert their f32 deltas to f64
 * once, because the rank thresholds and the top-k trims of the merges are
 * decided on singular values and vectors, and f64 keeps those decisions
 * stable against the PyTorch reference. Full thin SVDs go through LAPACKE
 * dgesdd (dgesvd when dgesdd does not converge); a randomized truncated SVD
 * (range finder with power iterations, Halko, Martinsson & Tropp 2011,
 * Alg. 4.4) serves rank caps much smaller than the matrix.
 *
 * Threads: these functions call OpenBLAS, which runs its own pthreads; call
 * svd_set_threads(call->threads) first and never call them from inside an
 * OpenMP parallel region. Not here: any merge semantics. */
#ifndef ALLOY_MERGE_SVD_H
#define ALLOY_MERGE_SVD_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"

/* Oversampling and power iterations of svd_randomized when called by svd_topr. */
#define SVD_OVERSAMPLE 10
#define SVD_POWER_ITERS 2

/* Give OpenBLAS this many threads (at least 1). */
void svd_set_threads(int threads);

/* Thin SVD of the m x n matrix a: a = u diag(s) vt with p = min(m, n),
 * u m x p, s[p] descending, vt p x n. a is left unchanged. Returns 0, or -1
 * with err naming `what` (out of memory, dimensions beyond LAPACK's int, no
 * convergence). */
int svd_thin(const double *a, int64_t m, int64_t n, double *u, double *s, double *vt, const char *what,
             alloy_err *err);

/* The r leading singular triplets of a (1 <= r <= min(m, n)) by randomized
 * range finding: l = min(r + oversample, min(m, n)) Gaussian probes drawn
 * from rng.h with `seed`, `power_iters` subspace iterations with
 * re-orthonormalisation, then an exact SVD of the l x n projection.
 * u m x r, s[r], vt r x n. Deterministic for a given seed. */
int svd_randomized(const double *a, int64_t m, int64_t n, int r, int oversample, int power_iters, uint64_t seed,
                   double *u, double *s, double *vt, const char *what, alloy_err *err);

/* Whether svd_topr uses the randomized SVD for rank r: when the probe count
 * r + SVD_OVERSAMPLE is at most a quarter of min(m, n) (each of the
 * 2 * SVD_POWER_ITERS + 2 passes over a then costs less than a full SVD). */
bool svd_prefer_randomized(int64_t m, int64_t n, int r);

/* The r leading singular triplets of a: randomized when svd_prefer_randomized,
 * else the exact thin SVD truncated. Same shapes as svd_randomized. */
int svd_topr(const double *a, int64_t m, int64_t n, int r, uint64_t seed, double *u, double *s, double *vt,
             const char *what, alloy_err *err);

/* Orthogonal polar factor of the m x n matrix a: p · qt from a = p diag(s) qt
 * (the closest matrix with orthonormal rows or columns, Procrustes), written
 * to out (m x n). */
int svd_polar(const double *a, int64_t m, int64_t n, double *out, const char *what, alloy_err *err);

#endif
