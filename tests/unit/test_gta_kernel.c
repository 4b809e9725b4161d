/* test_gta_kernel.c — the fused AVX-512 merge pass (merge/gta_kernel.c)
 * against a scalar transcription of the formula it implements, bit for bit:
 * every model count it takes, with and without consensus and normalize,
 * bf16 and f32 output, every keep kind (whole, TIES's one-sided rule, a
 * two-sided rule, DARE's random mask, a bit mask), ties on the rule's
 * threshold decided by index, block lengths that leave a tail, zero and
 * negative-zero deltas; then NaN inputs (reported only where checked) and
 * a result that overflows (its index reported); DARE's first pass (sums in
 * their lane order, mask bits); linear's loop against its formula; the f16
 * loops (task arithmetic's lean one, which blocks it takes, linear's).
 * Without AVX-512 the kernel must say that it is not there. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/gta_kernel.h"
#include "util/dtype.h"
#include "util/rng.h"

#define N 8192

static float bf(uint16_t h) { return bf16_to_f32(h); }

/* A 16-bit input of a: bf16, or IEEE half with in_f16. */
static float in16(const gk_args *a, uint16_t h) { return a->in_f16 ? f16_to_f32(h) : bf16_to_f32(h); }

/* The formula of gk_body, one element at a time in the same order. */
static void ref_block(const gk_args *a, size_t b0, size_t m, void *dst, size_t *obad, bool *bad) {
    *obad = m;
    *bad = false;
    for (size_t j = 0; j < m; j++) {
        size_t e = b0 + j;
        float b = in16(a, a->base[e]), d[GK_MAX_MODELS];
        if (a->check_base && !isfinite(b)) *bad = true;
        for (int i = 0; i < a->k; i++) {
            const gk_model *g = &a->m[i];
            float x = in16(a, g->x[e]);
            if (g->check && !isfinite(x)) *bad = true;
            float v = x - b, t = (v * g->s) * g->w, av = fabsf(v);
            uint32_t ix = (uint32_t)e;
            bool keep = true;
            switch (g->keep) {
            case GK_WHOLE:
                break;
            case GK_TOP:
                keep = av > g->rule.L || (av == g->rule.L && ix <= g->rule.thi);
                break;
            case GK_RULE:
                keep = keep_rule_test(&g->rule, av, ix);
                break;
            case GK_RANDOM:
                keep = rng_keep32(g->rng_key, e, g->thr);
                break;
            case GK_BITS:
                keep = (g->bits[e / 8] >> (e % 8)) & 1u;
                break;
            }
            d[i] = keep ? t : 0.0f;
        }
        float sum = 0.0f + d[0];
        for (int i = 1; i < a->k; i++) sum += d[i];
        float mx = sum, dv = a->div_all;
        if (a->consensus) {
            bool pos = sum >= 0.0f;
            float mixed = 0.0f, div = 0.0f;
            for (int i = 0; i < a->k; i++)
                if ((pos && d[i] > 0.0f) || (!pos && d[i] < 0.0f)) mixed += d[i], div += a->m[i].w;
            mx = mixed;
            dv = div == 0.0f ? 1.0f : div;
        }
        float o = b + (a->normalize ? mx * (1.0f / dv) : mx) * a->lambda;
        if (!isfinite(o) && *obad == m) *obad = j;
        if (a->out_bf16)
            ((uint16_t *)dst)[j] = a->in_f16 ? f32_to_f16(o) : f32_to_bf16(o);
        else
            ((float *)dst)[j] = o;
    }
}

static uint16_t to_bf(float f) { return f32_to_bf16(f); }

typedef struct inputs {
    uint16_t base[N], x[GK_MAX_MODELS][N];
    uint8_t bits[GK_MAX_MODELS][N / 8];
    bool f16; /* the values in IEEE half rather than bf16 */
} inputs;

/* Base ~ U(-0.02, 0.02); deltas on a coarse grid (so magnitudes tie), a
 * tenth of them zero; the model's value is bf16(base + delta), or with f16
 * the same in IEEE half. */
