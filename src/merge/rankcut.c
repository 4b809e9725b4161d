/* rankcut.c — one-pass rank cuts of task-vector magnitudes (see rankcut.h). */
#include "merge/rankcut.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
/* The scan has its own vector loop (scan_block) on AVX-512 and on AVX2 */
#define RC_AVX512BW RC_BF16_SCAN /* 16-bit masked loads: the bf16 scan */
#if defined(__AVX512F__)
#define RC_AVX512 1
#define RC_AVX2 0
#elif defined(__AVX2__)
#define RC_AVX512 0
#define RC_AVX2 1
#else
#define RC_AVX512 0
#define RC_AVX2 0
#endif

#include "merge/vec.h"
#include "util/rng.h"

#define SAMPLE_MAX ((size_t)1 << 15)
#define STREAM_MIN ((size_t)1 << 15)

static inline uint32_t fbits(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

static inline float fvalue(uint32_t u) {
    float v;
    memcpy(&v, &u, 4);
    return v;
}

static size_t chunk_len(size_t n) {
    size_t c = (n + RC_CHUNKS - 1) / RC_CHUNKS;
    return (c + RC_BLOCK - 1) / RC_BLOCK * RC_BLOCK;
}

size_t rank_cut_nchunks(size_t n) { return n ? (n + chunk_len(n) - 1) / chunk_len(n) : 0; }

void rank_cut_chunk(size_t n, size_t i, size_t *lo, size_t *hi) {
    size_t c = chunk_len(n);
    *lo = i * c;
    *hi = *lo + c < n ? *lo + c : n;
}

size_t rank_cut_sample_size(size_t n) {
    if (n < STREAM_MIN || n > UINT32_MAX) return 0;
    size_t ns = n / 16 < SAMPLE_MAX ? n / 16 : SAMPLE_MAX;
    return ns / RC_RUN * RC_RUN;
}

size_t rank_cut_sample_run(size_t n, size_t runs, size_t run, uint64_t seed) {
    /* n < 2^32 and runs <= 2^16: the products fit in 64 bits */
    size_t lo = run * n / runs, hi = (run + 1) * n / runs;
    return lo + (size_t)(rng_mix64(seed ^ (run * 0x9e3779b97f4a7c15ull)) % (hi - lo - RC_RUN + 1));
}

/* The sample positions of the band around rank `rank` of n: [*lo, *hi],
 * below 0 meaning from zero and ns or more meaning to infinity. The sample
 * quantile of rank r/n has standard deviation sqrt(ns q (1-q)) sample
 * positions (a little more: the sample is in runs); the band spans five of
 * them either side plus a few for tiny q, so it misses with probability
 * ~1e-6, and a miss only costs the exact path. */
static void band_positions(size_t n, size_t rank, size_t ns, double *lo, double *hi) {
    double q = (double)rank / (double)n, centre = q * (double)ns;
    double margin = 5.0 * sqrt((double)ns * q * (1.0 - q)) + 16.0;
    *lo = centre - margin, *hi = centre + margin;
}

/* Cut c over the band [blo, bhi]. */
static bool plan_band(rank_cut *c, size_t n, size_t rank, bool idx_desc, float blo, float bhi) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->rank = rank;
    c->idx_desc = idx_desc;
    c->blo = blo;
    c->bhi = bhi;
    /* buckets over the positive bit patterns strictly inside (blo, bhi) */
    c->lo_bits = fbits(c->blo) + 1;
    uint32_t span = fbits(c->bhi) - c->lo_bits;
    while ((span >> c->shift) >= RC_BUCKETS) c->shift++;
    c->nchunks = rank_cut_nchunks(n);
    c->hist = malloc(c->nchunks * RC_BUCKETS * sizeof *c->hist);
    c->eq = calloc(c->nchunks * 2, sizeof *c->eq);
    for (size_t b = 0; c->hist && b < c->nchunks * RC_BUCKETS; b++)
        c->hist[b] = (rc_cell){.count = 0, .lo = UINT32_MAX, .nlo = 0, .hi = 0, .nhi = 0};
    return c->hist && c->eq;
}

/* The digits of a magnitude's bit pattern (below 2^31: it orders as the
 * value) that sample_select goes by, most significant first. */
#define SEL_HI 20   /* bits 30-20: the first digit (2048 values) */
#define SEL_MID 9   /* bits 19-9: the second (2048) */
#define SEL_LOW 512 /* bits 8-0: the last */

/* The digit d of n counts that holds rank *r (< the total): *r becomes the
 * rank inside it. */
static uint32_t digit_of(const uint32_t *cnt, uint32_t n, size_t *r) {
    uint32_t d = 0;
    for (; d + 1 < n && cnt[d] <= *r; d++) *r -= cnt[d];
    return d;
}

