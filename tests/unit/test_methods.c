/* test_methods.c — the merge methods (src/merge/, one file per family) on small hand-computed
 * inputs, the sparsifiers, reproducibility of the random methods across
 * thread counts, and the registry (lookup, suggestions). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge/method.h"
#include "merge/sparsify.h"
#include "merge/vec.h"
#include "util/rng.h"

#define MAXK 8
#define MAXP 8

/* A call under construction: defaults from the method's table, then overrides. */
typedef struct tcall {
    const merge_method *m;
    double g[MAXP];
    double mp[MAXK * MAXP];
    int64_t shape[2];
    merge_call c;
} tcall;

static void tc_init(tcall *t, const char *method, const float *base, const float *const *x, int k, size_t n) {
    memset(t, 0, sizeof *t);
    t->m = merge_method_find(method);
    assert_non_null(t->m);
    assert_true(t->m->nparams <= MAXP && k <= MAXK);
    for (int q = 0; q < t->m->nparams; q++) {
        t->g[q] = t->m->params[q].dflt;
        for (int i = 0; i < k; i++) t->mp[i * t->m->nparams + q] = t->m->params[q].dflt;
    }
    t->shape[0] = (int64_t)n;
    t->c = (merge_call){.tensor_name = "test.weight", .ndim = 1, .shape = t->shape, .n = n, .base = base, .k = k,
                        .x = x, .gparam = t->g, .mparam = t->mp, .nparams = t->m->nparams, .seed = 42, .threads = 1};
}

static void tc_shape2(tcall *t, int64_t r, int64_t c) {
    t->shape[0] = r, t->shape[1] = c;
    t->c.ndim = 2;
}

/* Set parameter `name` (model -1: every model, or the global). */
static void tc_set(tcall *t, const char *name, int model, double v) {
    for (int q = 0; q < t->m->nparams; q++) {
        if (strcmp(t->m->params[q].name, name)) continue;
        if (!t->m->params[q].per_model) {
            t->g[q] = v;
        } else {
            for (int i = 0; i < t->c.k; i++)
                if (model < 0 || model == i) t->mp[i * t->m->nparams + q] = v;
        }
        return;
    }
    fail_msg("method %s has no parameter %s", t->m->name, name);
}

static int tc_run(tcall *t, float *out, alloy_err *err) { return t->m->merge(&t->c, out, err); }

static void expect_near(const float *got, const float *want, size_t n, double tol) {
    for (size_t i = 0; i < n; i++)
        if (fabs((double)got[i] - want[i]) > tol) fail_msg("element %zu: got %.9g, want %.9g", i, got[i], want[i]);
}

/* ---- registry ---- */

static void test_registry(void **state) {
    (void)state;
    const char *names[] = {"linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties",
                           "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
                           "model_stock", "sce", "nearswap", "passthrough"};
    int n = 0;
    const merge_method *const *all = merge_method_all();
    for (const merge_method *const *m = all; *m; m++, n++)
        for (const merge_method *const *o = all; o < m; o++) assert_string_not_equal((*o)->name, (*m)->name);
    assert_true(n >= 17); /* the mergekit methods, plus any others registered */
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const merge_method *m = merge_method_find(names[i]);
        assert_non_null(m);
        assert_string_equal(m->name, names[i]);
        assert_non_null(m->merge);
        for (int q = 0; q < m->nparams; q++) assert_true(m->params[q].lo <= m->params[q].hi);
    }
    assert_null(merge_method_find("nope"));
    assert_null(merge_method_find(NULL));
    assert_string_equal(merge_method_suggest("tise"), "ties");
    assert_string_equal(merge_method_suggest("lineer"), "linear");
    assert_string_equal(merge_method_suggest("dare-ties"), "dare_ties");
    assert_string_equal(merge_method_suggest("model_stok"), "model_stock");
    assert_null(merge_method_suggest("completely_different"));
    /* table facts mergekit users rely on */
    const merge_method *t = merge_method_find("ties");
    assert_int_equal(t->base, BASE_REQUIRED);
    int has_norm = 0;
    for (int q = 0; q < t->nparams; q++)
        if (!strcmp(t->params[q].name, "normalize")) has_norm = 1, assert_true(t->params[q].dflt == 1.0);
    assert_true(has_norm);
    assert_int_equal(merge_method_find("breadcrumbs")->nparams, 7);
    assert_int_equal(merge_method_find("dare_ties")->nparams, 6);
    assert_int_equal(merge_method_find("linear")->base, BASE_NONE);
    assert_int_equal(merge_method_find("nuslerp")->max_models, 2);
}