static void fill_as(inputs *in, uint64_t seed, bool f16) {
    in->f16 = f16;
    for (size_t e = 0; e < N; e++) {
        float b = (float)(rng_uniform(seed, 100, e) - 0.5) * 0.04f;
        in->base[e] = f16 ? f32_to_f16(b) : to_bf(b);
        float bv = f16 ? f16_to_f32(in->base[e]) : bf(in->base[e]);
        for (int i = 0; i < GK_MAX_MODELS; i++) {
            double u = rng_uniform(seed, (uint64_t)i, e);
            float dlt = u < 0.1 ? 0.0f : (float)((int)(u * 64.0) - 32) * 0x1p-12f;
            in->x[i][e] = u < 0.1 ? in->base[e] : f16 ? f32_to_f16(bv + dlt) : to_bf(bv + dlt);
        }
    }
    for (int i = 0; i < GK_MAX_MODELS; i++)
        for (size_t t = 0; t < N / 8; t++) in->bits[i][t] = (uint8_t)(rng_mix64(seed * 7 + (uint64_t)i * N + t) >> 56);
}

static void fill(inputs *in, uint64_t seed) { fill_as(in, seed, false); }

/* Inputs from fill(seed), or the test skipped where there is no kernel. */
static inputs *kernel_inputs(uint64_t seed) {
    if (!GTA_KERNEL) skip(); /* does not return */
    inputs *in = malloc(sizeof *in);
    assert_non_null(in);
    fill(in, seed);
    return in;
}

/* A threshold that some magnitudes equal: the magnitude of a chosen element. */
static float some_magnitude(const inputs *in, int i, size_t e) {
    return in->f16 ? fabsf(f16_to_f32(in->x[i][e]) - f16_to_f32(in->base[e]))
                   : fabsf(bf(in->x[i][e]) - bf(in->base[e]));
}

static void setup_args(gk_args *a, const inputs *in, int k, int variant, uint64_t seed) {
    *a = (gk_args){.k = k, .consensus = variant & 4, .normalize = variant & 2, .out_bf16 = variant & 1,
                   .lambda = 0.75f, .div_all = 0.9f, .base = in->base, .check_base = false};
    static const float w[GK_MAX_MODELS] = {0.5f, 0.3f, -0.2f, 0.45f}, s[GK_MAX_MODELS] = {1.0f, 1.9f, 2.5f, 1.25f};
    for (int i = 0; i < k; i++) {
        gk_model *g = &a->m[i];
        *g = (gk_model){.x = in->x[i], .w = w[i], .s = s[i], .bits = in->bits[i]};
        g->keep = (gk_keep)((seed + (uint64_t)i * 3 + (uint64_t)variant) % 5);
        float L = some_magnitude(in, i, 77 + (size_t)i), U = some_magnitude(in, i, 1234 + (size_t)i);
        if (U < L) {
            float t = L;
            L = U, U = t;
        }
        /* index bounds on elements at the thresholds: < for <= would show */
        uint32_t eL = 77 + (uint32_t)i, eU = 1234 + (uint32_t)i;
        if (fabsf(L - some_magnitude(in, i, eL)) != 0.0f) {
            uint32_t t = eL;
            eL = eU, eU = t;
        }
        uint32_t hiL = 3000;
        while (hiL + 1 < N && some_magnitude(in, i, hiL) != L) hiL++;
        g->rule = (keep_rule){.L = L, .U = U, .tlo = eL, .thi = hiL, .tu = eU};
        if (g->keep == GK_TOP) g->rule = (keep_rule){.L = L, .U = INFINITY, .tlo = 0, .thi = eL, .tu = UINT32_MAX};
        g->rng_key = rng_stream_key(seed, (uint64_t)i);
        g->thr = rng_thr32(0.3 + 0.1 * i);
    }
}

static void compare(const gk_args *a, gk_block_fn fn, size_t b0, size_t m) {
    uint32_t got[1024], want[1024];
    memset(got, 0xab, sizeof got);
    memcpy(want, got, sizeof want);
    size_t ob_got = 0, ob_want = 0;
    bool bad_want, bad_got = fn(a, b0, m, got, &ob_got);
    ref_block(a, b0, m, want, &ob_want, &bad_want);
    size_t bytes = m * (a->out_bf16 ? 2 : 4);
    assert_memory_equal(got, want, bytes);
    /* nothing written past the block */
    assert_memory_equal((char *)got + bytes, (char *)want + bytes, sizeof got - bytes);
    assert_int_equal(ob_got, ob_want);
    assert_int_equal(bad_got, bad_want);
}

