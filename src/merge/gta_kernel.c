/* gta_kernel.c — the fused AVX-512 loops over bf16 (and f16) inputs: the
 * task-arithmetic family's (its merge pass and DARE's first pass), linear's
 * and slerp's two passes (see gta_kernel.h); without AVX-512 it only says
 * that it has no kernel. */
#include "merge/gta_kernel.h"

#if GTA_KERNEL

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "util/rng.h"

/* How far ahead of the loop the inputs are asked for (as in source.c). */
#define GK_AHEAD 8192

/* The lanes of the 16 elements from j that lie in a block of m; every 32
 * elements, the lines GK_AHEAD bytes past element j of the np streams p
 * are asked for. */
static inline __attribute__((always_inline)) __mmask16 gk_step(size_t m, size_t j, const uint16_t *const *p, int np) {
    if (!(j & 31)) {
#pragma GCC unroll 5
        for (int i = 0; i < np; i++) _mm_prefetch((const char *)(p[i] + j) + GK_AHEAD, _MM_HINT_T0);
    }
    return m - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (m - j)) - 1u);
}

/* 16 bf16 values from p (lanes outside tm: 0), widened exactly to f32. */
static inline __m512i gk_widen(const uint16_t *p, __mmask16 tm) {
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tm, p)), 16);
}

/* 16 f16 values from p (lanes outside tm: 0), converted exactly to f32
 * (as bit patterns, like gk_widen's). */
static inline __m512i gk_widen_f16(const uint16_t *p, __mmask16 tm) {
    return _mm512_castps_si512(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tm, p)));
}

/* The merge loops take 32 elements at a time in one 512-bit load, as two
 * vectors of f32 patterns without a shuffle: the even elements (each
 * 32-bit lane's low half shifted up) and the odd ones (its high half, the
 * low half cleared); their results are joined back the same way into one
 * store. Lane l of the two halves holds element 2 l, resp. 2 l + 1. */

/* The lanes of the 32 elements from j that lie in a block of m, as 16-bit
 * lanes of the whole load (*tm) and as f32 lanes of each half; the lines
 * GK_AHEAD bytes past element j of the np streams p are asked for. */
static inline __attribute__((always_inline)) void gk_step32(size_t m, size_t j, const uint16_t *const *p, int np,
                                                            __mmask32 *tm, __mmask16 *te, __mmask16 *to) {
#pragma GCC unroll 5
    for (int i = 0; i < np; i++) _mm_prefetch((const char *)(p[i] + j) + GK_AHEAD, _MM_HINT_T0);
    size_t r = m - j >= 32 ? 32 : m - j;
    *tm = r == 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << r) - 1u);
    *te = (__mmask16)((1u << ((r + 1) / 2)) - 1u);
    *to = (__mmask16)((1u << (r / 2)) - 1u);
}

/* 32 bf16 values from p (lanes outside tm: 0), still packed. */
static inline __m512i gk_load32(const uint16_t *p, __mmask32 tm) { return _mm512_maskz_loadu_epi16(tm, p); }

/* Their even (h 0) or odd (h 1) elements widened exactly to f32. */
static inline __m512i gk_half(__m512i w, int h) {
    return h ? _mm512_and_si512(w, _mm512_set1_epi32((int32_t)0xffff0000u)) : _mm512_slli_epi32(w, 16);
}

/* Half h of the 32 values of w as f32 values: bf16, its even (h 0) or odd
 * (h 1) elements (gk_half); f16, its first 16 (h 0) or last 16 (h 1),
 * converted exactly in hardware. */
static inline __m512 gk_value(__m512i w, int h, bool f16) {
    if (f16) return _mm512_cvtph_ps(h ? _mm512_extracti64x4_epi64(w, 1) : _mm512_castsi512_si256(w));
    return _mm512_castsi512_ps(gk_half(w, h));
}

/* Lanes of tm whose bf16 (or f16) value is NaN or infinity (exponent all ones). */
static inline __mmask32 gk_nonfinite32(__m512i w, __mmask32 tm, bool f16) {
    const __m512i ex = _mm512_set1_epi16(f16 ? 0x7c00 : 0x7f80);
    return _mm512_mask_cmpeq_epi16_mask(tm, _mm512_and_si512(w, ex), ex);
}

/* The element of lane l of a half, counted from the 32's first: 2 l and,
 * in the second half, one more for bf16 (even and odd elements); l and 16
 * more for f16 (first and last 16). */
static inline __m512i gk_lane_elems(bool f16) {
    return f16 ? _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
               : _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}
static inline uint32_t gk_second_half(bool f16) { return f16 ? 16u : 1u; }

/* The even and the odd bits of w (bit l of each: bit 2 l, resp. 2 l + 1). */
static inline void gk_unzip(uint32_t w, __mmask16 *ev, __mmask16 *od) {
#if defined(__BMI2__)
    *ev = (__mmask16)_pext_u32(w, 0x55555555u);
    *od = (__mmask16)_pext_u32(w, 0xaaaaaaaau);
#else
    uint32_t x[2] = {w & 0x55555555u, (w >> 1) & 0x55555555u};
    for (int h = 0; h < 2; h++) {
        x[h] = (x[h] | x[h] >> 1) & 0x33333333u;
        x[h] = (x[h] | x[h] >> 2) & 0x0f0f0f0fu;
        x[h] = (x[h] | x[h] >> 4) & 0x00ff00ffu;
        x[h] = (x[h] | x[h] >> 8) & 0x0000ffffu;
    }
    *ev = (__mmask16)x[0], *od = (__mmask16)x[1];
#endif
}

/* Lanes of tm whose f32 pattern is NaN or infinity: one classify (quiet
 * and signalling NaN, +-infinity). */
static inline __mmask16 gk_nonfinite(__m512i u, __mmask16 tm) {
    return _mm512_mask_fpclass_ps_mask(tm, _mm512_castsi512_ps(u), 0x01 | 0x08 | 0x10 | 0x80);
}