/* The patterns v of u[0..n) with (v >> sh) & mask == d into w, in order;
 * returns how many. w may be u (each store lands on what was read). */
static size_t pick_digit(const uint32_t *u, size_t n, int sh, uint32_t mask, uint32_t d, uint32_t *w) {
    size_t i = 0, m = 0;
#if RC_AVX512
    const __m512i vd = _mm512_set1_epi32((int32_t)d), vm = _mm512_set1_epi32((int32_t)mask);
    for (; i + 16 <= n; i += 16) { /* m <= i: the 16 stored lanes end by u + i + 16 */
        __m512i v = _mm512_loadu_si512((const void *)(u + i));
        __mmask16 k = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_srli_epi32(v, (unsigned)sh), vm), vd);
        _mm512_storeu_si512((void *)(w + m), _mm512_maskz_compress_epi32(k, v));
        m += (size_t)__builtin_popcount((unsigned)k);
    }
#endif
    for (; i < n; i++) { /* branch-free compaction */
        uint32_t v = u[i];
        w[m] = v;
        m += ((v >> sh) & mask) == d;
    }
    return m;
}

/* The pattern of rank r among the patterns u[0..ns) whose first digit is
 * d1, r counted among those: they are picked out into w (ns entries), and
 * each digit after that narrows them to those that share it. */
static uint32_t select_in_digit(const uint32_t *u, size_t ns, uint32_t d1, size_t r, uint32_t *w) {
    size_t m = pick_digit(u, ns, SEL_HI, 2047, d1, w);
    uint32_t cnt[2048] = {0};
    for (size_t i = 0; i < m; i++) cnt[(w[i] >> SEL_MID) & 2047]++;
    uint32_t d2 = digit_of(cnt, 2048, &r);
    m = pick_digit(w, m, SEL_MID, 2047, d2, w);
    uint32_t c3[SEL_LOW] = {0};
    for (size_t i = 0; i < m; i++) c3[w[i] & (SEL_LOW - 1)]++;
    uint32_t d3 = digit_of(c3, SEL_LOW, &r);
    return d1 << SEL_HI | d2 << SEL_MID | d3;
}

/* The values of ascending ranks r[0..nr) (each < ns) of the magnitudes
 * a[0..ns) into out, by radix selection on the bit patterns: a histogram
 * of the first digit (in four interleaved copies: magnitudes crowd into a
 * few digits, and one copy would make each count wait for the last store
 * to the same cell) finds each rank's digit, and only the patterns with
 * that digit are looked at for the next two. tmp holds ns floats. */
static void sample_select(const float *a, size_t ns, const size_t *r, int nr, float *out, float *tmp) {
    const uint32_t *u = (const uint32_t *)(const void *)a;
    uint32_t cnt[4][2048];
    memset(cnt, 0, sizeof cnt);
    size_t i = 0;
    for (; i + 4 <= ns; i += 4) {
        cnt[0][u[i] >> SEL_HI]++;
        cnt[1][u[i + 1] >> SEL_HI]++;
        cnt[2][u[i + 2] >> SEL_HI]++;
        cnt[3][u[i + 3] >> SEL_HI]++;
    }
    for (; i < ns; i++) cnt[0][u[i] >> SEL_HI]++;
    for (size_t d = 0; d < 2048; d++) cnt[0][d] += cnt[1][d] + cnt[2][d] + cnt[3][d];
    for (int j = 0; j < nr; j++) {
        size_t rr = r[j];
        uint32_t d1 = digit_of(cnt[0], 2048, &rr);
        out[j] = fvalue(select_in_digit(u, ns, d1, rr, (uint32_t *)(void *)tmp));
    }
}

bool rank_cut_plan(rank_cut *c, size_t n, size_t rank, bool idx_desc, const float *sample, size_t ns, float *tmp) {
    double lo, hi;
    band_positions(n, rank, ns, &lo, &hi);
    size_t r[2];
    float v[2];
    int nr = 0;
    if (lo >= 0) r[nr++] = (size_t)lo;
    if (hi < (double)ns) r[nr++] = (size_t)hi;
    if (nr) sample_select(sample, ns, r, nr, v, tmp);
    return plan_band(c, n, rank, idx_desc, lo < 0 ? 0.0f : v[0], hi >= (double)ns ? INFINITY : v[nr - 1]);
}

void rank_cut_free(rank_cut *c) {
    free(c->hist);
    free(c->eq);
    c->hist = NULL;
    c->eq = NULL;
}

#if !RC_AVX2 && !RC_AVX512
/* The magnitudes of a[0..m) strictly inside (blo, bhi), in order, into out;
 * returns how many. */
