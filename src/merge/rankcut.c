/* rankcut.c — one-pass rank cuts of task-vector magnitudes (see rankcut.h). */
#include "merge/rankcut.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
/* The scan has its own vector loop (scan_block) on AVX-512 and on AVX2 */
#define RC_AVX512BW RC_HALF_SCAN /* 16-bit masked loads: the bf16 scan */
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
#include "util/dtype.h"
#include "util/rng.h"

/* The sample: n / 16 up to SAMPLE_MIN, then n / SAMPLE_PER up to
 * SAMPLE_MAX (rank_cut_sample_size). */
#define SAMPLE_MIN ((size_t)1 << 15)
#define SAMPLE_PER 512
#define SAMPLE_MAX ((size_t)1 << 18)
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

/* A bf16 (or, with f16, an IEEE half) value, exact in f32. */
static inline float half_value(uint16_t h, bool f16) { return f16 ? f16_to_f32(h) : fvalue((uint32_t)h << 16); }

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

/* The band keeps about n * 10 / sqrt(ns) magnitudes (band_positions), so
 * past SAMPLE_MIN a sample growing with n is paid back many times: on the
 * bench's embedding (136M elements, 3 models) 32768 samples kept 18.1M
 * magnitudes, 72 MB of fresh memory and of kept_rank's work, where 2^18,
 * read in ~7,000 more runs, keep 7.4M. */
size_t rank_cut_sample_size(size_t n) {
    if (n < STREAM_MIN || n > UINT32_MAX) return 0;
    size_t ns = n / 16 < SAMPLE_MIN ? n / 16 : n / SAMPLE_PER < SAMPLE_MIN ? SAMPLE_MIN : n / SAMPLE_PER;
    ns = ns < SAMPLE_MAX ? ns : SAMPLE_MAX;
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

/* bytes (a multiple of 64) of room, or NULL when it has no more. */
static void *room_take(rc_room *room, size_t bytes) {
    if (!room || !room->p) return NULL;
    size_t at = __atomic_fetch_add(&room->used, bytes, __ATOMIC_RELAXED);
    return at <= room->bytes && bytes <= room->bytes - at ? room->p + at : NULL;
}

/* Room for `need` floats of kept magnitudes (with the scan's slack) and
 * the pieces of a chunk of len elements. */
#define KEEP_SLACK 48
static void chunk_room(rc_chunk *h, size_t need, size_t len, rc_room *room) {
    size_t cap = (need + RC_BLOCK + KEEP_SLACK + 15) & ~(size_t)15;
    size_t pccap = (len + RC_BLOCK - 1) / RC_BLOCK + 1;
    size_t pcbytes = (pccap * sizeof(rc_piece) + 63) & ~(size_t)63;
    char *p = room_take(room, cap * sizeof(float) + pcbytes);
    if (!p) return;
    h->v = (float *)(void *)p, h->cap = cap, h->v_room = true;
    h->pc = (rc_piece *)(void *)(p + cap * sizeof(float)), h->pccap = pccap, h->pc_room = true;
}

size_t rank_cut_sample_inside(const rank_cut *c, const float *sample, size_t ns) {
    uint32_t lo = fbits(c->blo), hi = fbits(c->bhi);
    size_t in = 0;
    for (size_t s = 0; s < ns; s++) {
        uint32_t u = fbits(sample[s]);
        in += u != 0 && u >= lo && u <= hi;
    }
    return in;
}

/* Cut c over the band [blo, bhi]: no chunk has kept anything yet; each
 * chunk's buffer sized for a quarter more than the share of the sample's
 * ns magnitudes that lie in the band (nonzero: the scan keeps no zeros),
 * at most half the chunk (past which it goes over). */
static bool plan_band(rank_cut *c, size_t n, size_t rank, bool idx_desc, float blo, float bhi, const float *sample,
                      size_t ns, rc_room *room) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->rank = rank;
    c->idx_desc = idx_desc;
    c->blo = blo;
    c->bhi = bhi;
    c->one = blo == bhi && blo > 0.0f;
    c->nchunks = rank_cut_nchunks(n);
    c->ch = calloc(c->nchunks ? c->nchunks : 1, sizeof *c->ch);
    if (!c->ch) return false;
    if (c->one || !room) return true;
    size_t in = rank_cut_sample_inside(c, sample, ns);
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        size_t a, b;
        rank_cut_chunk(n, ch, &a, &b);
        size_t need = ns ? (size_t)((double)in / (double)ns * (double)(b - a) * 1.25) : 0;
        chunk_room(&c->ch[ch], need < (b - a) / 2 ? need : (b - a) / 2, b - a, room);
    }
    return true;
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

/* The pattern of rank r among the m patterns w[0..m) that share first
 * digit d1 (reordered): each digit after that narrows them to those that
 * share it. */
static uint32_t select_rest(uint32_t *w, size_t m, uint32_t d1, size_t r) {
    uint32_t cnt[2048] = {0};
    for (size_t i = 0; i < m; i++) cnt[(w[i] >> SEL_MID) & 2047]++;
    uint32_t d2 = digit_of(cnt, 2048, &r);
    m = pick_digit(w, m, SEL_MID, 2047, d2, w);
    uint32_t c3[SEL_LOW] = {0};
    for (size_t i = 0; i < m; i++) c3[w[i] & (SEL_LOW - 1)]++;
    uint32_t d3 = digit_of(c3, SEL_LOW, &r);
    return d1 << SEL_HI | d2 << SEL_MID | d3;
}

