/* task_arithmetic.c — mergekit's generalized task arithmetic family:
 * task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties,
 * della, della_linear (mergekit/merge_methods/generalized_task_arithmetic.py
 * and the GeneralizedTaskArithmeticMerge table in registry.py).
 *
 * Every variant is the same pipeline over task vectors delta_i = x_i - base:
 * sparsify each (sparsify.c), weight, optionally elect a sign per element and
 * drop the dissenters, sum, optionally normalise by the weights that took
 * part, scale by lambda and add to the base. The variants differ only in the
 * consensus, the sparsification and the defaults of normalize and rescale.
 * Parameter resolution is the planner's; this file only computes. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "merge/gta_kernel.h"
#include "merge/method.h"
#include "merge/rankcut.h"
#include "merge/sink.h"
#include "merge/sparsify.h"
#include "merge/vec.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/mem.h"
#include "util/rng.h"

/* Parameter order of every table below (gamma / epsilon only where used). */
enum { P_INT8_MASK, P_NORMALIZE, P_RESCALE, P_LAMBDA, P_WEIGHT, P_DENSITY, P_EXTRA };

typedef struct gta_variant {
    const char *name;
    bool consensus; /* mergekit ConsensusMethod.sum */
    sparsify_kind sparsify;
} gta_variant;

/* out = base + lambda * M, with w_i the weights, s_i the L1 rescale factors
 * (1 without rescale), m_i the sparsification masks and
 *   d_i = w_i * s_i * m_i * (x_i - base)                     (weighted deltas)
 *   without consensus: M = sum_i d_i [/ D], D = sum_i w_i (|D| < 1e-8 -> 1)
 *   with consensus "sum" (TIES): g = +1 if sum_i d_i >= 0 else -1,
 *     c_i = [sign(d_i) == g] (zeros never agree),
 *     M = sum_i c_i d_i [/ D], D = sum_i c_i w_i (0 -> 1)
 * where [/ D] applies when normalize is on. Source: mergekit GTATask.execute;
 * TIES arXiv:2306.01708, DARE arXiv:2311.03099, breadcrumbs arXiv:2312.06795,
 * DELLA arXiv:2406.11617. int8_mask only changes mergekit's mask dtype.
 *
 * The inputs are streamed where they lie (bf16 mmapped checkpoints, say) in
 * blocks of GTA_BLOCK elements, never copied whole to f32. At most two
 * passes: the first finds what the masks need (rank cuts of the magnitudes
 * |x_i - base| for magnitude and breadcrumbs, rankcut.h; the L1 sums of the
 * rescale, with DARE's random mask drawn on the fly), the second computes the merge, the k weighted deltas of a
 * block first and then the consensus, every inner loop a straight
 * vectorisable pass. Methods without sparsification take one pass. */
#define GTA_BLOCK 1024

/* Where only the vector loops read a block (the bf16 scan in the survey,
 * the fused kernel in the merge pass), they take GTA_WIDE elements per
 * call: each call sets up its constants, which at 1024 elements cost the
 * bench kernel's ties (kernel_bench, best of 10, medians of 6 paired
 * rounds) 1.47 against 1.37 ns per element on one thread, 1.07 against
 * 0.93 on two. The scan still keeps pieces of RC_BLOCK, and DARE's sums
 * stay per GTA_BLOCK, so no result changes. */
#define GTA_WIDE 4096

/* The survey hands its chunks out in order, and the merge pass its
 * segments of GTA_SEG blocks in reverse (each forwards inside, so that
 * results reach the output in runs), each to whichever thread is free: what
 * the survey read last is still in the last-level cache, which the threads
 * share (on the MLP matrices of a 0.5B model, base + 3 models, 35 MB of bf16
 * inputs, most of the tensor), and a thread slowed by the writers or the
 * prefetcher leaves its work to the other instead of keeping it waiting at
 * the end of the pass. One thread alone (a lane of the executor) takes them
 * in order: its results are then one stream, which its sink makes straight
 * in the ring of direct writes (merge/sink.c); paired runs on the bench
 * found no difference in CPU time between the two orders there. */
#define GTA_SEG 128

/* DARE's first pass draws each model's mask for its L1 sums; the merge pass
 * reads it back as bits (1 bit per element) when all k models' bits fit in
 * GTA_BITS_MAX bytes, and draws it again otherwise. The bits take the start
 * of the executor's scratch, so tensors of one size reuse the same pages
 * and only the first touches them. A larger tensor's bits would be memory
 * touched for that one tensor alone, and on a VM a first touch can cost more
 * than the second draw: a 0.5B model's embedding (17 MB of bits per model)
 * merged in 1.63 s with bits and in 0.86 s redrawn. */
#define GTA_BITS_MAX ((size_t)32 << 20)

typedef enum { KEEP_WHOLE, KEEP_RULE, KEEP_MASK, KEEP_RANDOM, KEEP_BITS } keep_kind;

typedef struct gta_model {
    merge_src src;
    float w, s;         /* weight, L1 rescale factor */
    keep_kind keep;     /* final only once the masks are known */
    bool masked;        /* sparsified at all (else kept whole, no rescale) */
    keep_rule rule;     /* KEEP_RULE */
    uint8_t *mask;      /* KEEP_MASK (n bytes) */
    int ncuts;          /* rank cuts still to resolve (magnitude 1, breadcrumbs up to 2) */
    rank_cut cut[2];
    bool cut_upper[2];  /* cut[c] bounds from above */
    size_t lo, hi;      /* exact path: kept ascending ranks [lo, hi) of the sparsify key */
    bool neg_key;       /* exact path: key -|delta| (magnitude) instead of |delta| */
    bool random;        /* KEEP_RANDOM: DARE's mask, drawn where it is needed */
    uint8_t *bits;      /* KEEP_BITS: 1 bit per element (della's, or DARE's drawn by gk_dare_survey) */
    uint8_t *own_bits;  /* della's bits, allocated here */
    uint64_t rng_key;   /* KEEP_RANDOM: the stream's key and threshold */
    uint32_t rng_thr;
    double density;
    bool checked;       /* the first pass read every input element: finite */
} gta_model;

typedef struct gta_ctx {
    const merge_call *call;
    gta_model *m;
    uint8_t *bits_room; /* scratch that DARE's masks may take as bits (see GTA_BITS_MAX), or NULL */
    size_t bits_room_bytes;
    merge_src base;
    bool consensus, normalize;
    float lambda, div_all;
} gta_ctx;

/* DARE's mask: element e kept iff rng_keep32(key, e, thr), thr =
 * rng_thr32(density) (util/rng.h). A pure function of (seed, model, e),
 * cheap enough (32-bit lanes) to be drawn again inside each pass's vector
 * loops instead of stored. A block's 32-bit key is rng_key32(key, b0 >> 32)
 * (blocks never straddle a multiple of 2^32). */
