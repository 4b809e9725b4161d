/* svd_bench.c — SVD throughput of alloy's svd_thin (LAPACKE dgesdd on f64, as
 * the SVD merges use it) and of LAPACKE sgesdd on f32 (what torch.linalg.svd
 * runs on f32 CPU tensors), on the shapes given on the command line.
 *
 * usage: svd_bench THREADS REPS M1xN1 [M2xN2 ...]
 * Prints one line per shape: "M N dgesdd_s sgesdd_s sgesdd_relerr
 * dgesdd_tall_s", the best of REPS runs each (dgesdd_tall: see
 * time_dgesdd_tall), and the relative Frobenius reconstruction error of the
 * f32 SVD against the f64 matrix (how much accuracy f32 would cost). The
 * matrix is Gaussian (counter-based, seed 1). Bench tool only: prints and
 * exits on failure. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "merge/svd.h"
#include "util/rng.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Best of reps runs of the f64 thin SVD through svd_thin. */
static double time_dgesdd(const double *a, int64_t m, int64_t n, int reps) {
    int64_t p = m < n ? m : n;
    double *u = malloc((size_t)(m * p) * sizeof *u), *vt = malloc((size_t)(p * n) * sizeof *vt);
    double *s = malloc((size_t)p * sizeof *s), best = INFINITY;
    if (!u || !vt || !s) {
        fprintf(stderr, "svd_bench: out of memory\n");
        exit(1);
    }
    for (int r = 0; r < reps; r++) {
        alloy_err err;
        double t0 = now();
        if (svd_thin(a, m, n, u, s, vt, "bench", &err)) {
            fprintf(stderr, "svd_bench: %s\n", err.msg);
            exit(1);
        }
        double t = now() - t0;
        if (t < best) best = t;
    }
    free(u), free(vt), free(s);
    return best;
}

/* Best of reps runs of f64 dgesdd with the matrix always handed to LAPACK
 * tall (rows >= cols): for m >= n a transposed copy (column-major m x n), for
 * m < n the row-major buffer as is (column-major n x m) — the layout torch
 * gives LAPACK. OpenBLAS optimises the QR of a tall matrix (dgeqrf) but runs
 * reference LQ (dgelqf) on a wide one, which is what svd_thin's row-major
 * trick produces for m > n. Includes the transposes in and out. */
static double time_dgesdd_tall(const double *a, int64_t m, int64_t n, int reps) {
    int64_t p = m < n ? m : n;
    size_t mn = (size_t)(m * n);
    double *w = malloc(mn * sizeof *w), *uc = malloc((size_t)(m * p) * sizeof *uc);
    double *vc = malloc((size_t)(p * n) * sizeof *vc), *s = malloc((size_t)p * sizeof *s);
    double *u = malloc((size_t)(m * p) * sizeof *u), *vt = malloc((size_t)(p * n) * sizeof *vt);
    double best = INFINITY;
    if (!w || !uc || !vc || !s || !u || !vt) {
        fprintf(stderr, "svd_bench: out of memory\n");
        exit(1);
    }
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        lapack_int info;
        if (m >= n) {
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) w[j * m + i] = a[i * n + j];
            info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)m, (lapack_int)n, w, (lapack_int)m, s, uc,
                                  (lapack_int)m, vc, (lapack_int)p);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < p; j++) u[i * p + j] = uc[j * m + i];
            for (int64_t j = 0; j < p; j++)
                for (int64_t c = 0; c < n; c++) vt[j * n + c] = vc[c * p + j];
        } else {
            memcpy(w, a, mn * sizeof *w);
            info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, w, (lapack_int)n, s, vt,
                                  (lapack_int)n, u, (lapack_int)p);
        }
        double t = now() - t0;
        if (info) {
            fprintf(stderr, "svd_bench: dgesdd info %d\n", (int)info);
            exit(1);
        }
        if (t < best) best = t;
    }
    /* sanity: a = u diag(s) vt */
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < p; j++) u[i * p + j] *= s[j];
    memcpy(w, a, mn * sizeof *w);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)p, -1.0, u, (int)p, vt, (int)n, 1.0,
                w, (int)n);
    double res = 0, nrm = 0;
    for (size_t e = 0; e < mn; e++) res += w[e] * w[e], nrm += a[e] * a[e];
    if (!(sqrt(res / nrm) < 1e-10)) {
        fprintf(stderr, "svd_bench: tall dgesdd reconstruction error %.2e\n", sqrt(res / nrm));
        exit(1);
    }
    free(w), free(uc), free(vc), free(s), free(u), free(vt);
    return best;
}

/* Best of reps runs of f32 sgesdd (row-major a as column-major a^T, as in
 * svd.c), and the relative reconstruction error of the f32 factors. */
static double time_sgesdd(const double *a, int64_t m, int64_t n, int reps, double *relerr) {
    int64_t p = m < n ? m : n;
    size_t mn = (size_t)(m * n);
    float *af = malloc(mn * sizeof *af), *w = malloc(mn * sizeof *w);
    float *u = malloc((size_t)(m * p) * sizeof *u), *vt = malloc((size_t)(p * n) * sizeof *vt);
    float *s = malloc((size_t)p * sizeof *s);
    double best = INFINITY;
    if (!af || !w || !u || !vt || !s) {
        fprintf(stderr, "svd_bench: out of memory\n");
        exit(1);
    }
    for (size_t e = 0; e < mn; e++) af[e] = (float)a[e];
    for (int r = 0; r < reps; r++) {
        memcpy(w, af, mn * sizeof *w);
        double t0 = now();
        lapack_int info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, w, (lapack_int)n, s,
                                         vt, (lapack_int)n, u, (lapack_int)p);
        double t = now() - t0;
        if (info) {
            fprintf(stderr, "svd_bench: sgesdd info %d\n", (int)info);
            exit(1);
        }
        if (t < best) best = t;
    }
    /* a - u diag(s) vt, in f32 like the factors */
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < p; j++) u[i * p + j] *= s[j];
    memcpy(w, af, mn * sizeof *w);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)p, -1.0f, u, (int)p, vt, (int)n,
                1.0f, w, (int)n);
    double res = 0, nrm = 0;
    for (size_t e = 0; e < mn; e++) res += (double)w[e] * w[e], nrm += a[e] * a[e];
    *relerr = sqrt(res / nrm);
    free(af), free(w), free(u), free(vt), free(s);
    return best;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: svd_bench THREADS REPS M1xN1 [M2xN2 ...]\n");
        return 1;
    }
    int threads = atoi(argv[1]), reps = atoi(argv[2]);
    svd_set_threads(threads);
    for (int i = 3; i < argc; i++) {
        long long m = 0, n = 0;
        if (sscanf(argv[i], "%lldx%lld", &m, &n) != 2 || m < 1 || n < 1) {
            fprintf(stderr, "svd_bench: bad shape '%s' (want MxN)\n", argv[i]);
            return 1;
        }
        double *a = malloc((size_t)(m * n) * sizeof *a);
        if (!a) {
            fprintf(stderr, "svd_bench: out of memory\n");
            return 1;
        }
        for (long long e = 0; e < m * n; e++) a[e] = 2.0 * rng_uniform(1, 0, (uint64_t)e) - 1.0;
        double td = time_dgesdd(a, m, n, reps), tt = time_dgesdd_tall(a, m, n, reps), rel = 0;
        double ts = time_sgesdd(a, m, n, reps, &rel);
        printf("%lld %lld %.4f %.4f %.2e %.4f\n", m, n, td, ts, rel, tt);
        fflush(stdout);
        free(a);
    }
    return 0;
}
