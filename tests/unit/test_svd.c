/* test_svd.c — svd.c: thin SVD reconstructs and is orthonormal, truncation
 * at full rank is exact (what extract-lora relies on), the randomized
 * truncated SVD is close to the exact one (its error is printed), the polar
 * factor is orthogonal. Small matrices only. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/svd.h"
#include "util/rng.h"

static void fill(double *a, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) a[i] = rng_uniform(seed, 7, (uint64_t)i) - 0.5;
}

/* max |a - u diag(s) vt| over the m x n entries, with r triplets. */
static double recon_err(const double *a, int64_t m, int64_t n, const double *u, const double *s, const double *vt,
                        int64_t r) {
    double worst = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double v = 0;
            for (int64_t t = 0; t < r; t++) v += u[i * r + t] * s[t] * vt[t * n + j];
            double e = fabs(v - a[i * n + j]);
            if (e > worst) worst = e;
        }
    return worst;
}

static void test_thin_reconstructs(void **state) {
    (void)state;
    int64_t shapes[][2] = {{7, 5}, {5, 7}, {6, 6}, {1, 4}};
    for (size_t c = 0; c < 4; c++) {
        int64_t m = shapes[c][0], n = shapes[c][1], p = m < n ? m : n;
        double *a = malloc(sizeof(double) * (size_t)(m * n)), *u = malloc(sizeof(double) * (size_t)(m * p));
        double *vt = malloc(sizeof(double) * (size_t)(p * n)), *s = malloc(sizeof(double) * (size_t)p);
        fill(a, m * n, c);
        alloy_err err;
        assert_int_equal(svd_thin(a, m, n, u, s, vt, "t", &err), 0);
        assert_true(recon_err(a, m, n, u, s, vt, p) < 1e-12);
        for (int64_t t = 1; t < p; t++) assert_true(s[t - 1] >= s[t]);
        /* columns of u orthonormal */
        for (int64_t x = 0; x < p; x++)
            for (int64_t y = 0; y < p; y++) {
                double d = 0;
                for (int64_t i = 0; i < m; i++) d += u[i * p + x] * u[i * p + y];
                assert_true(fabs(d - (x == y)) < 1e-12);
            }
        free(a), free(u), free(vt), free(s);
    }
}

/* Full-rank truncation returns the whole decomposition: B = U S, A = Vt
 * reproduce the delta to rounding (the extract-lora full-rank property). */
static void test_topr_full_rank_exact(void **state) {
    (void)state;
    int64_t m = 9, n = 6;
    double a[54], u[54], s[6], vt[36];
    fill(a, m * n, 3);
    alloy_err err;
    assert_int_equal(svd_topr(a, m, n, 6, 1, u, s, vt, "t", &err), 0);
    assert_true(recon_err(a, m, n, u, s, vt, 6) < 1e-12);
    /* rank outside [1, min(m, n)] is an error naming the matrix */
    assert_int_equal(svd_topr(a, m, n, 7, 1, u, s, vt, "q_proj", &err), -1);
    assert_non_null(strstr(err.msg, "q_proj"));
    assert_int_equal(svd_topr(a, m, n, 0, 1, u, s, vt, "q_proj", &err), -1);
}

/* A 120 x 80 matrix of numerical rank ~8 plus noise: randomized rank 4
 * must match the exact truncated SVD's error within 1% and its singular
 * values within 1e-6 relative. */
static void test_randomized_vs_exact(void **state) {
    (void)state;
    int64_t m = 120, n = 80, r = 4, p = 80;
    double *a = calloc((size_t)(m * n), sizeof(double));
    double sig[8] = {10, 7, 5, 3, 1, 0.5, 0.2, 0.1};
    double *x = malloc(sizeof(double) * (size_t)m), *y = malloc(sizeof(double) * (size_t)n);
    for (int t = 0; t < 8; t++) {
        fill(x, m, 100 + t);
        fill(y, n, 200 + t);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) a[i * n + j] += sig[t] * x[i] * y[j];
    }
    double *noise = malloc(sizeof(double) * (size_t)(m * n));
    fill(noise, m * n, 99);
    for (int64_t i = 0; i < m * n; i++) a[i] += 1e-3 * noise[i];
    assert_true(svd_prefer_randomized(m, n, (int)r));
    double *u = malloc(sizeof(double) * (size_t)(m * p)), *vt = malloc(sizeof(double) * (size_t)(p * n));
    double *s = malloc(sizeof(double) * (size_t)p), *ur = malloc(sizeof(double) * (size_t)(m * r));
    double *vr = malloc(sizeof(double) * (size_t)(r * n)), sr[4];
    alloy_err err;
    assert_int_equal(svd_thin(a, m, n, u, s, vt, "t", &err), 0);
    assert_int_equal(svd_randomized(a, m, n, (int)r, SVD_OVERSAMPLE, SVD_POWER_ITERS, 5, ur, sr, vr, "t", &err), 0);
    double tot = 0, ex = 0, rnd = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double ve = 0, vr_ = 0;
            for (int64_t t = 0; t < r; t++) {
                ve += u[i * p + t] * s[t] * vt[t * n + j];
                vr_ += ur[i * r + t] * sr[t] * vr[t * n + j];
            }
            double v = a[i * n + j];
            tot += v * v, ex += (v - ve) * (v - ve), rnd += (v - vr_) * (v - vr_);
        }
    double e_exact = sqrt(ex / tot), e_rand = sqrt(rnd / tot);
    double sv_err = 0;
    for (int t = 0; t < r; t++) sv_err = fmax(sv_err, fabs(sr[t] - s[t]) / s[t]);
    printf("  randomized rank-%d SVD of 120x80: rel. Frobenius error %.6e vs exact %.6e (ratio %.6f), "
           "max singular value rel. error %.2e\n",
           (int)r, e_rand, e_exact, e_rand / e_exact, sv_err);
    assert_true(e_rand <= e_exact * 1.01);
    assert_true(sv_err < 1e-6);
    free(a), free(x), free(y), free(noise), free(u), free(vt), free(s), free(ur), free(vr);
}

static void test_polar_orthogonal(void **state) {
    (void)state;
    int64_t m = 8, n = 5;
    double a[40], q[40];
    fill(a, m * n, 11);
    alloy_err err;
    assert_int_equal(svd_polar(a, m, n, q, "t", &err), 0);
    for (int64_t x = 0; x < n; x++)
        for (int64_t y = 0; y < n; y++) {
            double d = 0;
            for (int64_t i = 0; i < m; i++) d += q[i * n + x] * q[i * n + y];
            assert_true(fabs(d - (x == y)) < 1e-12);
        }
    /* polar of an orthonormal-column matrix is itself */
    double q2[40];
    assert_int_equal(svd_polar(q, m, n, q2, "t", &err), 0);
    for (int i = 0; i < 40; i++) assert_true(fabs(q2[i] - q[i]) < 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thin_reconstructs),
        cmocka_unit_test(test_topr_full_rank_exact),
        cmocka_unit_test(test_randomized_vs_exact),
        cmocka_unit_test(test_polar_orthogonal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