/* ---- linear, passthrough, nearswap ---- */

static void test_linear(void **state) {
    (void)state;
    float a[] = {1, 2}, b[] = {3, 4}, out[2];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "linear", NULL, x, 2, 2);
    tc_set(&t, "weight", 0, 1.0);
    tc_set(&t, "weight", 1, 3.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){2.5f, 3.5f}, 2, 1e-6);
    tc_set(&t, "normalize", -1, 0.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){10, 14}, 2, 1e-6);
    tc_set(&t, "normalize", -1, 1.0);
    tc_set(&t, "weight", 1, -1.0);
    assert_int_equal(tc_run(&t, out, &err), -1);
    assert_non_null(strstr(err.msg, "test.weight"));
}

static void test_passthrough_nearswap(void **state) {
    (void)state;
    float a[] = {1, -2, 0.5f}, out[3];
    const float *x[] = {a};
    tcall t;
    alloy_err err;
    tc_init(&t, "passthrough", NULL, x, 1, 3);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, a, 3, 0);
    tc_set(&t, "scale", 0, 2.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){2, -4, 1}, 3, 0);

    float base[] = {0, 0, 0}, m[] = {0.001f, 0.1f, -0.002f};
    const float *xm[] = {m};
    tc_init(&t, "nearswap", base, xm, 1, 3);
    tc_set(&t, "t", -1, 0.01);
    assert_int_equal(tc_run(&t, out, &err), 0);
    /* w = clamp(t/|a-b|, 0, 1) = {1, 0.1, 1} */
    expect_near(out, (float[]){0.001f, 0.01f, -0.002f}, 3, 1e-8);
}

/* ---- slerp family ---- */

static void test_slerp(void **state) {
    (void)state;
    float base[] = {1, 0, 0}, o[] = {0, 1, 0}, out[3];
    const float *x[] = {o};
    tcall t;
    alloy_err err;
    tc_init(&t, "slerp", base, x, 1, 3);
    tc_set(&t, "t", -1, 0.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, base, 3, 1e-7);
    tc_set(&t, "t", -1, 1.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, o, 3, 1e-7);
    tc_set(&t, "t", -1, 0.5);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){(float)M_SQRT1_2, (float)M_SQRT1_2, 0}, 3, 1e-6);
    /* colinear: plain lerp (the norms differ, so slerp would give something else) */
    float b2[] = {1, 2, 3}, o2[] = {2, 4, 6};
    const float *x2[] = {o2};
    tc_init(&t, "slerp", b2, x2, 1, 3);
    tc_set(&t, "t", -1, 0.25);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1.25f, 2.5f, 3.75f}, 3, 1e-6);
}

static void test_nuslerp(void **state) {
    (void)state;
    float a[] = {1, 0, 2, 0}, b[] = {0, 1, 0, 2}, out[4], out2[4];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "nuslerp", NULL, x, 2, 4);
    tc_set(&t, "weight", -1, 1.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    double s = M_SQRT1_2; /* orthogonal, t = 0.5: (sin(pi/4) a + sin(pi/4) b) / 1 */
    expect_near(out, (float[]){(float)s, (float)s, (float)(2 * s), (float)(2 * s)}, 4, 1e-6);
    /* per row of a [2, 2] tensor gives the same here; row-wise (columns) too */
    tc_shape2(&t, 2, 2);
    tc_set(&t, "nuslerp_flatten", -1, 0.0);
    assert_int_equal(tc_run(&t, out2, &err), 0);
    expect_near(out2, out, 4, 1e-6);
    /* columns (1,2) and (0,0)... use weights 3:1 -> t = 0.25 along colinear columns: lerp */
    float c0[] = {1, 0, 2, 0}, c1[] = {2, 0, 4, 0};
    const float *xc[] = {c0, c1};
    tc_init(&t, "nuslerp", NULL, xc, 2, 4);
    tc_shape2(&t, 2, 2);
    tc_set(&t, "weight", 0, 3.0);
    tc_set(&t, "weight", 1, 1.0);
    tc_set(&t, "nuslerp_flatten", -1, 0.0);
    tc_set(&t, "nuslerp_row_wise", -1, 1.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1.25f, 0, 2.5f, 0}, 4, 1e-6);
}