/* The pattern of rank r among the patterns u[0..ns) whose first digit is
 * d1, r counted among those: they are picked out into w (ns entries). */
static uint32_t select_in_digit(const uint32_t *u, size_t ns, uint32_t d1, size_t r, uint32_t *w) {
    return select_rest(w, pick_digit(u, ns, SEL_HI, 2047, d1, w), d1, r);
}

/* The first digits of u[0..n) counted into cnt[0..2048): four interleaved
 * copies (magnitudes crowd into a few digits, and one copy would make each
 * count wait for the last store to the same cell), added up at the end. */
static void count_first_digits(const uint32_t *u, size_t n, uint32_t (*cnt)[2048]) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        cnt[0][u[i] >> SEL_HI]++;
        cnt[1][u[i + 1] >> SEL_HI]++;
        cnt[2][u[i + 2] >> SEL_HI]++;
        cnt[3][u[i + 3] >> SEL_HI]++;
    }
    for (; i < n; i++) cnt[0][u[i] >> SEL_HI]++;
}

/* The values of ascending ranks r[0..nr) (each < ns) of the magnitudes
 * a[0..ns) into out, by radix selection on the bit patterns: a histogram
 * of the first digit finds each rank's digit, and only the patterns with
 * that digit are looked at for the next two. tmp holds ns floats. */
static void sample_select(const float *a, size_t ns, const size_t *r, int nr, float *out, float *tmp) {
    const uint32_t *u = (const uint32_t *)(const void *)a;
    uint32_t cnt[4][2048];
    memset(cnt, 0, sizeof cnt);
    count_first_digits(u, ns, cnt);
    for (size_t d = 0; d < 2048; d++) cnt[0][d] += cnt[1][d] + cnt[2][d] + cnt[3][d];
    for (int j = 0; j < nr; j++) {
        size_t rr = r[j];
        uint32_t d1 = digit_of(cnt[0], 2048, &rr);
        out[j] = fvalue(select_in_digit(u, ns, d1, rr, (uint32_t *)(void *)tmp));
    }
}

bool rank_cut_plan(rank_cut *c, size_t n, size_t rank, bool idx_desc, const float *sample, size_t ns, float *tmp,
                   rc_room *room) {
    double lo, hi;
    band_positions(n, rank, ns, &lo, &hi);
    size_t r[2];
    float v[2];
    int nr = 0;
    if (lo >= 0) r[nr++] = (size_t)lo;
    if (hi < (double)ns) r[nr++] = (size_t)hi;
    if (nr) sample_select(sample, ns, r, nr, v, tmp);
    return plan_band(c, n, rank, idx_desc, lo < 0 ? 0.0f : v[0], hi >= (double)ns ? INFINITY : v[nr - 1], sample, ns,
                     room);
}

void rank_cut_free(rank_cut *c) {
    for (size_t i = 0; c->ch && i < c->nchunks; i++) {
        if (!c->ch[i].v_room) free(c->ch[i].v);
        if (!c->ch[i].pc_room) free(c->ch[i].pc);
    }
    free(c->ch);
    c->ch = NULL;
}

/* ---- the pass: counts, and the magnitudes inside the band kept ---- */

#if !RC_AVX2 && !RC_AVX512
/* The nonzero magnitudes of a[0..m) inside [blo, bhi], in order, into out;
 * returns how many. */
static size_t band_inside(const float *a, size_t m, float blo, float bhi, float *out) {
    size_t cnt = 0;
    for (size_t j = 0; j < m; j++) { /* branch-free compaction */
        out[cnt] = a[j];
        cnt += (a[j] > 0.0f) & (a[j] >= blo) & (a[j] <= bhi);
    }
    return cnt;
}
#endif

/* Counts of one block of magnitudes, as bit patterns u (>= 0: they order
 * as the values): zero u, and u < lo (the zeros among them when lo > 0). */
typedef struct scan_counts {
    uint32_t zero, lt;
} scan_counts;

#if RC_AVX512
/* 16 magnitudes as bit patterns u: the zeros and those below lo counted
 * into lane counters; returns the nonzero ones inside [lo, hi]. */
static inline __mmask16 scan16(__m512i u, __m512i vlo, __m512i vhi, __m512i *cz, __m512i *clt) {
    const __m512i one = _mm512_set1_epi32(1);
    __mmask16 nz = _mm512_test_epi32_mask(u, u), below = _mm512_cmplt_epu32_mask(u, vlo);
    *cz = _mm512_mask_add_epi32(*cz, (__mmask16)~nz, *cz, one);
    *clt = _mm512_mask_add_epi32(*clt, below, *clt, one);
    return _mm512_mask_cmple_epu32_mask(nz & (__mmask16)~below, u, vhi);
}
#endif

/* Counts over a[0..len) (len <= RC_BLOCK) and the nonzero magnitudes
 * inside [lo, hi] in order into in (room for len + 16); returns how many.
 * One pass: on AVX-512 16 at a time with mask compares and a compress; on
 * AVX2 8 at a time (the inside mask kept as bits, the few inside picked
 * out of them afterwards); otherwise the counts vectorise and band_inside
 * compacts. */