static inline uint32_t block_key32(uint64_t key, size_t b0) { return rng_key32(key, (uint64_t)b0 >> 32); }

/* The inverse: bits of elements [0, m) back to 0/1 bytes. */
static void unpack_keep(const uint8_t *restrict bits, size_t m, uint8_t *restrict keep) {
    size_t j = 0;
    for (; j + 8 <= m; j += 8) {
        /* byte t of w holds bit t of the byte (0 or 2^t); + 0x7f sets its top bit when not 0 */
        uint64_t w = ((uint64_t)bits[j / 8] * 0x0101010101010101ull) & 0x8040201008040201ull;
        w = ((w + 0x7f7f7f7f7f7f7f7full) >> 7) & 0x0101010101010101ull;
        memcpy(keep + j, &w, 8);
    }
    for (; j < m; j++) keep[j] = (bits[j / 8] >> (j % 8)) & 1u;
}

/* The consensus and the sum of a block, from the k weighted deltas d
 * (k x GTA_BLOCK) into o: per element, in model order, exactly
 *   sum = 0 + d_0 + d_1 + ...; with consensus mixed and div add d_i and w_i
 *   where sign(d_i) agrees with sum (g = +1 when sum >= 0; zeros never
 *   agree) and div 0 becomes 1; without, mixed = sum and div = sum of all w;
 *   o = base + (mixed * (1 / div)) lambda, or base + mixed lambda without
 *   normalize. mergekit divides; the reciprocal, rounded, then the product
 *   differ from the quotient by at most 1.5 ulp of f32 (on the 0.5B bench,
 *   0.011 % of the bf16 outputs of ties moved by one ulp), and with
 *   consensus 1 / div takes one of 2^k values, which the fused kernel looks
 *   up instead of dividing (gta_kernel.c).
 * For k <= 4, inlined with k, consensus and normalize constants: one
 * branch-free vector loop. */
static inline __attribute__((always_inline)) void gta_combine(const gta_ctx *g, int k, bool consensus, bool normalize,
                                                              const float *restrict d, const float *restrict base,
                                                              size_t m, float *restrict o) {
    float lambda = g->lambda, div_all = g->div_all;
    /* the models written out (the vectoriser does not unroll an inner loop
     * at -O2); with k a constant the unused terms fold away */
    const float *d0 = d, *d1 = d + GTA_BLOCK, *d2 = d + 2 * GTA_BLOCK, *d3 = d + 3 * GTA_BLOCK;
    float w0 = g->m[0].w, w1 = k > 1 ? g->m[1].w : 0.0f, w2 = k > 2 ? g->m[2].w : 0.0f, w3 = k > 3 ? g->m[3].w : 0.0f;
#pragma omp simd
    for (size_t j = 0; j < m; j++) {
        float x0 = d0[j], x1 = k > 1 ? d1[j] : 0.0f, x2 = k > 2 ? d2[j] : 0.0f, x3 = k > 3 ? d3[j] : 0.0f;
        float sum = 0.0f + x0;
        if (k > 1) sum += x1;
        if (k > 2) sum += x2;
        if (k > 3) sum += x3;
        /* both ways computed, one selected: no branch in the vector loop */
        int pos = sum >= 0.0f, neg = pos ^ 1;
        float mixed = 0.0f, div = 0.0f;
        /* sign(d_i) == g: zeros never agree */
#define GTA_AGREE(x, wi)                                                                                               \
    do {                                                                                                               \
        int agree = (pos & ((x) > 0.0f)) | (neg & ((x) < 0.0f));                                                       \
        float md = mixed + (x), dd = div + (wi);                                                                       \
        mixed = agree ? md : mixed;                                                                                    \
        div = agree ? dd : div;                                                                                        \
    } while (0)
        GTA_AGREE(x0, w0);
        if (k > 1) GTA_AGREE(x1, w1);
        if (k > 2) GTA_AGREE(x2, w2);
        if (k > 3) GTA_AGREE(x3, w3);
#undef GTA_AGREE
        float mx = consensus ? mixed : sum, dv = consensus ? (div == 0.0f ? 1.0f : div) : div_all;
        float scaled = normalize ? mx * (1.0f / dv) : mx;
        o[j] = base[j] + scaled * lambda;
    }
}

/* gta_combine for more than four models: one pass over the block per model. */
static void gta_combine_passes(const gta_ctx *g, int k, const float *restrict d, const float *restrict base, size_t m,
                               float *restrict o) {
    float lambda = g->lambda, div_all = g->div_all;
    bool consensus = g->consensus, normalize = g->normalize;
    float sum[GTA_BLOCK], mixed[GTA_BLOCK], div[GTA_BLOCK];
    for (size_t j = 0; j < m; j++) sum[j] = 0.0f, mixed[j] = 0.0f, div[j] = 0.0f;
    for (int i = 0; i < k; i++) {
        const float *restrict di = d + (size_t)i * GTA_BLOCK;
#pragma omp simd
        for (size_t j = 0; j < m; j++) sum[j] += di[j];
    }
    for (int i = 0; i < k; i++) {
        const float *restrict di = d + (size_t)i * GTA_BLOCK;
        float wi = g->m[i].w;
#pragma omp simd
        for (size_t j = 0; j < m; j++) {
            float dj = di[j];
            int pos = sum[j] >= 0.0f;
            int agree = (consensus ? 0 : 1) | (pos & (dj > 0.0f)) | ((pos ^ 1) & (dj < 0.0f));
            float md = mixed[j] + dj, dd = div[j] + wi;
            mixed[j] = agree ? md : mixed[j];
            div[j] = agree ? dd : div[j];
        }
    }
#pragma omp simd
    for (size_t j = 0; j < m; j++) {
        float mx = consensus ? mixed[j] : sum[j];
        float dv = consensus ? (div[j] == 0.0f ? 1.0f : div[j]) : div_all;
        o[j] = normalize ? base[j] + (mx * (1.0f / dv)) * lambda : base[j] + mx * lambda;
    }
}

/* Model i's weighted, masked deltas d_i of elements [b0, b0 + m) into di,
 * its inputs read from xf (f32) or, with bf, from the bf16 xh in place.
 * Inlined with bf a constant, so each loop is one straight vector pass. */