static void test_multislerp_karcher(void **state) {
    (void)state;
    float a[] = {1, 0}, b[] = {0, 1}, out[2];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "multislerp", NULL, x, 2, 2);
    tc_set(&t, "weight", -1, 1.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){(float)M_SQRT1_2, (float)M_SQRT1_2}, 2, 1e-6);
    tc_init(&t, "karcher", NULL, x, 2, 2);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){(float)M_SQRT1_2, (float)M_SQRT1_2}, 2, 1e-6);
    /* karcher of two vectors of norm 2 and 4 at 90 degrees: norm 3 on the bisector */
    float c[] = {2, 0}, d[] = {0, 4};
    const float *xd[] = {c, d};
    tc_init(&t, "karcher", NULL, xd, 2, 2);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){(float)(3 * M_SQRT1_2), (float)(3 * M_SQRT1_2)}, 2, 1e-5);
    /* multislerp with a base: the same geometry on task vectors */
    float base[] = {1, 1}, e[] = {2, 1}, f[] = {1, 2};
    const float *xe[] = {e, f};
    tc_init(&t, "multislerp", base, xe, 2, 2);
    tc_set(&t, "weight", -1, 0.5);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1 + (float)M_SQRT1_2, 1 + (float)M_SQRT1_2}, 2, 1e-6);
}

/* ---- task arithmetic family ---- */

static void test_task_arithmetic(void **state) {
    (void)state;
    float base[] = {0, 0, 0}, a[] = {1, 2, 3}, b[] = {-1, 1, 0}, out[3];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "task_arithmetic", base, x, 2, 3);
    tc_set(&t, "weight", -1, 0.5);
    tc_set(&t, "lambda", -1, 2.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){0, 3, 3}, 3, 1e-6);
}

static void test_ties(void **state) {
    (void)state;
    float base[] = {1, 1, 1, 1}, a[] = {2, -1, 4, 1.5f}, b[] = {-2, 2, 2, 1.1f}, out[4];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "ties", base, x, 2, 4);
    tc_set(&t, "weight", -1, 1.0);
    /* deltas a: {1,-2,3,.5}, b: {-3,1,1,.1}; elected signs -, -, +, + */
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1 - 3, 1 - 2, 1 + 2, 1 + 0.3f}, 4, 1e-6);
    /* density 0.5 on a keeps |-2| and |3| only: element 3 now from b alone */
    tc_set(&t, "density", 0, 0.5);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1 - 3, 1 - 2, 1 + 2, 1 + 0.1f}, 4, 1e-6);
    /* normalize off: sums of the agreeing deltas */
    tc_set(&t, "normalize", -1, 0.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1 - 3, 1 - 2, 1 + 4, 1 + 0.1f}, 4, 1e-6);
    /* density that keeps nothing is an error naming the tensor */
    tc_set(&t, "density", 0, 0.1);
    assert_int_equal(tc_run(&t, out, &err), -1);
    assert_non_null(strstr(err.msg, "test.weight"));
}

static void test_magnitude_keeps_k(void **state) {
    (void)state;
    float base[8] = {0}, d[] = {1, -1, 1, 1, 2, 0, 0, 0}, key[8], scratch[8];
    uint8_t mask[8];
    alloy_err err;
    sparsify_args a = {.kind = SPARSIFY_MAGNITUDE, .density = 0.5};
    assert_int_equal(sparsify_mask(&a, d, base, 1, NULL, 8, key, scratch, mask, 1, "t", &err), 0);
    uint8_t want[] = {1, 1, 1, 0, 1, 0, 0, 0}; /* ties at |1|: lowest indices first */
    assert_memory_equal(mask, want, 8);
    /* a large tensor with many ties: exactly k kept, all at least as large as the dropped */
    size_t n = 100003;
    float *x = malloc(n * sizeof *x), *z = calloc(n, sizeof *z), *k1 = malloc(n * 4), *k2 = malloc(n * 4);
    uint8_t *m = malloc(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 7919) % 101) - 50.0f;
    a.density = 0.3;
    assert_int_equal(sparsify_mask(&a, x, z, 1, NULL, n, k1, k2, m, 2, "t", &err), 0);
    size_t kept = 0;
    float minkept = INFINITY, maxdrop = 0;
    for (size_t i = 0; i < n; i++) {
        kept += m[i];
        if (m[i] && fabsf(x[i]) < minkept) minkept = fabsf(x[i]);
        if (!m[i] && fabsf(x[i]) > maxdrop) maxdrop = fabsf(x[i]);
    }
    assert_int_equal(kept, (size_t)(0.3 * (double)n));
    assert_true(minkept >= maxdrop);
    free(x), free(z), free(k1), free(k2), free(m);
}