static size_t scan_block(const float *a, size_t len, uint32_t lo, uint32_t hi, scan_counts *sc, float *in) {
    size_t j = 0, cnt = 0;
    uint32_t z = 0, lt = 0;
#if RC_AVX512
    /* the inside compacted in a register and stored whole (in + cnt + 16
     * <= in + j + 16 <= in + len: cnt <= j) */
    __m512i vlo = _mm512_set1_epi32((int32_t)lo), vhi = _mm512_set1_epi32((int32_t)hi);
    __m512i cz = _mm512_setzero_si512(), clt = cz;
    for (; j + 16 <= len; j += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(a + j));
        __mmask16 inside = scan16(u, vlo, vhi, &cz, &clt);
        _mm512_storeu_si512((void *)(in + cnt), _mm512_maskz_compress_epi32(inside, u));
        cnt += (size_t)__builtin_popcount((unsigned)inside);
    }
    z = (uint32_t)_mm512_reduce_add_epi32(cz), lt = (uint32_t)_mm512_reduce_add_epi32(clt);
#elif RC_AVX2
    /* magnitudes are below 2^31 as patterns: signed compares order them */
    __m256i vlo = _mm256_set1_epi32((int32_t)lo), vhi = _mm256_set1_epi32((int32_t)hi), zero = _mm256_setzero_si256();
    __m256i cz = zero, clt = zero;
    /* which elements lie inside, a bit each: the band holds a few percent
     * of them, so picking them out of these words afterwards is cheaper
     * than compacting every vector */
    uint64_t word[RC_BLOCK / 64];
    size_t nw = 0;
    while (j + 8 <= len) { /* 64 elements (or what is left in eights) per word, in a register */
        uint64_t w = 0;
        for (int sh = 0; sh < 64 && j + 8 <= len; sh += 8, j += 8) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(a + j));
            __m256i isz = _mm256_cmpeq_epi32(u, zero), below = _mm256_cmpgt_epi32(vlo, u);
            cz = _mm256_sub_epi32(cz, isz);
            clt = _mm256_sub_epi32(clt, below);
            /* outside: zero, below lo or above hi */
            __m256i out = _mm256_or_si256(_mm256_or_si256(isz, below), _mm256_cmpgt_epi32(u, vhi));
            w |= (uint64_t)(~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(out)) & 0xffu) << sh;
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
#else
#pragma omp simd reduction(+ : z, lt)
    for (size_t t = 0; t < len; t++) {
        uint32_t u = fbits(a[t]);
        z += u == 0;
        lt += u < lo;
    }
    cnt = band_inside(a, len, fvalue(lo), fvalue(hi), in);
    j = len;
#endif
    for (; j < len; j++) { /* the tail of the vector loop */
        uint32_t u = fbits(a[j]);
        z += u == 0;
        lt += u < lo;
        in[cnt] = a[j];
        cnt += (u != 0) & (u >= lo) & (u <= hi);
    }
    sc->zero = z, sc->lt = lt;
    return cnt;
}

/* Where chunk `chunk` keeps the magnitudes of its next piece, len
 * elements (room for len + 32: the vector stores go past what they keep),
 * the piece recorded; spare when the chunk is over (it then keeps nothing
 * more) or the band is one value (only counted). The piece starts where
 * the last one ended. */
static float *piece_begin(rank_cut *c, size_t chunk, size_t len, float *spare) {
    rc_chunk *h = &c->ch[chunk];
    if (h->over) return spare;
    size_t lo, hi;
    rank_cut_chunk(c->n, chunk, &lo, &hi);
    if (h->npc == h->pccap) {
        size_t cap = h->pccap ? 2 * h->pccap : 64;
        rc_piece *pc = h->pc_room ? malloc(cap * sizeof *pc) : realloc(h->pc, cap * sizeof *pc);
        if (!pc) return h->over = true, spare;
        if (h->pc_room) memcpy(pc, h->pc, h->npc * sizeof *pc);
        h->pc = pc, h->pccap = cap, h->pc_room = false;
    }
    /* more than half the chunk: the band is too wide to be of use (tested
     * at every piece, so where a chunk goes over depends on the data, not
     * on where its buffer came from) */
    if (!c->one && h->nv > (hi - lo) / 2) return h->over = true, spare;
    size_t need = h->nv + len + KEEP_SLACK;
    if (!c->one && need > h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 4096;
        while (cap < need) cap *= 2;
        float *v = h->v_room ? malloc(cap * sizeof *v) : realloc(h->v, cap * sizeof *v);
        if (!v) return h->over = true, spare;
        if (h->v_room) memcpy(v, h->v, h->nv * sizeof *v);
        h->v = v, h->cap = cap, h->v_room = false;
    }
    size_t e0 = h->npc ? h->pc[h->npc - 1].e0 + h->pc[h->npc - 1].len : lo;
    h->pc[h->npc] = (rc_piece){.e0 = e0, .len = (uint32_t)len, .v0 = (uint32_t)h->nv};
    return c->one ? spare : h->v + h->nv;
}

/* The piece that piece_begin recorded (unless the chunk is over) kept cnt
 * magnitudes. */
static void piece_end(rank_cut *c, size_t chunk, size_t cnt) {
    rc_chunk *h = &c->ch[chunk];
    if (h->over) return;
    h->npc++;
    h->nv += cnt;
}

/* The counts of one block into the running ones: those below a band above
 * zero (the zeros with them), and the zeros apart where the band starts at
 * zero. */