static void test_matches_formula(void **state) {
    (void)state;
    if (!GTA_KERNEL) {
        gk_args none = {.k = 1};
        assert_null(gk_select(&none));
        skip();
        return;
    }
    inputs *in = malloc(sizeof *in);
    assert_non_null(in);
    fill(in, 3);
    gk_args a;
    int runs = 0;
    for (int k = 1; k <= GK_MAX_MODELS; k++)
        for (int variant = 0; variant < 8; variant++)
            for (uint64_t seed = 0; seed < 5; seed++) {
                setup_args(&a, in, k, variant, seed);
                gk_block_fn fn = gk_select(&a);
                assert_non_null(fn);
                /* whole blocks, a tail of each length class, one element */
                static const size_t lens[] = {1024, 1000, 17, 8, 1};
                compare(&a, fn, 0, 1024); /* holds the elements the bounds name */
                compare(&a, fn, 1024, 1024);
                /* wholly inside [tlo, thi] and before tu: one threshold a side */
                compare(&a, fn, 128, 1024);
                for (int i = 0; i < k; i++) compare(&a, fn, a.m[i].rule.thi & ~(size_t)7, 512);
                for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
                    size_t b0 = 8 * (size_t)((seed * 131 + (uint64_t)t * 97) % ((N - lens[t]) / 8));
                    compare(&a, fn, b0, lens[t]);
                    runs++;
                }
            }
    assert_int_equal(runs, GK_MAX_MODELS * 8 * 5 * 5);
    /* the thresholds are magnitudes that many elements share, on both
     * sides of the index bounds: ties were decided by index */
    setup_args(&a, in, 1, 0, 1);
    size_t before = 0, after = 0;
    for (size_t e = 0; e < N; e++)
        if (some_magnitude(in, 0, e) == a.m[0].rule.L) *(e <= 77 ? &before : &after) += 1;
    assert_true(before >= 1 && after > 20);
    free(in);
}

/* One block of gk_linear against o = 0 + w_0 x_0 + ... (/ wsum), bit for
 * bit: inputs bf16, or with f16 IEEE half (and the output too); nothing
 * written past the block. */
static void linear_case(const uint16_t *const *x, const float *w, int k, bool norm, bool f16, bool obf, size_t b0,
                        size_t m) {
    float wsum = 0.0f;
    for (int i = 0; i < k; i++) wsum += w[i];
    uint32_t got[1024], want[1024];
    memset(got, 0xab, sizeof got);
    memcpy(want, got, sizeof want);
    size_t ob;
    assert_false(gk_linear(x, w, k, norm, wsum, f16, obf, b0, m, got, &ob));
    assert_int_equal(ob, m);
    for (size_t j = 0; j < m; j++) {
        float o = 0.0f;
        for (int i = 0; i < k; i++) o += w[i] * (f16 ? f16_to_f32(x[i][b0 + j]) : bf(x[i][b0 + j]));
        if (norm) o /= wsum;
        if (f16 || obf)
            ((uint16_t *)want)[j] = f16 ? f32_to_f16(o) : f32_to_bf16(o);
        else
            ((float *)want)[j] = o;
    }
    assert_memory_equal(got, want, sizeof got);
}

/* gk_linear against linear.c's formula, o = 0 + w_0 x_0 + ... (/ wsum),
 * bit for bit: 1 to 4 models, normalize on and off, bf16 and f32 output,
 * tails; a NaN input reported, a result that overflows located. */
