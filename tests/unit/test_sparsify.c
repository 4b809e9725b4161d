/* test_sparsify.c — sparsify_rank_mask against a brute-force rank on large
 * inputs (the parallel radix-select path), where many keys tie: the result
 * must keep exactly the ranks [lo, hi), ties ordered by index, for any thread
 * count. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
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

/* della's mask against a brute-force rank per row (qsort by |delta| then
 * index) and the same draw, 2-D and 1-D, on four kinds of rows: nine
 * values (ties everywhere: rows too tied for the bucket bounds, sorted),
 * continuous magnitudes with a third exactly zero (the bucket bounds, the
 * zeros' running rank and the exact rank of the few left), one value
 * (every element ties) and all zero. */
enum { DELLA_TIED, DELLA_SPREAD, DELLA_ONE_VALUE, DELLA_ZERO };
typedef struct {
    float a;
    size_t j;
} rank_item;

static int by_mag(const void *pa, const void *pb) {
    const rank_item *a = pa, *b = pb;
    if (a->a != b->a) return a->a < b->a ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

static void della_check(int ndim, const int64_t *shape, size_t n, int kind) {
    float *x = malloc(n * sizeof *x), *base = malloc(n * sizeof *base);
    uint8_t *got = malloc(n), *want = malloc(n);
    assert_true(x && base && got && want);
    for (size_t e = 0; e < n; e++) {
        base[e] = (float)(rng_mix64(e) % 7) * 0.125f;
        switch (kind) {
        case DELLA_TIED: /* 9 values: many ties */
            x[e] = base[e] + (float)((int)(rng_mix64(e + 99) % 9) - 4) * 0.0625f;
            break;
        case DELLA_SPREAD: { /* |delta| over five decades, a third exactly 0 */
            double u = rng_uniform(5, 0, e), v = rng_uniform(5, 1, e);
            x[e] = v < 1.0 / 3 ? base[e] : base[e] + (float)((u - 0.5) * pow(10.0, -5.0 * v));
            break;
        }
        case DELLA_ONE_VALUE:
            x[e] = base[e] + 0.25f;
            break;
        default:
            x[e] = base[e];
        }
    }
    sparsify_args a = {.kind = SPARSIFY_DELLA, .density = 0.5, .epsilon = 0.3, .seed = 1234, .stream = 2};
    alloy_err err;
    assert_int_equal(sparsify_mask(&a, x, base, ndim, shape, n, NULL, NULL, got, 2, "t", &err), 0);
    size_t rows = ndim >= 2 ? (size_t)shape[0] : 1, len = n / rows;
    rank_item *it = malloc(len * sizeof *it);
    uint64_t key = rng_stream_key(a.seed, a.stream);
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < len; j++) it[j] = (rank_item){fabsf(x[r * len + j] - base[r * len + j]), j};
        qsort(it, len, sizeof *it, by_mag);
        for (size_t k = 0; k < len; k++) {
            size_t e = r * len + it[k].j;
            float p = (float)(a.density - a.epsilon) + (len > 1 ? (float)k / (float)(len - 1) : 0.5f) *
                                                            (float)(2.0 * a.epsilon);
            want[e] = rng_uniform_at(key, e) < (double)p;
        }
    }
    assert_memory_equal(got, want, n);
    free(it), free(x), free(base), free(got), free(want);
}

/* DARE's mask: the documented draw (rng_keep32), for any thread count, and
 * statistically a Bernoulli(density) sequence: the kept fraction, the
 * fraction of neighbours both kept, of elements kept in two models, and of
 * an element kept across a 2^32 index boundary stream all within 5 standard
 * deviations of independence. */