static void count_block(bool lo_pos, const scan_counts *sc, size_t *below, size_t *zeros) {
    *below += lo_pos ? sc->lt : 0;
    *zeros += lo_pos ? 0 : sc->zero;
}

size_t rank_cut_scan(rank_cut *c, cut_acc *acc, size_t chunk, const float *a, size_t m) {
    uint32_t blo = fbits(c->blo), bhi = fbits(c->bhi);
    size_t npos = 0, below = 0, zeros = 0;
    float spare[RC_BLOCK + KEEP_SLACK]; /* for a chunk that keeps nothing */
    for (size_t j0 = 0; j0 < m; j0 += RC_BLOCK) {
        size_t len = m - j0 < RC_BLOCK ? m - j0 : RC_BLOCK;
        float *in = piece_begin(c, chunk, len, spare);
        scan_counts sc;
        size_t cnt = scan_block(a + j0, len, blo, bhi, &sc, in);
        piece_end(c, chunk, cnt);
        npos += len - sc.zero;
        count_block(blo > 0, &sc, &below, &zeros);
    }
    acc->below += below;
    acc->zeros += zeros;
    return npos;
}

#if RC_AVX512BW
/* How far ahead of the bf16 scan its inputs are asked for. */
#define SCAN_AHEAD 4096

/* 16 magnitudes u (bit patterns) where the band starts at zero: those up to
 * hi counted in lane counter c; returns the nonzero ones of them. */
static inline __mmask16 band16_zero(__m512i u, __m512i vhi, __m512i *c) {
    __mmask16 upto = _mm512_cmple_epu32_mask(u, vhi);
    *c = _mm512_mask_add_epi32(*c, upto, *c, _mm512_set1_epi32(1));
    return _mm512_mask_test_epi32_mask(upto, u, u);
}

/* The same where lo > 0: the zeros lie below lo, so the inside [lo, hi] is
 * what is neither below lo nor above hi; those below lo are counted in c. */
static inline __mmask16 band16_pos(__m512i u, __m512i vlo, __m512i vhi, __m512i *c) {
    __mmask16 below = _mm512_cmplt_epu32_mask(u, vlo);
    *c = _mm512_mask_add_epi32(*c, below, *c, _mm512_set1_epi32(1));
    return _mm512_mask_cmple_epu32_mask((__mmask16)~below, u, vhi);
}

/* The deltas x - base of 32 16-bit values each, as two vectors of f32
 * (exact): bf16, the even and the odd elements (each 32-bit lane's low
 * half shifted up, its high half masked); f16, the first 16 and the last
 * 16, converted in hardware. */
static inline void half_deltas32(__m512i xw, __m512i bw, bool f16, __m512 *v0, __m512 *v1) {
    if (f16) {
        *v0 = _mm512_sub_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(xw)), _mm512_cvtph_ps(_mm512_castsi512_si256(bw)));
        *v1 = _mm512_sub_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(xw, 1)),
                            _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bw, 1)));
    } else {
        const __m512i himask = _mm512_set1_epi32((int32_t)0xffff0000u);
        *v0 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_slli_epi32(xw, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(bw, 16)));
        *v1 = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_and_si512(xw, himask)),
                            _mm512_castsi512_ps(_mm512_and_si512(bw, himask)));
    }
}

/* The 32 elements from x and base: their lines SCAN_AHEAD bytes on asked
 * for (a line of each stream per 64 bytes scanned: the requests spread
 * over the loop rather than come in a burst per block, which waits for the
 * memory with nothing to compute), *bad ORed with the lanes whose x (with
 * check_base, or base) is NaN or infinite, the deltas as half_deltas32's. */
static inline __attribute__((always_inline)) void half_step32(const uint16_t *x, const uint16_t *base, bool f16,
                                                              bool check_base, __mmask32 *bad, __m512 *v0, __m512 *v1) {
    const __m512i exp16 = _mm512_set1_epi16(f16 ? 0x7c00 : 0x7f80);
    _mm_prefetch((const char *)x + SCAN_AHEAD, _MM_HINT_T0);
    if (check_base) _mm_prefetch((const char *)base + SCAN_AHEAD, _MM_HINT_T0);
    __m512i xw = _mm512_loadu_si512((const void *)x), bw = _mm512_loadu_si512((const void *)base);
    *bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(xw, exp16), exp16);
    if (check_base) *bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(bw, exp16), exp16);
    half_deltas32(xw, bw, f16, v0, v1);
}

/* The magnitudes of a tail (len < 32) of 16-bit inputs into mag, as f32;
 * true when an x (or, with check_base, a base value) is NaN or infinite. */
static bool tail_mags(const uint16_t *x, const uint16_t *base, size_t len, bool f16, bool check_base, float *mag) {
    unsigned bad = 0;
    uint16_t ex = f16 ? 0x7c00u : 0x7f80u;
    for (size_t t = 0; t < len; t++) {
        mag[t] = fabsf(half_value(x[t], f16) - half_value(base[t], f16));
        bad |= (x[t] & ex) == ex;
        bad |= check_base && (base[t] & ex) == ex;
    }
    return bad != 0;
}