static inline __attribute__((always_inline)) void gta_deltas(const gta_model *gm, bool bf, const uint16_t *restrict xh,
                                                             const float *restrict xf, const float *restrict base,
                                                             size_t b0, size_t m, float *restrict di) {
    float wi = gm->w, si = gm->s;
#define GTA_XJ(j) (bf ? merge_bf16(xh[j]) : xf[j])
    if (gm->keep == KEEP_WHOLE) {
#pragma omp simd
        for (size_t j = 0; j < m; j++) di[j] = (GTA_XJ(j) - base[j]) * wi;
    } else if (gm->keep == KEEP_RANDOM) {
        uint32_t k32 = block_key32(gm->rng_key, b0), thr = gm->rng_thr, e0 = (uint32_t)b0, mm = (uint32_t)m;
#pragma omp simd
        for (uint32_t j = 0; j < mm; j++) {
            float t = ((GTA_XJ(j) - base[j]) * si) * wi; /* computed always: a select, not a branch */
            di[j] = rng_bits32_at(k32, e0 + j) < thr ? t : 0.0f;
        }
    } else if (gm->keep == KEEP_MASK || gm->keep == KEEP_BITS) {
        uint8_t drawn[GTA_BLOCK];
        const uint8_t *restrict mi = gm->keep == KEEP_MASK ? gm->mask + b0 : drawn;
        if (gm->keep == KEEP_BITS) unpack_keep(gm->bits + b0 / 8, m, drawn); /* b0 is a multiple of 8 */
#pragma omp simd
        for (size_t j = 0; j < m; j++) {
            float t = ((GTA_XJ(j) - base[j]) * si) * wi;
            di[j] = mi[j] ? t : 0.0f;
        }
    } else if (gm->rule.U == INFINITY && gm->rule.tu == UINT32_MAX && gm->rule.tlo == 0) {
        /* TIES's one-sided cut: keep a > L, or a == L up to index thi */
        float L = gm->rule.L;
        uint32_t thi = gm->rule.thi, e0 = (uint32_t)b0, mm = (uint32_t)m;
#pragma omp simd
        for (uint32_t j = 0; j < mm; j++) {
            float v = GTA_XJ(j) - base[j], a = fabsf(v);
            bool keep = (a > L) | ((a == L) & (e0 + j <= thi));
            float t = (v * si) * wi;
            di[j] = keep ? t : 0.0f;
        }
    } else {
        keep_rule r = gm->rule;
        uint32_t e0 = (uint32_t)b0, mm = (uint32_t)m; /* 32-bit lanes for the index tests */
#pragma omp simd
        for (uint32_t j = 0; j < mm; j++) {
            float v = GTA_XJ(j) - base[j];
            bool keep = keep_rule_test(&r, fabsf(v), e0 + j);
            float t = (v * si) * wi;
            di[j] = keep ? t : 0.0f;
        }
    }
#undef GTA_XJ
}

/* The merge of elements [b0, b0 + m): d is k x GTA_BLOCK scratch. Returns
 * true when an input was not finite; *obad is the index of the first
 * non-finite result in the block (n when none; packed output only). A bf16
 * input that the first pass already checked is read in place, not
 * converted to a buffer first. */
static bool gta_block(const gta_ctx *g, size_t b0, size_t m, float *restrict d, float *out, size_t *obad) {
    int k = g->call->k;
    float base[GTA_BLOCK], x[GTA_BLOCK];
    bool bad = merge_load(g->base, b0, m, base);
    for (int i = 0; i < k; i++) {
        const gta_model *gm = &g->m[i];
        float *restrict di = d + (size_t)i * GTA_BLOCK;
        if (gm->checked && gm->src.dtype == ALLOY_BF16 && !((uintptr_t)gm->src.data & 1)) {
            const uint16_t *xh = (const uint16_t *)gm->src.data + b0;
            merge_prefetch_block(xh, m * 2);
            gta_deltas(gm, true, xh, NULL, base, b0, m, di);
        } else {
            bad |= merge_load(gm->src, b0, m, x);
            gta_deltas(gm, false, NULL, x, base, b0, m, di);
        }
    }
    float o[GTA_BLOCK];
    /* the model count, consensus and normalize as constants for the common
     * cases, so that one branch-free vector loop does it all */
#define GTA_COMBINE(K)                                                                                                 \
    do {                                                                                                               \
        if (g->consensus && g->normalize)                                                                              \
            gta_combine(g, K, true, true, d, base, m, o);                                                              \
        else if (g->consensus)                                                                                         \
            gta_combine(g, K, true, false, d, base, m, o);                                                             \
        else if (g->normalize)                                                                                         \
            gta_combine(g, K, false, true, d, base, m, o);                                                             \
        else                                                                                                           \
            gta_combine(g, K, false, false, d, base, m, o);                                                            \
    } while (0)
    switch (k) {
    case 1:
        GTA_COMBINE(1);
        break;
    case 2:
        GTA_COMBINE(2);
        break;
    case 3:
        GTA_COMBINE(3);
        break;
    case 4:
        GTA_COMBINE(4);
        break;
    default:
        gta_combine_passes(g, k, d, base, m, o);
    }
#undef GTA_COMBINE
    size_t at = merge_store(g->call, out, b0, o, m);
    *obad = at < m ? b0 + at : g->call->n;
    return bad;
}

/* |x_i - base| of elements [b0, b0 + m) into a; true when not finite. */
static bool magnitudes(merge_src x, size_t b0, size_t m, const float *bblock, float *xblock, float *a) {
    return merge_load_absdiff(x, b0, m, bblock, xblock, a);
}

/* Magnitudes for rank_cut_resolve: |x - base| of a block. */
typedef struct mag_ctx {
    merge_src x, base;
} mag_ctx;

static bool mag_block(const void *p, size_t lo, size_t m, float *a) {
    const mag_ctx *c = p;
    float base[RC_BLOCK], x[RC_BLOCK];
    bool bad = merge_load(c->base, lo, m, base);
    return magnitudes(c->x, lo, m, base, x, a) | bad;
}

/* The same for any m (della's rows), RC_BLOCK at a time. */
static bool della_mag(const void *p, size_t lo, size_t m, float *a) {
    bool bad = false;
    for (size_t j = 0; j < m; j += RC_BLOCK) bad |= mag_block(p, lo + j, m - j < RC_BLOCK ? m - j : RC_BLOCK, a + j);
    return bad;
}

/* The first pass: nonzero counts and rank-cut histograms of every model with
 * cuts, and the L1 sums before (all models when rescaling) and after (DARE,
 * its mask drawn again here) the mask, per fixed chunk (rankcut.h) so the sums do not depend on
 * the thread count. part: [nchunks][k][2]. Then the cuts are resolved; a
 * model whose cuts miss keeps ncuts > 0 (the exact path). Returns -1 when
 * out of memory, 1 when an input was not finite, else 0. */
