/* test_rankcut.c — the one-pass rank cuts of merge/rankcut.c against a
 * brute-force sort: on continuous magnitudes (the cut bucket holds many
 * values: collect and select), on bf16-like magnitudes that tie in large
 * groups (the cut on a bucket's or the band's end: the one-chunk walk), with
 * most magnitudes zero (the cut among the zeros), for both index orders and
 * ranks from the first to the last, down to the smallest tensors that
 * stream; a sample that misses the band, which must report the miss
 * instead of a wrong cut; and the band itself against its definition. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge/rankcut.h"
#include "util/dtype.h"
#include "util/rng.h"

typedef struct order {
    const float *a;
    bool desc;
} order;

static int by_order(const void *pa, const void *pb, void *ctx) {
    const order *o = ctx;
    size_t i = *(const size_t *)pa, j = *(const size_t *)pb;
    if (o->a[i] != o->a[j]) return o->a[i] < o->a[j] ? -1 : 1;
    int c = (i > j) - (i < j);
    return o->desc ? -c : c;
}

static bool mags(const void *ctx, size_t lo, size_t m, float *a) {
    memcpy(a, (const float *)ctx + lo, m * sizeof *a);
    return false;
}

static double unit(uint64_t seed, uint64_t i) { return (double)(rng_mix64(seed * 0x9e3779b97f4a7c15ull + i) >> 11) * 0x1p-53; }

static double gauss(uint64_t seed, uint64_t i) {
    double u = unit(seed, 2 * i) + 1e-300, v = unit(seed, 2 * i + 1);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Plan from the sample positions the library would use (or a given sample),
 * scan everything in chunks, resolve; the chunks' buffers from room where
 * it has space (NULL: the heap). */
static int run_cut(const float *a, size_t n, size_t rank, bool desc, const float *forced, rank_cut *c,
                   rc_room *room) {
    size_t ns = rank_cut_sample_size(n), runs = ns / RC_RUN;
    assert_true(ns > 0);
    float *sample = malloc(ns * sizeof *sample);
    assert_non_null(sample);
    for (size_t r = 0; r < runs; r++) {
        size_t at = rank_cut_sample_run(n, runs, r, 42);
        assert_true(at + RC_RUN <= n);
        memcpy(sample + r * RC_RUN, forced ? forced + r * RC_RUN : a + at, RC_RUN * sizeof *sample);
    }
    float *tmp = malloc(2 * ns * sizeof *tmp);
    assert_non_null(tmp);
    assert_true(rank_cut_plan(c, n, rank, desc, sample, ns, tmp, room));
    free(tmp);
    cut_acc acc[2];
    memset(acc, 0, sizeof acc);
    for (size_t ch = 0; ch < rank_cut_nchunks(n); ch++) {
        size_t lo, hi;
        rank_cut_chunk(n, ch, &lo, &hi);
        for (size_t b0 = lo; b0 < hi; b0 += RC_BLOCK) {
            size_t m = hi - b0 < RC_BLOCK ? hi - b0 : RC_BLOCK;
            rank_cut_scan(c, &acc[ch % 2], ch, a + b0, m); /* two "threads" */
        }
    }
    /* what lies under the band: zeros apart when it starts at zero, in
     * the count below it otherwise */
    size_t zeros = 0, under = 0;
    for (size_t e = 0; e < n; e++) zeros += a[e] == 0.0f, under += a[e] < c->blo;
    assert_int_equal(acc[0].zeros + acc[1].zeros, c->blo == 0.0f ? zeros : 0);
    assert_int_equal(acc[0].below + acc[1].below, c->blo == 0.0f ? 0 : under);
    free(sample);
    return rank_cut_resolve(c, acc, 2, mags, a);
}

/* Some chunk has more than half its magnitudes nonzero inside the band. */
static bool band_too_wide(const float *a, size_t n, const rank_cut *c) {
    for (size_t ch = 0; ch < rank_cut_nchunks(n); ch++) {
        size_t lo, hi, in = 0;
        rank_cut_chunk(n, ch, &lo, &hi);
        for (size_t e = lo; e < hi; e++) in += a[e] > 0.0f && a[e] >= c->blo && a[e] <= c->bhi;
        if (in > (hi - lo) / 2) return true;
    }
    return false;
}