static size_t band_inside(const float *a, size_t m, float blo, float bhi, float *out) {
    size_t cnt = 0, j = 0;
    for (; j < m; j++) { /* branch-free compaction */
        out[cnt] = a[j];
        cnt += (a[j] > blo) & (a[j] < bhi);
    }
    return cnt;
}
#endif

/* Counts of one block of magnitudes, as bit patterns u (>= 0: they order
 * as the values): zero u (only where rank_cut_scan's count needs them),
 * u < lo, u == lo, u == hi. */
typedef struct scan_counts {
    uint32_t zero, lt, eqlo, eqhi;
} scan_counts;

#if RC_AVX512
/* 16 magnitudes as bit patterns u: the counts of scan_counts but the zeros
 * into the lane counters, and which of them lie strictly inside (lo, hi).
 * (The zeros are u == lo when lo = 0 and among u < lo otherwise: the
 * rank needs no count of its own, only sce's kk does.) */
static inline __mmask16 scan16(__m512i u, __m512i vlo, __m512i vhi, __m512i *clt, __m512i *cel, __m512i *ceh) {
    const __m512i one = _mm512_set1_epi32(1);
    __mmask16 below = _mm512_cmplt_epi32_mask(u, vlo), atlo = _mm512_cmpeq_epi32_mask(u, vlo);
    *clt = _mm512_mask_add_epi32(*clt, below, *clt, one);
    *cel = _mm512_mask_add_epi32(*cel, atlo, *cel, one);
    *ceh = _mm512_mask_add_epi32(*ceh, _mm512_cmpeq_epi32_mask(u, vhi), *ceh, one);
    return _mm512_mask_cmplt_epi32_mask((__mmask16)~(below | atlo), u, vhi);
}

#endif

/* Counts over a[0..len) (len <= RC_BLOCK) and the magnitudes strictly
 * inside (lo, hi) in order into in; returns how many. One pass: on
 * AVX-512 16 at a time with mask compares and a compress; on AVX2 8 at a
 * time (4 compares, the inside mask kept as bits, the few inside picked out
 * of them afterwards); otherwise the counts vectorise and band_inside
 * compacts. */
static size_t scan_block(const float *a, size_t len, uint32_t lo, uint32_t hi, scan_counts *sc, float *in) {
    size_t j = 0, cnt = 0;
    uint32_t z = 0, lt = 0, el = 0, eh = 0;
#if RC_AVX512
    /* 16 at a time: the compares go to mask registers, the counts to vector
     * lanes (masked adds of 1), the inside compacted in a register and
     * stored whole (in + cnt + 16 <= in + j + 16 <= in + len: cnt <= j) */
    __m512i vlo = _mm512_set1_epi32((int32_t)lo), vhi = _mm512_set1_epi32((int32_t)hi);
    __m512i cz = _mm512_setzero_si512(), clt = cz, cel = cz, ceh = cz;
    for (; j + 16 <= len; j += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(a + j));
        cz = _mm512_mask_add_epi32(cz, _mm512_testn_epi32_mask(u, u), cz, _mm512_set1_epi32(1));
        __mmask16 inside = scan16(u, vlo, vhi, &clt, &cel, &ceh);
        _mm512_storeu_si512((void *)(in + cnt), _mm512_maskz_compress_epi32(inside, u));
        cnt += (size_t)__builtin_popcount((unsigned)inside);
    }
    z = (uint32_t)_mm512_reduce_add_epi32(cz), lt = (uint32_t)_mm512_reduce_add_epi32(clt);
    el = (uint32_t)_mm512_reduce_add_epi32(cel), eh = (uint32_t)_mm512_reduce_add_epi32(ceh);