/* scan_block of the magnitudes |x - base| of bf16 inputs, made in
 * registers 32 at a time: a 32-bit lane holds two bf16 values, and the
 * low one shifted up and the high one masked are both exact f32 (the even
 * and the odd elements: the counts and what is kept do not care about the
 * order inside a piece). The nonzero ones inside the band [lo, hi] are
 * compacted into in as they are found, every vector, without a branch
 * (picking them out of mask words afterwards cost a mispredicted branch on
 * about every other word). With lo > 0 (lo_pos) the lane counter counts
 * those below lo; with lo = 0 it counts those up to hi, and the zeros are
 * what the kept ones leave of them. The tail (under 32) goes through
 * scan_block. *nonfinite is set when an x (or, with check_base, a base
 * value) is NaN or infinite. */
static inline __attribute__((always_inline)) size_t scan_block_16(const uint16_t *x, const uint16_t *base,
                                                                  size_t len, uint32_t lo, uint32_t hi,
                                                                  scan_counts *sc, float *in, bool *nonfinite,
                                                                  bool f16, bool check_base, bool lo_pos) {
    __m512i vlo = _mm512_set1_epi32((int32_t)lo), vhi = _mm512_set1_epi32((int32_t)hi);
    __m512i cb = _mm512_setzero_si512();
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __mmask32 bad = 0;
    size_t j = 0, cnt = 0;
    for (; j + 32 <= len; j += 32) {
        __m512 ve, vo;
        half_step32(x + j, base + j, f16, check_base, &bad, &ve, &vo);
        __m512i ue = _mm512_castps_si512(_mm512_and_ps(ve, absmask));
        __m512i uo = _mm512_castps_si512(_mm512_and_ps(vo, absmask));
        __mmask16 ie, io;
        if (lo_pos) {
            ie = band16_pos(ue, vlo, vhi, &cb);
            io = band16_pos(uo, vlo, vhi, &cb);
        } else {
            ie = band16_zero(ue, vhi, &cb);
            io = band16_zero(uo, vhi, &cb);
        }
        /* in + cnt + ne + 16 <= in + j + 32 <= in + len: cnt <= j, ne <= 16 */
        size_t ne = (size_t)__builtin_popcount((unsigned)ie), no = (size_t)__builtin_popcount((unsigned)io);
        _mm512_storeu_si512((void *)(in + cnt), _mm512_maskz_compress_epi32(ie, ue));
        _mm512_storeu_si512((void *)(in + cnt + ne), _mm512_maskz_compress_epi32(io, uo));
        cnt += ne + no;
    }
    uint32_t lanes = (uint32_t)_mm512_reduce_add_epi32(cb);
    sc->lt = lo_pos ? lanes : 0;
    sc->zero = lo_pos ? 0 : lanes - (uint32_t)cnt; /* counted only where lo = 0 */
    if (j < len) { /* the tail, as f32 magnitudes */
        float mag[32];
        bad |= tail_mags(x + j, base + j, len - j, f16, check_base, mag);
        scan_counts tc;
        cnt += scan_block(mag, len - j, lo, hi, &tc, in + cnt);
        sc->lt += tc.lt, sc->zero += tc.zero;
    }
    *nonfinite |= bad != 0;
    return cnt;
}
#endif

#if RC_AVX512BW
/* scan_block_16 for two cuts of the same magnitudes at once (breadcrumbs'
 * lower and upper cuts): each magnitude made once and tested against both
 * bands. Both kinds of band in band16_pos's form, with max(lo, 1) for lo:
 * below it lie those below a band above zero, or the zeros of one from
 * zero (the count each kind of band keeps), and the inside is what is
 * neither below nor above hi. */
static inline __attribute__((always_inline)) void scan_block_16x2(const uint16_t *x, const uint16_t *base, size_t len,
                                                                  const uint32_t *lo, const uint32_t *hi,
                                                                  scan_counts *sc, float *const *in, size_t *kept,
                                                                  bool *nonfinite, bool f16, bool check_base) {
    __m512i vlo[2], vhi[2], cb[2];
    size_t cnt[2] = {0, 0};
#pragma GCC unroll 2
    for (int q = 0; q < 2; q++) {
        vlo[q] = _mm512_set1_epi32((int32_t)(lo[q] ? lo[q] : 1u));
        vhi[q] = _mm512_set1_epi32((int32_t)hi[q]);
        cb[q] = _mm512_setzero_si512();
    }
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __mmask32 bad = 0;
    size_t j = 0;
    for (; j + 32 <= len; j += 32) {
        __m512 v[2];
        half_step32(x + j, base + j, f16, check_base, &bad, &v[0], &v[1]);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i u = _mm512_castps_si512(_mm512_and_ps(v[h], absmask));
#pragma GCC unroll 2
            for (int q = 0; q < 2; q++) {
                __mmask16 inside = band16_pos(u, vlo[q], vhi[q], &cb[q]);
                /* in + cnt + 16 <= in + j + 32 <= in + len + 16: cnt <= j + 16 h */
                _mm512_storeu_si512((void *)(in[q] + cnt[q]), _mm512_maskz_compress_epi32(inside, u));
                cnt[q] += (size_t)__builtin_popcount((unsigned)inside);
            }
        }
    }
    for (int q = 0; q < 2; q++) {
        uint32_t c = (uint32_t)_mm512_reduce_add_epi32(cb[q]);
        sc[q].lt = lo[q] ? c : 0;
        sc[q].zero = lo[q] ? 0 : c;
    }
    if (j < len) { /* the tail, as f32 magnitudes */
        float mag[32];
        bad |= tail_mags(x + j, base + j, len - j, f16, check_base, mag);
        for (int q = 0; q < 2; q++) {
            scan_counts tc;
            cnt[q] += scan_block(mag, len - j, lo[q], hi[q], &tc, in[q] + cnt[q]);
            sc[q].lt += tc.lt, sc[q].zero += tc.zero;
        }
    }
    *nonfinite |= bad != 0;
    kept[0] = cnt[0], kept[1] = cnt[1];
}
#endif

