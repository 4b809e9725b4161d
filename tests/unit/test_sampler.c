/* test_sampler.c — model/sampler.c: greedy ties, each filter's survivors,
 * sampled frequencies against the filtered distribution, reproducibility. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model/sampler.h"

#define V 5
/* probabilities 0.4, 0.3, 0.15, 0.1, 0.05 */
static void logits5(float *l) {
    const double p[V] = {0.4, 0.3, 0.15, 0.1, 0.05};
    for (int i = 0; i < V; i++) l[i] = (float)log(p[i]) + 3.0f;
}

/* Frequencies of N draws. */
static void draw(sampler_params p, const float *l, double *freq, int N) {
    sampler s;
    alloy_err err;
    assert_int_equal(sampler_init(&s, V, &p, &err), 0);
    for (int i = 0; i < V; i++) freq[i] = 0;
    for (int i = 0; i < N; i++) {
        int32_t t = sampler_sample(&s, l);
        assert_true(t >= 0 && t < V);
        freq[t] += 1.0 / N;
    }
    sampler_free(&s);
}

static void test_greedy(void **state) {
    (void)state;
    float l[V] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    double f[V];
    draw((sampler_params){0, 0, 1, 0, 1}, l, f, 50);
    assert_true(f[1] > 0.9999); /* tie between 1 and 3: the lower id */
    draw((sampler_params){5.0f, 1, 1, 0, 1}, l, f, 50); /* top-k 1 is greedy */
    assert_true(f[1] > 0.9999);
}

static void test_frequencies(void **state) {
    (void)state;
    float l[V];
    logits5(l);
    double f[V];
    const int N = 40000;
    draw((sampler_params){1, 0, 1, 0, 7}, l, f, N);
    const double all[V] = {0.4, 0.3, 0.15, 0.1, 0.05};
    for (int i = 0; i < V; i++) assert_true(fabs(f[i] - all[i]) < 0.015);
    /* top-k 2: 0.4 / 0.7, 0.3 / 0.7 */
    draw((sampler_params){1, 2, 1, 0, 7}, l, f, N);
    assert_true(fabs(f[0] - 4.0 / 7) < 0.015 && fabs(f[1] - 3.0 / 7) < 0.015 && f[2] == 0 && f[4] == 0);
    /* top-p 0.8: 0.4 + 0.3 < 0.8, so 0.15 joins (0.85) */
    draw((sampler_params){1, 0, 0.8f, 0, 7}, l, f, N);
    assert_true(f[2] > 0.1 && f[3] == 0 && f[4] == 0);
    assert_true(fabs(f[0] - 0.4 / 0.85) < 0.015);
    /* min-p 0.3: keep p >= 0.12 -> tokens 0, 1, 2 */
    draw((sampler_params){1, 0, 1, 0.3f, 7}, l, f, N);
    assert_true(f[2] > 0.1 && f[3] == 0 && f[4] == 0);
    /* temperature 0.5 squares the probabilities: 0.16 : 0.09 : ... */
    draw((sampler_params){0.5f, 0, 1, 0, 7}, l, f, N);
    double z = 0.16 + 0.09 + 0.0225 + 0.01 + 0.0025;
    assert_true(fabs(f[0] - 0.16 / z) < 0.015 && fabs(f[4] - 0.0025 / z) < 0.005);
}

static void test_reproducible(void **state) {
    (void)state;
    float l[V];
    logits5(l);
    sampler a, b, c;
    alloy_err err;
    sampler_params p = {1, 0, 1, 0, 42}, q = {1, 0, 1, 0, 43};
    assert_int_equal(sampler_init(&a, V, &p, &err), 0);
    assert_int_equal(sampler_init(&b, V, &p, &err), 0);
    assert_int_equal(sampler_init(&c, V, &q, &err), 0);
    int same = 1, differ = 0;
    for (int i = 0; i < 200; i++) {
        int32_t x = sampler_sample(&a, l), y = sampler_sample(&b, l), z = sampler_sample(&c, l);
        same &= x == y;
        differ |= x != z;
    }
    assert_true(same && differ);
    sampler_free(&a);
    sampler_free(&b);
    sampler_free(&c);
}

static void test_bad_params(void **state) {
    (void)state;
    sampler s;
    alloy_err err;
    assert_int_equal(sampler_init(&s, V, &(sampler_params){1, 0, 0, 0, 0}, &err), -1);
    assert_non_null(strstr(err.msg, "top-p"));
    assert_int_equal(sampler_init(&s, V, &(sampler_params){NAN, 0, 1, 0, 0}, &err), -1);
    assert_int_equal(sampler_init(&s, V, &(sampler_params){1, 0, 1, 2, 0}, &err), -1);
    assert_non_null(strstr(err.msg, "min-p"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