static void test_linear(void **state) {
    (void)state;
    inputs *in = kernel_inputs(11);
    const uint16_t *x[GK_MAX_MODELS] = {in->x[0], in->x[1], in->x[2], in->x[3]};
    static const float w[GK_MAX_MODELS] = {0.5f, 0.3f, -0.2f, 0.45f};
    static const size_t at[] = {0, 1024, 4000, 8191}, lens[] = {1024, 1000, 17, 1};
    int runs = 0;
    for (int k = 1; k <= GK_MAX_MODELS; k++)
        for (int norm = 0; norm < 2; norm++)
            for (int obf = 0; obf < 2; obf++)
                for (size_t t = 0; t < 4; t++) {
                    linear_case(x, w, k, norm, false, obf, at[t], lens[t]);
                    runs++;
                }
    assert_int_equal(runs, GK_MAX_MODELS * 2 * 2 * 4);
    /* a NaN input: reported; outside the block: not */
    uint16_t out[1024];
    size_t ob;
    in->x[2][3000 + 5] = 0x7fc0;
    assert_true(gk_linear(x, w, 3, false, 0.6f, false, true, 3000, 100, out, &ob));
    assert_false(gk_linear(x, w, 3, false, 0.6f, false, true, 3006, 100, out, &ob));
    assert_false(gk_linear(x, w, 2, false, 0.8f, false, true, 3000, 100, out, &ob)); /* model 2 not in the merge */
    /* finite inputs whose weighted sum overflows: the first such element */
    in->x[0][5000 + 21] = to_bf(3.0e38f);
    in->x[1][5000 + 21] = to_bf(3.0e38f);
    in->x[0][5000 + 40] = to_bf(3.0e38f);
    in->x[1][5000 + 40] = to_bf(3.0e38f);
    static const float big[2] = {1.0f, 1.0f};
    assert_false(gk_linear(x, big, 2, false, 2.0f, false, false, 5000, 64, out, &ob));
    assert_int_equal(ob, 21);
    /* bf16 results at the edges of the rounding, each in its own vector
     * among ordinary ones: a denormal (kept, not flushed to zero, as
     * AVX512-BF16's conversion would), one that rounds up to infinity
     * (finite in f32, so not an error), -0; bit for bit as f32_to_bf16 */
    static const float w1[1] = {0.5f};
    static const float edge[] = {1.5e-38f, -2.2e-38f, 3.3961e38f, -0.0f, 1.17549435e-38f};
    for (size_t t = 0; t < sizeof edge / sizeof edge[0]; t++) in->x[3][6000 + 16 * t + 3] = to_bf(edge[t]);
    const uint16_t *x3[1] = {in->x[3]};
    uint16_t want[96];
    assert_false(gk_linear(x3, w1, 1, false, 0.5f, false, true, 6000, 96, out, &ob));
    for (size_t j = 0; j < 96; j++) want[j] = f32_to_bf16(0.0f + 0.5f * bf(in->x[3][6000 + j]));
    assert_memory_equal(out, want, sizeof want);
    assert_int_equal(want[3] & 0x7f80, 0);       /* 0.75e-38: a denormal */
    assert_int_not_equal(want[3] & 0x7f, 0);
    static const float w2[1] = {1.002f}; /* 3.3895e38 (the largest bf16) * 1.002: past the last rounding midpoint */
    assert_false(gk_linear(x3, w2, 1, false, 1.0f, false, true, 6000, 96, out, &ob));
    assert_int_equal(ob, 96);
    for (size_t j = 0; j < 96; j++) want[j] = f32_to_bf16(0.0f + 1.002f * bf(in->x[3][6000 + j]));
    assert_memory_equal(out, want, sizeof want);
    assert_int_equal(want[16 * 2 + 3], 0x7f80); /* rounded to infinity */
    free(in);
}

/* The f16 loops against the same formulas, bit for bit, the values read
 * and rounded as IEEE half. The task-arithmetic kernel takes (gk_takes) and
 * merges the blocks its lean loop fits: whole vectors of 32, no input to
 * test, the rescale in every model or none as the keep kind says, each
 * rule one threshold over the block; the rest it leaves (tails, a block
 * holding a tie range, a model to test, a rescale that does not fit, an
 * f32 output). */