void rank_cut_scan_half2(rank_cut *c0, rank_cut *c1, cut_acc *acc0, cut_acc *acc1, size_t chunk, const uint16_t *x,
                         const uint16_t *base, size_t m, bool f16, bool check_base, bool *nonfinite) {
#if RC_AVX512BW
    rank_cut *c[2] = {c0, c1};
    cut_acc *acc[2] = {acc0, acc1};
    uint32_t lo[2] = {fbits(c0->blo), fbits(c1->blo)}, hi[2] = {fbits(c0->bhi), fbits(c1->bhi)};
    size_t below[2] = {0, 0}, zeros[2] = {0, 0};
    float spare[2][RC_BLOCK + KEEP_SLACK]; /* for a chunk that keeps nothing */
    for (size_t j0 = 0; j0 < m; j0 += RC_BLOCK) {
        size_t len = m - j0 < RC_BLOCK ? m - j0 : RC_BLOCK;
        float *in[2] = {piece_begin(c0, chunk, len, spare[0]), piece_begin(c1, chunk, len, spare[1])};
        scan_counts sc[2];
        size_t kept[2];
        if (f16)
            check_base ? scan_block_16x2(x + j0, base + j0, len, lo, hi, sc, in, kept, nonfinite, true, true)
                       : scan_block_16x2(x + j0, base + j0, len, lo, hi, sc, in, kept, nonfinite, true, false);
        else
            check_base ? scan_block_16x2(x + j0, base + j0, len, lo, hi, sc, in, kept, nonfinite, false, true)
                       : scan_block_16x2(x + j0, base + j0, len, lo, hi, sc, in, kept, nonfinite, false, false);
        for (int q = 0; q < 2; q++) {
            piece_end(c[q], chunk, kept[q]);
            count_block(lo[q] > 0, &sc[q], &below[q], &zeros[q]);
        }
    }
    for (int q = 0; q < 2; q++) acc[q]->below += below[q], acc[q]->zeros += zeros[q];
#else
    rank_cut_scan_half(c0, acc0, chunk, x, base, m, f16, check_base, nonfinite);
    rank_cut_scan_half(c1, acc1, chunk, x, base, m, f16, false, nonfinite);
#endif
}

void rank_cut_scan_half(rank_cut *c, cut_acc *acc, size_t chunk, const uint16_t *x, const uint16_t *base, size_t m,
                        bool f16, bool check_base, bool *nonfinite) {
    uint32_t blo = fbits(c->blo), bhi = fbits(c->bhi);
    size_t below = 0, zeros = 0;
    float spare[RC_BLOCK + KEEP_SLACK]; /* for a chunk that keeps nothing */
    for (size_t j0 = 0; j0 < m; j0 += RC_BLOCK) {
        size_t len = m - j0 < RC_BLOCK ? m - j0 : RC_BLOCK;
        float *in = piece_begin(c, chunk, len, spare);
        scan_counts sc;
#if RC_AVX512BW
        size_t cnt;
        /* the dtype, the base's test and the band's kind: constants of each loop */
#define SCAN16(F16, CB, POS) scan_block_16(x + j0, base + j0, len, blo, bhi, &sc, in, nonfinite, F16, CB, POS)
        if (f16)
            cnt = blo > 0 ? (check_base ? SCAN16(true, true, true) : SCAN16(true, false, true))
                          : (check_base ? SCAN16(true, true, false) : SCAN16(true, false, false));
        else
            cnt = blo > 0 ? (check_base ? SCAN16(false, true, true) : SCAN16(false, false, true))
                          : (check_base ? SCAN16(false, true, false) : SCAN16(false, false, false));
#undef SCAN16
#else
        float a[RC_BLOCK];
        unsigned bad = 0;
        uint16_t ex = f16 ? 0x7c00u : 0x7f80u;
        for (size_t j = 0; j < len; j++) {
            a[j] = fabsf(half_value(x[j0 + j], f16) - half_value(base[j0 + j], f16));
            bad |= (x[j0 + j] & ex) == ex;
            bad |= check_base && (base[j0 + j] & ex) == ex;
        }
        *nonfinite |= bad != 0;
        size_t cnt = scan_block(a, len, blo, bhi, &sc, in);
#endif
        piece_end(c, chunk, cnt);
        count_block(blo > 0, &sc, &below, &zeros);
    }
    acc->below += below;
    acc->zeros += zeros;
}

/* ---- the cut from what the pass kept ---- */

/* Kept magnitudes crowd into a few values: a bf16 delta is a multiple of
 * the ulp of the weight it changes, so inside a narrow band most
 * magnitudes are one of a handful of small multiples of a few ulps (on the
 * 0.5B benchmark checkpoints the eight commonest values hold ~95 % of what
 * is kept, the first alone 45-70 %). Histogram cells would make each count
 * wait for the last store to the same cell; instead the common values are
 * read off a sample of what was kept, one pass compares every kept
 * magnitude with them (eight vector compares) counting per chunk, and sets
 * the rest, the residue, aside for a radix selection. */