#elif RC_AVX2
    /* magnitudes are below 2^31 as patterns: signed compares order them */
    __m256i vlo = _mm256_set1_epi32((int32_t)lo), vhi = _mm256_set1_epi32((int32_t)hi), zero = _mm256_setzero_si256();
    __m256i cz = zero, clt = zero, cel = zero, ceh = zero;
    /* which elements lie inside (lo, hi), a bit each: the band holds a few
     * percent of them, so picking them out of these words afterwards is
     * cheaper than compacting every vector */
    uint64_t word[RC_BLOCK / 64];
    size_t nw = 0;
    while (j + 8 <= len) { /* 64 elements (or what is left in eights) per word, in a register */
        uint64_t w = 0;
        for (int sh = 0; sh < 64 && j + 8 <= len; sh += 8, j += 8) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(a + j));
            __m256i below = _mm256_cmpgt_epi32(vlo, u), atlo = _mm256_cmpeq_epi32(u, vlo);
            cz = _mm256_sub_epi32(cz, _mm256_cmpeq_epi32(u, zero));
            clt = _mm256_sub_epi32(clt, below);
            cel = _mm256_sub_epi32(cel, atlo);
            ceh = _mm256_sub_epi32(ceh, _mm256_cmpeq_epi32(u, vhi));
            /* inside: neither below nor at lo, and below hi */
            __m256i inside = _mm256_andnot_si256(_mm256_or_si256(below, atlo), _mm256_cmpgt_epi32(vhi, u));
            w |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(inside)) << sh;
        }
        word[nw++] = w;
    }
    for (size_t w = 0; w < nw; w++)
        for (uint64_t bits = word[w]; bits; bits &= bits - 1) in[cnt++] = a[w * 64 + (size_t)__builtin_ctzll(bits)];
    uint32_t lane[8];
    _mm256_storeu_si256((__m256i *)(void *)lane, cz);
    for (int l = 0; l < 8; l++) z += lane[l];
    _mm256_storeu_si256((__m256i *)(void *)lane, clt);
    for (int l = 0; l < 8; l++) lt += lane[l];
    _mm256_storeu_si256((__m256i *)(void *)lane, cel);
    for (int l = 0; l < 8; l++) el += lane[l];
    _mm256_storeu_si256((__m256i *)(void *)lane, ceh);
    for (int l = 0; l < 8; l++) eh += lane[l];
#else
#pragma omp simd reduction(+ : z, lt, el, eh)
    for (size_t t = 0; t < len; t++) {
        uint32_t u = fbits(a[t]);
        z += u == 0;
        lt += u < lo;
        el += u == lo;
        eh += u == hi;
    }
    cnt = band_inside(a, len, fvalue(lo), fvalue(hi), in);
    j = len;
#endif
    for (; j < len; j++) { /* the tail of the vector loop */
        uint32_t u = fbits(a[j]);
        z += u == 0;
        lt += u < lo;
        el += u == lo;
        eh += u == hi;
        in[cnt] = a[j];
        cnt += (u > lo) & (u < hi);
    }
    sc->zero = z, sc->lt = lt, sc->eqlo = el, sc->eqhi = eh;
    return cnt;
}

/* What one block's scan adds to chunk `row` of c and to the running counts:
 * the counts of sc over len magnitudes, and the cnt magnitudes strictly
 * inside the band, in[0..cnt), into their cells. */
typedef struct scan_tally {
    size_t below, zeros, eqlo, eqhi, npos;
} scan_tally;

static void tally_block(const rank_cut *c, rc_cell *row, const scan_counts *sc, size_t len, const float *in, size_t cnt,
                        scan_tally *tl) {
    uint32_t lo_bits = c->lo_bits;
    int shift = c->shift;
    bool two = c->bhi > c->blo, lo_pos = fbits(c->blo) > 0;
    /* zeros rank apart: below a band above zero with the positive
     * magnitudes under blo; a band from blo = 0 has none below it, and its
     * zeros are those at blo */
    tl->npos += len - sc->zero;
    tl->below += lo_pos ? sc->lt : 0;
    tl->zeros += lo_pos ? 0 : sc->eqlo;
    tl->eqlo += lo_pos ? sc->eqlo : 0;
    tl->eqhi += two ? sc->eqhi : 0;
    /* strictly inside the band: few, when magnitudes tie in large groups;
     * cells start at lo = UINT32_MAX, hi = 0, so updates need no branch */
    for (size_t t = 0; t < cnt; t++) {
        uint32_t u = fbits(in[t]);
        rc_cell *cl = &row[(u - lo_bits) >> shift];
        uint32_t l = cl->lo, h = cl->hi;
        cl->count++;
        cl->nlo = u < l ? 1 : cl->nlo + (u == l);
        cl->lo = u < l ? u : l;
        cl->nhi = u > h ? 1 : cl->nhi + (u == h);
        cl->hi = u > h ? u : h;
    }
}

static size_t tally_done(rank_cut *c, cut_acc *acc, size_t chunk, const scan_tally *tl) {
    acc->below += tl->below;
    acc->zeros += tl->zeros;
    c->eq[chunk * 2] += tl->eqlo;
    c->eq[chunk * 2 + 1] += tl->eqhi;
    return tl->npos;
}

size_t rank_cut_scan(rank_cut *c, cut_acc *acc, size_t chunk, const float *a, size_t m) {
    uint32_t blo = fbits(c->blo), bhi = fbits(c->bhi);
    rc_cell *row = c->hist + chunk * RC_BUCKETS;
    scan_tally tl = {0, 0, 0, 0, 0};
    float in[RC_BLOCK];
    for (size_t j0 = 0; j0 < m; j0 += RC_BLOCK) {
        size_t len = m - j0 < RC_BLOCK ? m - j0 : RC_BLOCK;
        scan_counts sc;
        size_t cnt = scan_block(a + j0, len, blo, bhi, &sc, in);
        tally_block(c, row, &sc, len, in, cnt, &tl);
    }
    return tally_done(c, acc, chunk, &tl);
}