static void test_breadcrumbs(void **state) {
    (void)state;
    enum { N = 100 };
    float base[N] = {0}, d[N], out[N];
    for (int i = 0; i < N; i++) d[(i * 37) % N] = (float)((i % 2) ? i + 1 : -(i + 1)); /* |d| = 1..100 */
    const float *x[] = {d};
    tcall t;
    alloy_err err;
    tc_init(&t, "breadcrumbs", base, x, 1, N);
    tc_set(&t, "weight", -1, 1.0);
    tc_set(&t, "density", -1, 0.5);
    tc_set(&t, "gamma", -1, 0.1);
    /* keep ascending ranks [40, 90): |d| in 41..90 */
    assert_int_equal(tc_run(&t, out, &err), 0);
    int kept = 0;
    for (int i = 0; i < N; i++) {
        float a = fabsf(d[i]);
        float want = (a >= 41 && a <= 90) ? d[i] : 0.0f;
        assert_true(out[i] == want);
        kept += out[i] != 0;
    }
    assert_int_equal(kept, 50);
    /* density + gamma > 1: fewer outliers removed to reach the density */
    tc_set(&t, "density", -1, 0.95);
    assert_int_equal(tc_run(&t, out, &err), 0);
    for (int i = 0; i < N; i++) assert_true(out[i] == (fabsf(d[i]) <= 95 ? d[i] : 0.0f));
    /* int(gamma * n) == 0: the top half survives (mergekit's slice [n_bot:-0]
     * would keep nothing; alloy deliberately does not copy that) */
    tc_set(&t, "gamma", -1, 0.001);
    tc_set(&t, "density", -1, 0.5);
    assert_int_equal(tc_run(&t, out, &err), 0);
    for (int i = 0; i < N; i++) assert_true(out[i] == (fabsf(d[i]) > 50 ? d[i] : 0.0f));
}

static void test_dare(void **state) {
    (void)state;
    size_t n = 20003; /* odd: the first pass's packed mask ends in a partial byte */
    float *base = malloc(n * 4), *a = malloc(n * 4), *b = malloc(n * 4);
    float *o1 = malloc(n * 4), *o2 = malloc(n * 4), *o3 = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        base[i] = sinf((float)i);
        a[i] = base[i] + 0.01f * cosf(0.37f * (float)i);
        b[i] = base[i] - 0.02f * sinf(0.11f * (float)i + 1);
    }
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "dare_ties", base, x, 2, n);
    tc_set(&t, "weight", -1, 0.5);
    tc_set(&t, "density", -1, 0.4);
    assert_int_equal(tc_run(&t, o1, &err), 0);
    t.c.threads = 2;
    assert_int_equal(tc_run(&t, o2, &err), 0);
    assert_memory_equal(o1, o2, n * 4); /* bit-identical across thread counts */
    t.c.seed = 43;
    assert_int_equal(tc_run(&t, o3, &err), 0);
    assert_true(memcmp(o1, o3, n * 4) != 0);
    /* density 1 equals task_arithmetic exactly */
    tc_set(&t, "density", -1, 1.0);
    assert_int_equal(tc_run(&t, o2, &err), 0);
    tcall u;
    tc_init(&u, "task_arithmetic", base, x, 2, n);
    tc_set(&u, "weight", -1, 0.5);
    assert_int_equal(tc_run(&u, o3, &err), 0);
    /* (ties consensus drops disagreeing signs, so compare dare_linear instead) */
    tcall v;
    tc_init(&v, "dare_linear", base, x, 2, n);
    tc_set(&v, "weight", -1, 0.5);
    tc_set(&v, "density", -1, 1.0);
    assert_int_equal(tc_run(&v, o1, &err), 0);
    assert_memory_equal(o1, o3, n * 4);
    /* one model: each element is base or base + w * s * delta with s the L1 ratio; ~density kept */
    const float *x1[] = {a};
    tc_init(&v, "dare_linear", base, x1, 1, n);
    tc_set(&v, "weight", -1, 1.0);
    tc_set(&v, "density", -1, 0.3);
    assert_int_equal(tc_run(&v, o1, &err), 0);
    double l1 = 0, l1k = 0;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        float dd = a[i] - base[i];
        l1 += fabs(dd);
        if (o1[i] != base[i]) kept++, l1k += fabs(dd);
    }
    float s = (float)(l1 / l1k);
    for (size_t i = 0; i < n; i++) {
        float dd = a[i] - base[i];
        if (o1[i] != base[i]) assert_true(fabsf(o1[i] - (base[i] + dd * s)) <= 1e-6f);
    }
    double sd = sqrt(n * 0.3 * 0.7);
    assert_true(fabs((double)kept - 0.3 * n) < 5 * sd);
    /* the mask is the documented draw, element e kept iff
     * rng_keep32(rng_stream_key(seed, model), e, rng_thr32(density)), the
     * same in the first pass (rescale) as in the merge */
    tc_set(&v, "rescale", -1, 0.0);
    assert_int_equal(tc_run(&v, o2, &err), 0);
    for (size_t i = 0; i < n; i++) {
        bool keep = rng_keep32(rng_stream_key(42, 0), i, rng_thr32(0.3));
        float want = keep ? base[i] + (a[i] - base[i]) : base[i] + 0.0f;
        assert_true(o2[i] == want);
        assert_true((o1[i] != base[i]) == keep);
    }
    free(base), free(a), free(b), free(o1), free(o2), free(o3);
}

