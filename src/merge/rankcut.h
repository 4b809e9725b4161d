/* rankcut.h — rank thresholds of task-vector magnitudes in one streaming pass.
 *
 * TIES (magnitude) and breadcrumbs (magnitude_outliers) keep the elements of
 * a task vector whose magnitude a_e = |x_e - base_e| lies in a range of
 * ranks, ties ordered by index (mergekit's topk / sort). An exact select
 * needs the whole vector in memory, or several passes over it. Here one pass
 * usually suffices:
 *   1. a stratified sample of the magnitudes brackets the wanted rank in a
 *      band [blo, bhi], five standard deviations of the sample quantile wide;
 *   2. the pass counts, per fixed chunk of the tensor, the magnitudes below
 *      the band (vectorised), and keeps those inside it, the nonzero ones
 *      in [blo, bhi] (a few percent: a compare and a compaction in
 *      registers), with where each scanned piece of the chunk starts;
 *   3. the counts name the rank r of the cut among the kept magnitudes.
 *      Deltas of bf16 checkpoints are multiples of a few ulps, so inside
 *      the band magnitudes tie in large groups: the commonest values (read
 *      off a sample of the kept ones) are counted by vector compares, the
 *      rest selected by radix, and the cut is the r'-th element of its
 *      value u in index order. The kept magnitudes say how many of them
 *      each chunk and each of its pieces holds, so only the one piece
 *      where the count crosses r' is read again, to find its index. A
 *      band of one value is only counted, never stored.
 * When the band misses (an unlucky sample) the caller falls back to the exact
 * select of sparsify.c. The result is identical either way.
 *
 * Zero magnitudes (elements a fine-tune left unchanged) rank first. When a
 * cut falls among them, which zeros are kept does not matter to any method
 * here (a zero delta adds nothing to a sum, never agrees with an elected
 * sign, and adds nothing to an L1 norm), so it is left open. */
#ifndef ALLOY_MERGE_RANKCUT_H
#define ALLOY_MERGE_RANKCUT_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A stretch of a chunk that one scan call looked at: its first element,
 * its length (at most RC_BLOCK) and where its kept magnitudes start. */
typedef struct rc_piece {
    size_t e0;
    uint32_t len, v0;
} rc_piece;

/* One chunk's kept magnitudes (the nonzero ones in [blo, bhi]) in scan
 * order, piece by piece; over when they grew past half the chunk (the band
 * is no use there: the exact path) or memory ran out. */
typedef struct rc_chunk {
    float *v;
    size_t nv, cap;
    rc_piece *pc;
    size_t npc, pccap;
    bool over;
    bool v_room, pc_room; /* v, pc lie in the caller's room (rc_room), not on the heap */
} rc_chunk;

/* Memory the caller keeps warm across tensors, which the cuts of one
 * tensor take their chunks' first buffers from (planned on any threads:
 * `used` grows atomically), sized from the sample so that they seldom
 * grow; a buffer that outgrows its place, or finds the room full, moves
 * to the heap. Fresh heap memory costs a page fault per 4 KiB and, on
 * the bench's VM, about 1 ms per MB zeroed: the chunks' arrays, grown by
 * doubling and freed after every tensor, were 26,000 faults and 4 % of a
 * ties merge's CPU time. */
typedef struct rc_room {
    char *p;
    size_t bytes;
    size_t used;
} rc_room;

/* The element of ascending rank `rank` among n magnitudes, ordered by
 * magnitude and then by index (descending when idx_desc). */
typedef struct rank_cut {
    size_t n, rank;
    bool idx_desc;
    float blo, bhi;     /* the band from the sample */
    bool one;           /* blo == bhi > 0: what it keeps is counted, not stored */
    size_t nchunks;
    rc_chunk *ch;       /* [nchunks] */
    /* result of rank_cut_resolve */
    bool zero;          /* the cut is a zero magnitude */
    float v;            /* its magnitude */
    uint32_t idx;       /* its index (unless zero) */
} rank_cut;

/* What one thread's share of the pass found besides the histograms. */
typedef struct cut_acc {
    size_t below;       /* a < blo, when blo > 0 (0 else) */
    size_t zeros;       /* a == 0, when blo == 0 (0 else: then below has them) */
} cut_acc;

/* Magnitudes of elements [lo, lo + m), m <= RC_BLOCK, into a; true when an
 * input is not finite. */
#define RC_BLOCK 1024
typedef bool (*rank_cut_mag_fn)(const void *ctx, size_t lo, size_t m, float *a);

/* The pass runs over at most RC_CHUNKS fixed chunks (a function of n only,
 * so sums per chunk do not depend on the thread count). */
