/* test_fastmath.c — fm_expf / fm_logf (util/fastmath.h) against libm in
 * double over their whole useful range, their edge inputs, and a vectorised
 * loop giving the same values as the scalar calls. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "util/fastmath.h"

static void test_exp_accuracy(void **state) {
    (void)state;
    double worst = 0;
    for (double x = -87.0; x < 88.0; x += 0.000731) {
        float xf = (float)x;
        double ref = exp((double)xf), rel = fabs(fm_expf(xf) - ref) / ref;
        if (rel > worst) worst = rel;
    }
    assert_true(worst < 3e-7);
    assert_true(fm_expf(0.0f) == 1.0f);
    /* below the range: tiny and positive, never 0, NaN or a denormal */
    float lo = fm_expf(-INFINITY), lo2 = fm_expf(-1000.0f);
    assert_true(lo > 0 && lo < 2e-38f && isnormal(lo) && lo == lo2);
    assert_true(isfinite(fm_expf(1000.0f)));
}

static void test_log_accuracy(void **state) {
    (void)state;
    double worst = 0;
    for (double x = 1e-37; x < 1e37; x *= 1.000931) {
        float xf = (float)x;
        double ref = log((double)xf), err = fabs(fm_logf(xf) - ref) / fmax(1.0, fabs(ref));
        if (err > worst) worst = err;
    }
    assert_true(worst < 3e-7);
    assert_true(fm_logf(1.0f) == 0.0f);
    assert_true(fabsf(fm_logf(2.0f) - 0.693147181f) < 1e-7f);
}

static void test_vector_loop(void **state) {
    (void)state;
    enum { N = 1000 };
    float x[N], v[N];
    for (int i = 0; i < N; i++) x[i] = -50.0f + 0.1f * (float)i;
#pragma omp simd
    for (int i = 0; i < N; i++) v[i] = fm_logf(fm_expf(x[i]) + 1.0f);
    for (int i = 0; i < N; i++) {
        double ref = log1p(exp((double)x[i]));
        assert_true(fabs(v[i] - ref) <= 1e-6 * fmax(1.0, ref));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_accuracy),
        cmocka_unit_test(test_log_accuracy),
        cmocka_unit_test(test_vector_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