/* Returns 1 when the cut streamed, 0 when it took the exact path. */
static int check(const float *a, size_t n, size_t rank, bool desc) {
    size_t *idx = malloc(n * sizeof *idx), *pos = malloc(n * sizeof *pos);
    assert_true(idx && pos);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    order o = {a, desc};
    qsort_r(idx, n, sizeof *idx, by_order, &o);
    for (size_t r = 0; r < n; r++) pos[idx[r]] = r;
    rank_cut c;
    int rc = run_cut(a, n, rank, desc, NULL, &c, NULL);
    /* the same with the buffers in a room: one with space for all, and one
     * so small that most chunks start on the heap, and the few inside it
     * move there when they grow */
    size_t sizes[2] = {8 * n + 4096, 3 * 4800};
    for (int r = 0; r < 2; r++) {
        char *mem = aligned_alloc(64, (sizes[r] + 63) / 64 * 64);
        assert_non_null(mem);
        rc_room room = {mem, sizes[r], 0};
        rank_cut c2;
        assert_int_equal(run_cut(a, n, rank, desc, NULL, &c2, &room), rc);
        if (rc == 1) {
            assert_true(c2.zero == c.zero);
            if (!c.zero) assert_true(c2.v == c.v && c2.idx == c.idx);
        }
        if (r == 0 && !c2.one) assert_true(room.used > 0 && room.used <= room.bytes);
        free(mem);
    }
    if (rc == 0) {
        /* only where the band holds most of a chunk (too wide to keep) */
        assert_true(band_too_wide(a, n, &c));
        free(idx);
        free(pos);
        return 0;
    }
    assert_int_equal(rc, 1);
    float v = a[idx[rank]];
    if (v == 0.0f) {
        assert_true(c.zero);
    } else {
        assert_false(c.zero);
        assert_true(c.v == v);
        assert_int_equal(c.idx, idx[rank]);
    }
    /* kept from the cut on (a lower cut), and up to it (an upper cut, ascending index order only) */
    keep_rule lower = keep_rule_between(&c, NULL), upper = keep_rule_between(NULL, &c);
    for (size_t e = 0; e < n; e++) {
        if (a[e] == 0.0f && v == 0.0f) continue; /* which zeros: left open */
        assert_int_equal(keep_rule_test(&lower, a[e], (uint32_t)e), pos[e] >= rank);
        if (!desc) assert_int_equal(keep_rule_test(&upper, a[e], (uint32_t)e), pos[e] <= rank);
    }
    free(idx);
    free(pos);
    return 1;
}

/* The cuts at six ranks in both index orders; returns how many streamed. */
static int check_ranks(const float *a, size_t n) {
    size_t ranks[] = {0, n / 10, n / 3, n / 2, n - n / 10, n - 1};
    int streamed = 0;
    for (size_t r = 0; r < sizeof ranks / sizeof ranks[0]; r++)
        for (int desc = 0; desc < 2; desc++) streamed += check(a, n, ranks[r], desc);
    return streamed;
}

static void test_continuous(void **state) {
    (void)state;
    size_t n = 300007;
    float *a = malloc(n * sizeof *a);
    for (size_t e = 0; e < n; e++) a[e] = (float)fabs(gauss(1, e));
    check_ranks(a, n);
    free(a);
}

/* The smallest tensors that stream (2^15 elements and a little over: a
 * sample of ~2k values, so the widest relative band), continuous and tied. */
static void test_small(void **state) {
    (void)state;
    size_t sizes[] = {(size_t)1 << 15, 40009};
    for (size_t k = 0; k < 2; k++) {
        size_t n = sizes[k];
        assert_true(rank_cut_sample_size(n) > 0);
        float *a = malloc(n * sizeof *a);
        for (size_t e = 0; e < n; e++) a[e] = (float)fabs(gauss(6, e));
        check_ranks(a, n);
        for (size_t e = 0; e < n; e++) a[e] = (float)(1 + rng_mix64(e) % 7) * 0.125f;
        check_ranks(a, n);
        free(a);
    }
    assert_int_equal(rank_cut_sample_size(((size_t)1 << 15) - 1), 0);
}

