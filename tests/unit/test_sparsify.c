/* test_sparsify.c — sparsify_rank_mask against a brute-force rank on large
 * inputs (the parallel radix-select path), where many keys tie: the result
 * must keep exactly the ranks [lo, hi), ties ordered by index, for any thread
 * count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/sparsify.h"
#include "util/rng.h"

static int by_value_then_index(const void *a, const void *b, void *keys) {
    const float *key = keys;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (key[i] != key[j]) return key[i] < key[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* mask the brute-force way: sort indices by (value, index), keep ranks [lo, hi) */
static void reference(const float *key, size_t n, size_t lo, size_t hi, uint8_t *mask) {
    size_t *idx = malloc(n * sizeof *idx);
    assert_non_null(idx);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    qsort_r(idx, n, sizeof *idx, by_value_then_index, (void *)key);
    memset(mask, 0, n);
    for (size_t r = lo; r < hi && r < n; r++) mask[idx[r]] = 1;
    free(idx);
}

static void check(size_t n, int nvalues, uint64_t seed) {
    float *key = malloc(n * sizeof *key), *scratch = malloc(n * sizeof *scratch);
    uint8_t *got = malloc(n), *want = malloc(n);
    assert_true(key && scratch && got && want);
    for (size_t i = 0; i < n; i++) key[i] = (float)(rng_mix64(seed * 1000003u + i) % (uint64_t)nvalues) * 0.25f - 3.0f;
    size_t bounds[][2] = {{0, n / 3}, {n / 2, n}, {n / 5, n - n / 7}, {n / 3, n / 3 + 1}, {0, n}, {7, 7}};
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        reference(key, n, bounds[b][0], bounds[b][1], want);
        for (int threads = 1; threads <= 3; threads++) {
            sparsify_rank_mask(key, n, bounds[b][0], bounds[b][1], scratch, got, threads);
            size_t kept = 0;
            for (size_t i = 0; i < n; i++) kept += got[i];
            assert_int_equal(kept, bounds[b][1] - bounds[b][0]);
            assert_memory_equal(got, want, n);
        }
    }
    free(key), free(scratch), free(got), free(want);
}

static void test_many_ties(void **state) {
    (void)state;
    check(300000, 7, 1);  /* every chunk full of ties at the cut values */
    check(200003, 2, 2);  /* two values: the cut falls inside one huge tie */
}

static void test_few_ties(void **state) {
    (void)state;
    check(250000, 1 << 20, 3);
}

static void test_small_path(void **state) {
    (void)state;
    check(5000, 5, 4); /* below the radix threshold: quickselect */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_ties),
        cmocka_unit_test(test_few_ties),
        cmocka_unit_test(test_small_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