static void test_random_mask(void **state) {
    (void)state;
    size_t n = 1 << 20;
    uint8_t *m1 = malloc(n), *m2 = malloc(n), *m3 = malloc(n);
    float *x = calloc(n, sizeof *x), *base = calloc(n, sizeof *base);
    assert_true(m1 && m2 && m3 && x && base);
    alloy_err err;
    double p = 0.3;
    sparsify_args a = {.kind = SPARSIFY_RANDOM, .density = p, .seed = 7, .stream = 0};
    assert_int_equal(sparsify_mask(&a, x, base, 1, (int64_t[]){(int64_t)n}, n, NULL, NULL, m1, 2, "t", &err), 0);
    assert_int_equal(sparsify_mask(&a, x, base, 1, (int64_t[]){(int64_t)n}, n, NULL, NULL, m3, 1, "t", &err), 0);
    assert_memory_equal(m1, m3, n);
    a.stream = 1;
    assert_int_equal(sparsify_mask(&a, x, base, 1, (int64_t[]){(int64_t)n}, n, NULL, NULL, m2, 2, "t", &err), 0);
    uint64_t key = rng_stream_key(7, 0), key_hi = rng_stream_key(7, 0);
    uint32_t thr = rng_thr32(p);
    size_t kept = 0, pairs = 0, both = 0, far = 0;
    for (size_t e = 0; e < n; e++) {
        assert_int_equal(m1[e], rng_keep32(key, e, thr));
        kept += m1[e];
        pairs += e + 1 < n && m1[e] && m1[e + 1];
        both += m1[e] && m2[e];
        far += rng_keep32(key_hi, ((uint64_t)1 << 32) + e, thr) && m1[e];
    }
    double sd1 = sqrt((double)n * p * (1 - p)), q = p * p, sd2 = sqrt((double)n * q * (1 - q));
    assert_true(fabs((double)kept - p * (double)n) < 5 * sd1);
    assert_true(fabs((double)pairs - q * (double)n) < 5 * sd2);
    assert_true(fabs((double)both - q * (double)n) < 5 * sd2);
    assert_true(fabs((double)far - q * (double)n) < 5 * sd2);
    /* thresholds: probability 0 keeps nothing, 1/2 exactly half the range */
    assert_int_equal(rng_thr32(0.0), 0);
    assert_int_equal(rng_thr32(0.5), 1u << 31);
    assert_int_equal(rng_thr32(1.0), UINT32_MAX);
    free(m1), free(m2), free(m3), free(x), free(base);
}

static void test_della_ranks(void **state) {
    (void)state;
    int64_t s2[2] = {37, 1001}, s1[1] = {5000}, s3[2] = {64, 896};
    for (int kind = DELLA_TIED; kind <= DELLA_ZERO; kind++) {
        della_check(2, s2, 37 * 1001, kind);
        della_check(1, s1, 5000, kind);
        della_check(2, s3, 64 * 896, kind);
    }
}

typedef struct mag_arrays {
    const float *x, *base;
} mag_arrays;

static bool mag_of(const void *p, size_t lo, size_t m, float *a) {
    const mag_arrays *c = p;
    for (size_t j = 0; j < m; j++) a[j] = fabsf(c->x[lo + j] - c->base[lo + j]);
    return false;
}

/* The streamed bit mask equals the byte mask, for rows whose length is not
 * a multiple of 8 (threads take groups of rows starting on whole bytes),
 * for strided rows (axis 1 of a 3-D tensor) and for a 1-D tensor. */
static void test_della_bits(void **state) {
    (void)state;
    const int64_t shapes[3][3] = {{307, 13, 0}, {5, 13, 7}, {1000, 0, 0}};
    const int ndims[3] = {2, 3, 1};
    for (int sh = 0; sh < 3; sh++) {
        size_t n = 1;
        for (int d = 0; d < ndims[sh]; d++) n *= (size_t)shapes[sh][d];
        float *x = malloc(n * 4), *base = malloc(n * 4), *key = malloc(n * 4), *scratch = malloc(n * 4);
        uint8_t *mask = malloc(n), *bits = calloc(n / 8 + 1, 1);
        for (size_t e = 0; e < n; e++) {
            base[e] = (float)rng_uniform(9, 1, e) - 0.5f;
            x[e] = base[e] + 0.01f * ((float)rng_uniform(9, 2, e) - 0.5f);
        }
        sparsify_args a = {.kind = SPARSIFY_DELLA, .density = 0.5, .epsilon = 0.3, .seed = 4, .stream = 1};
        alloy_err err;
        assert_int_equal(sparsify_mask(&a, x, base, ndims[sh], shapes[sh], n, key, scratch, mask, 2, "t", &err), 0);
        mag_arrays mc = {x, base};
        for (int threads = 1; threads <= 2; threads++) {
            memset(bits, 0, n / 8 + 1);
            assert_int_equal(sparsify_della_bits(&a, mag_of, &mc, ndims[sh], shapes[sh], n, bits, threads, "t", &err), 0);
            size_t kept = 0;
            for (size_t e = 0; e < n; e++) {
                assert_int_equal((bits[e / 8] >> (e % 8)) & 1, mask[e]);
                kept += mask[e];
            }
            assert_true(kept > n / 4 && kept < 3 * n / 4);
        }
        free(x), free(base), free(key), free(scratch), free(mask), free(bits);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_ties),
        cmocka_unit_test(test_few_ties),
        cmocka_unit_test(test_small_path),
        cmocka_unit_test(test_random_mask),
        cmocka_unit_test(test_della_ranks),
        cmocka_unit_test(test_della_bits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
