/* test_drm.c — properties of the SVD merge family (drm, knots, tsv) called
 * directly through their merge_method objects: one task at density 1 gives
 * that task back, identical tasks give the same model, the TIES fallback on
 * a hand-worked example, the top-k trim's tie rule, and errors. The numeric
 * comparison against PyTorch is tests/ref/test_drm.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/svd_methods.h"
#include "util/rng.h"

#define MAXK 4
#define M 6
#define N 5

typedef struct fixture {
    float base[M * N];
    float x[MAXK][M * N];
    const float *xp[MAXK];
    double g[8], mp[MAXK * 8];
    int64_t shape[2];
} fixture;

/* A call with all parameters at their table defaults; tests override them. */
static merge_call make_call(fixture *f, const merge_method *mm, const char *name, int ndim, int64_t m, int64_t n,
                            int k) {
    f->shape[0] = m, f->shape[1] = n;
    for (int j = 0; j < mm->nparams; j++) {
        f->g[j] = mm->params[j].dflt;
        for (int i = 0; i < k; i++) f->mp[i * mm->nparams + j] = mm->params[j].dflt;
    }
    for (int i = 0; i < k; i++) f->xp[i] = f->x[i];
    merge_call c = {.tensor_name = name, .ndim = ndim, .shape = f->shape, .n = (size_t)(m * (ndim == 2 ? n : 1)),
                    .base = f->base, .k = k, .x = f->xp, .gparam = f->g, .mparam = f->mp, .nparams = mm->nparams,
                    .seed = 42, .threads = 2};
    return c;
}

static int param_index(const merge_method *mm, const char *name) {
    for (int j = 0; j < mm->nparams; j++)
        if (!strcmp(mm->params[j].name, name)) return j;
    fail_msg("no parameter %s in %s", name, mm->name);
    return -1;
}

static void fill_base(fixture *f, uint64_t seed) {
    for (int e = 0; e < M * N; e++) f->base[e] = (float)(rng_uniform(seed, 1, (uint64_t)e) - 0.5);
}

/* x = base + a rank-2 delta (so DRM's 1e-2 null-space cut removes nothing). */
static void fill_task(fixture *f, int i, uint64_t seed) {
    double a[2][M], b[2][N];
    for (int t = 0; t < 2; t++) {
        for (int r = 0; r < M; r++) a[t][r] = rng_uniform(seed, 10 + t, (uint64_t)r) - 0.5;
        for (int c = 0; c < N; c++) b[t][c] = rng_uniform(seed, 20 + t, (uint64_t)c) - 0.5;
    }
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f->x[i][r * N + c] = f->base[r * N + c] + (float)(0.1 * (a[0][r] * b[0][c] + 0.5 * a[1][r] * b[1][c]));
}

/* x = base + a dense full-rank delta. */
static void fill_task_dense(fixture *f, int i, uint64_t seed) {
    for (int e = 0; e < M * N; e++) f->x[i][e] = f->base[e] + (float)(0.05 * (rng_uniform(seed, 30, (uint64_t)e) - 0.5));
}

static void assert_close(const float *a, const float *b, size_t n, double tol) {
    double worst = 0;
    for (size_t e = 0; e < n; e++) worst = fmax(worst, fabs((double)a[e] - (double)b[e]));
    if (worst > tol) fail_msg("max |diff| %.3e > %.1e", worst, tol);
}

static void test_drm_one_task_density1(void **state) {
    (void)state;
    fixture f;
    float out[M * N];
    alloy_err err;
    fill_base(&f, 1);
    fill_task(&f, 0, 2);
    for (int dir = 0; dir < 2; dir++)
        for (int cap = 0; cap < 2; cap++) { /* cap 0: the density-1 bypass; cap 5: the joint SVD path */
            merge_call c = make_call(&f, &merge_drm, "model.layers.0.mlp.up_proj.weight", 2, M, N, 1);
            f.g[param_index(&merge_drm, "density")] = 1.0;
            f.g[param_index(&merge_drm, "direction")] = dir;
            f.g[param_index(&merge_drm, "rank")] = cap ? 5 : 0;
            assert_int_equal(merge_drm.merge(&c, out, &err), 0);
            assert_close(out, f.x[0], M * N, 1e-6);
        }
}

static void test_drm_identical_tasks(void **state) {
    (void)state;
    fixture f;
    float out[M * N];
    alloy_err err;
    fill_base(&f, 3);
    fill_task(&f, 0, 4);
    memcpy(f.x[1], f.x[0], sizeof f.x[0]);
    memcpy(f.x[2], f.x[0], sizeof f.x[0]);
    for (int dir = 0; dir < 2; dir++)
        for (int cap = 0; cap < 2; cap++) {
            merge_call c = make_call(&f, &merge_drm, "model.layers.0.self_attn.q_proj.weight", 2, M, N, 3);
            f.g[param_index(&merge_drm, "density")] = 1.0;
            f.g[param_index(&merge_drm, "direction")] = dir;
            f.g[param_index(&merge_drm, "rank")] = cap ? 5 : 0;
            assert_int_equal(merge_drm.merge(&c, out, &err), 0);
            assert_close(out, f.x[0], M * N, 1e-6);
        }
}

