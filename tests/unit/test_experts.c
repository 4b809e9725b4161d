/* test_experts.c — TTMM pieces without a model: bisecting k-means
 * (determinism for a seed, recovery of a planted mixture, too few points,
 * identical points), normalised centroids, and the expert coefficients of
 * select.c against hand-computed values (τ cut, cap, fixed top-k, NaN
 * fallback, none kept → base). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "experts/experts.h"
#include "util/rng.h"

/* n points around m planted unit directions in d dims; truth[i] = its mode. */
static float *planted(int n, int d, int m, int *truth, uint64_t seed) {
    float *X = malloc((size_t)n * d * sizeof *X);
    for (int i = 0; i < n; i++) {
        int c = i % m;
        truth[i] = c;
        double nn = 0;
        for (int j = 0; j < d; j++) {
            double v = (j == c ? 1.0 : 0.0) + 0.15 * (rng_uniform(seed, (uint64_t)i, (uint64_t)j) - 0.5);
            X[(size_t)i * d + j] = (float)v;
            nn += v * v;
        }
        for (int j = 0; j < d; j++) X[(size_t)i * d + j] /= (float)sqrt(nn);
    }
    return X;
}

static void test_kmeans_planted(void **state) {
    (void)state;
    int n = 60, d = 8, m = 4, truth[60], a[60], b[60];
    float *X = planted(n, d, m, truth, 5);
    alloy_err err;
    assert_int_equal(ex_kmeans_bisect(X, n, d, m, 11, a, &err), 0);
    assert_int_equal(ex_kmeans_bisect(X, n, d, m, 11, b, &err), 0);
    assert_memory_equal(a, b, sizeof a); /* deterministic for a seed */
    /* every planted mode maps to exactly one cluster and back */
    int map[4] = {-1, -1, -1, -1};
    for (int i = 0; i < n; i++) {
        if (map[truth[i]] < 0) map[truth[i]] = a[i];
        assert_int_equal(map[truth[i]], a[i]);
    }
    for (int c = 0; c < m; c++)
        for (int e = c + 1; e < m; e++) assert_int_not_equal(map[c], map[e]);
    /* centroids: unit rows near the planted directions */
    float C[4 * 8];
    int sizes[4];
    assert_int_equal(ex_centroids(X, n, d, a, m, C, sizes, &err), 0);
    for (int c = 0; c < m; c++) {
        assert_int_equal(sizes[map[c]], 15);
        double nn = 0;
        for (int j = 0; j < d; j++) nn += C[map[c] * d + j] * C[map[c] * d + j];
        assert_true(fabs(nn - 1) < 1e-5);
        assert_true(C[map[c] * d + c] > 0.95f);
    }
    free(X);
}

static void test_kmeans_bad(void **state) {
    (void)state;
    float X[3 * 2] = {1, 0, 1, 0, 1, 0};
    int a[3];
    alloy_err err;
    assert_int_equal(ex_kmeans_bisect(X, 3, 2, 4, 0, a, &err), -1);
    assert_non_null(strstr(err.msg, "only 3 documents"));
    /* identical points still give k non-empty clusters */
    assert_int_equal(ex_kmeans_bisect(X, 3, 2, 3, 0, a, &err), 0);
    int seen[3] = {0};
    for (int i = 0; i < 3; i++) seen[a[i]]++;
    assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    /* an empty cluster is an error in the centroids */
    int assign[3] = {0, 0, 2};
    float C[3 * 2];
    assert_int_equal(ex_centroids(X, 3, 2, assign, 3, C, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "cluster 1 is empty"));
}

/* unit centroids in 2-D at angles th[k]; query along angle 0 */
static void circle(float *C, const double *th, int k) {
    for (int i = 0; i < k; i++) C[2 * i] = (float)cos(th[i]), C[2 * i + 1] = (float)sin(th[i]);
}

static void test_select_rule(void **state) {
    (void)state;
    double th[4] = {0.0, 0.3, 1.2, 3.0};
    float C[8], q[2] = {1, 0};
    circle(C, th, 4);
    ex_select_opts o;
    ex_select_defaults(&o);
    int idx[4];
    double w[4];
    /* hand values: κ = exp(−(1 − cos θ)/0.04) */
    double kap[4], sum = 0;
    for (int i = 0; i < 4; i++) sum += kap[i] = exp(-(1 - cos(th[i])) / 0.04);
    /* κ ≈ 1, 0.3274, 1.2e-7, 2.5e-22: τ = 0.01 keeps experts 0 and 1 */
    int n = ex_select(q, C, 4, 2, &o, idx, w);
    assert_int_equal(n, 2);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    assert_true(fabs(w[0] - kap[0] / (kap[0] + kap[1])) < 1e-6);
    assert_true(fabs(w[0] + w[1] - 1) < 1e-12);
    assert_true(fabs(w[0] - 0.7533552) < 1e-6); /* exp(0)/(exp(0) + exp(-(1 - cos 0.3)/0.04)) */
    /* cap at 1: the largest κ only */
    o.max_experts = 1;
    n = ex_select(q, C, 4, 2, &o, idx, w);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 0);
    assert_true(w[0] == 1.0);
    /* τ above every weight: none kept, the base model */
    ex_select_defaults(&o);
    o.tau = 0.9;
    assert_int_equal(ex_select(q, C, 4, 2, &o, idx, w), 0);
    /* fixed top-3 ignores τ and renormalises κ over the three */
    ex_select_defaults(&o);
    o.top_k = 3;
    n = ex_select(q, C, 4, 2, &o, idx, w);
    assert_int_equal(n, 3);
    assert_int_equal(idx[2], 2);
    assert_true(fabs(w[2] - kap[2] / (kap[0] + kap[1] + kap[2])) < 1e-12);
    /* a larger β spreads the weight: all four above τ */
    ex_select_defaults(&o);
    o.beta = 1.0;
    assert_int_equal(ex_select(q, C, 4, 2, &o, idx, w), 4);
}

static void test_select_nan(void **state) {
    (void)state;
    double th[3] = {0.5, 0.1, 2.0};
    float C[6], q[2] = {1, 0};
    circle(C, th, 3);
    C[4] = NAN; /* expert 2's centroid is corrupt */
    ex_select_opts o;
    ex_select_defaults(&o);
    int idx[3];
    double w[3];
    int n = ex_select(q, C, 3, 2, &o, idx, w);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 1); /* the most similar finite expert */
    assert_true(w[0] == 1.0);
    float qn[2] = {NAN, 0};
    assert_int_equal(ex_select(qn, C, 3, 2, &o, idx, w), 0); /* nothing finite: base */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kmeans_planted),
        cmocka_unit_test(test_kmeans_bad),
        cmocka_unit_test(test_select_rule),
        cmocka_unit_test(test_select_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