static void test_f16(void **state) {
    (void)state;
    if (!GTA_KERNEL) {
        skip();
        return;
    }
    inputs *in = malloc(sizeof *in);
    assert_non_null(in);
    fill_as(in, 5, true);
    gk_args a;
    int taken = 0, left = 0, fits = 0;
    for (int k = 1; k <= GK_MAX_MODELS; k++)
        for (int variant = 1; variant < 8; variant += 2) /* f16 out */
            for (uint64_t seed = 0; seed < 5; seed++) {
                setup_args(&a, in, k, variant, seed);
                a.in_f16 = true;
                for (int i = 0; i < k; i++) { /* DARE's masks rescale, the others do not */
                    bool dare = a.m[i].keep == GK_RANDOM || a.m[i].keep == GK_BITS;
                    a.m[i].s = dare ? (a.m[i].s == 1.0f ? 1.5f : a.m[i].s) : 1.0f;
                }
                gk_block_fn fn = gk_select(&a);
                assert_non_null(fn);
                for (size_t b0 = 0; b0 + 1024 <= N; b0 += 1024)
                    for (size_t m = 32; m <= 1024; m *= 32) {
                        if (!gk_takes(&a, b0, m)) {
                            left++;
                            continue;
                        }
                        compare(&a, fn, b0, m);
                        taken++;
                    }
                assert_false(gk_takes(&a, 5120, 1000)); /* a tail */
                assert_false(gk_takes(&a, 5120, 48));
                if (!gk_takes(&a, 5120, 1024)) continue; /* (mixed kinds with DARE's: none fits) */
                fits++;
                a.m[k - 1].check = true; /* an input to test */
                assert_false(gk_takes(&a, 5120, 1024));
                a.m[k - 1].check = false;
                float s = a.m[0].s; /* a rescale the kind does not have, or the lack of one */
                a.m[0].s = s == 1.0f ? 1.5f : 1.0f;
                assert_false(gk_takes(&a, 5120, 1024));
                a.m[0].s = s;
                a.out_bf16 = false; /* f32 out */
                assert_false(gk_takes(&a, 5120, 1024));
            }
    assert_true(taken > 200 && left > 200 && fits > 15);
    /* whole-vector blocks past every tie range: taken whatever the kinds */
    setup_args(&a, in, 3, 5, 2);
    a.in_f16 = true;
    for (int i = 0; i < 3; i++) a.m[i].keep = GK_TOP, a.m[i].s = 1.0f;
    assert_true(gk_takes(&a, 6144, 1024));
    /* every model whole, every input to test (task_arithmetic): taken by
     * the loop that tests them; a NaN in the base or a model reported */
    for (int variant = 1; variant < 8; variant += 2) {
        setup_args(&a, in, 3, variant, 4);
        a.in_f16 = a.check_base = true;
        for (int i = 0; i < 3; i++) a.m[i].keep = GK_WHOLE, a.m[i].s = 1.0f, a.m[i].check = true;
        gk_block_fn fn = gk_select(&a);
        assert_true(gk_takes(&a, 6144, 1024) && gk_takes(&a, 0, 64) && !gk_takes(&a, 0, 40));
        compare(&a, fn, 6144, 1024);
        uint16_t keep = in->base[6144 + 7];
        in->base[6144 + 7] = 0x7e00;
        compare(&a, fn, 6144, 1024);
        in->base[6144 + 7] = keep;
        keep = in->x[2][6144 + 40];
        in->x[2][6144 + 40] = 0xfc00;
        compare(&a, fn, 6144, 1024);
        uint16_t out1[1024];
        size_t ob1;
        assert_true(fn(&a, 6144, 1024, out1, &ob1));
        assert_false(fn(&a, 6144 + 64, 960, out1, &ob1));
        in->x[2][6144 + 40] = keep;
    }
    /* a result past the largest f16 (finite in f32): infinity, not an
     * error; a NaN one located, as the bf16 store does */
    for (int i = 0; i < 3; i++) a.m[i].keep = GK_WHOLE;
    a.consensus = a.normalize = false;
    gk_block_fn fn = gk_select(&a);
    a.m[0].w = 3e6f;
    in->x[0][7000 + 21] = f32_to_f16(1.0f), in->base[7000 + 21] = f32_to_f16(-1.0f);
    assert_true(gk_takes(&a, 6976, 64));
    compare(&a, fn, 6976, 64);
    uint16_t out[64];
    size_t ob;
    fn(&a, 6976, 64, out, &ob);
    assert_int_equal(out[21 + 24] & 0x7fff, 0x7c00);
    assert_int_equal(ob, 64);
    a.m[0].w = 3e38f, a.m[1].w = -3e38f;
    in->x[1][7000 + 21] = f32_to_f16(1.0f);
    fn(&a, 6976, 64, out, &ob);
    assert_int_equal(ob, 21 + 24);
    /* linear's f16 loop: 1 to 4 models, tails, subnormal results; a NaN
     * input reported */
    const uint16_t *x[GK_MAX_MODELS] = {in->x[0], in->x[1], in->x[2], in->x[3]};
    static const float w[GK_MAX_MODELS] = {0.5f, 0.3f, -0.2f, 0.45f};
    static const size_t at[] = {0, 1024, 4000, 8191}, lens[] = {1024, 1000, 17, 1};
    in->x[0][1024 + 5] = f32_to_f16(1e-6f); /* one model: 0.5e-6 out, an f16 subnormal */
    uint16_t sub = f32_to_f16(0.0f + 0.5f * f16_to_f32(in->x[0][1024 + 5]));
    assert_true((sub & 0x7c00) == 0 && sub != 0);
    for (int k = 1; k <= GK_MAX_MODELS; k++)
        for (int norm = 0; norm < 2; norm++)
            for (size_t t = 0; t < 4; t++) linear_case(x, w, k, norm, true, true, at[t], lens[t]);
    in->x[2][3000 + 5] = 0x7e00;
    assert_true(gk_linear(x, w, 3, false, 0.6f, true, true, 3000, 100, out, &ob));
    assert_false(gk_linear(x, w, 2, false, 0.8f, true, true, 3000, 100, out, &ob));
    free(in);
}