static int gta_survey(const gta_ctx *g, bool rescale, double *part, int nt) {
    const merge_call *call = g->call;
    int k = call->k;
    size_t n = call->n, nc = rank_cut_nchunks(n);
    int bad = 0;
    size_t nacc = (size_t)nt * (size_t)k * 2;
    cut_acc *acc = calloc(nacc, sizeof *acc);
    if (!acc) return -1;
    /* 16-bit floats (bf16, f16) read in place only where the loops that
     * read them are vector code (the scan's and DARE's); elsewhere the
     * blocks are widened first */
    bool aligned = !((uintptr_t)g->base.data & 1);
    bool base_bf = (RC_HALF_SCAN || GTA_KERNEL) && g->base.dtype == ALLOY_BF16 && aligned;
    bool base_f16 = (RC_HALF_SCAN || GTA_KERNEL) && g->base.dtype == ALLOY_F16 && aligned;
    bool base_h = base_bf || base_f16;
    /* DARE on bf16 or f16 with the kernel: its sums in the kernel's own loop
     * (gk_dare_survey), and its masks as bits at the start of the scratch
     * where they fit in GTA_BITS_MAX bytes, else drawn again in the merge
     * pass */
    bool dare_fused[GK_MAX_MODELS] = {false};
    size_t stride = (n / 8 + 64) & ~(size_t)63; /* bytes of one model's bits */
    bool as_bits = g->bits_room && (size_t)k * stride <= g->bits_room_bytes && (size_t)k * stride <= GTA_BITS_MAX;
    uint8_t *dare_bits[GK_MAX_MODELS] = {NULL};
    for (int i = 0; GTA_KERNEL && base_h && i < k && k <= GK_MAX_MODELS; i++) {
        const gta_model *gm = &g->m[i];
        dare_fused[i] = rescale && gm->random && gm->masked && gm->ncuts <= 0 && gm->src.dtype == g->base.dtype &&
                       !((uintptr_t)gm->src.data & 1);
        if (dare_fused[i] && as_bits) dare_bits[i] = g->bits_room + (size_t)i * stride;
    }
    /* the fused models, surveyed together in one loop (the base read once) */
    int nfused = 0, fidx[GK_MAX_MODELS];
    const uint16_t *fx[GK_MAX_MODELS];
    uint64_t fkey[GK_MAX_MODELS];
    uint32_t fthr[GK_MAX_MODELS];
    uint8_t *fbits[GK_MAX_MODELS];
    for (int i = 0; i < k && k <= GK_MAX_MODELS; i++) {
        if (!dare_fused[i]) continue;
        fidx[nfused] = i, fx[nfused] = g->m[i].src.data, fkey[nfused] = g->m[i].rng_key;
        fthr[nfused] = g->m[i].rng_thr, fbits[nfused] = dare_bits[i];
        nfused++;
    }
    /* every model surveyed by the 16-bit scan alone: wide steps */
    bool wide = RC_HALF_SCAN && base_h && !nfused;
    for (int i = 0; wide && i < k; i++) {
        const gta_model *gm = &g->m[i];
        bool sums = rescale && gm->masked;
        wide = (gm->ncuts <= 0 && !sums) ||
               (!sums && gm->src.dtype == g->base.dtype && !((uintptr_t)gm->src.data & 1));
    }
    size_t step = wide ? GTA_WIDE : GTA_BLOCK;
#pragma omp parallel num_threads(nt) reduction(| : bad)
    {
        int t = omp_get_thread_num();
        float base[GTA_BLOCK], x[GTA_BLOCK], a[GTA_BLOCK];
#pragma omp for schedule(dynamic, 1) nowait
        for (size_t c = 0; c < nc; c++) {
            size_t lo, hi;
            rank_cut_chunk(n, c, &lo, &hi);
            for (size_t i = 0; i < 2 * (size_t)k; i++) part[c * (size_t)k * 2 + i] = 0;
            for (size_t b0 = lo; b0 < hi; b0 += step) {
                size_t m = hi - b0 < step ? hi - b0 : step;
                bool have_base = false; /* base widened to f32, for inputs not read as bf16 */
                bool base_checked = false; /* base_h: by a 16-bit scan (else after the models) */
                if (!base_h) {
                    bad |= merge_load(g->base, b0, m, base);
                    have_base = true;
                }
                if (nfused) {
                    float before[GK_MAX_MODELS], after[GK_MAX_MODELS];
                    bad |= gk_dare_survey(fx, nfused, g->base.data, b0, m, fkey, fthr, fbits, base_f16, before, after);
                    for (int q = 0; q < nfused; q++) {
                        double *pi = part + (c * (size_t)k + (size_t)fidx[q]) * 2;
                        pi[0] += before[q];
                        pi[1] += after[q];
                    }
                }
                for (int i = 0; i < k; i++) {
                    gta_model *gm = &g->m[i];
                    bool sums = rescale && gm->masked;
                    if (gm->ncuts <= 0 && !sums) continue;
                    if (k <= GK_MAX_MODELS && dare_fused[i]) continue; /* done above */
                    cut_acc *ai = &acc[((size_t)t * (size_t)k + (size_t)i) * 2];
                    double *pi = part + (c * (size_t)k + (size_t)i) * 2;
                    if (RC_HALF_SCAN && !sums && base_h && gm->src.dtype == g->base.dtype &&
                        !((uintptr_t)gm->src.data & 1)) {
                        /* cuts only, both bf16 or both f16: the magnitudes made inside the scan */
                        const uint16_t *xh = (const uint16_t *)gm->src.data + b0;
                        const uint16_t *bh = (const uint16_t *)g->base.data + b0;
                        bool nf = false; /* (the scan asks for its lines ahead itself) */
                        if (gm->ncuts == 2) /* both cuts from one making of the magnitudes */
                            rank_cut_scan_half2(&gm->cut[0], &gm->cut[1], ai, ai + 1, c, xh, bh, m, base_f16,
                                                !base_checked, &nf);
                        else
                            rank_cut_scan_half(&gm->cut[0], ai, c, xh, bh, m, base_f16, !base_checked, &nf);
                        base_checked = true;
                        bad |= nf;
                        continue;
                    }
                    if (!have_base) {
                        bad |= merge_load(g->base, b0, m, base);
                        have_base = base_checked = true;
                    }
                    bad |= magnitudes(gm->src, b0, m, base, x, a);
                    for (int cu = 0; cu < gm->ncuts; cu++) rank_cut_scan(&gm->cut[cu], ai + cu, c, a, m);
                    if (sums) {
                        /* each block's L1 sums in f32 (vector lanes, a fixed
                         * order), the blocks' in double */
                        float before = 0.0f, after = 0.0f;
                        if (gm->random) {
                            uint32_t k32 = block_key32(gm->rng_key, b0), thr = gm->rng_thr, e0 = (uint32_t)b0;
                            uint32_t mm = (uint32_t)m;
#pragma omp simd reduction(+ : before, after)
                            for (uint32_t j = 0; j < mm; j++) {
                                float aj = a[j];
                                before += aj;
                                after += rng_bits32_at(k32, e0 + j) < thr ? aj : 0.0f;
                            }
                        } else if (gm->keep == KEEP_BITS) { /* della's mask, made before this pass */
                            uint8_t drawn[GTA_BLOCK];
                            unpack_keep(gm->bits + b0 / 8, m, drawn);
#pragma omp simd reduction(+ : before, after)
                            for (size_t j = 0; j < m; j++) {
                                before += a[j];
                                after += drawn[j] ? a[j] : 0.0f;
                            }
                        } else {
#pragma omp simd reduction(+ : before)
                            for (size_t j = 0; j < m; j++) before += a[j];
                        }
                        pi[0] += before;
                        pi[1] += after;
                    }
                }
                if (base_h && !base_checked) bad |= merge_nonfinite(g->base, b0, m);
            }
        }
    }
    for (int i = 0; i < k && k <= GK_MAX_MODELS; i++)
        if (dare_bits[i]) g->m[i].keep = KEEP_BITS, g->m[i].bits = dare_bits[i];
    /* the models' cuts resolve independently, in parallel when several
     * have cuts */
    int rc = bad ? 1 : 0, fail = 0, with_cuts = 0;
    for (int i = 0; i < k; i++) with_cuts += g->m[i].ncuts > 0;
#pragma omp parallel for num_threads(with_cuts >= 2 ? nt : 1) schedule(dynamic, 1) reduction(| : fail)
    for (int i = 0; i < k; i++) {
        gta_model *gm = &g->m[i];
        if (gm->ncuts <= 0) continue;
        mag_ctx mc = {gm->src, g->base};
        cut_acc *mine = rc ? NULL : malloc((size_t)nt * sizeof *mine);
        if (!rc && !mine) fail |= 2;
        bool resolved = true;
        for (int cu = 0; cu < gm->ncuts; cu++) {
            int r = 0;
            if (mine) {
                for (int t = 0; t < nt; t++) mine[t] = acc[((size_t)t * (size_t)k + (size_t)i) * 2 + (size_t)cu];
                r = rank_cut_resolve(&gm->cut[cu], mine, nt, mag_block, &mc);
                if (r < 0) fail |= 1;
            } else {
                rank_cut_free(&gm->cut[cu]);
            }
            resolved &= r == 1;
        }
        free(mine);
        if (resolved) {
            const rank_cut *lower = NULL, *upper = NULL;
            for (int cu = 0; cu < gm->ncuts; cu++) *(gm->cut_upper[cu] ? &upper : &lower) = &gm->cut[cu];
            gm->rule = keep_rule_between(lower, upper);
            gm->keep = KEEP_RULE;
            gm->ncuts = 0;
        }
    }
    if (!rc) rc = fail & 2 ? -1 : fail & 1 ? 1 : 0;
    free(acc);
    return rc;
}

