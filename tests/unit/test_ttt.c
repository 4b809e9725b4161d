/* test_ttt.c — the pure part of the TTT baseline (src/experts/ttt.c):
 * nearest-neighbour retrieval ex_nearest against a brute-force full sort
 * (random unit vectors, every k), hand-made cases for ties (lower index
 * first), NaN rows (ranked last), k > n (clamped) and k < 1 (none), and the
 * defaults of ex_ttt_defaults. The training loop runs end to end in
 * tests/ref/test_ttmm.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "experts/experts.h"
#include "util/rng.h"

static void unit_rows(float *X, int n, int d, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        double nn = 0;
        for (int j = 0; j < d; j++) {
            double v = rng_uniform(seed, (uint64_t)i, (uint64_t)j) - 0.5;
            X[(size_t)i * d + j] = (float)v;
            nn += v * v;
        }
        for (int j = 0; j < d; j++) X[(size_t)i * d + j] /= (float)sqrt(nn);
    }
}

/* brute force: similarity of row i, then a full selection sort */
static void brute(const float *X, int n, int d, const float *q, int *order, double *s) {
    for (int i = 0; i < n; i++) {
        s[i] = 0;
        for (int j = 0; j < d; j++) s[i] += (double)X[(size_t)i * d + j] * q[j];
        order[i] = i;
    }
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            if (s[order[b]] > s[order[a]] || (s[order[b]] == s[order[a]] && order[b] < order[a])) {
                int t = order[a];
                order[a] = order[b];
                order[b] = t;
            }
}

static void test_nearest_matches_sort(void **state) {
    (void)state;
    enum { N = 57, D = 12 };
    float X[N * D], q[D], sim[N];
    int idx[N], order[N];
    double s[N];
    unit_rows(X, N, D, 3);
    unit_rows(q, 1, D, 99);
    brute(X, N, D, q, order, s);
    for (int k = 1; k <= N; k++) {
        int got = ex_nearest(X, N, D, q, k, idx, sim);
        assert_int_equal(got, k);
        for (int i = 0; i < k; i++) {
            assert_int_equal(idx[i], order[i]);
            assert_true(fabs((double)sim[i] - s[order[i]]) < 1e-6);
        }
    }
}

static void test_nearest_ties_and_nan(void **state) {
    (void)state;
    /* rows: 0 = e1, 1 = e2, 2 = e1 (tie with 0), 3 = NaN, 4 = -e1 */
    float X[5 * 2] = {1, 0, 0, 1, 1, 0, NAN, 0, -1, 0};
    float q[2] = {1, 0}, sim[5];
    int idx[5];
    assert_int_equal(ex_nearest(X, 5, 2, q, 5, idx, sim), 5);
    int want[5] = {0, 2, 1, 4, 3};
    for (int i = 0; i < 5; i++) assert_int_equal(idx[i], want[i]);
    assert_true(sim[0] == 1.0f && sim[1] == 1.0f && sim[2] == 0.0f && sim[3] == -1.0f);
    assert_true(isinf(sim[4]) && sim[4] < 0);
    /* k = 1 keeps the earlier of the tied rows */
    assert_int_equal(ex_nearest(X, 5, 2, q, 1, idx, sim), 1);
    assert_int_equal(idx[0], 0);
    /* k = 2 stops before the NaN row and the others */
    assert_int_equal(ex_nearest(X, 5, 2, q, 2, idx, sim), 2);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 2);
}

static void test_nearest_clamps(void **state) {
    (void)state;
    float X[3 * 2] = {0, 1, 1, 0, 0.6f, 0.8f}, q[2] = {0, 1}, sim[8];
    int idx[8];
    assert_int_equal(ex_nearest(X, 3, 2, q, 8, idx, sim), 3); /* k > n: all of them */
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 2);
    assert_int_equal(idx[2], 1);
    assert_int_equal(ex_nearest(X, 3, 2, q, 0, idx, sim), 0);
    assert_int_equal(ex_nearest(X, 3, 2, q, -4, idx, sim), 0);
    assert_int_equal(ex_nearest(X, 0, 2, q, 3, idx, sim), 0);
}

static void test_defaults(void **state) {
    (void)state;
    ex_ttt_opts o;
    memset(&o, 0x5a, sizeof o);
    ex_ttt_defaults(&o);
    assert_int_equal(o.neighbors, 50);
    assert_int_equal(o.steps_per_neighbor, 1);
    assert_int_equal(o.lora_rank, 8);
    assert_true(o.lora_alpha == 0.0f);
    assert_true(fabsf(o.lr - 2e-4f) < 1e-9f);
    assert_int_equal(o.train_ctx, 512);
    assert_int_equal(o.doc_tokens, EX_DOC_TOKENS);
    assert_int_equal(o.query_tokens, EX_QUERY_TOKENS);
    assert_false(o.nearest_last);
    assert_null(o.base_dir);
    assert_null(o.embed_dir);
}

static void test_open_rejects_bad_options(void **state) {
    (void)state;
    ex_ttt_opts o;
    ex_ttt_defaults(&o);
    o.base_dir = "/nonexistent-base";
    o.corpus = "/nonexistent-corpus";
    struct lm *m = (struct lm *)&o; /* must be reset to NULL */
    alloy_err err;
    o.neighbors = 0;
    assert_int_equal(ex_ttt_open(&m, &o, &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "--neighbors"));
    o.neighbors = 5;
    o.steps_per_neighbor = -1;
    assert_int_equal(ex_ttt_open(&m, &o, &err), -1);
    assert_non_null(strstr(err.msg, "--steps-per-neighbor"));
    o.steps_per_neighbor = 1;
    assert_int_equal(ex_ttt_open(&m, &o, &err), -1); /* the corpus does not exist */
    assert_non_null(strstr(err.msg, "/nonexistent-corpus"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nearest_matches_sort),
        cmocka_unit_test(test_nearest_ties_and_nan),
        cmocka_unit_test(test_nearest_clamps),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_open_rejects_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
