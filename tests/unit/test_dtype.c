/* test_dtype.c — element type table and the bf16/f16 <-> f32 conversions
 * (src/util/dtype.c): exact known values, round-to-nearest-even, every 16-bit
 * pattern through f32 and back, and an independent nearest-value reference
 * for f32 -> f16 / bf16 over a sweep of f32 bit patterns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/dtype.h"

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_bf16_known(void **state) {
    (void)state;
    assert_true(bf16_to_f32(0x3f80) == 1.0f);
    assert_true(bf16_to_f32(0xc020) == -2.5f);
    assert_true(bf16_to_f32(0x0000) == 0.0f);
    assert_true(signbit(bf16_to_f32(0x8000)));
    assert_true(bf16_to_f32(0x0001) == ldexpf(1.0f, -133)); /* smallest subnormal */
    assert_true(isinf(bf16_to_f32(0x7f80)) && bf16_to_f32(0x7f80) > 0);
    assert_true(isinf(bf16_to_f32(0xff80)) && bf16_to_f32(0xff80) < 0);
    assert_true(isnan(bf16_to_f32(0x7fc0)));
    assert_true(isnan(bf16_to_f32(0x7f81)));

    assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(f32_to_bf16(-2.5f), 0xc020);
    assert_int_equal(f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(f32_to_bf16(-INFINITY), 0xff80);
    /* round to nearest, ties to even */
    assert_int_equal(f32_to_bf16(from_bits(0x3f808000)), 0x3f80); /* tie, down to even */
    assert_int_equal(f32_to_bf16(from_bits(0x3f818000)), 0x3f82); /* tie, up to even */
    assert_int_equal(f32_to_bf16(from_bits(0x3f808001)), 0x3f81); /* above the tie */
    assert_int_equal(f32_to_bf16(from_bits(0x3f807fff)), 0x3f80); /* below the tie */
    assert_int_equal(f32_to_bf16(from_bits(0xbf818000)), 0xbf82); /* sign symmetric */
    assert_int_equal(f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds to inf, as torch */
    assert_int_equal(f32_to_bf16(from_bits(0x00008000)), 0x0000); /* subnormal tie to even */
    assert_int_equal(f32_to_bf16(from_bits(0x00018000)), 0x0002);
    /* NaNs stay NaN, including signalling ones whose payload is in the low bits */
    assert_true(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    assert_true(isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001)))));
    assert_true(isnan(bf16_to_f32(f32_to_bf16(from_bits(0xff800001)))));
    assert_true(isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7fffffff)))));
}

static void test_f16_known(void **state) {
    (void)state;
    assert_true(f16_to_f32(0x3c00) == 1.0f);
    assert_true(f16_to_f32(0xc100) == -2.5f);
    assert_true(f16_to_f32(0x7bff) == 65504.0f);
    assert_true(f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    assert_true(f16_to_f32(0x03ff) == ldexpf(1023.0f, -24)); /* largest subnormal */
    assert_true(f16_to_f32(0x0400) == ldexpf(1.0f, -14));    /* smallest normal */
    assert_true(f16_to_f32(0x8001) == -ldexpf(1.0f, -24));
    assert_true(f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_true(f16_to_f32(0x0000) == 0.0f && !signbit(f16_to_f32(0x0000)));
    assert_true(signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f);
    assert_true(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
    assert_true(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
    assert_true(isnan(f16_to_f32(0x7e00)));
    assert_true(isnan(f16_to_f32(0x7c01)));
    assert_true(isnan(f16_to_f32(0xfe00)));

    assert_int_equal(f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(f32_to_f16(-2.5f), 0xc100);
    assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    assert_int_equal(f32_to_f16(ldexpf(1023.0f, -24)), 0x03ff);
    assert_int_equal(f32_to_f16(ldexpf(1.0f, -14)), 0x0400);
    /* round to nearest, ties to even */
    assert_int_equal(f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);     /* tie, down to even */
    assert_int_equal(f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02); /* tie, up to even */
    assert_int_equal(f32_to_f16(from_bits(to_bits(1.0f + ldexpf(1.0f, -11)) + 1)), 0x3c01);
    assert_int_equal(f32_to_f16(65519.0f), 0x7bff);     /* below the tie with 65536 */
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00);     /* tie with 2^16: to even = inf */
    assert_int_equal(f32_to_f16(-65520.0f), 0xfc00);
    assert_int_equal(f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(f32_to_f16(ldexpf(1.0f, -25)), 0x0000);                 /* half the smallest: even 0 */
    assert_int_equal(f32_to_f16(-ldexpf(1.0f, -25)), 0x8000);
    assert_int_equal(f32_to_f16(from_bits(to_bits(ldexpf(1.0f, -25)) + 1)), 0x0001);
    assert_int_equal(f32_to_f16(ldexpf(3.0f, -25)), 0x0002);                 /* 1.5 ulp: even 2 */
    assert_int_equal(f32_to_f16(ldexpf(5.0f, -25)), 0x0002);                 /* 2.5 ulp: even 2 */
    assert_int_equal(f32_to_f16(ldexpf(2047.0f, -25)), 0x0400);              /* carries into normal */
    assert_int_equal(f32_to_f16(ldexpf(1.0f, -26)), 0x0000);
    assert_int_equal(f32_to_f16(from_bits(1)), 0x0000);                      /* f32 subnormal */
    assert_true(isnan(f16_to_f32(f32_to_f16(NAN))));
    assert_true(isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001)))));
    assert_true(isnan(f16_to_f32(f32_to_f16(from_bits(0xffc00000)))));
}

/* Every 16-bit pattern survives 16 -> 32 -> 16 bit for bit (NaNs stay NaN). */
static void test_all_patterns_round_trip(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        bool nan16 = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
        assert_int_equal(isnan(f) != 0, nan16);
        if (nan16)
            assert_true(isnan(f16_to_f32(f32_to_f16(f))));
        else
            assert_int_equal(f32_to_f16(f), h);

        float g = bf16_to_f32((uint16_t)h);
        bool nanb = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
        assert_int_equal(isnan(g) != 0, nanb);
        if (nanb)
            assert_true(isnan(bf16_to_f32(f32_to_bf16(g))));
        else
            assert_int_equal(f32_to_bf16(g), h);
    }
    /* f16 values are exactly representable in f32 and ordered like their bits */
    for (uint32_t h = 1; h < 0x7c00; h++) assert_true(f16_to_f32((uint16_t)h) > f16_to_f32((uint16_t)(h - 1)));
}