/* gk_slerp_sums against slerp.c's loop (lane e % 8, in order, products
 * rounded before they are added) and gk_lerp against s0 x0 + s1 x1, bit
 * for bit, across blocks and tails; a NaN input reported by the sums. */
static void slerp_case(bool f16) {
    inputs *in = malloc(sizeof *in);
    assert_non_null(in);
    fill_as(in, 13, f16);
    const uint16_t *x0 = in->base, *x1 = in->x[1];
    static const size_t lens[] = {1024, 1000, 24, 9, 1};
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        double got[24] = {0}, want[24] = {0};
        for (size_t b0 = 64; b0 + lens[t] <= 64 + 3 * 1024; b0 += 1024) { /* three blocks of one chunk */
            assert_false(gk_slerp_sums(x0, x1, b0, lens[t], f16, got));
            for (size_t j = 0; j < lens[t]; j++) {
                double p = f16 ? f16_to_f32(x0[b0 + j]) : bf(x0[b0 + j]);
                double q = f16 ? f16_to_f32(x1[b0 + j]) : bf(x1[b0 + j]);
                want[j % 8] += p * p;
                want[8 + j % 8] += q * q;
                want[16 + j % 8] += p * q;
            }
        }
        assert_memory_equal(got, want, sizeof got);
        for (int obf = f16; obf < 2; obf++) { /* f16: f16 out alone */
            uint32_t o[1024], w[1024];
            memset(o, 0xab, sizeof o);
            memcpy(w, o, sizeof w);
            size_t ob;
            gk_lerp(x0, x1, 0.7f, -0.45f, f16, obf, 200, lens[t], o, &ob);
            assert_int_equal(ob, lens[t]);
            for (size_t j = 0; j < lens[t]; j++) {
                float v = f16 ? 0.7f * f16_to_f32(x0[200 + j]) + -0.45f * f16_to_f32(x1[200 + j])
                              : 0.7f * bf(x0[200 + j]) + -0.45f * bf(x1[200 + j]);
                if (f16)
                    ((uint16_t *)w)[j] = f32_to_f16(v);
                else if (obf)
                    ((uint16_t *)w)[j] = f32_to_bf16(v);
                else
                    ((float *)w)[j] = v;
            }
            assert_memory_equal(o, w, sizeof o); /* nothing written past the block either */
        }
    }
    double sums[24] = {0};
    in->x[1][4000 + 7] = f16 ? 0x7c00 : 0x7f80; /* +infinity */
    assert_true(gk_slerp_sums(x0, x1, 4000, 16, f16, sums));
    assert_false(gk_slerp_sums(x0, x1, 4016, 16, f16, sums)); /* past it */
    free(in);
}

static void test_slerp(void **state) {
    (void)state;
    if (!GTA_KERNEL) skip();
    slerp_case(false);
    slerp_case(true);
}