/* The exact path: the sparsify key of model i over the whole tensor in key,
 * then the rank mask (sparsify.c). True when an input was not finite. */
static bool gta_exact_mask(const gta_ctx *g, gta_model *gm, float *key, float *scratch, int nt) {
    size_t n = g->call->n, nb = (n + GTA_BLOCK - 1) / GTA_BLOCK;
    int bad = 0;
    float sign = gm->neg_key ? -1.0f : 1.0f;
#pragma omp parallel num_threads(nt) reduction(| : bad)
    {
        float base[GTA_BLOCK], x[GTA_BLOCK];
#pragma omp for schedule(static)
        for (size_t bi = 0; bi < nb; bi++) {
            size_t b0 = bi * GTA_BLOCK, m = n - b0 < GTA_BLOCK ? n - b0 : GTA_BLOCK;
            bad |= merge_load(g->base, b0, m, base);
            bad |= magnitudes(gm->src, b0, m, base, x, key + b0);
#pragma omp simd
            for (size_t j = 0; j < m; j++) key[b0 + j] *= sign;
        }
    }
    if (!bad) sparsify_rank_mask(key, n, gm->lo, gm->hi, scratch, gm->mask, nt);
    gm->keep = KEEP_MASK;
    return bad;
}

/* L1 sum of the kept magnitudes of model i (rescale with a rank mask or
 * rule), per fixed chunk: part [nchunks][k][2], slot 1. */
static void gta_l1_after(const gta_ctx *g, int i, double *part, int nt) {
    const merge_call *call = g->call;
    const gta_model *gm = &g->m[i];
    size_t n = call->n, nc = rank_cut_nchunks(n);
    int k = call->k;
#pragma omp parallel num_threads(nt)
    {
        float base[GTA_BLOCK], x[GTA_BLOCK], a[GTA_BLOCK];
#pragma omp for schedule(static)
        for (size_t c = 0; c < nc; c++) {
            size_t lo, hi;
            rank_cut_chunk(n, c, &lo, &hi);
            double after = 0.0;
            for (size_t b0 = lo; b0 < hi; b0 += GTA_BLOCK) {
                size_t m = hi - b0 < GTA_BLOCK ? hi - b0 : GTA_BLOCK;
                merge_load(g->base, b0, m, base);
                magnitudes(gm->src, b0, m, base, x, a);
                if (gm->keep == KEEP_MASK) {
                    const uint8_t *restrict mi = gm->mask + b0;
#pragma omp simd reduction(+ : after)
                    for (size_t j = 0; j < m; j++) after += (double)a[j] * (double)(mi[j] != 0);
                } else {
                    keep_rule r = gm->rule;
#pragma omp simd reduction(+ : after)
                    for (size_t j = 0; j < m; j++)
                        after += keep_rule_test(&r, a[j], (uint32_t)(b0 + j)) ? (double)a[j] : 0.0;
                }
            }
            part[(c * (size_t)k + (size_t)i) * 2 + 1] = after;
        }
    }
}

/* Scratch up to this many bytes comes from the heap (gta_merge). */
#define GTA_HEAP_WORK ((size_t)1 << 20)

/* How many sample runs ahead gta_sample asks for the lines of. */
#define SAMPLE_AHEAD 8

/* The lines of the RC_RUN elements of s from `at`. */
static void sample_prefetch(merge_src s, size_t at) {
    size_t es = dtype_size(s.dtype);
    const char *p = (const char *)s.data + at * es;
    for (size_t off = 0; off < RC_RUN * es; off += 64) __builtin_prefetch(p + off, 0, 3);
    __builtin_prefetch(p + RC_RUN * es - 1, 0, 3);
}