static void test_della(void **state) {
    (void)state;
    size_t n = 4000;
    float *base = calloc(n, 4), *a = malloc(n * 4), *o1 = malloc(n * 4), *o2 = malloc(n * 4);
    for (size_t i = 0; i < n; i++) a[i] = (float)((i * 131) % 1000) * 0.001f + 0.001f;
    const float *x[] = {a};
    tcall t;
    alloy_err err;
    tc_init(&t, "della", base, x, 1, n);
    tc_shape2(&t, 4, 1000);
    tc_set(&t, "weight", -1, 1.0);
    tc_set(&t, "density", -1, 0.5);
    tc_set(&t, "epsilon", -1, 0.4);
    tc_set(&t, "rescale", -1, 0.0);
    assert_int_equal(tc_run(&t, o1, &err), 0);
    t.c.threads = 2;
    assert_int_equal(tc_run(&t, o2, &err), 0);
    assert_memory_equal(o1, o2, n * 4);
    /* probabilities rise with magnitude: 0.1 for the smallest to 0.9 for the largest */
    size_t lo = 0, hi = 0, nlo = 0, nhi = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] < 0.2f) nlo++, lo += o1[i] != 0;
        if (a[i] > 0.8f) nhi++, hi += o1[i] != 0;
        assert_true(o1[i] == 0 || o1[i] == a[i]);
    }
    assert_true((double)lo / nlo < 0.3 && (double)hi / nhi > 0.7);
    /* density +- epsilon outside (0, 1) is a recipe error naming the tensor */
    tc_set(&t, "epsilon", -1, 0.6);
    assert_int_equal(tc_run(&t, o1, &err), -1);
    assert_non_null(strstr(err.msg, "test.weight"));
    assert_non_null(strstr(err.msg, "epsilon"));
    free(base), free(a), free(o1), free(o2);
}

/* ---- model_stock, sce ---- */

static void test_model_stock(void **state) {
    (void)state;
    float base[] = {1, 1, 1, 1}, a[] = {2, 1, 2, 1}, b[] = {2, 2, 1, 1}, out[4];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "model_stock", base, x, 2, 4);
    /* offsets (1,0,1,0) and (1,1,0,0): cos = 1/2, t = 2c/(1+c) = 2/3 */
    assert_int_equal(tc_run(&t, out, &err), 0);
    float tt = 2.0f / 3.0f;
    float want[4];
    for (int i = 0; i < 4; i++) want[i] = tt * (a[i] + b[i]) / 2 + (1 - tt) * base[i];
    expect_near(out, want, 4, 1e-6);
    /* filter-wise on [2, 2]: row 0 offsets (1,0),(1,1): cos 1/sqrt2; row 1 (1,0),(0,0): cos 0 -> t 0 */
    tc_shape2(&t, 2, 2);
    tc_set(&t, "filter_wise", -1, 1.0);
    assert_int_equal(tc_run(&t, out, &err), 0);
    double c = M_SQRT1_2, t0 = 2 * c / (1 + c);
    expect_near(out, (float[]){(float)(t0 * 2 + (1 - t0)), (float)(t0 * 1.5 + (1 - t0)), 1, 1}, 4, 1e-6);
}

/* model_stock over 2..6 models (the Gram sums' unrolled forms up to four
 * models, the general one past) on 3001 elements (a tail past the eight
 * lanes), whole and filter-wise, against its formula evaluated here in
 * double: t = N c / (1 + (N - 1) c), c the mean pairwise cosine of the
 * offsets x_i - base, out = t mean(x) + (1 - t) base. */