static void test_nonfinite(void **state) {
    (void)state;
    inputs *in = kernel_inputs(9);
    gk_args a;
    setup_args(&a, in, 3, 7, 2);
    for (int i = 0; i < 3; i++) a.m[i].keep = GK_WHOLE;
    gk_block_fn fn = gk_select(&a);
    assert_non_null(fn);
    /* a NaN in model 1: reported only when that model is checked */
    in->x[1][2000 + 37] = 0x7fc0;
    uint16_t out[1024];
    size_t ob;
    assert_false(fn(&a, 2000, 100, out, &ob));
    a.m[1].check = true;
    assert_true(fn(&a, 2000, 100, out, &ob));
    assert_false(fn(&a, 2040, 100, out, &ob)); /* outside the block */
    /* infinity in the base, checked */
    in->base[4000 + 3] = 0x7f80;
    a.check_base = true;
    assert_true(fn(&a, 4000, 16, out, &ob));
    in->base[4000 + 3] = 0x3c00;
    /* a result that overflows: the first such index in the block */
    a.m[0].w = 3e38f;
    in->x[0][5000 + 21] = to_bf(1.0f), in->base[5000 + 21] = to_bf(-1.0f);
    in->x[0][5000 + 40] = to_bf(1.0f), in->base[5000 + 40] = to_bf(-1.0f);
    a.normalize = false, a.consensus = false;
    fn = gk_select(&a);
    bool bad = fn(&a, 5000, 64, out, &ob);
    assert_false(bad);
    assert_int_equal(ob, 21);
    compare(&a, fn, 5000, 64);
    /* the kernel takes even and odd elements apart: an even one first
     * (5040, before 5047), then an odd one (5021, before 5040) */
    in->x[0][5000 + 47] = to_bf(1.0f), in->base[5000 + 47] = to_bf(-1.0f);
    assert_false(fn(&a, 5024, 40, out, &ob));
    assert_int_equal(ob, 16);
    assert_false(fn(&a, 5016, 40, out, &ob));
    assert_int_equal(ob, 5);
    /* +inf + -inf: a NaN result, stored as torch stores it (quiet) */
    a.m[1].w = -3e38f, a.m[1].s = 1.0f;
    in->x[1][5000 + 21] = to_bf(1.0f);
    compare(&a, fn, 5000, 64);
    uint16_t nan_out[64];
    fn(&a, 5000, 64, nan_out, &ob);
    assert_int_equal(nan_out[21] & 0x7fc0, 0x7fc0);
    assert_int_equal(ob, 21);
    free(in);
}

/* gk_dare_survey: the mask bits are rng_keep32's, and each model's two
 * sums are those of GK_LANES lanes with the elements of each 32 taken even
 * ones first (lane l: elements 2 l, 2 l + 1, 2 l + 32, 2 l + 33, ... of the
 * block, in that order; f16: l, l + 16, l + 32, ...) added by halves (l[i]
 * + l[i + w] for w = GK_LANES / 2, ..., 1); tails included. The magnitudes
 * here spread over many exponents, so sums in another order would round
 * differently. Three models at once give each the sums and bits it has
 * alone. */
static float lanes_sum(float *lane, int lanes) {
    for (int w = lanes / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) lane[i] = lane[i] + lane[i + w];
    return lane[0];
}

#define DS_K 3

