/* svd.c — thin, randomized and polar SVDs over LAPACKE/OpenBLAS (see svd.h).
 *
 * Row-major without transposes: a row-major m x n matrix is the column-major
 * n x m matrix a^T, and a^T = v s u^T, so one column-major dgesdd of a^T
 * returns our vt in its "u" output and our u in its "vt" output. Owns no merge
 * semantics. */
#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/svd.h"
#include "util/err.h"
#include "util/mem.h"
#include "util/rng.h"

void svd_set_threads(int threads) { openblas_set_num_threads(threads > 0 ? threads : 1); }

static bool fits_lapack(int64_t m, int64_t n) {
    return m > 0 && n > 0 && m <= INT_MAX && n <= INT_MAX && m * n <= (int64_t)INT_MAX * 64;
}

int svd_thin(const double *a, int64_t m, int64_t n, double *u, double *s, double *vt, const char *what,
             alloy_err *err) {
    if (!fits_lapack(m, n))
        return alloy_fail(err, "%s: cannot take the SVD of a %lld x %lld matrix", what, (long long)m, (long long)n);
    int64_t p = m < n ? m : n;
    /* LAPACK gets the matrix tall (rows >= cols): OpenBLAS optimises the QR
     * that dgesdd runs first on a tall matrix but not the LQ of a wide one.
     * For m < n the row-major a is the tall column-major n x m a^T; for
     * m >= n a transposed copy is the column-major m x n a. */
    bool tall = m >= n;
    double *w = mem_big_alloc((size_t)(m * n) * sizeof *w);
    double *uc = tall ? mem_big_alloc((size_t)(m * p) * sizeof *uc) : NULL;
    double *vc = tall ? mem_big_alloc((size_t)(p * n) * sizeof *vc) : NULL;
    if (!w || (tall && (!uc || !vc))) {
        free(w), free(uc), free(vc);
        return alloy_fail(err, "%s: out of memory for a %lld x %lld SVD", what, (long long)m, (long long)n);
    }
    lapack_int info = 0;
    for (int attempt = 0; attempt < 2; attempt++) { /* dgesdd, then dgesvd when divide and conquer fails */
        if (tall) {
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) w[j * m + i] = a[i * n + j];
        } else {
            memcpy(w, a, (size_t)(m * n) * sizeof *w);
        }
        lapack_int R = (lapack_int)(tall ? m : n), C = (lapack_int)(tall ? n : m);
        double *lu = tall ? uc : vt, *lvt = tall ? vc : u;
        if (attempt == 0) {
            info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', R, C, w, R, s, lu, R, lvt, (lapack_int)p);
        } else {
            double *superb = malloc((size_t)p * sizeof *superb);
            info = superb ? LAPACKE_dgesvd(LAPACK_COL_MAJOR, 'S', 'S', R, C, w, R, s, lu, R, lvt, (lapack_int)p, superb)
                          : -1010;
            free(superb);
        }
        if (info <= 0) break;
    }
    if (!info && tall) { /* column-major U (m x p) and VT (p x n) to row-major */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < p; j++) u[i * p + j] = uc[j * m + i];
        for (int64_t j = 0; j < p; j++)
            for (int64_t c = 0; c < n; c++) vt[j * n + c] = vc[c * p + j];
    }
    free(w), free(uc), free(vc);
    if (info == -1010) return alloy_fail(err, "%s: out of memory in the SVD", what);
    if (info != 0)
        return alloy_fail(err, "%s: SVD of a %lld x %lld matrix failed (LAPACK info %d)", what, (long long)m,
                          (long long)n, (int)info);
    return 0;
}

/* Orthonormalise the columns of the row-major m x l matrix y in place (QR). */
static int orthonormalize(double *y, int64_t m, int64_t l, double *tau, const char *what, alloy_err *err) {
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)l, y, (lapack_int)l, tau);
    if (!info) info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)l, (lapack_int)l, y, (lapack_int)l, tau);
    if (info) return alloy_fail(err, "%s: QR in the randomized SVD failed (LAPACK info %d)", what, (int)info);
    return 0;
}