static void test_model_stock_counts(void **state) {
    (void)state;
    enum { R = 7, C = 3001 / 7 + 1, N = R * C, KMAX = 6 };
    float *base = malloc(N * 4), *xs[KMAX], *out = malloc(N * 4);
    const float *x[KMAX];
    for (int i = 0; i < KMAX; i++) xs[i] = malloc(N * 4), x[i] = xs[i];
    for (size_t e = 0; e < N; e++) {
        base[e] = (float)rng_uniform(7, 0, e) - 0.5f;
        for (int i = 0; i < KMAX; i++) /* correlated offsets: a shared part and each model's own */
            xs[i][e] = base[e] + 0.05f * ((float)rng_uniform(7, 99, e) - 0.5f) + 0.03f * ((float)rng_uniform(7, 1 + (uint64_t)i, e) - 0.5f);
    }
    for (int k = 2; k <= KMAX; k++) {
        for (int fw = 0; fw < 2; fw++) {
            tcall t;
            alloy_err err;
            tc_init(&t, "model_stock", base, x, k, N);
            if (fw) tc_shape2(&t, R, C), tc_set(&t, "filter_wise", -1, 1.0);
            assert_int_equal(tc_run(&t, out, &err), 0);
            size_t rows = fw ? R : 1, len = fw ? C : N;
            for (size_t r = 0; r < rows; r++) {
                double g[KMAX][KMAX] = {{0}};
                for (size_t e = r * len; e < (r + 1) * len; e++)
                    for (int i = 0; i < k; i++)
                        for (int j = 0; j < k; j++)
                            g[i][j] += ((double)x[i][e] - base[e]) * ((double)x[j][e] - base[e]);
                double c = 0.0;
                for (int i = 0; i < k; i++)
                    for (int j = i + 1; j < k; j++) c += g[i][j] / (sqrt(g[i][i]) * sqrt(g[j][j]));
                c /= k * (k - 1) / 2;
                double tt = k * c / (1.0 + (k - 1) * c);
                for (size_t e = r * len; e < (r + 1) * len; e++) {
                    double mean = 0.0;
                    for (int i = 0; i < k; i++) mean += x[i][e];
                    double want = tt * (mean / k) + (1.0 - tt) * base[e];
                    if (fabs(out[e] - want) > 1e-6) fail_msg("k=%d fw=%d e=%zu: %.9g, want %.9g", k, fw, e, out[e], want);
                }
            }
        }
    }
    for (int i = 0; i < KMAX; i++) free(xs[i]);
    free(base), free(out);
}

static void test_sce(void **state) {
    (void)state;
    float base[] = {0, 0, 0}, a[] = {1, -1, 0.1f}, b[] = {1, 1, 0.1f}, out[3];
    const float *x[] = {a, b};
    tcall t;
    alloy_err err;
    tc_init(&t, "sce", base, x, 2, 3);
    /* weights: mean squares equal -> 1/2 each; e1 sums to 0 -> + wins -> b alone */
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, (float[]){1, 1, 0.1f}, 3, 1e-6);
    /* select_topk 0.5: variance nonzero only at e1 -> int(1 * 0.5) = 0 kept -> base */
    tc_set(&t, "select_topk", -1, 0.5);
    assert_int_equal(tc_run(&t, out, &err), 0);
    expect_near(out, base, 3, 0);
}

/* vec_gram_block (model_stock's, multislerp's and nuslerp's pair sums)
 * and vec_dot8f (karcher's) against each pair's products stored and
 * summed by vec_sum8: the same
 * bits, for 1..6 rows (in registers up to four), with and without a base,
 * over lengths with and without a tail past the eight lanes. */