/* Reference: the nearest of the (sorted) finite positive values of a 16-bit
 * format, ties to the even pattern; past the top by half an ulp -> inf. */
static uint16_t nearest(const double *val, uint32_t nfinite, uint16_t inf_bits, double x) {
    double top = val[nfinite - 1], ulp = top - val[nfinite - 2];
    if (x >= top + ulp / 2) return inf_bits; /* the tie itself goes to the even inf */
    uint32_t lo = 0, hi = nfinite - 1;       /* largest i with val[i] <= x */
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (val[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    if (lo == nfinite - 1) return (uint16_t)lo;
    double dl = x - val[lo], dh = val[lo + 1] - x;
    if (dl < dh) return (uint16_t)lo;
    if (dh < dl) return (uint16_t)(lo + 1);
    return (uint16_t)((lo & 1) ? lo + 1 : lo);
}

static void test_rounding_against_reference(void **state) {
    (void)state;
    double *v16 = malloc(sizeof(double) * 0x7c00), *vb = malloc(sizeof(double) * 0x7f80);
    assert_non_null(v16);
    assert_non_null(vb);
    for (uint32_t h = 0; h < 0x7c00; h++) v16[h] = f16_to_f32((uint16_t)h);
    for (uint32_t h = 0; h < 0x7f80; h++) vb[h] = bf16_to_f32((uint16_t)h);
    /* a sweep of f32 bit patterns, both signs, all exponents, plus every
     * pattern near the f16 range with low mantissa bits at the tie */
    uint64_t bad16 = 0, badb = 0;
    for (uint64_t k = 0; k < (1ull << 32); k += 4093) {
        uint32_t u = (uint32_t)k;
        for (int variant = 0; variant < 3; variant++) {
            uint32_t w = variant == 0 ? u : variant == 1 ? (u & ~0x1fffu) | 0x1000u : (u & ~0xffffu) | 0x8000u;
            float f = from_bits(w);
            if (isnan(f)) continue;
            uint16_t sign16 = (w >> 16) & 0x8000u;
            double a = fabs((double)f);
            uint16_t want16 = sign16 | (isinf(f) ? 0x7c00 : nearest(v16, 0x7c00, 0x7c00, a));
            uint16_t wantb = sign16 | (isinf(f) ? 0x7f80 : nearest(vb, 0x7f80, 0x7f80, a));
            bad16 += f32_to_f16(f) != want16;
            badb += f32_to_bf16(f) != wantb;
        }
    }
    assert_int_equal(bad16, 0);
    assert_int_equal(badb, 0);
    free(v16);
    free(vb);
}

static void test_to_f32_reports_first_nonfinite(void **state) {
    (void)state;
    float out[8];
    unsigned char buf[1 + 8 * 4];
    uint16_t bf[6] = {0x3f80, 0xc020, 0x0000, 0x7f80, 0x7fc0, 0x3f80};
    memcpy(buf + 1, bf, sizeof bf); /* deliberately unaligned source */
    assert_int_equal(dtype_to_f32(buf + 1, ALLOY_BF16, out, 6), 3);
    assert_true(out[0] == 1.0f && out[1] == -2.5f && out[2] == 0.0f && out[5] == 1.0f);
    assert_int_equal(dtype_to_f32(buf + 1, ALLOY_BF16, out, 3), -1);

    uint16_t h[5] = {0x3c00, 0x7bff, 0x0001, 0x8000, 0x7e00};
    memcpy(buf + 1, h, sizeof h);
    assert_int_equal(dtype_to_f32(buf + 1, ALLOY_F16, out, 5), 4);
    assert_true(out[1] == 65504.0f && out[2] == ldexpf(1.0f, -24));
    assert_int_equal(dtype_to_f32(buf + 1, ALLOY_F16, out, 4), -1);

    float f[4] = {NAN, 1.0f, 2.0f, INFINITY};
    memcpy(buf + 1, f, sizeof f);
    assert_int_equal(dtype_to_f32(buf + 1, ALLOY_F32, out, 4), 0);
    assert_int_equal(dtype_to_f32(buf + 1 + 4, ALLOY_F32, out, 3), 2);
    assert_int_equal(dtype_to_f32(buf + 1 + 4, ALLOY_F32, out, 2), -1);
    assert_true(out[0] == 1.0f && out[1] == 2.0f);
    assert_int_equal(dtype_to_f32(buf, ALLOY_F32, out, 0), -1);
}

static void test_from_f32(void **state) {
    (void)state;
    float src[4] = {1.0f, -2.5f, 65504.0f, 1.0f + ldexpf(1.0f, -11)};
    unsigned char dst[1 + 16];
    uint16_t h[4];
    dtype_from_f32(src, ALLOY_F16, dst + 1, 4);
    memcpy(h, dst + 1, sizeof h);
    assert_int_equal(h[0], 0x3c00);
    assert_int_equal(h[1], 0xc100);
    assert_int_equal(h[2], 0x7bff);
    assert_int_equal(h[3], 0x3c00);
    dtype_from_f32(src, ALLOY_BF16, dst + 1, 4);
    memcpy(h, dst + 1, sizeof h);
    assert_int_equal(h[0], 0x3f80);
    assert_int_equal(h[1], 0xc020);
    assert_int_equal(h[2], f32_to_bf16(65504.0f));
    float back[4];
    dtype_from_f32(src, ALLOY_F32, dst + 1, 4);
    memcpy(back, dst + 1, sizeof back);
    assert_memory_equal(back, src, sizeof src);
}

/* The block conversions (vector code where the CPU has F16C) give, bit
 * for bit, what the one-value ones give: every f16 pattern to f32 (the
 * finite ones, from an aligned and from an odd address; then all of them,
 * NaN payloads kept, the first infinity reported), and a sweep of f32
 * patterns (every 251st, NaNs among them, into an odd address) to f16. */
static void test_f16_blocks_match_scalar(void **state) {
    (void)state;
    unsigned char *hb = malloc(2 * 65536 + 1);
    float *f = malloc(65536 * sizeof *f);
    assert_true(hb && f);
    size_t nf = 0;
    for (uint32_t h = 0; h < 65536; h++)
        if ((h & 0x7c00u) != 0x7c00u) {
            uint16_t v = (uint16_t)h;
            memcpy(hb + 2 * nf, &v, 2);
            nf++;
        }
    assert_int_equal(nf, 63488);
    for (int off = 0; off < 2; off++) {
        unsigned char *src = off ? hb + 1 : hb;
        if (off) memmove(hb + 1, hb, 2 * nf);
        assert_int_equal(dtype_to_f32(src, ALLOY_F16, f, nf), -1);
        for (size_t i = 0; i < nf; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            assert_int_equal(to_bits(f[i]), to_bits(f16_to_f32(v)));
        }
    }
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t v = (uint16_t)h;
        memcpy(hb + 2 * h, &v, 2);
    }
    assert_int_equal(dtype_to_f32(hb, ALLOY_F16, f, 65536), 0x7c00); /* +infinity comes first */
    for (uint32_t h = 0; h < 65536; h++) assert_int_equal(to_bits(f[h]), to_bits(f16_to_f32((uint16_t)h)));
    free(f);
    free(hb);

    size_t batch = 1u << 16;
    float *src = malloc(batch * sizeof *src);
    unsigned char *dst = malloc(2 * batch + 1);
    assert_true(src && dst);
    uint64_t u = 0;
    while (u < ((uint64_t)1 << 32)) {
        size_t m = 0;
        for (; m < batch && u < ((uint64_t)1 << 32); m++, u += 251) src[m] = from_bits((uint32_t)u);
        dtype_from_f32(src, ALLOY_F16, dst + 1, m);
        for (size_t i = 0; i < m; i++) {
            uint16_t v;
            memcpy(&v, dst + 1 + 2 * i, 2);
            if (v != f32_to_f16(src[i])) fail_msg("f32 %08x: block gives %04x, f32_to_f16 %04x", to_bits(src[i]),
                                                  v, f32_to_f16(src[i]));
        }
    }
    free(src);
    free(dst);
}

static void test_names_and_sizes(void **state) {
    (void)state;
    alloy_dtype dt;
    for (int i = 0; i < ALLOY_DTYPE_COUNT; i++) {
        assert_int_equal(dtype_parse(dtype_name((alloy_dtype)i), &dt), 0);
        assert_int_equal(dt, i);
        assert_true(dtype_size((alloy_dtype)i) >= 1 && dtype_size((alloy_dtype)i) <= 8);
    }
    assert_int_equal(dtype_parse("F32", &dt), 0);
    assert_int_equal(dt, ALLOY_F32);
    assert_int_equal(dtype_parse("BF16", &dt), 0);
    assert_int_equal(dt, ALLOY_BF16);
    assert_int_equal(dtype_parse("F8_E4M3", &dt), 0);
    assert_int_equal(dt, ALLOY_F8_E4M3);
    assert_int_equal(dtype_parse("U64", &dt), 0);
    assert_int_equal(dt, ALLOY_U64);
    dt = ALLOY_U8;
    assert_int_equal(dtype_parse("f32", &dt), -1); /* case-sensitive, as the format */
    assert_int_equal(dtype_parse("F33", &dt), -1);
    assert_int_equal(dtype_parse("", &dt), -1);
    assert_int_equal(dt, ALLOY_U8); /* untouched on failure */

    assert_int_equal(dtype_size(ALLOY_F32), 4);
    assert_int_equal(dtype_size(ALLOY_BF16), 2);
    assert_int_equal(dtype_size(ALLOY_F16), 2);
    assert_int_equal(dtype_size(ALLOY_F64), 8);
    assert_int_equal(dtype_size(ALLOY_I64), 8);
    assert_int_equal(dtype_size(ALLOY_U8), 1);
    assert_int_equal(dtype_size(ALLOY_BOOL), 1);
    assert_int_equal(dtype_size(ALLOY_DTYPE_COUNT), 0);
    assert_string_equal(dtype_name(ALLOY_BF16), "BF16");
    assert_string_equal(dtype_name(ALLOY_I64), "I64");

    static const struct {
        const char *s;
        alloy_dtype dt;
    } torch[] = {{"bfloat16", ALLOY_BF16}, {"bf16", ALLOY_BF16}, {"float16", ALLOY_F16}, {"fp16", ALLOY_F16},
                 {"half", ALLOY_F16},      {"float32", ALLOY_F32}, {"fp32", ALLOY_F32},  {"float", ALLOY_F32}};
    for (size_t i = 0; i < sizeof torch / sizeof torch[0]; i++) {
        assert_int_equal(dtype_parse_torch(torch[i].s, &dt), 0);
        assert_int_equal(dt, torch[i].dt);
    }
    assert_int_equal(dtype_parse_torch("int8", &dt), -1);
    assert_int_equal(dtype_parse_torch("BF16", &dt), -1);
    assert_string_equal(dtype_torch_name(ALLOY_BF16), "bfloat16");
    assert_string_equal(dtype_torch_name(ALLOY_F16), "float16");
    assert_string_equal(dtype_torch_name(ALLOY_F32), "float32");
    assert_true(dtype_is_mergeable(ALLOY_F32) && dtype_is_mergeable(ALLOY_F16) && dtype_is_mergeable(ALLOY_BF16));
    assert_false(dtype_is_mergeable(ALLOY_I64) || dtype_is_mergeable(ALLOY_U8) || dtype_is_mergeable(ALLOY_F64));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_known),
        cmocka_unit_test(test_f16_known),
        cmocka_unit_test(test_all_patterns_round_trip),
        cmocka_unit_test(test_rounding_against_reference),
        cmocka_unit_test(test_to_f32_reports_first_nonfinite),
        cmocka_unit_test(test_from_f32),
        cmocka_unit_test(test_f16_blocks_match_scalar),
        cmocka_unit_test(test_names_and_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