static void dare_survey_case(bool f16) {
    uint16_t *x[DS_K], *base = malloc(N * sizeof *base);
    assert_non_null(base);
    for (int i = 0; i < DS_K; i++) assert_non_null(x[i] = malloc(N * sizeof *x[i]));
    for (size_t e = 0; e < N; e++) {
        double u1 = rng_uniform(31, 0, e) + 1e-12, u2 = rng_uniform(31, 1, e);
        double g = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        /* the difference of a bf16 near 1 and a small one has many significant bits */
        float bv = (float)(1e-4 * g);
        base[e] = f16 ? f32_to_f16(bv) : to_bf(bv);
        for (int i = 0; i < DS_K; i++) {
            float xv = (float)(1.0 + (i + 1) * rng_uniform(31, 2 + (uint64_t)i, e));
            x[i][e] = f16 ? f32_to_f16(xv) : to_bf(xv);
        }
    }
    const uint16_t *xs[DS_K] = {x[0], x[1], x[2]};
    uint64_t key[DS_K];
    uint32_t thr[DS_K];
    for (int i = 0; i < DS_K; i++) key[i] = rng_stream_key(77, 1 + (uint64_t)i), thr[i] = rng_thr32(0.35 + 0.2 * i);
    static const size_t lens[] = {1024, 1000, 40, 24, 9, 8, 1};
    int other_order_differs = 0;
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        size_t b0 = 8 * (37 + 101 * t), m = lens[t];
        static uint8_t bits[DS_K][N / 8], want_bits[DS_K][N / 8];
        memset(bits, 0xee, sizeof bits);
        memcpy(want_bits, bits, sizeof bits);
        float wb[DS_K], wa[DS_K];
        for (int i = 0; i < DS_K; i++) {
            float lb[GK_LANES] = {0}, la[GK_LANES] = {0}, ob[GK_LANES] = {0};
            for (size_t j = 0; j < m; j++) {
                size_t e = b0 + j;
                float a = f16 ? fabsf(f16_to_f32(x[i][e]) - f16_to_f32(base[e])) : fabsf(bf(x[i][e]) - bf(base[e]));
                bool keep = rng_keep32(key[i], e, thr[i]);
                size_t lane = f16 ? j % GK_LANES : j % (2 * GK_LANES) / 2;
                size_t other = f16 ? j % (2 * GK_LANES) / 2 : j % GK_LANES;
                lb[lane] += a;
                ob[other] += a; /* the other layout's order */
                if (keep) la[lane] += a;
                if (j % 8 == 0) want_bits[i][e / 8] = 0;
                want_bits[i][e / 8] |= (uint8_t)(keep << (e % 8));
            }
            wb[i] = lanes_sum(lb, GK_LANES), wa[i] = lanes_sum(la, GK_LANES);
            other_order_differs += lanes_sum(ob, GK_LANES) != wb[i];
        }
        float before[DS_K], after[DS_K];
        uint8_t *bp[DS_K] = {bits[0], bits[1], bits[2]};
        assert_false(gk_dare_survey(xs, DS_K, base, b0, m, key, thr, bp, f16, before, after));
        for (int i = 0; i < DS_K; i++) {
            if (!(before[i] == wb[i] && after[i] == wa[i]))
                fail_msg("m %zu model %d: %.9g %.9g, want %.9g %.9g", m, i, (double)before[i], (double)after[i],
                         (double)wb[i], (double)wa[i]);
            if (m >= 24) assert_true(after[i] > 0.0f && after[i] < before[i]);
        }
        /* the block's bytes, nothing around them */
        assert_memory_equal(bits, want_bits, sizeof bits);
        /* one model alone, and without bits (bits NULL, or its own NULL):
         * the same sums, nothing stored */
        for (int i = 0; i < DS_K; i++) {
            float nb, na;
            assert_false(gk_dare_survey(&xs[i], 1, base, b0, m, &key[i], &thr[i], NULL, f16, &nb, &na));
            assert_true(nb == before[i] && na == after[i]);
        }
        uint8_t *some[DS_K] = {NULL, bits[1], NULL};
        memset(bits, 0xee, sizeof bits);
        float sb[DS_K], sa[DS_K];
        assert_false(gk_dare_survey(xs, DS_K, base, b0, m, key, thr, some, f16, sb, sa));
        assert_memory_equal(bits[1], want_bits[1], sizeof bits[1]);
        assert_int_equal(bits[0][b0 / 8], 0xee);
        assert_int_equal(bits[2][b0 / 8], 0xee);
        for (int i = 0; i < DS_K; i++) assert_true(sb[i] == before[i] && sa[i] == after[i]);
        /* two models, and four (the first again as the fourth): each its own sums */
        const uint16_t *xs4[4] = {x[0], x[1], x[2], x[0]};
        uint64_t key4[4] = {key[0], key[1], key[2], key[0]};
        uint32_t thr4[4] = {thr[0], thr[1], thr[2], thr[0]};
        float b4[4], a4[4];
        assert_false(gk_dare_survey(xs4, 2, base, b0, m, key4, thr4, NULL, f16, b4, a4));
        for (int i = 0; i < 2; i++) assert_true(b4[i] == before[i] && a4[i] == after[i]);
        assert_false(gk_dare_survey(xs4, 4, base, b0, m, key4, thr4, NULL, f16, b4, a4));
        for (int i = 0; i < 4; i++) assert_true(b4[i] == before[i % DS_K] && a4[i] == after[i % DS_K]);
    }
    assert_true(other_order_differs > 0); /* the plain order would have summed to another value */
    /* a NaN in any model's block is reported; the blocks around it are not */
    float before[DS_K], after[DS_K];
    x[2][3000] = f16 ? 0xfe00 : 0xffc0;
    assert_true(gk_dare_survey(xs, DS_K, base, 2992, 16, key, thr, NULL, f16, before, after));
    assert_true(gk_dare_survey(&xs[2], 1, base, 2992, 40, &key[2], &thr[2], NULL, f16, before, after));
    assert_false(gk_dare_survey(xs, DS_K, base, 3008, 16, key, thr, NULL, f16, before, after));
    assert_false(gk_dare_survey(xs, 2, base, 2992, 16, key, thr, NULL, f16, before, after));
    for (int i = 0; i < DS_K; i++) free(x[i]);
    free(base);
}

static void test_dare_survey(void **state) {
    (void)state;
    if (!GTA_KERNEL) {
        skip();
        return;
    }
    dare_survey_case(false);
    dare_survey_case(true);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_formula),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_slerp),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_dare_survey),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