/* The magnitudes of every model with rank cuts at the sample positions
 * (rankcut.h) into sample[i * ns ...]; true when an input was not finite. */
static bool gta_sample(const gta_ctx *g, size_t ns, float *sample, int nt) {
    const merge_call *call = g->call;
    size_t n = call->n, runs = ns / RC_RUN;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 64) reduction(| : bad)
    for (size_t r = 0; r < runs; r++) {
        size_t at = rank_cut_sample_run(n, runs, r, call->seed);
        if (r + SAMPLE_AHEAD < runs) { /* random places: ask for a later run's lines while this one loads */
            size_t ahead = rank_cut_sample_run(n, runs, r + SAMPLE_AHEAD, call->seed);
            sample_prefetch(g->base, ahead);
            for (int i = 0; i < call->k; i++)
                if (g->m[i].ncuts > 0) sample_prefetch(g->m[i].src, ahead);
        }
        float base[RC_RUN], x[RC_RUN];
        bad |= merge_load(g->base, at, RC_RUN, base);
        for (int i = 0; i < call->k; i++)
            if (g->m[i].ncuts > 0) bad |= magnitudes(g->m[i].src, at, RC_RUN, base, x, sample + (size_t)i * ns + r * RC_RUN);
    }
    return bad;
}

/* Set up model i's sparsification: whole, a random mask, rank cuts (or the
 * exact rank path for small tensors), or della's mask (its own pass, as bits). */
static int gta_setup(const gta_variant *v, const merge_call *call, gta_model *gm, int i, uint8_t *mask, bool stream_cuts,
                     int nt, alloy_err *err) {
    size_t n = call->n;
    gm->keep = KEEP_WHOLE;
    gm->mask = mask;
    double density = MPARAM(call, i, P_DENSITY);
    gm->density = density;
    if (v->sparsify == SPARSIFY_NONE || density >= 1.0) return 0;
    switch (v->sparsify) {
    case SPARSIFY_MAGNITUDE:
    case SPARSIFY_OUTLIERS: {
        sparsify_args a = {.kind = v->sparsify, .density = density,
                           .gamma = v->sparsify == SPARSIFY_OUTLIERS ? MPARAM(call, i, P_EXTRA) : 0.0};
        if (sparsify_rank_bounds(&a, n, &gm->lo, &gm->hi, &gm->neg_key, call->tensor_name, err)) return -1;
        if (gm->lo >= gm->hi) { /* breadcrumbs keeping nothing */
            memset(mask, 0, n);
            gm->keep = KEEP_MASK;
            gm->masked = true;
            return 0;
        }
        if (!stream_cuts) break;
        if (gm->neg_key) {
            /* the largest |delta| first, ties by index: in ascending order of
             * (|delta|, -index) the ranks [n - hi, n) */
            gm->cut[gm->ncuts].rank = n - gm->hi, gm->cut_upper[gm->ncuts++] = false;
        } else {
            if (gm->lo > 0) gm->cut[gm->ncuts].rank = gm->lo, gm->cut_upper[gm->ncuts++] = false;
            if (gm->hi < n) gm->cut[gm->ncuts].rank = gm->hi - 1, gm->cut_upper[gm->ncuts++] = true;
            if (!gm->ncuts) gm->keep = KEEP_RULE, gm->rule = keep_rule_between(NULL, NULL);
        }
        break;
    }
    case SPARSIFY_RANDOM:
        gm->random = true;
        gm->keep = KEEP_RANDOM;
        gm->rng_key = rng_stream_key(call->seed, (uint64_t)i);
        gm->rng_thr = rng_thr32(density);
        break;
    case SPARSIFY_DELLA: {
        sparsify_args a = {.kind = v->sparsify, .density = density, .epsilon = MPARAM(call, i, P_EXTRA),
                           .seed = call->seed, .stream = (uint64_t)i};
        if (!(gm->bits = gm->own_bits = calloc(n / 8 + 1, 1)))
            return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        mag_ctx mc = {gm->src, merge_input(call, -1)};
        int r = sparsify_della_bits(&a, della_mag, &mc, call->ndim, call->shape, n, gm->bits, nt, call->tensor_name,
                                    err);
        if (r < 0) return -1;
        if (r == 2) return MERGE_NONFINITE_INPUT;
        gm->keep = r == 1 ? KEEP_WHOLE : KEEP_BITS;
        gm->masked = r != 1;
        return 0;
    }
    case SPARSIFY_NONE:
        break;
    }
    gm->masked = true;
    if (v->sparsify != SPARSIFY_RANDOM && !stream_cuts) gm->ncuts = -1; /* exact */
    return 0;
}

/* The fused kernel (gta_kernel.h) for this merge pass, with its arguments
 * in *a, or NULL where it does not apply: some input not bf16 (or not
 * aligned), more than GK_MAX_MODELS models, a byte mask (the exact path),
 * an output dtype other than bf16 and f32; or every input f16 and the
 * output f16 (then only the blocks gk_takes). base_checked: the first pass
 * read the whole base. */
static gk_block_fn gta_kernel_for(const gta_ctx *g, bool base_checked, gk_args *a) {
    const merge_call *call = g->call;
    if (!GTA_KERNEL || call->k > GK_MAX_MODELS) return NULL;
    alloy_dtype odt = call->sink ? merge_sink_dtype(call->sink) : ALLOY_F32;
    alloy_dtype idt = g->base.dtype;
    bool f16 = idt == ALLOY_F16 && odt == ALLOY_F16;
    if (!f16 && ((odt != ALLOY_BF16 && odt != ALLOY_F32) || idt != ALLOY_BF16)) return NULL;
    if ((uintptr_t)g->base.data & 1) return NULL;
    *a = (gk_args){.k = call->k, .consensus = g->consensus, .normalize = g->normalize, .lambda = g->lambda,
                   .div_all = g->div_all, .base = g->base.data, .check_base = !base_checked, .in_f16 = f16,
                   .out_bf16 = odt != ALLOY_F32, .nt_store = call->sink && merge_sink_direct(call->sink)};
    for (int i = 0; i < call->k; i++) {
        const gta_model *gm = &g->m[i];
        gk_model *km = &a->m[i];
        if (gm->src.dtype != idt || ((uintptr_t)gm->src.data & 1)) return NULL;
        *km = (gk_model){.x = gm->src.data, .w = gm->w, .s = gm->s, .check = !gm->checked};
        switch (gm->keep) {
        case KEEP_WHOLE:
            km->keep = GK_WHOLE;
            break;
        case KEEP_RULE:
            km->keep = gm->rule.U == INFINITY && gm->rule.tu == UINT32_MAX && gm->rule.tlo == 0 ? GK_TOP : GK_RULE;
            km->rule = gm->rule;
            break;
        case KEEP_RANDOM:
            km->keep = GK_RANDOM, km->rng_key = gm->rng_key, km->thr = gm->rng_thr;
            break;
        case KEEP_BITS:
            km->keep = GK_BITS, km->bits = gm->bits;
            break;
        case KEEP_MASK:
            return NULL;
        }
    }
    return gk_select(a);
}