/* The sample grows with n past its floor, never shrinks as n grows, takes
 * whole runs and at most one element in 16, and stops at its cap; a
 * large tensor's cut (a sample of n / 512) still finds the exact ranks. */
static void test_sample_size(void **state) {
    (void)state;
    assert_int_equal(rank_cut_sample_size((size_t)1 << 18), ((size_t)1 << 18) / 16);
    assert_int_equal(rank_cut_sample_size((size_t)1 << 22), 32768); /* the floor: n / 16 would be more */
    assert_int_equal(rank_cut_sample_size((size_t)1 << 26), ((size_t)1 << 26) / 512);
    assert_int_equal(rank_cut_sample_size((size_t)136134656), 262144); /* Qwen2-0.5B's embedding: the cap */
    assert_int_equal(rank_cut_sample_size(UINT32_MAX), 262144);
    assert_int_equal(rank_cut_sample_size((size_t)UINT32_MAX + 1), 0);
    size_t last = 0;
    for (size_t n = (size_t)1 << 15; n <= ((size_t)1 << 28); n = n + n / 7 + 13) {
        size_t ns = rank_cut_sample_size(n);
        assert_true(ns >= last && ns % RC_RUN == 0 && ns <= n / 16);
        last = ns;
    }
    size_t n = ((size_t)1 << 25) + 12345; /* ns = n / 512, twice the floor */
    assert_int_equal(rank_cut_sample_size(n), n / 512 / RC_RUN * RC_RUN);
    float *a = malloc(n * sizeof *a);
    assert_non_null(a);
    for (size_t e = 0; e < n; e++) a[e] = (float)fabs(gauss(8, e));
    for (int d = 1; d <= 3; d++) {
        rank_cut c;
        assert_int_equal(run_cut(a, n, n * (size_t)d / 4, d == 2, NULL, &c, NULL), 1);
        size_t below = 0, at = 0;
        for (size_t e = 0; e < n; e++) below += a[e] < c.v, at += a[e] == c.v;
        assert_true(below <= n * (size_t)d / 4 && n * (size_t)d / 4 < below + at);
        assert_true(c.idx < n && a[c.idx] == c.v);
    }
    free(a);
}

/* |bf16(b + d) - bf16(b)|: multiples of a few ulps, large tie groups */
static void test_bf16_ties(void **state) {
    (void)state;
    size_t n = (size_t)1 << 18;
    float *a = malloc(n * sizeof *a);
    for (size_t e = 0; e < n; e++) {
        float b = bf16_to_f32(f32_to_bf16((float)(0.02 * gauss(2, e))));
        float x = bf16_to_f32(f32_to_bf16(b + (float)(0.002 * gauss(3, e))));
        a[e] = fabsf(x - b);
    }
    check_ranks(a, n);
    free(a);
}

/* Four common values among continuous ones: cuts on a common value and
 * between them, among the rest (counted apart by the resolve), every
 * twentieth rank, all streaming. */
static void test_common_and_rest(void **state) {
    (void)state;
    size_t n = 200000;
    const float common[4] = {0.3f, 0.5f, 0.7f, 0.9f};
    float *a = malloc(n * sizeof *a);
    for (size_t e = 0; e < n; e++)
        a[e] = unit(10, e) < 0.6 ? common[rng_mix64(e) % 4] : (float)(1.2 * unit(11, e)) + 1e-6f;
    int streamed = 0;
    for (size_t j = 0; j < 20; j++)
        for (int desc = 0; desc < 2; desc++) streamed += check(a, n, j * n / 20 + 7, desc);
    assert_int_equal(streamed, 40);
    free(a);
}

static void test_mostly_zero(void **state) {
    (void)state;
    size_t n = 400000;
    float *a = malloc(n * sizeof *a);
    for (size_t e = 0; e < n; e++) a[e] = unit(4, e) < 0.6 ? 0.0f : (float)(1 + rng_mix64(e) % 5) * 0.25f;
    check_ranks(a, n);
    free(a);
}