#define HEAVY 8
#define HEAVY_SAMPLE 256
#define HEAVY_MIN 4               /* times in the sample (1.6 %) */
#define HEAVY_NONE UINT32_MAX     /* pads hv: no magnitude (below 2^31 as a pattern) has it */

static int cmp_u32(const void *pa, const void *pb) {
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    return (a > b) - (a < b);
}

/* The up to HEAVY commonest values of a sample of the kept magnitudes
 * (HEAVY_SAMPLE of them, evenly spaced over the chunks), each seen at least
 * HEAVY_MIN times, ascending in hv and padded with HEAVY_NONE; returns how
 * many. */
static int heavy_values(const rank_cut *c, size_t kept, uint32_t *hv) {
    uint32_t smp[HEAVY_SAMPLE];
    size_t ns = kept < HEAVY_SAMPLE ? kept : HEAVY_SAMPLE, ch = 0, before = 0;
    for (size_t s = 0; s < ns; s++) {
        size_t at = s * kept / ns;
        while (before + c->ch[ch].nv <= at) before += c->ch[ch++].nv;
        smp[s] = fbits(c->ch[ch].v[at - before]);
    }
    qsort(smp, ns, sizeof *smp, cmp_u32);
    uint32_t val[HEAVY];
    size_t num[HEAVY];
    int k = 0;
    for (size_t s = 0; s < ns;) { /* the runs of equal values, the HEAVY longest kept */
        size_t e = s;
        while (e < ns && smp[e] == smp[s]) e++;
        size_t len = e - s;
        if (len >= HEAVY_MIN && (k < HEAVY || len > num[k - 1])) {
            int at = k < HEAVY ? k++ : HEAVY - 1;
            for (; at > 0 && num[at - 1] < len; at--) val[at] = val[at - 1], num[at] = num[at - 1];
            val[at] = smp[s], num[at] = len;
        }
        s = e;
    }
    qsort(val, (size_t)k, sizeof *val, cmp_u32);
    for (int t = 0; t < HEAVY; t++) hv[t] = t < k ? val[t] : HEAVY_NONE;
    return k;
}

/* Kept magnitudes u[0..n) (bit patterns) against the common values hv:
 * how many equal each into hc[0..HEAVY), the others in order into res
 * (room for n + 16); returns how many those are. */
static size_t split_heavy(const uint32_t *u, size_t n, const uint32_t *hv, size_t *hc, uint32_t *res) {
    size_t i = 0, m = 0;
    for (int k = 0; k < HEAVY; k++) hc[k] = 0;
#if RC_AVX512
    __m512i h[HEAVY], cnt[HEAVY];
    const __m512i one = _mm512_set1_epi32(1);
    for (int k = 0; k < HEAVY; k++) h[k] = _mm512_set1_epi32((int32_t)hv[k]), cnt[k] = _mm512_setzero_si512();
    for (; i + 16 <= n; i += 16) { /* m <= i: the 16 stored lanes end by res + i + 16 */
        __m512i v = _mm512_loadu_si512((const void *)(u + i));
        __mmask16 any = 0;
        for (int k = 0; k < HEAVY; k++) {
            __mmask16 eq = _mm512_cmpeq_epi32_mask(v, h[k]);
            cnt[k] = _mm512_mask_add_epi32(cnt[k], eq, cnt[k], one);
            any |= eq;
        }
        _mm512_storeu_si512((void *)(res + m), _mm512_maskz_compress_epi32((__mmask16)~any, v));
        m += 16 - (size_t)__builtin_popcount((unsigned)any);
    }
    for (int k = 0; k < HEAVY; k++) hc[k] = (size_t)(uint32_t)_mm512_reduce_add_epi32(cnt[k]);
#endif
    for (; i < n; i++) { /* branch-free */
        uint32_t v = u[i];
        bool any = false;
        for (int k = 0; k < HEAVY; k++) {
            bool eq = v == hv[k];
            hc[k] += eq;
            any |= eq;
        }
        res[m] = v;
        m += !any;
    }
    return m;
}

/* How many of u[0..n) lie below each of hv[0..HEAVY) into lt. */
static void count_below(const uint32_t *u, size_t n, const uint32_t *hv, size_t *lt) {
    for (int k = 0; k < HEAVY; k++) {
        size_t l = 0;
        uint32_t h = hv[k];
#pragma omp simd reduction(+ : l)
        for (size_t i = 0; i < n; i++) l += u[i] < h;
        lt[k] = l;
    }
}

/* The magnitude u of rank r (below their number, kept) among those the
 * chunks kept, how many of them lie below it (*less), and how many in each
 * chunk equal it (per[0..nchunks)). False when out of memory. */