/* Trimming changes the result, lambda scales the update linearly. */
static void test_drm_density_and_lambda(void **state) {
    (void)state;
    fixture f;
    float o1[M * N], o2[M * N], full[M * N];
    alloy_err err;
    fill_base(&f, 5);
    fill_task_dense(&f, 0, 6);
    fill_task_dense(&f, 1, 7);
    merge_call c = make_call(&f, &merge_drm, "model.layers.1.mlp.down_proj.weight", 2, M, N, 2);
    int pd = param_index(&merge_drm, "density"), pl = param_index(&merge_drm, "lambda");
    f.g[pd] = 0.3;
    assert_int_equal(merge_drm.merge(&c, o1, &err), 0);
    f.g[pl] = 2.0;
    assert_int_equal(merge_drm.merge(&c, o2, &err), 0);
    double diff = 0;
    for (int e = 0; e < M * N; e++) {
        assert_true(fabs((o2[e] - f.base[e]) - 2 * (o1[e] - f.base[e])) < 1e-6);
        diff += fabs(o1[e] - f.base[e]);
    }
    assert_true(diff > 0); /* a non-trivial merge */
    f.g[pl] = 1.0, f.g[pd] = 1.0;
    assert_int_equal(merge_drm.merge(&c, full, &err), 0);
    double moved = 0;
    for (int e = 0; e < M * N; e++) moved += fabs(full[e] - o1[e]);
    assert_true(moved > 1e-4);
}

/* TIES fallback, worked by hand (see the comment in the body). */
static void test_drm_fallback_ties(void **state) {
    (void)state;
    fixture f;
    float out[4];
    alloy_err err;
    for (int e = 0; e < 4; e++) f.base[e] = 10.0f;
    float d1[4] = {3, -1, 0.5f, -2}, d2[4] = {1, -4, -0.5f, 1};
    for (int e = 0; e < 4; e++) f.x[0][e] = 10 + d1[e], f.x[1][e] = 10 + d2[e];
    merge_call c = make_call(&f, &merge_drm, "model.layers.0.self_attn.q_proj.bias", 1, 4, 1, 2);
    f.g[param_index(&merge_drm, "density")] = 0.5;
    f.mp[1 * merge_drm.nparams + param_index(&merge_drm, "weight")] = 0.5;
    /* keep 2 per task: d1 -> [3, 0, 0, -2]; d2 -> [1, -4, 0, 0] (|1| tie: lower index);
     * mass [4, -4, 0, -2]; entry 2 has no mass -> majority sign, nothing to keep;
     * weighted disjoint mean: (3 + 0.5*1)/2, -4*0.5, 0, -2 */
    assert_int_equal(merge_drm.merge(&c, out, &err), 0);
    float want[4] = {11.75f, 8.0f, 10.0f, 8.0f};
    assert_close(out, want, 4, 1e-6);
}

static void test_knots_tsv_one_task(void **state) {
    (void)state;
    fixture f;
    float out[M * N];
    alloy_err err;
    fill_base(&f, 8);
    fill_task_dense(&f, 0, 9);
    merge_call c = make_call(&f, &merge_knots, "model.layers.0.mlp.gate_proj.weight", 2, M, N, 1);
    f.mp[param_index(&merge_knots, "density")] = 1.0;
    assert_int_equal(merge_knots.merge(&c, out, &err), 0);
    assert_close(out, f.x[0], M * N, 1e-6);
    c = make_call(&f, &merge_tsv, "model.layers.0.mlp.gate_proj.weight", 2, M, N, 1);
    assert_int_equal(merge_tsv.merge(&c, out, &err), 0);
    assert_close(out, f.x[0], M * N, 1e-6);
    /* identical tasks with KnOTS: the coordinates agree, the disjoint mean is the task */
    fill_task_dense(&f, 1, 9);
    c = make_call(&f, &merge_knots, "model.layers.0.mlp.gate_proj.weight", 2, M, N, 2);
    f.mp[param_index(&merge_knots, "density")] = 1.0;
    f.mp[merge_knots.nparams + param_index(&merge_knots, "density")] = 1.0;
    assert_int_equal(merge_knots.merge(&c, out, &err), 0);
    assert_close(out, f.x[0], M * N, 1e-6);
}

static void test_zero_delta_and_errors(void **state) {
    (void)state;
    fixture f;
    float out[M * N];
    alloy_err err;
    fill_base(&f, 10);
    memcpy(f.x[0], f.base, sizeof f.base);
    memcpy(f.x[1], f.base, sizeof f.base);
    const merge_method *ms[3] = {&merge_drm, &merge_knots, &merge_tsv};
    for (int t = 0; t < 3; t++) {
        merge_call c = make_call(&f, ms[t], "model.layers.0.mlp.up_proj.weight", 2, M, N, 2);
        assert_int_equal(ms[t]->merge(&c, out, &err), 0);
        assert_close(out, f.base, M * N, 0);
        c.base = NULL;
        assert_int_equal(ms[t]->merge(&c, out, &err), -1);
        assert_non_null(strstr(err.msg, "up_proj"));
    }
}

static void test_keep_topk_ties(void **state) {
    (void)state;
    double v[6] = {1, -3, 2, -2, 0.5, 2}, scratch[6];
    svdm_keep_topk(v, 6, 3, scratch); /* -3, then two of the three |2|: indices 2 and 3 */
    double want[6] = {0, -3, 2, -2, 0, 0};
    for (int e = 0; e < 6; e++) assert_true(v[e] == want[e]);
    assert_int_equal(svdm_keep_count(0.2, 10), 2);
    assert_int_equal(svdm_keep_count(0.0, 10), 1);
    assert_int_equal(svdm_keep_count(1.0, 10), 10);
    assert_true(svdm_is_embedding("model.embed_tokens.weight"));
    assert_true(svdm_is_embedding("lm_head.weight"));
    assert_false(svdm_is_embedding("model.layers.0.mlp.up_proj.weight"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drm_one_task_density1), cmocka_unit_test(test_drm_identical_tasks),
        cmocka_unit_test(test_drm_density_and_lambda), cmocka_unit_test(test_drm_fallback_ties),
        cmocka_unit_test(test_knots_tsv_one_task),     cmocka_unit_test(test_zero_delta_and_errors),
        cmocka_unit_test(test_keep_topk_ties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