static void test_gram_block(void **state) {
    (void)state;
    enum { M = 1024, NMAX = 6 };
    float *x[NMAX], *b = malloc(M * 4);
    double *prod = malloc(M * sizeof *prod), out[NMAX * (NMAX + 1) / 2];
    for (int i = 0; i < NMAX; i++) {
        x[i] = malloc(M * 4);
        for (size_t e = 0; e < M; e++) x[i][e] = (float)rng_uniform(11, 1 + (uint64_t)i, e) - 0.5f;
    }
    for (size_t e = 0; e < M; e++) b[e] = (float)rng_uniform(11, 0, e) - 0.5f;
    const size_t lens[] = {1, 7, 8, 9, 1000, 1024};
    for (int N = 1; N <= NMAX; N++)
        for (int hb = 0; hb < 2; hb++)
            for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
                size_t m = lens[li];
                vec_gram_block(N, (const float *const *)x, hb ? b : NULL, m, out);
                for (int i = 0, q = 0; i < N; i++)
                    for (int j = i; j < N; j++, q++) {
                        for (size_t e = 0; e < m; e++) {
                            double bi = hb ? (double)b[e] : 0.0;
                            prod[e] = ((double)x[i][e] - bi) * ((double)x[j][e] - bi);
                        }
                        double want = vec_sum8(prod, m);
                        if (out[q] != want) fail_msg("N=%d base=%d m=%zu pair %d,%d: %.17g, want %.17g", N, hb, m, i, j, out[q], want);
                        if (!hb && vec_dot8f(x[i], x[j], m) != want) fail_msg("vec_dot8f m=%zu pair %d,%d", m, i, j);
                    }
            }
    for (int i = 0; i < NMAX; i++) free(x[i]);
    free(b), free(prod);
}

/* sce's formula evaluated here over n elements (the variance in double as
 * sce.c makes it; the selection by sorting): the expected output. */
static double sce_want_var(const float *const *x, const float *base, int K, size_t e) {
    double m = 0.0, v = 0.0;
    for (int i = 0; i < K; i++) m += (double)(x[i][e] - base[e]);
    m *= 1.0 / K;
    for (int i = 0; i < K; i++) v += ((double)(x[i][e] - base[e]) - m) * ((double)(x[i][e] - base[e]) - m);
    return (float)(v * (1.0 / K));
}

static const float *sce_sort_var; /* for qsort: the variances */
static int cmp_var_desc(const void *pa, const void *pb) {
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    float va = sce_sort_var[a], vb = sce_sort_var[b];
    if (va != vb) return va > vb ? -1 : 1;
    return a < b ? -1 : a > b; /* ties: the lower index first */
}

static void sce_want(const float *const *x, const float *base, int K, size_t n, double topk, float *want) {
    float *var = malloc(n * sizeof *var);
    size_t *order = malloc(n * sizeof *order), nz = 0;
    uint8_t *sel = calloc(n, 1);
    for (size_t e = 0; e < n; e++) var[e] = (float)sce_want_var(x, base, K, e), nz += var[e] != 0.0f, order[e] = e;
    sce_sort_var = var;
    qsort(order, n, sizeof *order, cmp_var_desc);
    size_t kk = (size_t)((double)nz * topk);
    for (size_t r = 0; r < kk; r++) sel[order[r]] = 1;
    double w[MAXK], ws = 0.0;
    for (int i = 0; i < K; i++) {
        w[i] = 0.0;
        for (size_t e = 0; e < n; e++) {
            double d = x[i][e] - base[e];
            w[i] += sel[e] ? d * d : 0.0;
        }
        w[i] = (float)(w[i] / (double)n);
        ws += w[i];
    }
    for (int i = 0; i < K; i++) w[i] = (float)(w[i] / ws);
    for (size_t e = 0; e < n; e++) {
        float sum = 0.0f, num = 0.0f, den = 0.0f;
        for (int i = 0; i < K; i++) sum += x[i][e] - base[e];
        for (int i = 0; i < K; i++) {
            float d = x[i][e] - base[e];
            if (sum >= 0.0f ? d > 0.0f : d < 0.0f) num += (float)w[i] * d, den += (float)w[i];
        }
        want[e] = sel[e] ? base[e] + num / (den > 1e-6f ? den : 1e-6f) : base[e];
    }
    free(var), free(order), free(sel);
}

/* sce on tensors large enough for the streaming selection (a sample, a
 * pass, rankcut.h), whose pass also makes the weights' sums: with the
 * variances spread at random over the tensor (the weights from the pass),
 * and rising with the index (the elements inside the band crowd into one
 * chunk, overflow its room, and the weights' own pass runs), both against
 * the formula. */