static bool kept_rank(const rank_cut *c, size_t kept, size_t r, uint32_t *u, size_t *less, size_t *per) {
    size_t nb = c->nchunks;
    if (c->one) { /* everything kept is blo */
        *u = fbits(c->blo), *less = 0;
        for (size_t ch = 0; ch < nb; ch++) per[ch] = c->ch[ch].nv;
        return true;
    }
    uint32_t hv[HEAVY];
    int nh = heavy_values(c, kept, hv);
    size_t *hc = malloc(nb * HEAVY * sizeof *hc), *rofs = malloc((nb + 1) * sizeof *rofs);
    uint32_t *res = malloc((kept + 16) * sizeof *res), *tmp = NULL;
    bool ok = false;
    if (!hc || !rofs || !res) goto out;
    size_t htot[HEAVY] = {0}, nres = 0;
    for (size_t ch = 0; ch < nb; ch++) {
        rofs[ch] = nres;
        nres += split_heavy((const uint32_t *)(const void *)c->ch[ch].v, c->ch[ch].nv, hv, hc + ch * HEAVY, res + nres);
        for (int k = 0; k < HEAVY; k++) htot[k] += hc[ch * HEAVY + k];
    }
    rofs[nb] = nres;
    /* below common value k: the residue below it and the common values
     * before it; the rank lands on a common value or inside the residue */
    size_t ltr[HEAVY], heavy_before = 0;
    count_below(res, nres, hv, ltr);
    for (int k = 0; k < nh; k++) {
        size_t under = ltr[k] + heavy_before;
        if (r < under) break;
        if (r < under + htot[k]) {
            *u = hv[k], *less = under;
            for (size_t ch = 0; ch < nb; ch++) per[ch] = hc[ch * HEAVY + k];
            ok = true;
            goto out;
        }
        heavy_before += htot[k];
    }
    /* rank r - heavy_before among the residue (those below the common
     * values that follow it) */
    size_t rr = r - heavy_before;
    tmp = malloc(nres * sizeof *tmp);
    if (!tmp) goto out;
    float fv;
    sample_select((const float *)(const void *)res, nres, &rr, 1, &fv, (float *)(void *)tmp);
    *u = fbits(fv);
    size_t below = 0;
    for (int k = 0; k < nh; k++) below += hv[k] < *u ? htot[k] : 0;
    for (size_t ch = 0; ch < nb; ch++) {
        size_t lt = 0, eq = 0;
        const uint32_t *w = res + rofs[ch];
        uint32_t x = *u;
#pragma omp simd reduction(+ : lt, eq)
        for (size_t t = 0; t < rofs[ch + 1] - rofs[ch]; t++) {
            lt += w[t] < x;
            eq += w[t] == x;
        }
        below += lt;
        per[ch] = eq;
    }
    *less = below;
    ok = true;
out:
    free(hc);
    free(rofs);
    free(res);
    free(tmp);
    return ok;
}

/* The index of the k-th (0-based) element of chunk ch whose magnitude is
 * fu, counting from the chunk's start, or from its end when from_end: the
 * pieces' kept magnitudes say how many each holds, and only the piece that
 * holds it is read again. *idx stays untouched when there are fewer (which
 * cannot happen: the pass kept them all). False on a non-finite input. */
static bool find_on_value(const rank_cut *c, size_t ch, float fu, size_t k, bool from_end, rank_cut_mag_fn f,
                          const void *ctx, uint32_t *idx) {
    const rc_chunk *h = &c->ch[ch];
    float a[RC_BLOCK];
    for (size_t q = 0; q < h->npc; q++) {
        size_t p = from_end ? h->npc - 1 - q : q, v1 = p + 1 < h->npc ? h->pc[p + 1].v0 : h->nv, cnt = 0;
        const rc_piece *pc = &h->pc[p];
        const float *v = h->v;
        if (c->one) {
            cnt = v1 - pc->v0;
        } else {
#pragma omp simd reduction(+ : cnt)
            for (size_t t = pc->v0; t < v1; t++) cnt += v[t] == fu;
        }
        if (cnt <= k) {
            k -= cnt;
            continue;
        }
        if (f(ctx, pc->e0, pc->len, a)) return false;
        for (size_t t = 0; t < pc->len; t++) {
            size_t j = from_end ? pc->len - 1 - t : t;
            if (a[j] == fu && k-- == 0) {
                *idx = (uint32_t)(pc->e0 + j);
                return true;
            }
        }
        return true;
    }
    return true;
}

int rank_cut_resolve(rank_cut *c, const cut_acc *acc, int nacc, rank_cut_mag_fn f, const void *ctx) {
    size_t below = 0, zeros = 0, nb = c->nchunks, kept = 0;
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
    if (c->rank - zeros < below) goto done; /* below the band */
    for (size_t ch = 0; ch < nb; ch++) {
        if (c->ch[ch].over) goto done;
        kept += c->ch[ch].nv;
    }
    size_t r = c->rank - zeros - below;
    if (r >= kept) goto done; /* above the band */
    /* the cut is the r'-th element of value u in the order (counted from
     * the end when idx_desc): r' is r less the kept ones below u */
    uint32_t u;
    size_t less = 0, ties = 0;
    per = malloc((nb + 1) * sizeof *per);
    if (!per || !kept_rank(c, kept, r, &u, &less, per)) goto done; /* out of memory */
    float fu = fvalue(u);
    for (size_t ch = 0; ch < nb; ch++) ties += per[ch];
    size_t rr = r - less, want = c->idx_desc ? ties - 1 - rr : rr;
    /* the chunk that holds it, searched from its nearer end */
    size_t ch = 0, before = 0;
    while (before + per[ch] <= want) before += per[ch++];
    size_t local = want - before, total = per[ch];
    bool from_end = local > total - 1 - local;
    uint32_t idx = UINT32_MAX;
    if (!find_on_value(c, ch, fu, from_end ? total - 1 - local : local, from_end, f, ctx, &idx)) {
        rc = -1;
    } else if (idx != UINT32_MAX) { /* always: the pass kept them */
        c->idx = idx;
        c->v = fu;
        c->zero = false;
        rc = 1;
    }
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