static void test_two_values(void **state) {
    (void)state;
    size_t n = 300000;
    float *a = malloc(n * sizeof *a);
    for (size_t e = 0; e < n; e++) a[e] = unit(5, e) < 0.5 ? 1.0f : 2.0f;
    /* a band of one value is counted, not kept, and streams; only at the
     * median does it span both values, every element (the exact path) */
    assert_int_equal(check_ranks(a, n), 10);
    free(a);
}

static void test_band_miss(void **state) {
    (void)state;
    size_t n = 300000, ns = rank_cut_sample_size(n);
    float *a = malloc(n * sizeof *a), *fake = malloc(ns * sizeof *fake);
    for (size_t e = 0; e < n; e++) a[e] = (float)fabs(gauss(6, e));
    for (size_t s = 0; s < ns; s++) fake[s] = 100.0f + (float)s; /* far above every magnitude */
    rank_cut c;
    assert_int_equal(run_cut(a, n, n / 2, true, fake, &c, NULL), 0);
    for (size_t s = 0; s < ns; s++) fake[s] = 1e-30f * (float)(s + 1); /* far below */
    char *mem = malloc(8 * n);
    assert_non_null(mem);
    rc_room room = {mem, 8 * n, 0}; /* buffers sized from a sample that is wrong */
    assert_int_equal(run_cut(a, n, n / 2, false, fake, &c, &room), 0);
    free(mem);
    free(a);
    free(fake);
}