/* Standard normal draw number idx (Box-Muller on the counter-based uniforms). */
static double gauss(uint64_t seed, uint64_t idx) {
    double u1 = 1.0 - rng_uniform(seed, 0, 2 * idx), u2 = rng_uniform(seed, 0, 2 * idx + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Halko, Martinsson & Tropp (2011), Alg. 4.4 (randomized subspace iteration)
 * followed by Alg. 5.1 (direct SVD of B = Q^T A):
 *   Y = A Ω, Q = qr(Y); repeat q times: Z = qr(A^T Q), Q = qr(A Z);
 *   B = Q^T A = Ub S Vt, U = Q Ub. */
int svd_randomized(const double *a, int64_t m, int64_t n, int r, int oversample, int power_iters, uint64_t seed,
                   double *u, double *s, double *vt, const char *what, alloy_err *err) {
    int64_t p = m < n ? m : n;
    if (r < 1 || r > p) return alloy_fail(err, "%s: rank %d outside [1, %lld]", what, r, (long long)p);
    if (!fits_lapack(m, n))
        return alloy_fail(err, "%s: cannot take the SVD of a %lld x %lld matrix", what, (long long)m, (long long)n);
    int64_t l = r + (oversample > 0 ? oversample : 0);
    if (l > p) l = p;
    double *omega = malloc((size_t)(n * l) * sizeof(double));
    double *y = malloc((size_t)(m * l) * sizeof(double));
    double *z = malloc((size_t)(n * l) * sizeof(double));
    double *b = malloc((size_t)(l * n) * sizeof(double));
    double *ub = malloc((size_t)(l * l) * sizeof(double));
    double *sb = malloc((size_t)l * sizeof(double));
    double *tau = malloc((size_t)l * sizeof(double));
    int rc = 0;
    if (!omega || !y || !z || !b || !ub || !sb || !tau) rc = alloy_fail(err, "%s: out of memory", what);
    if (!rc) {
        for (int64_t i = 0; i < n * l; i++) omega[i] = gauss(seed, (uint64_t)i);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0, a, (int)n, omega, (int)l,
                    0.0, y, (int)l);
        rc = orthonormalize(y, m, l, tau, what, err);
    }
    for (int it = 0; it < power_iters && !rc; it++) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0, a, (int)n, y, (int)l, 0.0,
                    z, (int)l);
        rc = orthonormalize(z, n, l, tau, what, err);
        if (rc) break;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0, a, (int)n, z, (int)l, 0.0,
                    y, (int)l);
        rc = orthonormalize(y, m, l, tau, what, err);
    }
    if (!rc) {
        /* B = Q^T A (l x n), then its exact SVD: B = ub sb vtb with l <= n. */
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l, (int)n, (int)m, 1.0, y, (int)l, a, (int)n, 0.0,
                    b, (int)n);
        rc = svd_thin(b, l, n, ub, sb, z, what, err); /* z (n x l doubles) holds vtb, l x n */
    }
    if (!rc) {
        /* U = Q ub, first r columns; S and Vt truncated likewise. */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, r, (int)l, 1.0, y, (int)l, ub, (int)l, 0.0, u,
                    r);
        memcpy(s, sb, (size_t)r * sizeof *s);
        memcpy(vt, z, (size_t)r * (size_t)n * sizeof *vt);
    }
    free(omega);
    free(y);
    free(z);
    free(b);
    free(ub);
    free(sb);
    free(tau);
    return rc;
}

bool svd_prefer_randomized(int64_t m, int64_t n, int r) {
    int64_t p = m < n ? m : n;
    return r > 0 && 4 * ((int64_t)r + SVD_OVERSAMPLE) <= p;
}

int svd_topr(const double *a, int64_t m, int64_t n, int r, uint64_t seed, double *u, double *s, double *vt,
             const char *what, alloy_err *err) {
    int64_t p = m < n ? m : n;
    if (r < 1 || r > p) return alloy_fail(err, "%s: rank %d outside [1, %lld]", what, r, (long long)p);
    if (svd_prefer_randomized(m, n, r))
        return svd_randomized(a, m, n, r, SVD_OVERSAMPLE, SVD_POWER_ITERS, seed, u, s, vt, what, err);
    if (r == p) return svd_thin(a, m, n, u, s, vt, what, err);
    double *uf = malloc((size_t)(m * p) * sizeof *uf), *vf = malloc((size_t)(p * n) * sizeof *vf);
    double *sf = malloc((size_t)p * sizeof *sf);
    int rc = (!uf || !vf || !sf) ? alloy_fail(err, "%s: out of memory", what) : 0;
    if (!rc) rc = svd_thin(a, m, n, uf, sf, vf, what, err);
    if (!rc) {
        for (int64_t i = 0; i < m; i++) memcpy(u + i * r, uf + i * p, (size_t)r * sizeof *u);
        memcpy(s, sf, (size_t)r * sizeof *s);
        memcpy(vt, vf, (size_t)r * (size_t)n * sizeof *vt);
    }
    free(uf);
    free(vf);
    free(sf);
    return rc;
}

int svd_polar(const double *a, int64_t m, int64_t n, double *out, const char *what, alloy_err *err) {
    int64_t p = m < n ? m : n;
    double *u = malloc((size_t)(m * p) * sizeof *u), *vt = malloc((size_t)(p * n) * sizeof *vt);
    double *s = malloc((size_t)p * sizeof *s);
    int rc = (!u || !vt || !s) ? alloy_fail(err, "%s: out of memory", what) : 0;
    if (!rc) rc = svd_thin(a, m, n, u, s, vt, what, err);
    if (!rc)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)p, 1.0, u, (int)p, vt, (int)n,
                    0.0, out, (int)n);
    free(u);
    free(vt);
    free(s);
    return rc;
}
