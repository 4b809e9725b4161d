/* test_sink.c — merge/sink.c: results streamed from several OpenMP threads,
 * in blocks, put or filled into slots, land at their offsets in the output
 * file (bf16 and f32, blocks that do not continue the staged run, a tensor
 * larger than many stages), the first non-finite value of a block is
 * reported, and a tensor counts as written only after merge_sink_end. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/sink.h"
#include "util/dtype.h"
#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-sink-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

static float value(size_t e) { return (float)((e * 2654435761u) % 1000003u) * 1e-3f - 500.0f; }

static void stream(alloy_dtype dt, const char *name) {
    char *dir = fs_join(root, name);
    alloy_err err = {{0}};
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    size_t n = 3000017, block = 1000;
    st_spec s[2] = {{.name = "a", .dtype = dt, .ndim = 1, .shape = {(int64_t)n}},
                    {.name = "b", .dtype = dt, .ndim = 1, .shape = {7}}};
    st_writer *w = st_writer_open(dir, s, 2, 0, &err);
    assert_non_null(w);
    merge_sink *k = merge_sink_new(3);
    assert_non_null(k);
    merge_sink_begin(k, w, 0, dt);
    size_t nb = (n + block - 1) / block;
    int bad = 0;
    /* dynamic schedule: each thread's blocks are far from contiguous */
#pragma omp parallel for num_threads(3) schedule(dynamic, 3) reduction(| : bad)
    for (size_t b = 0; b < nb; b++) {
        float v[1000];
        size_t lo = b * block, m = n - lo < block ? n - lo : block;
        for (size_t j = 0; j < m; j++) v[j] = value(lo + j);
        if (b % 3 == 1) { /* a slot the caller fills itself, between puts */
            assert_int_equal(merge_sink_dtype(k), dt);
            dtype_from_f32(v, dt, merge_sink_slot(k, lo, m), m);
        } else {
            bad |= merge_sink_put(k, lo, v, m) != m;
        }
    }
    assert_int_equal(bad, 0);
    assert_int_equal(merge_sink_end(k, &err), 0);
    /* tensor b is never ended: the writer refuses to finish */
    merge_sink_begin(k, w, 1, dt);
    float v[7] = {1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(merge_sink_put(k, 0, v, 7), 7);
    assert_int_equal(st_writer_finish(w, &err), -1);
    assert_non_null(strstr(err.msg, "'b'"));
    merge_sink_free(k);

    st_model m;
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    const st_tensor *t = st_find(&m, "a");
    assert_non_null(t);
    float *got = malloc(n * sizeof *got);
    assert_non_null(got);
    assert_true(dtype_to_f32(t->data, t->dtype, got, n) < 0);
    for (size_t e = 0; e < n; e++) {
        float want = value(e);
        if (dt == ALLOY_BF16) want = bf16_to_f32(f32_to_bf16(want));
        if (got[e] != want) fail_msg("element %zu: %g, want %g", e, (double)got[e], (double)want);
    }
    free(got);
    st_close(&m);
    free(dir);
}

static void test_bf16(void **state) {
    (void)state;
    stream(ALLOY_BF16, "bf16");
}

static void test_f32(void **state) {
    (void)state;
    stream(ALLOY_F32, "f32");
}

static void test_nonfinite(void **state) {
    (void)state;
    char *dir = fs_join(root, "nan");
    alloy_err err = {{0}};
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    st_spec s[1] = {{.name = "a", .dtype = ALLOY_BF16, .ndim = 1, .shape = {64}}};
    st_writer *w = st_writer_open(dir, s, 1, 0, &err);
    merge_sink *k = merge_sink_new(1);
    assert_true(w && k);
    merge_sink_begin(k, w, 0, ALLOY_BF16);
    float v[32];
    for (int j = 0; j < 32; j++) v[j] = (float)j;
    assert_int_equal(merge_sink_put(k, 0, v, 32), 32);
    v[5] = INFINITY;
    v[9] = NAN;
    assert_int_equal(merge_sink_put(k, 32, v, 32), 5);
    assert_int_equal(merge_sink_end(k, &err), 0);
    merge_sink_free(k);
    st_writer_abort(w);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f32),
        cmocka_unit_test(test_nonfinite),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