/* The lower bound of a rule alone, on 16 magnitudes a at indices idx (all
 * in [e0, e1]): a > lb, or a == lb with tlo <= index <= thi (see gk_rule). */
static inline __mmask16 gk_at_least(__m512 a, float lb, uint32_t tlo, uint32_t thi, __m512i idx, size_t e0,
                                    size_t e1) {
    __m512 L = _mm512_set1_ps(lb);
    if (e0 >= tlo && e1 <= thi) return _mm512_cmp_ps_mask(a, L, _CMP_GE_OQ);
    if (e1 < tlo || e0 > thi) return _mm512_cmp_ps_mask(a, L, _CMP_GT_OQ);
    __mmask16 eqL = _mm512_cmp_ps_mask(a, L, _CMP_EQ_OQ);
    eqL = _mm512_mask_cmpge_epu32_mask(eqL, idx, _mm512_set1_epi32((int32_t)tlo));
    eqL = _mm512_mask_cmple_epu32_mask(eqL, idx, _mm512_set1_epi32((int32_t)thi));
    return _mm512_cmp_ps_mask(a, L, _CMP_GT_OQ) | eqL;
}

/* keep_rule_test (rankcut.h) on 16 magnitudes a at indices idx (all in
 * [e0, e1]). Where the indices lie all inside (or all outside) a tie range, a tie
 * at that bound is kept (or not) in every lane: one compare instead of
 * three; only the vectors that straddle an end of a range pay for the
 * index compares. */
static inline __mmask16 gk_rule(const keep_rule *r, __m512 a, __m512i idx, size_t e0, size_t e1) {
    __m512 U = _mm512_set1_ps(r->U);
    __mmask16 lower = gk_at_least(a, r->L, r->tlo, r->thi, idx, e0, e1), upper;
    if (e1 <= r->tu) {
        upper = _mm512_cmp_ps_mask(a, U, _CMP_LE_OQ);
    } else if (e0 > r->tu) {
        upper = _mm512_cmp_ps_mask(a, U, _CMP_LT_OQ);
    } else {
        __mmask16 eqU = _mm512_cmp_ps_mask(a, U, _CMP_EQ_OQ);
        eqU = _mm512_mask_cmple_epu32_mask(eqU, idx, _mm512_set1_epi32((int32_t)r->tu));
        upper = _mm512_cmp_ps_mask(a, U, _CMP_LT_OQ) | eqU;
    }
    return lower & upper;
}

/* rng_bits32_at (util/rng.h) of 16 lanes, given h = index * phi + key32. */
static inline __m512i gk_hash(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int32_t)0x846ca68bu));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

/* f32 patterns u rounded to bf16 (dtype.c's f32_to_bf16: nearest even,
 * NaN quieted), the result in the high half of each lane (the low half
 * not cleared); nf: the lanes that are not finite. */
static inline __m512i gk_round_high(__m512i u, __mmask16 nf) {
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    if (nf) { /* only a NaN needs more than the rounding (and fails the merge) */
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    }
    return r;
}

/* Results of the 32 elements from j, oe the even ones and oo the odd (lanes
 * te, to of them, tm of the whole), into element j of dst in bf16 or f32;
 * *first becomes the index of the first non-finite one unless it is
 * already below m. */
static inline __attribute__((always_inline)) void gk_store32(__m512 oe, __m512 oo, __mmask16 te, __mmask16 to,
                                                             __mmask32 tm, bool out_bf16, bool nt, void *dst,
                                                             size_t j, size_t *first, size_t m) {
    __m512i ue = _mm512_castps_si512(oe), uo = _mm512_castps_si512(oo);
    __mmask16 nfe = gk_nonfinite(ue, te), nfo = gk_nonfinite(uo, to);
    if ((nfe | nfo) && *first == m) {
        size_t fe = nfe ? 2 * (size_t)__builtin_ctz((unsigned)nfe) : 64;
        size_t fo = nfo ? 2 * (size_t)__builtin_ctz((unsigned)nfo) + 1 : 64;
        *first = j + (fe < fo ? fe : fo);
    }
    if (out_bf16) {
        /* the even results shifted down into the low halves, the odd ones'
         * high halves kept: (e >> 16) | (o & 0xffff0000) in one op */
        __m512i re = _mm512_srli_epi32(gk_round_high(ue, nfe), 16), ro = gk_round_high(uo, nfo);
        __m512i r = _mm512_ternarylogic_epi32(re, ro, _mm512_set1_epi32((int32_t)0xffff0000u), 0xf8);
        uint16_t *at = (uint16_t *)dst + j;
        /* into memory only the device reads: a whole line without reading
         * it first, and without evicting the inputs (dio.c's copy_out) */
        if (nt && tm == (__mmask32)0xffffffffu && !((uintptr_t)at & 63))
            _mm512_stream_si512((void *)at, r);
        else
            _mm512_mask_storeu_epi16(at, tm, r);
    } else {
        const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        _mm512_mask_storeu_ps((float *)dst + j, (__mmask16)tm, _mm512_permutex2var_ps(oe, lo, oo));
        _mm512_mask_storeu_ps((float *)dst + j + 16, (__mmask16)(tm >> 16), _mm512_permutex2var_ps(oe, hi, oo));
    }
}

/* The lean loop (gk_loop's lean): whole vectors of 32 only, no input tested
 * for NaN (the first pass did), and the rescale by s_i in every model or in
 * none, as the kind says: DARE's random and bit masks rescale, the others
 * do not (kind GK_KINDS: none). Where a block fits it, the loop drops the
 * tail masks and the per-model tests of the general one. */
static inline bool gk_lean_rescaled(int kind) { return kind == GK_RANDOM || kind == GK_BITS; }

static inline bool gk_lean_fits(const gk_args *a, int k, int kind, size_t m) {
    if (m % 32 || a->check_base) return false;
    for (int i = 0; i < k; i++)
        if (a->m[i].check || (a->m[i].s != 1.0f) != gk_lean_rescaled(kind)) return false;
    return true;
}