static int cmp_float(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* rank_cut_scan_half (magnitudes made from bf16 or f16 inputs inside the
 * scan) leaves exactly what rank_cut_scan of the same magnitudes leaves:
 * counts, the pieces and the magnitudes kept in each; blocks with tails,
 * zero deltas (a band from zero too), band ends that tie; and it flags a
 * NaN or infinite input. */
static float half_f(uint16_t h, bool f16) { return f16 ? f16_to_f32(h) : bf16_to_f32(h); }
static uint16_t to_half(float v, bool f16) { return f16 ? f32_to_f16(v) : f32_to_bf16(v); }

/* Cuts c1 and c2 (the same plan) left the same pieces, each keeping the
 * same magnitudes (in another order: the bf16 scan keeps even and odd
 * elements apart), which are what lies inside the band, nonzero, of the
 * magnitudes a; returns how many were kept. */
static size_t same_scan(rank_cut *c1, rank_cut *c2, const float *a, size_t n) {
    size_t inside = 0;
    for (size_t ch = 0; ch < c1->nchunks; ch++) {
        const rc_chunk *h1 = &c1->ch[ch], *h2 = &c2->ch[ch];
        assert_false(h1->over || h2->over);
        assert_int_equal(h1->nv, h2->nv);
        assert_int_equal(h1->npc, h2->npc);
        for (size_t p = 0; p < h1->npc; p++) {
            assert_int_equal(h1->pc[p].e0, h2->pc[p].e0);
            assert_int_equal(h1->pc[p].len, h2->pc[p].len);
            assert_int_equal(h1->pc[p].v0, h2->pc[p].v0);
            size_t v1 = p + 1 < h1->npc ? h1->pc[p + 1].v0 : h1->nv;
            qsort(h1->v + h1->pc[p].v0, v1 - h1->pc[p].v0, sizeof(float), cmp_float);
            qsort(h2->v + h2->pc[p].v0, v1 - h2->pc[p].v0, sizeof(float), cmp_float);
        }
        if (h1->nv) assert_memory_equal(h1->v, h2->v, h1->nv * sizeof(float));
        size_t lo, hi, want = 0;
        rank_cut_chunk(n, ch, &lo, &hi);
        for (size_t e = lo; e < hi; e++) want += a[e] > 0.0f && a[e] >= c1->blo && a[e] <= c1->bhi;
        assert_int_equal(h1->nv, want);
        inside += h1->nv;
    }
    return inside;
}

static void scan_half_case(bool f16) {
    size_t n = 100003;
    uint16_t *x = malloc(n * 2), *b = malloc(n * 2);
    float *a = malloc(n * sizeof *a);
    assert_true(x && b && a);
    for (size_t e = 0; e < n; e++) {
        b[e] = to_half((float)(0.02 * gauss(7, e)), f16);
        x[e] = unit(8, e) < 0.2 ? b[e] : to_half(half_f(b[e], f16) + (float)(0.002 * gauss(9, e)), f16);
        a[e] = fabsf(half_f(x[e], f16) - half_f(b[e], f16));
    }
    size_t ns = rank_cut_sample_size(n), runs = ns / RC_RUN;
    float *sample = malloc(ns * sizeof *sample), *tmp = malloc(2 * ns * sizeof *tmp);
    assert_true(sample && tmp);
    for (size_t r = 0; r < runs; r++)
        memcpy(sample + r * RC_RUN, a + rank_cut_sample_run(n, runs, r, 5), RC_RUN * sizeof *sample);
    size_t ranks[] = {n / 3, n / 2, n - n / 10, n / 20};
    for (size_t ri = 0; ri < 4; ri++) {
        /* c3, c4: both cuts of one rank_cut_scan_half2, against c1 and c5 */
        size_t r2 = ranks[(ri + 1) % 4];
        rank_cut c1, c2, c3, c4, c5;
        assert_true(rank_cut_plan(&c1, n, ranks[ri], true, sample, ns, tmp, NULL));
        assert_true(rank_cut_plan(&c2, n, ranks[ri], true, sample, ns, tmp, NULL));
        assert_true(rank_cut_plan(&c3, n, ranks[ri], true, sample, ns, tmp, NULL));
        assert_true(rank_cut_plan(&c4, n, r2, false, sample, ns, tmp, NULL));
        assert_true(rank_cut_plan(&c5, n, r2, false, sample, ns, tmp, NULL));
        cut_acc acc1 = {0}, acc2 = {0}, acc3 = {0}, acc4 = {0}, acc5 = {0};
        size_t blocks = 0;
        for (size_t ch = 0; ch < rank_cut_nchunks(n); ch++) {
            size_t lo, hi;
            rank_cut_chunk(n, ch, &lo, &hi);
            for (size_t b0 = lo; b0 < hi; b0 += 1000, blocks++) { /* 1000: tails in every block */
                size_t m = hi - b0 < 1000 ? hi - b0 : 1000;
                bool nf = false;
                rank_cut_scan_half(&c2, &acc2, ch, x + b0, b + b0, m, f16, (ch & 1) != 0, &nf);
                rank_cut_scan_half2(&c3, &c4, &acc3, &acc4, ch, x + b0, b + b0, m, f16, (ch & 1) != 0, &nf);
                rank_cut_scan(&c1, &acc1, ch, a + b0, m);
                rank_cut_scan(&c5, &acc5, ch, a + b0, m);
                assert_false(nf);
            }
        }
        assert_true(blocks > 100);
        assert_int_equal(acc1.below, acc2.below);
        assert_int_equal(acc1.zeros, acc2.zeros);
        if (ri < 3) assert_true(acc1.below > 0 && acc1.zeros == 0);
        else assert_true(c1.blo == 0.0f && acc1.below == 0 && acc1.zeros > 0); /* a fifth of the deltas are 0 */
        size_t inside = same_scan(&c1, &c2, a, n);
        assert_int_equal(acc3.below, acc1.below);
        assert_int_equal(acc3.zeros, acc1.zeros);
        assert_int_equal(acc4.below, acc5.below);
        assert_int_equal(acc4.zeros, acc5.zeros);
        assert_int_equal(same_scan(&c1, &c3, a, n), inside);
        same_scan(&c5, &c4, a, n);
        assert_true(ri == 3 || inside > 0); /* the band from zero may be [0, 0] */
        if (ri == 0) { /* a NaN input, then infinity, inside a block */
            bool nf = false;
            uint16_t keep = x[500];
            x[500] = f16 ? 0x7e01 : 0x7fc1;
            rank_cut_scan_half(&c2, &acc2, 0, x + 480, b + 480, 40, f16, false, &nf);
            assert_true(nf);
            nf = false;
            x[500] = f16 ? 0xfc00 : 0xff80;
            rank_cut_scan_half(&c2, &acc2, 0, x + 497, b + 497, 5, f16, false, &nf);
            assert_true(nf);
            for (int tail = 0; tail < 2; tail++) { /* the two-cut scan too: vector body, tail */
                nf = false;
                rank_cut_scan_half2(&c3, &c4, &acc3, &acc4, 0, x + (tail ? 497 : 480), b + (tail ? 497 : 480),
                                    tail ? 5 : 40, f16, false, &nf);
                assert_true(nf);
            }
            x[500] = keep;
            /* in the base: the caller's unless check_base (vector body, tail) */
            keep = b[500];
            b[500] = f16 ? 0x7c00 : 0x7f80;
            for (int tail = 0; tail < 2; tail++) {
                size_t at = tail ? 497 : 480, len = tail ? 5 : 40;
                nf = false;
                rank_cut_scan_half(&c2, &acc2, 0, x + at, b + at, len, f16, false, &nf);
                assert_false(nf);
                rank_cut_scan_half(&c2, &acc2, 0, x + at, b + at, len, f16, true, &nf);
                assert_true(nf);
            }
            b[500] = keep;
        }
        rank_cut_free(&c1);
        rank_cut_free(&c2);
        rank_cut_free(&c3);
        rank_cut_free(&c4);
        rank_cut_free(&c5);
    }
    free(sample);
    free(tmp);
    free(x);
    free(b);
    free(a);
}

static void test_scan_bf16(void **state) {
    (void)state;
    scan_half_case(false);
}

static void test_scan_f16(void **state) {
    (void)state;
    scan_half_case(true);
}

/* rank_cut_plan's band, from the sample in its own order, is the one its
 * header states, read off a sorted copy: continuous, tied (bf16) and
 * mostly zero samples, ranks from the first to the last. */
static void test_plan_band(void **state) {
    (void)state;
    size_t n = 1 << 20, ns = rank_cut_sample_size(n);
    float *s = malloc(ns * sizeof *s), *sorted = malloc(ns * sizeof *sorted), *tmp = malloc(2 * ns * sizeof *tmp);
    assert_true(s && sorted && tmp);
    for (int kind = 0; kind < 3; kind++) {
        for (size_t i = 0; i < ns; i++) {
            float v = (float)rng_uniform(7, (uint64_t)kind, i);
            if (kind == 1) v = bf16_to_f32(f32_to_bf16(v * 0.01f)); /* ties in large groups */
            if (kind == 2) v = i % 10 ? 0.0f : v;                   /* mostly zero */
            s[i] = v;
        }
        memcpy(sorted, s, ns * sizeof *s);
        qsort(sorted, ns, sizeof *sorted, cmp_float);
        for (size_t rank = 0; rank < n; rank += n / 64 - 1) {
            double q = (double)rank / (double)n, margin = 5.0 * sqrt((double)ns * q * (1.0 - q)) + 16.0;
            double lo = q * (double)ns - margin, hi = q * (double)ns + margin;
            rank_cut c;
            assert_true(rank_cut_plan(&c, n, rank, true, s, ns, tmp, NULL));
            assert_true(c.blo == (lo < 0 ? 0.0f : sorted[(size_t)lo]));
            assert_true(c.bhi == (hi >= (double)ns ? INFINITY : sorted[(size_t)hi]));
            rank_cut_free(&c);
        }
    }
    free(s), free(sorted), free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_continuous), cmocka_unit_test(test_bf16_ties), cmocka_unit_test(test_mostly_zero),
        cmocka_unit_test(test_two_values), cmocka_unit_test(test_common_and_rest), cmocka_unit_test(test_band_miss),
        cmocka_unit_test(test_plan_band), cmocka_unit_test(test_small), cmocka_unit_test(test_sample_size),
        cmocka_unit_test(test_scan_bf16),
        cmocka_unit_test(test_scan_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