static int gta_merge(const gta_variant *v, const merge_call *call, float *out, alloy_err *err) {
    int k = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    if (!merge_has_base(call)) return alloy_fail(err, "tensor '%s': this method needs a base model", call->tensor_name);
    bool normalize = call->gparam[P_NORMALIZE] != 0.0, rescale = call->gparam[P_RESCALE] != 0.0;
    float lambda = (float)call->gparam[P_LAMBDA];
    gta_ctx g = {.call = call, .base = merge_input(call, -1), .consensus = v->consensus, .normalize = normalize,
                 .lambda = lambda};
    size_t nb = (n + GTA_BLOCK - 1) / GTA_BLOCK;
    if (k == 0) {
        int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad)
        for (size_t bi = 0; bi < nb; bi++) {
            size_t b0 = bi * GTA_BLOCK, m = n - b0 < GTA_BLOCK ? n - b0 : GTA_BLOCK;
            float o[GTA_BLOCK];
            bad |= merge_load(g.base, b0, m, o);
            merge_store(call, out, b0, o, m);
        }
        return bad ? MERGE_NONFINITE_INPUT : 0;
    }
    gta_model *gm = calloc((size_t)k, sizeof *gm);
    double *part = NULL;
    float *key = NULL, *scratch = NULL, *sample = NULL;
    uint8_t *masks = NULL;
    bool own = false; /* key, scratch and masks allocated here rather than in call->work */
    int rc = !gm ? alloy_fail(err, "out of memory") : 0;
    size_t ns = rank_cut_sample_size(n);
    if (!rc && v->sparsify != SPARSIFY_NONE) {
        size_t need = 2 * n * sizeof(float) + (size_t)k * n + 1;
        /* a small tensor's from the heap, whose pages are warm: the first
         * touch of the executor's buffer faults in a whole huge page (on
         * the bench, 50-70 ms for the first norm tensor in some runs) */
        char *wk = call->work_bytes >= need && need > GTA_HEAP_WORK ? call->work : NULL;
        if (!wk) {
            wk = mem_big_alloc(need);
            own = true;
        }
        if (!wk) {
            rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        } else {
            key = (float *)(void *)wk;
            scratch = key + n;
            masks = (uint8_t *)(scratch + n);
            if (v->sparsify == SPARSIFY_RANDOM && !own) /* DARE: key and scratch are free (no rank cuts) */
                g.bits_room = (uint8_t *)wk, g.bits_room_bytes = 2 * n * sizeof(float);
        }
    }
    /* the cuts' buffers in the key and scratch, which the exact path alone
     * uses (after every cut is resolved and freed); in the executor's
     * buffer, where one tensor after another reuses the same warm pages */
    rc_room room = {0};
    if (key && !g.bits_room) room = (rc_room){(char *)key, 2 * n * sizeof(float), 0};
    float wsum = 0.0f;
    bool survey = false, cuts = false;
    for (int i = 0; i < k && !rc; i++) {
        gm[i].src = merge_input(call, i);
        gm[i].w = (float)MPARAM(call, i, P_WEIGHT);
        gm[i].s = 1.0f;
        wsum += gm[i].w;
        rc = gta_setup(v, call, &gm[i], i, masks ? masks + (size_t)i * n : NULL, ns > 0, nt, err);
        cuts |= gm[i].ncuts > 0;
        survey |= gm[i].ncuts > 0 || (rescale && gm[i].masked);
    }
    g.m = gm;
    g.div_all = fabsf(wsum) < 1e-8f ? 1.0f : wsum;
    if (!rc && cuts) { /* sample the magnitudes for the rank cuts, plan the cuts */
        sample = malloc((size_t)k * ns * sizeof *sample);
        if (!sample) rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        if (!rc && gta_sample(&g, ns, sample, nt)) rc = MERGE_NONFINITE_INPUT;
        int oom = 0;
        if (!rc) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : oom)
            for (int i = 0; i < k; i++) {
                gta_model *m = &gm[i];
                if (m->ncuts <= 0) continue;
                float *smp = sample + (size_t)i * ns, *tmp = malloc(2 * ns * sizeof *tmp);
                if (!tmp) {
                    oom = 1;
                    continue;
                }
                for (int cu = 0; cu < m->ncuts; cu++)
                    if (!rank_cut_plan(&m->cut[cu], n, m->cut[cu].rank, m->neg_key, smp, ns, tmp, &room))
                        oom = 1;
                free(tmp);
            }
        }
        for (int i = 0; i < k && !rc && oom; i++) /* no memory for the histograms: the exact path */
            if (gm[i].ncuts > 0) {
                for (int cu = 0; cu < gm[i].ncuts; cu++) rank_cut_free(&gm[i].cut[cu]);
                gm[i].ncuts = -1;
            }
    }
    size_t nc = rank_cut_nchunks(n);
    if (!rc && survey) {
        part = calloc(nc * (size_t)k * 2 + 1, sizeof *part);
        bool *read = calloc((size_t)k, sizeof *read); /* the models the first pass reads whole */
        for (int i = 0; read && i < k; i++) read[i] = gm[i].ncuts > 0 || (rescale && gm[i].masked);
        int r = part && read ? gta_survey(&g, rescale, part, nt) : -1;
        if (r < 0) rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        if (r > 0) rc = MERGE_NONFINITE_INPUT;
        for (int i = 0; !rc && i < k; i++) gm[i].checked = read[i];
        free(read);
    }
    for (int i = 0; i < k && !rc; i++) {
        if (gm[i].ncuts != 0 && gta_exact_mask(&g, &gm[i], key, scratch, nt)) rc = MERGE_NONFINITE_INPUT;
        if (rc || !rescale || !gm[i].masked) continue;
        /* mergekit's rescaled_masked_tensor with the L1 norm: the factor
         * sum|delta| / sum|delta*mask|, or 1 when either is below 1e-7 */
        if (!gm[i].random && gm[i].keep != KEEP_BITS) gta_l1_after(&g, i, part, nt);
        double before = 0.0, after = 0.0;
        for (size_t c = 0; c < nc; c++)
            before += part[(c * (size_t)k + (size_t)i) * 2], after += part[(c * (size_t)k + (size_t)i) * 2 + 1];
        gm[i].s = before < 1e-7 || after < 1e-7 ? 1.0f : (float)(before / after);
    }
    gk_args ka;
    gk_block_fn kernel = rc ? NULL : gta_kernel_for(&g, survey, &ka);
    if (!rc) {
        int oom = 0, bad = 0;
        size_t obad = n, nseg = (nb + GTA_SEG - 1) / GTA_SEG;
#pragma omp parallel num_threads(nt) reduction(| : oom, bad) reduction(min : obad)
        {
            float *d = malloc((size_t)k * GTA_BLOCK * sizeof *d);
            if (!d) oom = 1;
#pragma omp for schedule(dynamic, 1) nowait
            for (size_t back = 0; back < nseg; back++) {
                size_t sg = nt == 1 ? back : nseg - 1 - back;
                size_t s0 = sg * GTA_SEG * GTA_BLOCK, s1 = s0 + GTA_SEG * GTA_BLOCK;
                size_t step = kernel ? GTA_WIDE : GTA_BLOCK;
                s1 = s1 < n ? s1 : n;
                for (size_t b0 = s0; d && b0 < s1;) {
                    size_t ob = n, m = s1 - b0 < step ? s1 - b0 : step;
                    if (kernel && gk_takes(&ka, b0, m)) {
                        void *dst = call->sink ? merge_sink_slot(call->sink, b0, m) : (void *)(out + b0);
                        bad |= kernel(&ka, b0, m, dst, &ob);
                        ob = call->sink && ob < m ? b0 + ob : n;
                    } else { /* (a wide step the kernel left: GTA_BLOCK at a time) */
                        for (size_t q = 0; q < m; q += GTA_BLOCK) {
                            size_t oq = n;
                            bad |= gta_block(&g, b0 + q, m - q < GTA_BLOCK ? m - q : GTA_BLOCK, d, out, &oq);
                            ob = oq < ob ? oq : ob;
                        }
                    }
                    if (ob < obad) obad = ob;
                    b0 += m;
                }
            }
            free(d);
        }
        if (oom)
            rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        else
            rc = merge_stream_result(call, v->name, bad, obad, err);
    }
    for (int i = 0; gm && i < k; i++)
        for (int cu = 0; cu < 2; cu++) rank_cut_free(&gm[i].cut[cu]);
    for (int i = 0; gm && i < k; i++) free(gm[i].own_bits);
    free(gm);
    free(part);
    free(sample);
    if (own) free(key);
    return rc;
}