/* Its form that tests every input for NaN (task_arithmetic, whose merge
 * is the only pass): whole vectors, every model kept whole, no rescale. */
static inline bool gk_tested_fits(const gk_args *a, int k, int kind, size_t m) {
    if (m % 32 || kind != GK_WHOLE || !a->check_base) return false;
    for (int i = 0; i < k; i++)
        if (!a->m[i].check || a->m[i].s != 1.0f) return false;
    return true;
}

/* Results of the 32 elements from j taken as f16 loops take them, the
 * first 16 (lo) and the last 16 (hi; lanes tm of the 32), rounded to f16
 * in hardware as dtype.c's writer does (nearest even; a NaN, which fails
 * the merge, as it comes) into element j of dst; *first as gk_store32's. */
static inline __attribute__((always_inline)) void gk_store32_f16(__m512 lo, __m512 hi, __mmask32 tm, void *dst,
                                                                 size_t j, size_t *first, size_t m) {
    __mmask16 nfl = gk_nonfinite(_mm512_castps_si512(lo), (__mmask16)tm);
    __mmask16 nfh = gk_nonfinite(_mm512_castps_si512(hi), (__mmask16)(tm >> 16));
    if ((nfl | nfh) && *first == m)
        *first = j + (nfl ? (size_t)__builtin_ctz((unsigned)nfl) : 16 + (size_t)__builtin_ctz((unsigned)nfh));
    const int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512i r = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(lo, rn)), _mm512_cvtps_ph(hi, rn), 1);
    _mm512_mask_storeu_epi16((uint16_t *)dst + j, tm, r);
}

/* task_arithmetic.c's merge of a block, 32 elements at a time (the even
 * and the odd ones, 16 lanes each):
 *   d_i = w_i * s_i * m_i * (x_i - base)
 *   sum = 0 + d_0 + d_1 + ...; g = +1 if sum >= 0 else -1
 *   with consensus: mixed = sum of the d_i with sign(d_i) == g (zeros never
 *     agree), div = sum of their w_i (0 -> 1); else mixed = sum, div = div_all
 *   out = base + (mixed [* (1 / div)]) * lambda
 * With consensus, div is the sum of the w_i of the models that agree, so
 * 1 / div is one of 2^k values: a table over the agreement pattern (lane
 * p: the agreeing models' bits), made with the same float operations as
 * task_arithmetic.c's, takes one permute where a divide took about ten
 * cycles of the vector port. k, consensus, normalize, the output dtype
 * and, where every model keeps its elements the same way, that way (kind;
 * GK_KINDS: each model's own) are constants of each instance, so the model
 * loop unrolls and the registers hold it all. The models' arguments are
 * copied into locals first: dst may alias *a as far as the compiler knows,
 * and reading them through a cost a load and a test per model per vector.
 * uniform: each rule one threshold a side over the block (gk_body). lean:
 * whole vectors only, the rescale as the kind says (gk_lean_fits), and the
 * inputs either tested already (no tests) or, with tested, all of them
 * tested here (gk_tested_fits); f16 (lean only): the inputs and the output
 * IEEE half, the 32 elements taken as the first 16 and the last 16. */