#if RC_AVX512BW
/* 16 magnitudes u (bit patterns): those below lo and those up to hi
 * counted in the packed lane counter c (bits 0-15 and 16-31: a lane counts
 * at most 64 per block of RC_BLOCK); returns the nonzero ones inside [lo,
 * hi]. Two compares where scan16 has four: the ends of the band are told
 * apart afterwards, among the few that lie inside it (band_split). */
static inline __mmask16 band16(__m512i u, __m512i vlo, __m512i vhi, __m512i *c) {
    __mmask16 below = _mm512_cmplt_epu32_mask(u, vlo), upto = _mm512_cmple_epu32_mask(u, vhi);
    *c = _mm512_mask_add_epi32(*c, below, *c, _mm512_set1_epi32(1));
    *c = _mm512_mask_add_epi32(*c, upto, *c, _mm512_set1_epi32(1 << 16));
    return _mm512_mask_test_epi32_mask(_kandn_mask16(below, upto), u, u);
}

/* The cnt nonzero magnitudes inside [lo, hi] in in: those equal to lo and
 * to hi counted into *nlo, *nhi, and those strictly inside compacted in
 * place; returns how many of those. */
static size_t band_split(float *in, size_t cnt, uint32_t lo, uint32_t hi, uint32_t *nlo, uint32_t *nhi) {
    const __m512i vlo = _mm512_set1_epi32((int32_t)lo), vhi = _mm512_set1_epi32((int32_t)hi);
    size_t w = 0;
    uint32_t el = 0, eh = 0;
    for (size_t r = 0; r < cnt; r += 16) { /* w <= r: the store covers only what was read */
        __mmask16 tm = cnt - r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cnt - r)) - 1u);
        __m512i u = _mm512_maskz_loadu_epi32(tm, in + r);
        __mmask16 eql = _mm512_mask_cmpeq_epi32_mask(tm, u, vlo), eqh = _mm512_mask_cmpeq_epi32_mask(tm, u, vhi);
        __mmask16 inside = tm & (__mmask16) ~(eql | eqh);
        _mm512_mask_storeu_epi32(in + w, (__mmask16)((1u << __builtin_popcount((unsigned)inside)) - 1u),
                                 _mm512_maskz_compress_epi32(inside, u));
        w += (size_t)__builtin_popcount((unsigned)inside);
        el += (uint32_t)__builtin_popcount((unsigned)eql);
        eh += (uint32_t)__builtin_popcount((unsigned)eqh);
    }
    *nlo = el, *nhi = eh;
    return w;
}

/* scan_block of the magnitudes |x - base| of bf16 inputs, made in
 * registers 32 at a time: a 32-bit lane holds two bf16 values, and the
 * low one shifted up and the high one masked are both exact f32 (the even
 * and the odd elements: the counts and the cells do not care about order).
 * The few nonzero ones inside the band [lo, hi] are compacted into in as
 * they are found, every vector, without a branch (picking them out of mask
 * words afterwards cost a mispredicted branch on about every other word);
 * band_split then tells the ends from the inside, and the zeros at lo = 0
 * are what the counts leave. The tail (under 32) goes through scan_block.
 * *nonfinite is set when an x (or, with check_base, a base value) is NaN
 * or infinite. */