#define RC_CHUNKS 16
size_t rank_cut_nchunks(size_t n);
void rank_cut_chunk(size_t n, size_t i, size_t *lo, size_t *hi);

/* Sample size for n elements; 0 when n is too small for the streaming path
 * (an exact select on a copy is cheaper there). */
size_t rank_cut_sample_size(size_t n);

/* The sample is ns / RC_RUN runs of RC_RUN consecutive elements (cheap to
 * read: a cache line or two each), one run at a random place in each of
 * ns / RC_RUN equal strata. First element of run `run` of `runs`, a pure
 * function of (n, runs, run, seed). */
#define RC_RUN 32
size_t rank_cut_sample_run(size_t n, size_t runs, size_t run, uint64_t seed);

/* Set up cut c from the sample's ns magnitudes, in any order (left as they
 * are): the band is [value of sample rank lo, value of sample rank hi] with
 * lo, hi = q ns -+ (5 sqrt(ns q (1 - q)) + 16), q = rank / n (from zero
 * when lo < 0, to infinity when hi >= ns); only those two order statistics
 * are found, not the whole order. tmp holds 2 ns floats. The chunks'
 * buffers come from room where it has space (room may be NULL: the heap).
 * Returns false when out of memory. */
bool rank_cut_plan(rank_cut *c, size_t n, size_t rank, bool idx_desc, const float *sample, size_t ns, float *tmp,
                   rc_room *room);

/* How many of the ns sampled magnitudes lie inside the band of cut c
 * (nonzero, in [blo, bhi]: what the pass keeps), for sizing by the share. */
size_t rank_cut_sample_inside(const rank_cut *c, const float *sample, size_t ns);

/* Count and keep magnitudes a[0..m) of elements inside chunk `chunk` into
 * c and acc: one thread per chunk, and a chunk's elements in ascending
 * order (the pieces are searched in that order). Returns how many of them
 * are positive. */
size_t rank_cut_scan(rank_cut *c, cut_acc *acc, size_t chunk, const float *a, size_t m);

/* 1 where rank_cut_scan_half has its own vector loop (AVX-512BW); elsewhere
 * it widens into a buffer first, and callers do better converting blocks
 * themselves and calling rank_cut_scan. */
#if defined(__AVX512BW__) && defined(__AVX512VL__)
#define RC_HALF_SCAN 1
#else
#define RC_HALF_SCAN 0
#endif

/* rank_cut_scan of the magnitudes |x - base| of 16-bit float inputs
 * x[0..m), base[0..m) (2-byte aligned; bf16, or IEEE half with f16), made
 * on the fly (in registers on AVX-512), without the count of positive
 * ones; *nonfinite is set when an x is NaN or infinite, or with check_base
 * a base value (else base is the caller's to check). */
void rank_cut_scan_half(rank_cut *c, cut_acc *acc, size_t chunk, const uint16_t *x, const uint16_t *base, size_t m,
                        bool f16, bool check_base, bool *nonfinite);

/* rank_cut_scan_half for two cuts of the same magnitudes (c0 into acc0,
 * c1 into acc1; breadcrumbs' lower and upper cuts), each magnitude made
 * once; what each cut keeps and counts is what two calls would leave. */
void rank_cut_scan_half2(rank_cut *c0, rank_cut *c1, cut_acc *acc0, cut_acc *acc1, size_t chunk, const uint16_t *x,
                         const uint16_t *base, size_t m, bool f16, bool check_base, bool *nonfinite);

/* Combine the accumulators and find the
 * cut, re-reading magnitudes through f where needed. Returns 1 when found
 * (c->zero, v, idx set), 0 when the band missed or memory ran out (take the
 * exact path), -1 when f met a non-finite input. Frees the kept magnitudes. */
int rank_cut_resolve(rank_cut *c, const cut_acc *acc, int nacc, rank_cut_mag_fn f, const void *ctx);

void rank_cut_free(rank_cut *c);

/* Which magnitudes are kept: (a > L or a == L with tlo <= e <= thi) and
 * (a < U or a == U with e <= tu). */
typedef struct keep_rule {
    float L, U;
    uint32_t tlo, thi, tu;
} keep_rule;

/* Keep everything at or after cut `lower` (NULL: no lower bound) and at or
 * before cut `upper` (NULL: no upper bound; an upper cut orders ties by
 * ascending index). */
keep_rule keep_rule_between(const rank_cut *lower, const rank_cut *upper);

static inline bool keep_rule_test(const keep_rule *r, float a, uint32_t e) {
    return ((a > r->L) | ((a == r->L) & (e >= r->tlo) & (e <= r->thi))) & ((a < r->U) | ((a == r->U) & (e <= r->tu)));
}

#endif