#define GK_KINDS 5 /* kind: each model's own (a->m[i].keep) */
static inline __attribute__((always_inline)) bool gk_loop(const gk_args *a, int k, bool consensus, bool normalize,
                                                          bool out_bf16, int kind, bool uniform, bool lean,
                                                          bool tested, bool f16,
                                                          const float *lb, const float *ub, size_t b0, size_t m,
                                                          void *dst, size_t *obad) {
    const __m512 zero = _mm512_setzero_ps(), lambda = _mm512_set1_ps(a->lambda);
    const __m512i iota2 = gk_lane_elems(f16);
    const size_t second = gk_second_half(f16);
    const __m512i phi1 = _mm512_set1_epi32((int32_t)(uint32_t)(second * 0x9e3779b9u));
    const __m512i phi32 = _mm512_set1_epi32((int32_t)(32u * 0x9e3779b9u));
    /* 1 / div: of each agreement pattern with consensus, else of div_all */
    float rt[16] = {0};
    for (int p = 0; p < (1 << k); p++) {
        float d = 0.0f;
        for (int i = 0; i < k; i++)
            if (p >> i & 1) d = d + a->m[i].w;
        rt[p] = 1.0f / (d == 0.0f ? 1.0f : d);
    }
    const __m512 rtab = _mm512_loadu_ps(rt), rall = _mm512_set1_ps(1.0f / a->div_all);
    const uint16_t *const base = a->base;
    const bool check_base = lean ? tested : a->check_base;
    const uint16_t *xs[GK_MAX_MODELS];
    __m512 wv[GK_MAX_MODELS], sv[GK_MAX_MODELS];
    bool rescaled[GK_MAX_MODELS], check[GK_MAX_MODELS];
    gk_keep keep_rt[GK_MAX_MODELS];
    keep_rule rule[GK_MAX_MODELS];
    __m512 lbv[GK_MAX_MODELS], ubv[GK_MAX_MODELS]; /* uniform: the block's thresholds */
    const uint8_t *bits[GK_MAX_MODELS];
    __m512i thr[GK_MAX_MODELS];
    __m512i hw[GK_MAX_MODELS]; /* GK_RANDOM: index * phi + key32 of the current even lanes */
    for (int i = 0; i < k; i++) {
        const gk_model *g = &a->m[i];
        xs[i] = g->x;
        wv[i] = _mm512_set1_ps(g->w);
        sv[i] = _mm512_set1_ps(g->s);
        rescaled[i] = lean ? gk_lean_rescaled(kind) : g->s != 1.0f;
        check[i] = lean ? tested : g->check;
        keep_rt[i] = g->keep;
        rule[i] = g->rule;
        lbv[i] = _mm512_set1_ps(uniform ? lb[i] : 0.0f);
        ubv[i] = _mm512_set1_ps(uniform ? ub[i] : 0.0f);
        bits[i] = g->bits;
        thr[i] = _mm512_set1_epi32((int32_t)g->thr);
        hw[i] = _mm512_setzero_si512();
        if (g->keep == GK_RANDOM) {
            uint32_t k32 = rng_key32(g->rng_key, (uint64_t)b0 >> 32);
            __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(uint32_t)b0), iota2);
            hw[i] = _mm512_add_epi32(_mm512_mullo_epi32(idx, _mm512_set1_epi32((int32_t)0x9e3779b9u)),
                                     _mm512_set1_epi32((int32_t)k32));
        }
    }
    const uint16_t *streams[GK_MAX_MODELS + 1] = {base + b0};
    for (int i = 0; i < k; i++) streams[i + 1] = xs[i] + b0;
    __mmask32 bad = 0;
    size_t first = m;
    for (size_t j = 0; j < m; j += 32) {
        size_t e = b0 + j;
        __mmask32 tm;
        __mmask16 th[2];
        if (lean) { /* whole vectors only */
#pragma GCC unroll 5
            for (int i = 0; i < k + 1; i++) _mm_prefetch((const char *)(streams[i] + j) + GK_AHEAD, _MM_HINT_T0);
            tm = (__mmask32)0xffffffffu, th[0] = th[1] = (__mmask16)0xffff;
        } else {
            gk_step32(m, j, streams, k + 1, &tm, &th[0], &th[1]);
        }
        __m512i bw = gk_load32(base + e, tm), xw[GK_MAX_MODELS];
        if (check_base) bad |= gk_nonfinite32(bw, tm, f16);
        __mmask16 kb[GK_MAX_MODELS][2] = {{0}}; /* GK_BITS: the even and the odd bits */
#pragma GCC unroll 4
        for (int i = 0; i < k; i++) {
            xw[i] = gk_load32(xs[i] + e, tm);
            if (check[i]) bad |= gk_nonfinite32(xw[i], tm, f16);
            if ((kind == GK_KINDS ? keep_rt[i] : (gk_keep)kind) == GK_BITS) {
                /* e is a multiple of 8 here (b0 is, j is of 32); only the
                 * bytes of elements in the block are read */
                const uint8_t *p = bits[i] + e / 8;
                uint32_t w32 = 0;
                if (m - j >= 32) memcpy(&w32, p, 4);
                else
                    for (size_t q = 0; q < (m - j + 7) / 8; q++) w32 |= (uint32_t)p[q] << (8 * q);
                if (f16) /* the first 16 elements and the last 16 */
                    kb[i][0] = (__mmask16)w32, kb[i][1] = (__mmask16)(w32 >> 16);
                else
                    gk_unzip(w32, &kb[i][0], &kb[i][1]);
            }
        }
        __m512 o[2];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(uint32_t)(e + (h ? second : 0))), iota2);
            __m512 b = gk_value(bw, h, f16);
            __m512 t[GK_MAX_MODELS]; /* w_i * s_i * (x_i - base); d_i is t_i where keep[i] */
            __mmask16 keep[GK_MAX_MODELS];
#pragma GCC unroll 4
            for (int i = 0; i < k; i++) {
                __m512 v = _mm512_sub_ps(gk_value(xw[i], h, f16), b);
                /* (v * s) * w; v * 1 is v, so without a rescale one multiply */
                __m512 vs = rescaled[i] ? _mm512_mul_ps(v, sv[i]) : v;
                t[i] = _mm512_mul_ps(vs, wv[i]);
                __mmask16 kp = 0xffff;
                /* a constant where every model keeps the same way */
                switch (kind == GK_KINDS ? keep_rt[i] : (gk_keep)kind) {
                case GK_WHOLE:
                    break;
                case GK_TOP: /* |v| > L, or |v| == L at an index up to thi */
                    kp = uniform ? _mm512_cmp_ps_mask(_mm512_abs_ps(v), lbv[i], _CMP_GE_OQ)
                                 : gk_at_least(_mm512_abs_ps(v), rule[i].L, 0, rule[i].thi, idx, e, e + 31);
                    break;
                case GK_RULE:
                    if (uniform) {
                        __m512 av = _mm512_abs_ps(v);
                        kp = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(av, lbv[i], _CMP_GE_OQ), av, ubv[i],
                                                     _CMP_LE_OQ);
                    } else {
                        kp = gk_rule(&rule[i], _mm512_abs_ps(v), idx, e, e + 31);
                    }
                    break;
                case GK_RANDOM:
                    kp = _mm512_cmplt_epu32_mask(gk_hash(h ? _mm512_add_epi32(hw[i], phi1) : hw[i]), thr[i]);
                    break;
                case GK_BITS:
                    kp = kb[i][h];
                    break;
                }
                keep[i] = kp;
            }
            /* 0 + d_0 + d_1 + ...: lanes not kept add +0, which changes no
             * partial sum (one is never -0: it starts from +0), so they are
             * left as they are */
            __m512 sum = _mm512_maskz_add_ps(keep[0], zero, t[0]);
#pragma GCC unroll 4
            for (int i = 1; i < k; i++) sum = _mm512_mask_add_ps(sum, keep[i], sum, t[i]);
            __m512 mx = sum, rdv = rall;
            if (consensus) {
                /* g = +1 where sum >= 0: sum is never -0 (it starts from +0),
                 * so that is its sign bit clear, and d_i agrees iff d_i with
                 * that sign bit flipped in is > 0 (zeros and NaN never do). A
                 * NaN sum (inf - inf) fails the merge whichever sign it has. */
                __m512 sg = _mm512_and_ps(sum, _mm512_castsi512_ps(_mm512_set1_epi32((int32_t)0x80000000u)));
                __m512 mixed = zero;
                __m512i pat = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int i = 0; i < k; i++) {
                    __mmask16 agree = _mm512_mask_cmp_ps_mask(keep[i], _mm512_xor_ps(t[i], sg), zero, _CMP_GT_OQ);
                    mixed = _mm512_mask_add_ps(mixed, agree, mixed, t[i]);
                    if (normalize) pat = _mm512_mask_or_epi32(pat, agree, pat, _mm512_set1_epi32(1 << i));
                }
                mx = mixed;
                if (normalize) rdv = _mm512_permutexvar_ps(pat, rtab);
            }
            __m512 scaled = normalize ? _mm512_mul_ps(mx, rdv) : mx;
            o[h] = _mm512_add_ps(b, _mm512_mul_ps(scaled, lambda));
        }