static inline __attribute__((always_inline)) size_t scan_block_bf16(const uint16_t *x, const uint16_t *base,
                                                                    size_t len, uint32_t lo, uint32_t hi,
                                                                    scan_counts *sc, float *in, bool *nonfinite,
                                                                    bool check_base) {
    __m512i vlo = _mm512_set1_epi32((int32_t)lo), vhi = _mm512_set1_epi32((int32_t)hi);
    __m512i cb = _mm512_setzero_si512();
    const __m512i exp16 = _mm512_set1_epi16(0x7f80), himask = _mm512_set1_epi32((int32_t)0xffff0000u);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __mmask32 bad = 0;
    size_t j = 0, cnt = 0;
    for (; j + 32 <= len; j += 32) {
        __m512i xw = _mm512_loadu_si512((const void *)(x + j)), bw = _mm512_loadu_si512((const void *)(base + j));
        bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(xw, exp16), exp16);
        if (check_base) bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(bw, exp16), exp16);
        __m512 ve = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_slli_epi32(xw, 16)),
                                  _mm512_castsi512_ps(_mm512_slli_epi32(bw, 16)));
        __m512 vo = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_and_si512(xw, himask)),
                                  _mm512_castsi512_ps(_mm512_and_si512(bw, himask)));
        __m512i ue = _mm512_castps_si512(_mm512_and_ps(ve, absmask));
        __m512i uo = _mm512_castps_si512(_mm512_and_ps(vo, absmask));
        __mmask16 ie = band16(ue, vlo, vhi, &cb), io = band16(uo, vlo, vhi, &cb);
        /* in + cnt + ne + 16 <= in + j + 32 <= in + len: cnt <= j, ne <= 16 */
        size_t ne = (size_t)__builtin_popcount((unsigned)ie), no = (size_t)__builtin_popcount((unsigned)io);
        _mm512_storeu_si512((void *)(in + cnt), _mm512_maskz_compress_epi32(ie, ue));
        _mm512_storeu_si512((void *)(in + cnt + ne), _mm512_maskz_compress_epi32(io, uo));
        cnt += ne + no;
    }
    sc->zero = 0; /* not counted */
    uint32_t lt = (uint32_t)_mm512_reduce_add_epi32(_mm512_and_si512(cb, _mm512_set1_epi32(0xffff)));
    uint32_t upto = (uint32_t)_mm512_reduce_add_epi32(_mm512_srli_epi32(cb, 16)), nlo, nhi, nz = (uint32_t)cnt;
    cnt = band_split(in, cnt, lo, hi, &nlo, &nhi);
    sc->lt = lt;
    sc->eqlo = lo ? nlo : upto - lt - nz; /* lo = 0: the zeros, which were not compacted */
    sc->eqhi = hi > lo ? nhi : sc->eqlo;
    if (j < len) { /* the tail, as f32 magnitudes */
        float mag[32];
        unsigned tbad = 0;
        for (size_t t = j; t < len; t++) {
            mag[t - j] = fabsf(fvalue((uint32_t)x[t] << 16) - fvalue((uint32_t)base[t] << 16));
            tbad |= (x[t] & 0x7f80u) == 0x7f80u;
            tbad |= check_base && (base[t] & 0x7f80u) == 0x7f80u;
        }
        bad |= tbad != 0;
        scan_counts tc;
        cnt += scan_block(mag, len - j, lo, hi, &tc, in + cnt);
        sc->lt += tc.lt, sc->eqlo += tc.eqlo, sc->eqhi += tc.eqhi;
    }
    *nonfinite |= bad != 0;
    return cnt;
}
#endif

void rank_cut_scan_bf16(rank_cut *c, cut_acc *acc, size_t chunk, const uint16_t *x, const uint16_t *base, size_t m,
                        bool check_base, bool *nonfinite) {
    uint32_t blo = fbits(c->blo), bhi = fbits(c->bhi);
    rc_cell *row = c->hist + chunk * RC_BUCKETS;
    scan_tally tl = {0, 0, 0, 0, 0};
    float in[RC_BLOCK + 16];
    for (size_t j0 = 0; j0 < m; j0 += RC_BLOCK) {
        size_t len = m - j0 < RC_BLOCK ? m - j0 : RC_BLOCK;
        scan_counts sc;
#if RC_AVX512BW
        size_t cnt = check_base ? scan_block_bf16(x + j0, base + j0, len, blo, bhi, &sc, in, nonfinite, true)
                                : scan_block_bf16(x + j0, base + j0, len, blo, bhi, &sc, in, nonfinite, false);
#else
        float a[RC_BLOCK];
        unsigned bad = 0;
        for (size_t j = 0; j < len; j++) {
            float xv = fvalue((uint32_t)x[j0 + j] << 16), bv = fvalue((uint32_t)base[j0 + j] << 16);
            a[j] = fabsf(xv - bv);
            bad |= (x[j0 + j] & 0x7f80u) == 0x7f80u;
            bad |= check_base && (base[j0 + j] & 0x7f80u) == 0x7f80u;
        }
        *nonfinite |= bad != 0;
        size_t cnt = scan_block(a, len, blo, bhi, &sc, in);
#endif
        tally_block(c, row, &sc, len, in, cnt, &tl);
    }
    tally_done(c, acc, chunk, &tl);
}

/* The k-th smallest (0-based) of distinct keys a[0..n) (reordered):
 * Hoare's FIND, pivot the median of three. */