static void test_sce_stream(void **state) {
    (void)state;
    enum { N = 1 << 20, K = 3 };
    const float c[K] = {-0.3f, 0.1f, 0.4f};
    float *base = malloc(N * 4), *xs[K], *out = malloc(N * 4), *want = malloc(N * 4);
    const float *x[K];
    for (int i = 0; i < K; i++) xs[i] = malloc(N * 4), x[i] = xs[i];
    for (int rising = 0; rising < 2; rising++) {
        for (size_t e = 0; e < N; e++) {
            base[e] = (float)rng_uniform(5, 0, e) - 0.5f;
            for (int i = 0; i < K; i++) {
                float d = rising ? (float)e / N * c[i] /* the variance rises with e */
                                 : (float)rng_uniform(5, 9, e) * ((float)rng_uniform(5, 1 + (uint64_t)i, e) - 0.5f);
                xs[i][e] = e % 11 == 0 ? base[e] : base[e] + d;
            }
        }
        tcall t;
        alloy_err err;
        tc_init(&t, "sce", base, x, K, N);
        tc_set(&t, "select_topk", -1, 0.3);
        assert_int_equal(tc_run(&t, out, &err), 0);
        sce_want(x, base, K, N, 0.3, want);
        for (size_t e = 0; e < N; e++)
            if (fabsf(out[e] - want[e]) > 1e-6f * (1.0f + fabsf(want[e])))
                fail_msg("rising=%d e=%zu: %.9g, want %.9g", rising, e, out[e], want[e]);
    }
    for (int i = 0; i < K; i++) free(xs[i]);
    free(base), free(out), free(want);
}

/* TIES and task arithmetic over 1..6 models against the documented
 * formula evaluated here in the same order (the merge unrolls up to four
 * models in one vector loop and takes one pass per model beyond): exact. */
static void test_model_counts(void **state) {
    (void)state;
    enum { N = 3001, KMAX = 6 };
    float *xs[KMAX], *base = malloc(N * 4), *out = malloc(N * 4);
    const float *x[KMAX];
    for (int i = 0; i < KMAX; i++) xs[i] = malloc(N * 4), x[i] = xs[i];
    for (size_t e = 0; e < N; e++) {
        base[e] = (float)rng_uniform(3, 0, e) - 0.5f;
        for (int i = 0; i < KMAX; i++) /* some deltas exactly zero */
            xs[i][e] = (e + (size_t)i) % 7 == 0 ? base[e] : base[e] + 0.1f * ((float)rng_uniform(3, 1 + (uint64_t)i, e) - 0.5f);
    }
    const float w[KMAX] = {0.5f, -0.3f, 0.25f, 0.7f, 0.1f, 0.45f};
    for (int k = 1; k <= KMAX; k++) {
        for (int method = 0; method < 2; method++) {
            tcall t;
            alloy_err err;
            tc_init(&t, method ? "ties" : "task_arithmetic", base, x, k, N);
            for (int i = 0; i < k; i++) tc_set(&t, "weight", i, w[i]);
            if (method) tc_set(&t, "density", -1, 1.0);
            assert_int_equal(tc_run(&t, out, &err), 0);
            for (size_t e = 0; e < N; e++) {
                float d[KMAX], sum = 0.0f, mixed = 0.0f, div = 0.0f, wsum = 0.0f;
                for (int i = 0; i < k; i++) d[i] = (x[i][e] - base[e]) * w[i], sum += d[i], wsum += w[i];
                float want;
                if (method) {
                    for (int i = 0; i < k; i++)
                        if (sum >= 0.0f ? d[i] > 0.0f : d[i] < 0.0f) mixed += d[i], div += w[i];
                    /* mixed times the rounded 1 / div (task_arithmetic.c's gta_combine) */
                    want = base[e] + (mixed * (1.0f / (div == 0.0f ? 1.0f : div))) * 1.0f;
                } else {
                    want = base[e] + sum * 1.0f; /* task_arithmetic: no normalisation */
                }
                if (out[e] != want) fail_msg("%s k=%d e=%zu: %g, want %g", method ? "ties" : "ta", k, e, out[e], want);
            }
        }
    }
    for (int i = 0; i < KMAX; i++) free(xs[i]);
    free(base), free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_counts),
        cmocka_unit_test(test_registry),       cmocka_unit_test(test_linear),
        cmocka_unit_test(test_passthrough_nearswap), cmocka_unit_test(test_slerp),
        cmocka_unit_test(test_nuslerp),        cmocka_unit_test(test_multislerp_karcher),
        cmocka_unit_test(test_task_arithmetic), cmocka_unit_test(test_ties),
        cmocka_unit_test(test_magnitude_keeps_k), cmocka_unit_test(test_breadcrumbs),
        cmocka_unit_test(test_dare),           cmocka_unit_test(test_della),
        cmocka_unit_test(test_model_stock),    cmocka_unit_test(test_model_stock_counts), cmocka_unit_test(test_gram_block), cmocka_unit_test(test_sce), cmocka_unit_test(test_sce_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