#pragma GCC unroll 4
        for (int i = 0; i < k; i++)
            if ((kind == GK_KINDS ? keep_rt[i] : (gk_keep)kind) == GK_RANDOM) hw[i] = _mm512_add_epi32(hw[i], phi32);
        if (f16)
            gk_store32_f16(o[0], o[1], tm, dst, j, &first, m);
        else
            gk_store32(o[0], o[1], th[0], th[1], tm, out_bf16, a->nt_store, dst, j, &first, m);
    }
    *obad = first;
    return bad != 0;
}

/* The rule of a model as one threshold on each side over the block [e0,
 * e1], where no end of a tie range falls inside it: with a >= 0, a > L is
 * a >= nextup(L) and a < U is a <= nextdown(U), so the index compares of
 * gk_rule drop out of the loop. False where a range ends inside the block,
 * or a bound is not finite (left to gk_rule). */
static bool gk_uniform_rule(const keep_rule *r, bool two_sided, size_t e0, size_t e1, float *lb, float *ub) {
    if (!isfinite(r->L) || (two_sided && !isfinite(r->U))) return false;
    bool lo_tied_all = e0 >= r->tlo && e1 <= r->thi, lo_tied_none = e1 < r->tlo || e0 > r->thi;
    if (!lo_tied_all && !lo_tied_none) return false;
    *lb = lo_tied_all ? r->L : nextafterf(r->L, INFINITY);
    *ub = INFINITY;
    if (!two_sided) return true;
    if (e1 <= r->tu) *ub = r->U;
    else if (e0 > r->tu) *ub = nextafterf(r->U, -INFINITY);
    else return false;
    return true;
}

/* gk_uniform_rule of every model with a rule, into lb[i], ub[i]; false
 * where one of them is not uniform over the block. */
static bool gk_uniform_rules(const gk_args *a, int k, size_t b0, size_t m, float *lb, float *ub) {
    for (int i = 0; i < k; i++) {
        gk_keep kd = a->m[i].keep;
        if ((kd == GK_TOP || kd == GK_RULE) &&
            !gk_uniform_rule(&a->m[i].rule, kd == GK_RULE, b0, b0 + m - 1, &lb[i], &ub[i]))
            return false;
    }
    return true;
}

/* The way every model keeps its elements, or GK_KINDS where they differ. */
static int gk_kind(const gk_args *a) {
    int kind = (int)a->m[0].keep;
    for (int i = 1; i < a->k; i++)
        if ((int)a->m[i].keep != kind) kind = GK_KINDS;
    return kind;
}

bool gk_takes(const gk_args *a, size_t b0, size_t m) {
    if (!a->in_f16) return true;
    float lb[GK_MAX_MODELS], ub[GK_MAX_MODELS];
    int kind = gk_kind(a);
    return a->out_bf16 && (gk_lean_fits(a, a->k, kind, m) || gk_tested_fits(a, a->k, kind, m)) &&
           gk_uniform_rules(a, a->k, b0, m, lb, ub);
}

/* gk_loop over the block, with each rule's thresholds hoisted where the
 * block lies wholly inside or outside its tie ranges (every block but a
 * few per tensor). */
static inline __attribute__((always_inline)) bool gk_body(const gk_args *a, int k, bool consensus, bool normalize,
                                                          bool out_bf16, int kind, size_t b0, size_t m, void *dst,
                                                          size_t *obad) {
    float lb[GK_MAX_MODELS] = {0}, ub[GK_MAX_MODELS] = {0};
    bool uniform = kind == GK_TOP || kind == GK_RULE || kind == GK_KINDS ? gk_uniform_rules(a, k, b0, m, lb, ub) : true;
    /* the lean loops (the tested one only where every model is kept whole);
     * f16 inputs: those alone, f16 out (gk_takes says which blocks) */
    bool tested = gk_tested_fits(a, k, kind, m);
    if (out_bf16 && a->in_f16) {
        if (kind == GK_WHOLE && tested)
            return gk_loop(a, k, consensus, normalize, out_bf16, kind, true, true, true, true, lb, ub, b0, m, dst,
                           obad);
        return gk_loop(a, k, consensus, normalize, out_bf16, kind, true, true, false, true, lb, ub, b0, m, dst, obad);
    }
    if (kind == GK_WHOLE && tested)
        return gk_loop(a, k, consensus, normalize, out_bf16, kind, true, true, true, false, lb, ub, b0, m, dst, obad);
    if (uniform && gk_lean_fits(a, k, kind, m))
        return gk_loop(a, k, consensus, normalize, out_bf16, kind, true, true, false, false, lb, ub, b0, m, dst, obad);
    if (uniform)
        return gk_loop(a, k, consensus, normalize, out_bf16, kind, true, false, false, false, lb, ub, b0, m, dst,
                       obad);
    return gk_loop(a, k, consensus, normalize, out_bf16, kind, false, false, false, false, lb, ub, b0, m, dst, obad);
}

/* The pattern of 32 mask bits, element order, from the keep masks of the
 * even (ke) and the odd (ko) elements of the 32. */
static inline uint32_t gk_zip(__mmask16 ke, __mmask16 ko) {
#if defined(__BMI2__)
    return _pdep_u32((uint32_t)ke, 0x55555555u) | _pdep_u32((uint32_t)ko, 0xaaaaaaaau);
#else
    uint32_t x[2] = {(uint32_t)ke, (uint32_t)ko};
    for (int h = 0; h < 2; h++) {
        x[h] = (x[h] | x[h] << 8) & 0x00ff00ffu;
        x[h] = (x[h] | x[h] << 4) & 0x0f0f0f0fu;
        x[h] = (x[h] | x[h] << 2) & 0x33333333u;
        x[h] = (x[h] | x[h] << 1) & 0x55555555u;
    }
    return x[0] | x[1] << 1;
#endif
}