static uint64_t select_u64(uint64_t *a, size_t n, size_t k) {
    ptrdiff_t l = 0, r = (ptrdiff_t)n - 1, kk = (ptrdiff_t)k;
    while (l < r) {
        uint64_t x = a[l], y = a[l + (r - l) / 2], z = a[r];
        uint64_t p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        ptrdiff_t i = l, j = r;
        do {
            while (a[i] < p) i++;
            while (p < a[j]) j--;
            if (i <= j) {
                uint64_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < kk) l = i;
        if (kk < i) r = j;
    }
    return a[kk];
}

/* Elements of chunk ch whose magnitude bits lie in [lo, hi], in index order,
 * as (bits << 32 | index, complemented when idx_desc) into out (stopping
 * after `limit`); *got their number. False on a non-finite input. */
static bool collect_chunk(const rank_cut *c, size_t ch, uint32_t lo, uint32_t hi, size_t limit, rank_cut_mag_fn f,
                          const void *ctx, uint64_t *out, size_t *got) {
    size_t b, e, at = 0;
    rank_cut_chunk(c->n, ch, &b, &e);
    float a[RC_BLOCK];
    uint8_t in[RC_BLOCK];
    float flo = fvalue(lo), fhi = fvalue(hi);
    for (size_t b0 = b; b0 < e && at < limit; b0 += RC_BLOCK) {
        size_t m = e - b0 < RC_BLOCK ? e - b0 : RC_BLOCK;
        if (f(ctx, b0, m, a)) return false;
        /* positive floats order as their bit patterns */
#pragma omp simd
        for (size_t j = 0; j < m; j++) in[j] = (uint8_t)((a[j] >= flo) & (a[j] <= fhi));
        for (size_t j = 0; j < m && at < limit; j += 8) {
            uint64_t word = 0;
            memcpy(&word, in + j, m - j < 8 ? m - j : 8);
            while (word && at < limit) {
                size_t t = j + (size_t)(__builtin_ctzll(word) >> 3);
                word &= word - 1;
                uint32_t idx = (uint32_t)(b0 + t);
                out[at++] = (uint64_t)fbits(a[t]) << 32 | (c->idx_desc ? ~idx : idx);
            }
        }
    }
    *got = at;
    return true;
}

/* The index of the k-th (0-based) element of chunk ch whose magnitude has
 * bits u, counting from the chunk's start, or from its end when from_end:
 * whole blocks are counted and skipped, and only the block that holds it is
 * searched. *idx stays untouched when there are fewer (which cannot happen:
 * the pass counted them). False on a non-finite input. */
static bool find_on_value(const rank_cut *c, size_t ch, uint32_t u, size_t k, bool from_end, rank_cut_mag_fn f,
                          const void *ctx, uint32_t *idx) {
    size_t b, e;
    rank_cut_chunk(c->n, ch, &b, &e);
    float a[RC_BLOCK], fu = fvalue(u);
    size_t nblk = (e - b + RC_BLOCK - 1) / RC_BLOCK;
    for (size_t q = 0; q < nblk; q++) {
        size_t b0 = b + (from_end ? nblk - 1 - q : q) * RC_BLOCK, m = e - b0 < RC_BLOCK ? e - b0 : RC_BLOCK;
        if (f(ctx, b0, m, a)) return false;
        size_t cnt = 0; /* positive floats order as their bit patterns: == on values is == on bits */
#pragma omp simd reduction(+ : cnt)
        for (size_t j = 0; j < m; j++) cnt += a[j] == fu;
        if (cnt <= k) {
            k -= cnt;
            continue;
        }
        for (size_t t = 0; t < m; t++) {
            size_t j = from_end ? m - 1 - t : t;
            if (a[j] == fu && k-- == 0) {
                *idx = (uint32_t)(b0 + j);
                return true;
            }
        }
    }
    return true;
}

/* The cut is value u, the want-th (0-based, ascending index) of its
 * elements; per[ch] of them lie in chunk ch. The chunk that holds it is
 * searched from its nearer end. */
static int cut_on_value(rank_cut *c, uint32_t u, size_t want, const size_t *per, rank_cut_mag_fn f, const void *ctx) {
    size_t ch = 0, before = 0;
    while (before + per[ch] <= want) before += per[ch++];
    size_t local = want - before, total = per[ch];
    bool from_end = local > total - 1 - local;
    uint32_t idx = UINT32_MAX;
    if (!find_on_value(c, ch, u, from_end ? total - 1 - local : local, from_end, f, ctx, &idx)) return -1;
    if (idx == UINT32_MAX) return 0; /* cannot happen: the pass counted them */
    c->idx = idx;
    c->v = fvalue(u);
    c->zero = false;
    return 1;
}

int rank_cut_resolve(rank_cut *c, const cut_acc *acc, int nacc, rank_cut_mag_fn f, const void *ctx, int threads) {
    size_t below = 0, zeros = 0, nb = c->nchunks;
    for (int t = 0; t < nacc; t++) below += acc[t].below, zeros += acc[t].zeros;
    size_t *per = NULL;
    int rc = 0;
    if (c->rank < zeros) {
        c->zero = true;
        c->v = 0.0f;
        c->idx = 0;
        rc = 1;
        goto done;
    }
    if (c->rank - zeros < below) goto done;
    size_t r = c->rank - zeros - below, bk = 0, count = 0;
    per = malloc((nb + 1) * sizeof *per);
    if (!per) goto done;
    /* on an end of the band? */
    for (int end = 0; end < 2; end++) {
        size_t ties = 0;
        for (size_t ch = 0; ch < nb; ch++) ties += per[ch] = c->eq[ch * 2 + (size_t)end];
        if (end == 0 && r < ties) {
            rc = cut_on_value(c, fbits(c->blo), c->idx_desc ? ties - 1 - r : r, per, f, ctx);
            goto done;
        }
        if (end == 0) {
            r -= ties;
            size_t inside = 0;
            for (size_t ch = 0; ch < nb * RC_BUCKETS; ch++) inside += c->hist[ch].count;
            if (r < inside) break;
            r -= inside;
        } else if (r < ties) {
            rc = cut_on_value(c, fbits(c->bhi), c->idx_desc ? ties - 1 - r : r, per, f, ctx);
            goto done;
        } else {
            goto done; /* past the band */
        }
    }
    for (; bk < RC_BUCKETS; bk++) {
        count = 0;
        for (size_t ch = 0; ch < nb; ch++) count += c->hist[ch * RC_BUCKETS + bk].count;
        if (r < count) break;
        r -= count;
    }
    if (bk == RC_BUCKETS) goto done; /* cannot happen: r < inside */
    uint32_t glo = UINT32_MAX, ghi = 0;
    size_t nlo = 0, nhi = 0;
    for (size_t ch = 0; ch < nb; ch++) {
        const rc_cell *cl = &c->hist[ch * RC_BUCKETS + bk];
        if (!cl->count) continue;
        if (cl->lo < glo) glo = cl->lo;
        if (cl->hi > ghi) ghi = cl->hi;
    }
    for (size_t ch = 0; ch < nb; ch++) {
        const rc_cell *cl = &c->hist[ch * RC_BUCKETS + bk];
        if (cl->count && cl->lo == glo) nlo += cl->nlo;
        if (cl->count && cl->hi == ghi) nhi += cl->nhi;
    }
    if (r < nlo || r >= count - nhi) {
        /* the cut is the bucket's smallest (or largest) value: the r-th of
         * its elements in the order, counted from the end when idx_desc */
        bool low = r < nlo;
        size_t ties = low ? nlo : nhi, rr = low ? r : r - (count - nhi);
        for (size_t ch = 0; ch < nb; ch++) {
            const rc_cell *cl = &c->hist[ch * RC_BUCKETS + bk];
            per[ch] = !cl->count ? 0 : low ? (cl->lo == glo ? cl->nlo : 0) : (cl->hi == ghi ? cl->nhi : 0);
        }
        rc = cut_on_value(c, low ? glo : ghi, c->idx_desc ? ties - 1 - rr : rr, per, f, ctx);
        goto done;
    }
    /* several values around the cut: collect the bucket and select */
    per[0] = 0;
    for (size_t ch = 0; ch < nb; ch++) per[ch + 1] = per[ch] + c->hist[ch * RC_BUCKETS + bk].count;
    uint64_t *cand = malloc(count * sizeof *cand);
    if (!cand) goto done;
    int bad = 0, short_count = 0;
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(dynamic, 4) reduction(| : bad, short_count)
    for (size_t ch = 0; ch < nb; ch++) {
        size_t want = per[ch + 1] - per[ch], got = 0;
        if (!want) continue;
        bad |= !collect_chunk(c, ch, glo, ghi, want, f, ctx, cand + per[ch], &got);
        short_count |= got != want;
    }
    if (bad) {
        rc = -1;
    } else if (!short_count) {
        uint64_t key = select_u64(cand, count, r);
        uint32_t lowbits = (uint32_t)key;
        c->v = fvalue((uint32_t)(key >> 32));
        c->idx = c->idx_desc ? ~lowbits : lowbits;
        c->zero = false;
        rc = 1;
    }
    free(cand);
done:
    free(per);
    rank_cut_free(c);
    return rc;
}

keep_rule keep_rule_between(const rank_cut *lower, const rank_cut *upper) {
    keep_rule r = {.L = -1.0f, .U = INFINITY, .tlo = 0, .thi = UINT32_MAX, .tu = UINT32_MAX};
    if (lower) {
        r.L = lower->v;
        if (!lower->zero) {
            /* kept from the cut on: ties after it in the order */
            if (lower->idx_desc)
                r.thi = lower->idx;
            else
                r.tlo = lower->idx;
        }
    }
    if (upper) {
        r.U = upper->v;
        if (!upper->zero) r.tu = upper->idx;
    }
    return r;
}