/* ---- the registered variants (mergekit registry.py) ---- */

#define GTA_GLOBALS(norm, resc)                                                       \
    {"int8_mask", false, false, 0, 0, 1}, {"normalize", false, false, norm, 0, 1},    \
        {"rescale", false, false, resc, 0, 1}, {"lambda", false, false, 1, -INFINITY, INFINITY}
#define GTA_MODEL {"weight", true, true, 0, -INFINITY, INFINITY}, {"density", true, false, 1, 0, 1}

static const merge_param_def ta_params[] = {GTA_GLOBALS(0, 0), GTA_MODEL};
static const merge_param_def ties_params[] = {GTA_GLOBALS(1, 0), GTA_MODEL};
static const merge_param_def dare_params[] = {GTA_GLOBALS(0, 1), GTA_MODEL};
static const merge_param_def bc_params[] = {GTA_GLOBALS(0, 0), GTA_MODEL, {"gamma", true, false, 0.01, 0, 1}};
static const merge_param_def della_params[] = {GTA_GLOBALS(1, 1), GTA_MODEL, {"epsilon", true, false, 0.15, 0, 1}};
static const merge_param_def della_lin_params[] = {GTA_GLOBALS(0, 1), GTA_MODEL,
                                                   {"epsilon", true, false, 0.15, 0, 1}};

#define GTA_METHOD(fn, name, cons, kind)                                          \
    static int fn(const merge_call *call, float *out, alloy_err *err) {     \
        static const gta_variant v = {name, cons, kind};                          \
        return gta_merge(&v, call, out, err);                               \
    }

/* task_arithmetic (arXiv:2212.04089): base + lambda * sum w_i delta_i. */
GTA_METHOD(ta_merge, "task_arithmetic", false, SPARSIFY_NONE)
/* ties: magnitude top-k per task vector, sign election, normalised by default. */
GTA_METHOD(ties_merge, "ties", true, SPARSIFY_MAGNITUDE)
/* dare_ties / dare_linear: bernoulli(density) drops with L1 rescale by default. */
GTA_METHOD(dare_ties_merge, "dare_ties", true, SPARSIFY_RANDOM)
GTA_METHOD(dare_linear_merge, "dare_linear", false, SPARSIFY_RANDOM)
/* breadcrumbs / breadcrumbs_ties: drop the largest gamma fraction and the smallest. */
GTA_METHOD(bc_merge, "breadcrumbs", false, SPARSIFY_OUTLIERS)
GTA_METHOD(bc_ties_merge, "breadcrumbs_ties", true, SPARSIFY_OUTLIERS)
/* della / della_linear: rank-dependent drop probabilities (della_magprune). */
GTA_METHOD(della_merge, "della", true, SPARSIFY_DELLA)
GTA_METHOD(della_linear_merge, "della_linear", false, SPARSIFY_DELLA)

#define NP(t) ((int)(sizeof t / sizeof t[0]))

const merge_method merge_task_arithmetic = {"task_arithmetic", BASE_REQUIRED, 1, 0, ta_params,
                                            NP(ta_params), ta_merge, true, false};
const merge_method merge_ties = {"ties", BASE_REQUIRED, 1, 0, ties_params, NP(ties_params), ties_merge, true, true};
const merge_method merge_dare_ties = {"dare_ties", BASE_REQUIRED, 1, 0, dare_params, NP(dare_params),
                                      dare_ties_merge, true, true};
const merge_method merge_dare_linear = {"dare_linear", BASE_REQUIRED, 1, 0, dare_params, NP(dare_params),
                                        dare_linear_merge, true, true};
const merge_method merge_breadcrumbs = {"breadcrumbs", BASE_REQUIRED, 1, 0, bc_params,
                                        NP(bc_params), bc_merge, true, true};
const merge_method merge_breadcrumbs_ties = {"breadcrumbs_ties", BASE_REQUIRED, 1, 0, bc_params, NP(bc_params),
                                             bc_ties_merge, true, true};
const merge_method merge_della = {"della", BASE_REQUIRED, 1, 0, della_params,
                                  NP(della_params), della_merge, true, true};
const merge_method merge_della_linear = {"della_linear", BASE_REQUIRED, 1, 0, della_lin_params,
                                         NP(della_lin_params), della_linear_merge, true, true};