/* All k models in one loop, 32 elements at a time as the merge loops take
 * them (one load, even and odd halves): the base is loaded and widened once
 * for all of them, and no element is widened by a shuffle. On the bench's
 * dare_ties (3 models), against one call per model with 16 elements at a
 * time: the survey's samples -12 %, the merge's CPU time -3 % (1.296 ->
 * 1.251 s, medians of 8 alternating runs); the wall time is bound by the
 * writes, not this loop, and did not change. */
static inline __attribute__((always_inline)) bool gk_dare_body(const uint16_t *const *xs, int k,
                                                               const uint16_t *base, size_t b0, size_t m,
                                                               const uint64_t *rng_key, const uint32_t *thr,
                                                               uint8_t *const *bits, bool f16, float *before,
                                                               float *after) {
    const __m512i iota2 = gk_lane_elems(f16);
    const __m512i phig = _mm512_set1_epi32((int32_t)0x9e3779b9u);
    const __m512i phi1 = _mm512_set1_epi32((int32_t)(gk_second_half(f16) * 0x9e3779b9u));
    const __m512i phi32 = _mm512_set1_epi32((int32_t)(32u * 0x9e3779b9u));
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const uint16_t *x[GK_MAX_MODELS], *streams[GK_MAX_MODELS + 1] = {base + b0};
    __m512i hw[GK_MAX_MODELS], vthr[GK_MAX_MODELS];
    __m512 sb[GK_MAX_MODELS], sa[GK_MAX_MODELS];
    uint8_t *bp[GK_MAX_MODELS];
    /* index * phi of the even lanes, the same for every model */
    const __m512i hidx = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32((int32_t)(uint32_t)b0), iota2), phig);
    /* every loop over the models unrolled, or their state stays an array in memory */
#pragma GCC unroll 4
    for (int i = 0; i < k; i++) {
        x[i] = xs[i] + b0;
        streams[i + 1] = x[i];
        uint32_t k32 = rng_key32(rng_key[i], (uint64_t)b0 >> 32);
        hw[i] = _mm512_add_epi32(hidx, _mm512_set1_epi32((int32_t)k32));
        vthr[i] = _mm512_set1_epi32((int32_t)thr[i]);
        sb[i] = sa[i] = _mm512_setzero_ps();
        bp[i] = bits && bits[i] ? bits[i] + b0 / 8 : NULL;
    }
    __mmask32 bad = 0;
    for (size_t j = 0; j < m; j += 32) {
        __mmask32 tm;
        __mmask16 th[2];
        gk_step32(m, j, streams, k + 1, &tm, &th[0], &th[1]);
        if (f16) th[0] = (__mmask16)tm, th[1] = (__mmask16)(tm >> 16);
        __m512i bw = gk_load32(base + b0 + j, tm);
        __m512 b[2] = {gk_value(bw, 0, f16), gk_value(bw, 1, f16)};
#pragma GCC unroll 4
        for (int i = 0; i < k; i++) {
            __m512i xw = gk_load32(x[i] + j, tm);
            bad |= gk_nonfinite32(xw, tm, f16);
            __mmask16 keep[2];
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                /* lanes past m: both 0, a magnitude +0 that changes no sum */
                __m512 a = _mm512_and_ps(_mm512_sub_ps(gk_value(xw, h, f16), b[h]), absmask);
                __m512i hv = h ? _mm512_add_epi32(hw[i], phi1) : hw[i];
                keep[h] = _mm512_mask_cmplt_epu32_mask(th[h], gk_hash(hv), vthr[i]);
                sb[i] = _mm512_add_ps(sb[i], a);
                sa[i] = _mm512_mask_add_ps(sa[i], keep[h], sa[i], a);
            }
            hw[i] = _mm512_add_epi32(hw[i], phi32);
            if (bp[i]) {
                /* as a vector store (the bytes of elements in the block):
                 * stores through a byte pointer would keep the sums in
                 * memory, as far as the compiler knows them aliased */
                size_t nbytes = m - j >= 32 ? 4 : (m - j + 7) / 8;
                _mm_mask_storeu_epi8(bp[i] + j / 8, (__mmask16)((1u << nbytes) - 1u),
                                     _mm_cvtsi32_si128((int)(f16 ? (uint32_t)keep[0] | (uint32_t)keep[1] << 16
                                                                 : gk_zip(keep[0], keep[1]))));
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < k; i++) {
        before[i] = _mm512_reduce_add_ps(sb[i]);
        after[i] = _mm512_reduce_add_ps(sa[i]);
    }
    return bad != 0;
}

/* k a constant of each instance: the models' state stays in registers */
bool gk_dare_survey(const uint16_t *const *xs, int k, const uint16_t *base, size_t b0, size_t m,
                    const uint64_t *rng_key, const uint32_t *thr, uint8_t *const *bits, bool f16, float *before,
                    float *after) {
#define GK_DARE(K, F) gk_dare_body(xs, K, base, b0, m, rng_key, thr, bits, F, before, after)
    switch (k) {
    case 1: return f16 ? GK_DARE(1, true) : GK_DARE(1, false);
    case 2: return f16 ? GK_DARE(2, true) : GK_DARE(2, false);
    case 3: return f16 ? GK_DARE(3, true) : GK_DARE(3, false);
    default: return f16 ? GK_DARE(GK_MAX_MODELS, true) : GK_DARE(GK_MAX_MODELS, false);
    }
#undef GK_DARE
}

/* linear.c's block, 32 elements at a time (even and odd, as gk_loop):
 * o = 0 + w_0 x_0 + w_1 x_1 + ... (each product rounded, then added, in
 * model order), then o / wsum. */
static inline __attribute__((always_inline)) bool gk_linear_body(const uint16_t *const *x, const float *w, int k,
                                                                 bool normalize, float wsum, bool f16, bool out_bf16,
                                                                 size_t b0, size_t m, void *dst, size_t *obad) {
    const uint16_t *streams[GK_MAX_MODELS];
    for (int i = 0; i < k; i++) streams[i] = x[i] + b0;
    __mmask32 bad = 0;
    size_t first = m;
    for (size_t j = 0; j < m; j += 32) {
        size_t e = b0 + j;
        __mmask32 tm;
        __mmask16 te, to;
        gk_step32(m, j, streams, k, &tm, &te, &to);
        __m512 oe = _mm512_setzero_ps(), oo = oe;
#pragma GCC unroll 4
        for (int i = 0; i < k; i++) {
            __m512i xw = gk_load32(x[i] + e, tm);
            __m512 wi = _mm512_set1_ps(w[i]);
            bad |= gk_nonfinite32(xw, tm, f16);
            oe = _mm512_add_ps(oe, _mm512_mul_ps(wi, gk_value(xw, 0, f16))); /* (f16: the first 16, oo the last) */
            oo = _mm512_add_ps(oo, _mm512_mul_ps(wi, gk_value(xw, 1, f16)));
        }
        if (normalize) {
            oe = _mm512_div_ps(oe, _mm512_set1_ps(wsum));
            oo = _mm512_div_ps(oo, _mm512_set1_ps(wsum));
        }
        if (f16)
            gk_store32_f16(oe, oo, tm, dst, j, &first, m);
        else
            gk_store32(oe, oo, te, to, tm, out_bf16, false, dst, j, &first, m);
    }
    *obad = first;
    return bad != 0;
}

#define GK_LINEAR(K)                                                                                                   \
    case K:                                                                                                            \
        if (f16) return gk_linear_body(x, w, K, normalize, wsum, true, true, b0, m, dst, obad);                        \
        return out_bf16 ? gk_linear_body(x, w, K, normalize, wsum, false, true, b0, m, dst, obad)                      \
                        : gk_linear_body(x, w, K, normalize, wsum, false, false, b0, m, dst, obad);

bool gk_linear(const uint16_t *const *x, const float *w, int k, bool normalize, float wsum, bool f16, bool out_bf16,
               size_t b0, size_t m, void *dst, size_t *obad) {
    switch (k) {
        GK_LINEAR(1)
        GK_LINEAR(2)
        GK_LINEAR(3)
        GK_LINEAR(4)
    }
    *obad = m;
    return true; /* never called: k is checked by the caller */
}

/* slerp.c's first pass over elements [b0, b0 + m), 16 at a time: each
 * bf16 (or f16) value widened to f32 and then to double, the products p p, q q, p q
 * each rounded and then added (no fused multiply-add) into lane j % 8 of
 * sums[0..8), [8..16), [16..24) in element order; lanes past m add +0, which
 * changes no sum (one never is -0: it starts from +0). */
static inline __attribute__((always_inline)) bool gk_slerp_sums_body(const uint16_t *x0, const uint16_t *x1, size_t b0,
                                                                     size_t m, bool f16, double *sums) {
    __m512d a = _mm512_loadu_pd(sums), b = _mm512_loadu_pd(sums + 8), d = _mm512_loadu_pd(sums + 16);
    const uint16_t *streams[2] = {x0 + b0, x1 + b0};
    __mmask16 bad = 0;
    for (size_t j = 0; j < m; j += 16) {
        __mmask16 tm = gk_step(m, j, streams, 2);
        __m512i pu = f16 ? gk_widen_f16(x0 + b0 + j, tm) : gk_widen(x0 + b0 + j, tm);
        __m512i qu = f16 ? gk_widen_f16(x1 + b0 + j, tm) : gk_widen(x1 + b0 + j, tm);
        bad |= gk_nonfinite(pu, tm) | gk_nonfinite(qu, tm);
        __m512 p = _mm512_castsi512_ps(pu), q = _mm512_castsi512_ps(qu);
        __m512d p0 = _mm512_cvtps_pd(_mm512_castps512_ps256(p)), q0 = _mm512_cvtps_pd(_mm512_castps512_ps256(q));
        __m512d p1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)));
        __m512d q1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(q), 1)));
        a = _mm512_add_pd(a, _mm512_mul_pd(p0, p0));
        b = _mm512_add_pd(b, _mm512_mul_pd(q0, q0));
        d = _mm512_add_pd(d, _mm512_mul_pd(p0, q0));
        a = _mm512_add_pd(a, _mm512_mul_pd(p1, p1));
        b = _mm512_add_pd(b, _mm512_mul_pd(q1, q1));
        d = _mm512_add_pd(d, _mm512_mul_pd(p1, q1));
    }
    _mm512_storeu_pd(sums, a);
    _mm512_storeu_pd(sums + 8, b);
    _mm512_storeu_pd(sums + 16, d);
    return bad != 0;
}

bool gk_slerp_sums(const uint16_t *x0, const uint16_t *x1, size_t b0, size_t m, bool f16, double *sums) {
    return f16 ? gk_slerp_sums_body(x0, x1, b0, m, true, sums) : gk_slerp_sums_body(x0, x1, b0, m, false, sums);
}

/* slerp.c's second pass, o = s0 x0 + s1 x1 (each product rounded, then
 * added), 32 elements at a time, into dst in bf16 or f32 (f16: f16 in and
 * out). */
static inline __attribute__((always_inline)) void gk_lerp_body(const uint16_t *x0, const uint16_t *x1, float s0,
                                                               float s1, bool f16, bool out_bf16, size_t b0, size_t m,
                                                               void *dst, size_t *obad) {
    const uint16_t *streams[2] = {x0 + b0, x1 + b0};
    const __m512 c0 = _mm512_set1_ps(s0), c1 = _mm512_set1_ps(s1);
    size_t first = m;
    for (size_t j = 0; j < m; j += 32) {
        __mmask32 tm;
        __mmask16 th[2];
        gk_step32(m, j, streams, 2, &tm, &th[0], &th[1]);
        __m512i pw = gk_load32(x0 + b0 + j, tm), qw = gk_load32(x1 + b0 + j, tm);
        __m512 o[2];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512 p = gk_value(pw, h, f16), q = gk_value(qw, h, f16);
            o[h] = _mm512_add_ps(_mm512_mul_ps(c0, p), _mm512_mul_ps(c1, q));
        }
        if (f16)
            gk_store32_f16(o[0], o[1], tm, dst, j, &first, m);
        else
            gk_store32(o[0], o[1], th[0], th[1], tm, out_bf16, false, dst, j, &first, m);
    }
    *obad = first;
}

void gk_lerp(const uint16_t *x0, const uint16_t *x1, float s0, float s1, bool f16, bool out_bf16, size_t b0,
             size_t m, void *dst, size_t *obad) {
    if (f16)
        gk_lerp_body(x0, x1, s0, s1, true, true, b0, m, dst, obad);
    else if (out_bf16)
        gk_lerp_body(x0, x1, s0, s1, false, true, b0, m, dst, obad);
    else
        gk_lerp_body(x0, x1, s0, s1, false, false, b0, m, dst, obad);
}

#define GK_INSTANCE(K, Q, C, N, B)                                                                                     \
    static bool gk_##K##_##Q##_##C##_##N##_##B(const gk_args *a, size_t b0, size_t m, void *dst, size_t *obad) {       \
        return gk_body(a, K, C, N, B, Q, b0, m, dst, obad);                                                            \
    }
#define GK_EIGHT(K, Q)                                                                                                 \
    GK_INSTANCE(K, Q, 0, 0, 0)                                                                                         \
    GK_INSTANCE(K, Q, 0, 0, 1)                                                                                         \
    GK_INSTANCE(K, Q, 0, 1, 0)                                                                                         \
    GK_INSTANCE(K, Q, 0, 1, 1)                                                                                         \
    GK_INSTANCE(K, Q, 1, 0, 0)                                                                                         \
    GK_INSTANCE(K, Q, 1, 0, 1)                                                                                         \
    GK_INSTANCE(K, Q, 1, 1, 0)                                                                                         \
    GK_INSTANCE(K, Q, 1, 1, 1)
#define GK_KIND(Q) GK_EIGHT(1, Q) GK_EIGHT(2, Q) GK_EIGHT(3, Q) GK_EIGHT(4, Q)
GK_KIND(0)
GK_KIND(1)
GK_KIND(2)
GK_KIND(3)
GK_KIND(4)
GK_KIND(5)
#define GK_ROW(K, Q)                                                                                                   \
    {gk_##K##_##Q##_0_0_0, gk_##K##_##Q##_0_0_1, gk_##K##_##Q##_0_1_0, gk_##K##_##Q##_0_1_1,                           \
     gk_##K##_##Q##_1_0_0, gk_##K##_##Q##_1_0_1, gk_##K##_##Q##_1_1_0, gk_##K##_##Q##_1_1_1}
#define GK_KIND_ROWS(Q) {GK_ROW(1, Q), GK_ROW(2, Q), GK_ROW(3, Q), GK_ROW(4, Q)}

/* [kind][k - 1][flags]: kinds GK_WHOLE..GK_BITS where every model keeps
 * that way, GK_KINDS where they differ */
static const gk_block_fn gk_table[GK_KINDS + 1][GK_MAX_MODELS][8] = {
    GK_KIND_ROWS(0), GK_KIND_ROWS(1), GK_KIND_ROWS(2), GK_KIND_ROWS(3), GK_KIND_ROWS(4), GK_KIND_ROWS(5)};

gk_block_fn gk_select(const gk_args *a) {
    if (a->k < 1 || a->k > GK_MAX_MODELS) return NULL;
    return gk_table[gk_kind(a)][a->k - 1][(a->consensus ? 4 : 0) | (a->normalize ? 2 : 0) | (a->out_bf16 ? 1 : 0)];
}

#else

bool gk_dare_survey(const uint16_t *const *xs, int k, const uint16_t *base, size_t b0, size_t m,
                    const uint64_t *rng_key, const uint32_t *thr, uint8_t *const *bits, bool f16, float *before,
                    float *after) {
    (void)xs, (void)base, (void)b0, (void)m, (void)rng_key, (void)thr, (void)bits, (void)f16;
    for (int i = 0; i < k; i++) before[i] = after[i] = 0.0f;
    return true; /* never called: GTA_KERNEL is 0 */
}

gk_block_fn gk_select(const gk_args *a) {
    (void)a;
    return NULL;
}

bool gk_takes(const gk_args *a, size_t b0, size_t m) {
    (void)a, (void)b0, (void)m;
    return false; /* never called: gk_select gives no kernel */
}

bool gk_linear(const uint16_t *const *x, const float *w, int k, bool normalize, float wsum, bool f16, bool out_bf16,
               size_t b0, size_t m, void *dst, size_t *obad) {
    (void)x, (void)w, (void)k, (void)normalize, (void)wsum, (void)f16, (void)out_bf16, (void)b0, (void)dst;
    *obad = m;
    return true; /* never called: GTA_KERNEL is 0 */
}

bool gk_slerp_sums(const uint16_t *x0, const uint16_t *x1, size_t b0, size_t m, bool f16, double *sums) {
    (void)x0, (void)x1, (void)b0, (void)m, (void)f16, (void)sums;
    return true; /* never called: GTA_KERNEL is 0 */
}

void gk_lerp(const uint16_t *x0, const uint16_t *x1, float s0, float s1, bool f16, bool out_bf16, size_t b0,
             size_t m, void *dst, size_t *obad) {
    (void)x0, (void)x1, (void)s0, (void)s1, (void)f16, (void)out_bf16, (void)b0, (void)dst;
    *obad = m; /* never called: GTA_KERNEL is 0 */
}

#endif
