/* sce.c — SCE: select, calculate, erase (mergekit/merge_methods/sce.py,
 * arXiv:2408.07990). Selection by variance is a streaming rank cut
 * (rankcut.h; sparsify_rank_mask for small tensors); sign election is
 * mergekit's "sum" consensus. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "merge/method.h"
#include "merge/rankcut.h"
#include "merge/sparsify.h"
#include "merge/vec.h"
#include "util/err.h"
#include "util/mem.h"

enum { P_INT8_MASK, P_SELECT_TOPK };

/* Which elements are selected: all, none, those the rank cut keeps (by
 * their variance, recomputed where needed), or a byte mask (the exact path
 * for small tensors or a missed band). */
typedef enum { SEL_ALL, SEL_NONE, SEL_RULE, SEL_MASK } sel_kind;

#define SCE_BLOCK 1024

typedef struct sce_ctx {
    const merge_call *call;
    int K;
    sel_kind sel;
    keep_rule rule;      /* SEL_RULE */
    const uint8_t *mask; /* SEL_MASK */
    uint8_t *keep;       /* SEL_RULE: the weights' pass writes the selection here, for the output pass */
    const float *w;      /* the weights (output pass) */
} sce_ctx;

/* Load the base (in[K]) and the K models (in[0..K)) at [lo, lo + m). */
static bool sce_load(const sce_ctx *c, size_t lo, size_t m, float *const *in) {
    bool bad = merge_load(merge_input(c->call, -1), lo, m, in[c->K]);
    for (int i = 0; i < c->K; i++) bad |= merge_load(merge_input(c->call, i), lo, m, in[i]);
    return bad;
}

/* The population variance across the models of tau_i = x_i - base, in
 * double, rounded to f32, of elements [0, m) of a block into var:
 *   mean = (tau_0 + ... + tau_{K-1}) * (1 / K)
 *   var = ((tau_0 - mean)^2 + ... ) * (1 / K)
 * as straight passes over the block (they vectorise). Multiplying by 1 / K
 * (exact for K a power of two) is off by at most an ulp of double from
 * dividing by K, which the rounding to f32 absorbs but for about one
 * element in 2^28, and a double divide per element took as long as the
 * rest of the pass (sce on the bench: 30 % of its time in this function). */
static void sce_var_block_f(const float *const *in, int K, size_t m, float *restrict var) {
    const float *b = in[K];
    const double inv = 1.0 / (double)K;
    double mean[SCE_BLOCK], v[SCE_BLOCK];
    /* the first model starts each sum (0 + a is a, up to the sign of a
     * zero, which no square or variance keeps) */
#pragma omp simd
    for (size_t e = 0; e < m; e++) mean[e] = (double)(in[0][e] - b[e]);
    for (int i = 1; i < K; i++) {
        const float *restrict x = in[i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) mean[e] += (double)(x[e] - b[e]);
    }
#pragma omp simd
    for (size_t e = 0; e < m; e++) {
        mean[e] *= inv;
        double d = (double)(in[0][e] - b[e]) - mean[e];
        v[e] = d * d;
    }
    for (int i = 1; i < K; i++) {
        const float *restrict x = in[i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) {
            double d = (double)(x[e] - b[e]) - mean[e];
            v[e] += d * d;
        }
    }
#pragma omp simd
    for (size_t e = 0; e < m; e++) var[e] = (float)(v[e] * inv);
}

/* Which elements [lo, lo + m) of a loaded block are selected, 0/1 into sel. */
static void sce_select_block(const sce_ctx *c, const float *const *in, size_t lo, size_t m, uint8_t *restrict sel) {
    switch (c->sel) {
    case SEL_ALL:
    case SEL_NONE:
        memset(sel, c->sel == SEL_ALL, m);
        return;
    case SEL_MASK:
        memcpy(sel, c->mask + lo, m);
        return;
    case SEL_RULE:
        break;
    }
    float var[SCE_BLOCK];
    sce_var_block_f(in, c->K, m, var);
    keep_rule r = c->rule;
    uint32_t e0 = (uint32_t)lo, mm = (uint32_t)m;
#pragma omp simd
    for (uint32_t e = 0; e < mm; e++) sel[e] = keep_rule_test(&r, var[e], e0 + e);
}

/* Per-thread block buffers: K + 1 inputs and one more. */
static float **sce_buffers(int K) {
    float **in = malloc((size_t)(K + 2) * sizeof *in);
    float *buf = malloc((size_t)(K + 2) * SCE_BLOCK * sizeof *buf);
    if (!in || !buf) {
        free(in), free(buf);
        return NULL;
    }
    for (int i = 0; i <= K + 1; i++) in[i] = buf + (size_t)i * SCE_BLOCK;
    return in;
}

static void sce_free_buffers(float **in) {
    if (in) free(in[0]);
    free(in);
}

/* Variances of elements [lo, lo + m), m <= SCE_BLOCK, into a (rank_cut_resolve's callback). */
static bool sce_var_block(const void *p, size_t lo, size_t m, float *a) {
    const sce_ctx *c = p;
    float **in = sce_buffers(c->K);
    if (!in) return true; /* reported as a failed resolve: the exact path follows */
    bool bad = sce_load(c, lo, m, in);
    sce_var_block_f((const float *const *)in, c->K, m, a);
    sce_free_buffers(in);
    return bad;
}

/* acc[i] += the squares of tau_i = x_i - base (double of the f32
 * difference) over the elements of a block (m <= SCE_BLOCK) that sel
 * marks, in vec_sum8's lanes; in[K] is the base. */
static void sce_squares(const float *const *in, int K, const uint8_t *sel, size_t m, double *acc) {
    double sq[SCE_BLOCK];
    for (int i = 0; i < K; i++) {
        const float *restrict x = in[i], *restrict b = in[K];
#pragma omp simd
        for (size_t e = 0; e < m; e++) {
            double d = x[e] - b[e];
            sq[e] = sel[e] ? d * d : 0.0;
        }
        acc[i] += vec_sum8(sq, m);
    }
}

/* vec_reduce chunk: acc[i] = sum over the selected of tau_i^2 (double of
 * the f32 difference): per block in 8 lanes (lane l: the elements l, l + 8,
 * ... in order), the lanes added pairwise, the blocks in order; acc[K]
 * non-finite, acc[K+1] no memory. */
static void sce_sq_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const sce_ctx *c = p;
    int K = c->K;
    float **in = sce_buffers(K);
    if (!in) {
        acc[K + 1] += 1.0;
        return;
    }
    const float *const *cin = (const float *const *)in;
    uint8_t sel[SCE_BLOCK];
    for (size_t b0 = lo; b0 < hi; b0 += SCE_BLOCK) {
        size_t m = hi - b0 < SCE_BLOCK ? hi - b0 : SCE_BLOCK;
        if (sce_load(c, b0, m, in)) acc[K] += 1.0;
        sce_select_block(c, cin, b0, m, sel);
        if (c->keep) memcpy(c->keep + b0, sel, m);
        sce_squares(cin, K, sel, m, acc);
    }
    sce_free_buffers(in);
}

/* Erase and merge one block (in[0..K) the models, in[K] the base), per
 * element in model order, as straight passes over the block. */
static void sce_out_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    const sce_ctx *c = p;
    int K = c->K;
    const float *restrict b = in[K];
    uint8_t sel[SCE_BLOCK];
    float sum[SCE_BLOCK], num[SCE_BLOCK], den[SCE_BLOCK];
    sce_select_block(c, in, lo, m, sel);
    for (size_t e = 0; e < m; e++) sum[e] = 0.0f, num[e] = 0.0f, den[e] = 0.0f;
    for (int i = 0; i < K; i++) {
        const float *restrict x = in[i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) sum[e] += x[e] - b[e];
    }
    for (int i = 0; i < K; i++) {
        const float *restrict x = in[i];
        float wi = c->w[i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) {
            float d = x[e] - b[e];
            /* sign(d) == g, g = +1 when sum >= 0: zeros never agree */
            int agree = sum[e] >= 0.0f ? d > 0.0f : d < 0.0f;
            float nn = num[e] + wi * d, dd = den[e] + wi;
            num[e] = agree ? nn : num[e];
            den[e] = agree ? dd : den[e];
        }
    }
#pragma omp simd
    for (size_t e = 0; e < m; e++) {
        float q = b[e] + num[e] / (den[e] > 1e-6f ? den[e] : 1e-6f);
        o[e] = sel[e] ? q : b[e];
    }
}

/* The weights' sums made in the selection's pass (sce_select_stream),
 * which saves the pass of sce_sq_chunk: per chunk of the cut, the squares
 * of what lies above the band (selected whatever the cut: the cut lies
 * inside the band) and the elements inside it (index, variance, deltas),
 * whose share is added once the cut is known. Where it cannot be made (a
 * chunk's waiting elements overflow, the cut outside the band), the
 * weights' own pass runs as before. */
typedef struct sce_wait {
    double *sum;       /* [nchunks][K] */
    uint32_t *idx;     /* [nchunks][cap] */
    float *val;        /* [nchunks][cap][K + 1]: variance, then the K deltas */
    size_t *n, cap;    /* [nchunks]; n[ch] past cap: chunk ch overflowed */
    void *own;         /* idx and val, when not in the caller's memory */
    uint8_t *keep;     /* the selection as bytes (c->keep) */
} sce_wait;

static void sce_wait_free(sce_wait *w) { free(w->own), free(w->sum), free(w->n); }

/* Room for nc chunks of the K models, cap waiting elements each: in room
 * (room_bytes, 64-byte aligned; the executor's scratch, whose pages stay
 * warm from tensor to tensor) where it fits, else from the heap; false
 * when out of memory. */
static bool sce_wait_init(sce_wait *w, size_t nc, int K, size_t cap, char *room, size_t room_bytes) {
    w->sum = calloc(nc * (size_t)K + 1, sizeof *w->sum);
    w->n = calloc(nc, sizeof *w->n);
    w->cap = cap;
    size_t ib = (nc * cap * sizeof *w->idx + 63) & ~(size_t)63;
    size_t bytes = ib + nc * cap * (size_t)(K + 1) * sizeof *w->val;
    char *p = room && bytes <= room_bytes ? room : (w->own = mem_big_alloc(bytes));
    if (p) w->idx = (uint32_t *)(void *)p, w->val = (float *)(void *)(p + ib);
    return w->sum && w->n && p;
}

/* One block (elements [b0, b0 + m) of chunk ch, inputs in, variances a) of
 * the selection's pass into w: above the band [lo, hi] selected (its keep
 * bytes set, its squares added, in sce_sq_chunk's form), inside it waiting,
 * the rest not selected. */
static void sce_wait_block(sce_wait *w, int K, size_t ch, const float *const *in, const float *a, size_t b0, size_t m,
                           float lo, float hi) {
    if (w->n[ch] > w->cap) return; /* overflowed: the weights' own pass will run */
    uint8_t *restrict keep = w->keep + b0;
    const float *restrict b = in[K];
#pragma omp simd
    for (size_t e = 0; e < m; e++) keep[e] = a[e] > hi;
    sce_squares(in, K, keep, m, w->sum + ch * (size_t)K);
    /* the few inside (a few percent) picked out of a byte map, eight bytes at a time */
    uint8_t inside[SCE_BLOCK + 8] = {0};
#pragma omp simd
    for (size_t e = 0; e < m; e++) inside[e] = (a[e] != 0.0f) & (a[e] >= lo) & (a[e] <= hi);
    size_t n = w->n[ch];
    for (size_t e8 = 0; e8 < m && n <= w->cap; e8 += 8) {
        uint64_t word;
        memcpy(&word, inside + e8, 8);
        for (; word; word &= word - 1) {
            size_t e = e8 + (size_t)__builtin_ctzll(word) / 8;
            if (n == w->cap) {
                n = w->cap + 1;
                break;
            }
            w->idx[ch * w->cap + n] = (uint32_t)(b0 + e);
            float *v = w->val + (ch * w->cap + n) * (size_t)(K + 1);
            v[0] = a[e];
            for (int i = 0; i < K; i++) v[1 + i] = in[i][e] - b[e];
            n++;
        }
    }
    w->n[ch] = n;
}

/* The waiting elements selected by rule r: their keep bytes set and their
 * squares added, each chunk's in element order (the chunks on nt
 * threads); the weights' sums of the K models into acc, the chunks in
 * order. False (nothing done) where a chunk overflowed. */
static bool sce_wait_finish(sce_wait *w, int K, size_t nc, const keep_rule *r, double *acc, int nt) {
    for (size_t ch = 0; ch < nc; ch++)
        if (w->n[ch] > w->cap) return false;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (size_t ch = 0; ch < nc; ch++) {
        double *sum = w->sum + ch * (size_t)K;
        for (size_t q = 0; q < w->n[ch]; q++) {
            const float *v = w->val + (ch * w->cap + q) * (size_t)(K + 1);
            uint32_t e = w->idx[ch * w->cap + q];
            if (!keep_rule_test(r, v[0], e)) continue;
            w->keep[e] = 1;
            for (int i = 0; i < K; i++) sum[i] += (double)v[1 + i] * (double)v[1 + i];
        }
    }
    for (int i = 0; i < K; i++) acc[i] = 0.0;
    for (size_t ch = 0; ch < nc; ch++)
        for (int i = 0; i < K; i++) acc[i] += w->sum[ch * (size_t)K + (size_t)i];
    return true;
}

/* The selection by a streaming rank cut (rankcut.h): a sample places the
 * band, one pass counts and histograms the variances and the nonzero ones,
 * and the cut is the one of rank n - int(topk * #nonzero) in ascending
 * (variance, -index) order. Returns 1 when selected so (c->rule), 0 when
 * the exact path must run (small tensor, missed band, no memory),
 * MERGE_NONFINITE_INPUT on a non-finite input. With keep (n bytes), the
 * weights' sums are made in the same pass where they can be (sce_wait,
 * in room where it fits): then *weighed, the sums in wacc[0..K) and the
 * selection in keep. */
static int sce_select_stream(sce_ctx *c, double topk, int nt, uint8_t *keep, char *room, size_t room_bytes, double *wacc,
                             bool *weighed) {
    const merge_call *call = c->call;
    size_t n = call->n, ns = rank_cut_sample_size(n);
    if (!ns) return 0;
    int K = c->K, bad = 0, rc = 0;
    size_t runs = ns / RC_RUN, nz_sample = 0;
    float *sample = malloc(ns * sizeof *sample), *tmp = malloc(2 * ns * sizeof *tmp);
    if (!sample || !tmp) {
        free(sample), free(tmp);
        return 0;
    }
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad) reduction(+ : nz_sample)
    for (size_t r = 0; r < runs; r++) {
        size_t at = rank_cut_sample_run(n, runs, r, call->seed);
        bad |= sce_var_block(c, at, RC_RUN, sample + r * RC_RUN);
        for (size_t j = 0; j < RC_RUN; j++) nz_sample += sample[r * RC_RUN + j] != 0.0f;
    }
    if (bad) {
        free(sample), free(tmp);
        return MERGE_NONFINITE_INPUT;
    }
    /* the rank is planned from the sample's nonzero share and set exactly after the pass */
    size_t kk_hat = (size_t)((double)nz_sample / (double)ns * (double)n * topk);
    rank_cut cut;
    bool planned = rank_cut_plan(&cut, n, kk_hat < n ? n - kk_hat : 0, true, sample, ns, tmp, NULL);
    free(tmp);
    size_t nc = rank_cut_nchunks(n), nz = 0;
    cut_acc *acc = calloc((size_t)nt, sizeof *acc);
    if (!planned || !acc) {
        rank_cut_free(&cut);
        free(acc);
        free(sample);
        return 0;
    }
    /* the waiting elements: a quarter more than the sample's share inside the band, and a block */
    sce_wait wt = {.keep = keep};
    bool waiting = false;
    if (keep) {
        size_t in_band = rank_cut_sample_inside(&cut, sample, ns);
        size_t cap = (size_t)((double)in_band / (double)ns * 1.25 * (double)((n + nc - 1) / nc)) + SCE_BLOCK;
        waiting = sce_wait_init(&wt, nc, K, cap, room, room_bytes);
    }
    free(sample);
#pragma omp parallel num_threads(nt) reduction(| : bad) reduction(+ : nz)
    {
        float a[SCE_BLOCK];
        float **in = sce_buffers(K);
        if (!in) bad |= 2;
#pragma omp for schedule(static)
        for (size_t ch = 0; ch < nc; ch++) {
            if (!in) continue;
            size_t lo, hi;
            rank_cut_chunk(n, ch, &lo, &hi);
            for (size_t b0 = lo; b0 < hi; b0 += SCE_BLOCK) {
                size_t m = hi - b0 < SCE_BLOCK ? hi - b0 : SCE_BLOCK;
                bad |= sce_load(c, b0, m, in);
                sce_var_block_f((const float *const *)in, K, m, a);
                nz += rank_cut_scan(&cut, &acc[omp_get_thread_num()], ch, a, m);
                if (waiting) sce_wait_block(&wt, K, ch, (const float *const *)in, a, b0, m, cut.blo, cut.bhi);
            }
        }
        sce_free_buffers(in);
    }
    if (bad & 1) rc = MERGE_NONFINITE_INPUT;
    size_t kk = (size_t)((double)nz * topk);
    if (!rc && !(bad & 2) && kk == 0) {
        c->sel = SEL_NONE;
        rc = 1;
    } else if (!rc && !(bad & 2)) {
        cut.rank = n - kk;
        int r = rank_cut_resolve(&cut, acc, nt, sce_var_block, c);
        if (r < 0) rc = MERGE_NONFINITE_INPUT;
        if (r == 1) {
            c->rule = keep_rule_between(&cut, NULL);
            c->sel = SEL_RULE;
            rc = 1;
            /* the cut inside the band: what lay outside it was selected rightly */
            if (waiting && c->rule.L >= cut.blo && c->rule.L <= cut.bhi)
                *weighed = sce_wait_finish(&wt, K, nc, &c->rule, wacc, nt);
        }
    }
    sce_wait_free(&wt);
    rank_cut_free(&cut);
    free(acc);
    return rc;
}

/* The exact selection on a copy of the variances (small tensors). */
static int sce_select_exact(sce_ctx *c, double topk, uint8_t *sel, int nt, alloy_err *err) {
    const merge_call *call = c->call;
    size_t n = call->n, nz = 0;
    float *key = mem_big_alloc(sizeof(float) * n + 1), *scratch = mem_big_alloc(sizeof(float) * n + 1);
    int bad = 0, oom = !key || !scratch;
    if (!oom) {
#pragma omp parallel num_threads(nt) reduction(| : bad, oom) reduction(+ : nz)
        {
            float **in = sce_buffers(c->K);
            oom = !in;
#pragma omp for schedule(static)
            for (size_t b0 = 0; b0 < n; b0 += SCE_BLOCK) {
                if (!in) continue;
                size_t m = n - b0 < SCE_BLOCK ? n - b0 : SCE_BLOCK;
                bad |= sce_load(c, b0, m, in);
                float vf[SCE_BLOCK];
                sce_var_block_f((const float *const *)in, c->K, m, vf);
                for (size_t e = 0; e < m; e++) {
                    key[b0 + e] = -vf[e];
                    nz += vf[e] != 0.0f;
                }
            }
            sce_free_buffers(in);
        }
    }
    size_t kk = (size_t)((double)nz * topk);
    if (!oom && !bad && kk > 0) sparsify_rank_mask(key, n, 0, kk, scratch, sel, nt);
    free(key);
    free(scratch);
    if (oom) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    if (bad) return MERGE_NONFINITE_INPUT;
    c->sel = SEL_MASK;
    c->mask = sel;
    return 0;
}

/* tau_i = x_i - base. Select (select_topk < 1): keep the elements whose
 * population variance across models is among the int(topk * #nonzero-var)
 * largest (ties by index), zero the rest (topk <= 0: none). Calculate:
 * w_i = mean(tau_i^2) over all n elements (the unselected count as 0),
 * normalised to sum 1 (|sum| < 1e-6: 1/K). Erase: g = sign(sum_i tau_i)
 * (>= 0 -> +1), c_i = [sign(tau_i) == g].
 * out = base + sum_i w_i c_i tau_i / max(sum_i w_i c_i, 1e-6) where
 * selected, else base. Source: mergekit sce_merge / sce_mask / sce_weight.
 * Streams its inputs: the selection (a sample and a pass, rankcut.h) with
 * the weights (sce_wait; else a pass of their own), the result (a pass). */
static int sce_merge(const merge_call *call, float *out, alloy_err *err) {
    int K = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    if (!merge_has_base(call)) return alloy_fail(err, "tensor '%s': sce needs a base model", call->tensor_name);
    int *which = malloc(sizeof(int) * (size_t)(K + 1));
    float *w = malloc(sizeof(float) * (size_t)(K + 1));
    double *acc = malloc(sizeof(double) * (size_t)(K + 2));
    uint8_t *mask = NULL;
    bool own_mask = true; /* mask allocated here (else in call->work) */
    if (!which || !w || !acc) {
        free(which), free(w), free(acc);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    for (int i = 0; i < K; i++) which[i] = i;
    which[K] = -1;
    sce_ctx c = {.call = call, .K = K, .sel = SEL_ALL, .w = w};
    double topk = call->gparam[P_SELECT_TOPK];
    int rc = 0;
    bool weighed = false; /* the weights' sums made by the selection's pass */
    if (K == 0) {
        c.sel = SEL_NONE;
    } else if (topk <= 0.0) {
        c.sel = SEL_NONE;
    } else if (topk < 1.0) {
        /* a rule's selection is kept as bytes (when there is room), so the
         * output pass need not compute the variances again; in the
         * executor's scratch when it has room (no fresh pages per tensor) */
        own_mask = call->work_bytes < n + 1;
        uint8_t *sel = own_mask ? mem_big_alloc(n + 1) : call->work;
        size_t at = (n + 1 + 63) & ~(size_t)63; /* the waiting elements' room after it */
        char *room = own_mask || call->work_bytes <= at ? NULL : (char *)call->work + at;
        int r = sce_select_stream(&c, topk, nt, sel, room, room ? call->work_bytes - at : 0, acc, &weighed);
        if (r == 1) {
            mask = sel;
        } else { /* the exact path (r == 0), or a non-finite input */
            if (own_mask) free(sel);
            own_mask = true;
            rc = r;
        }
        if (r == 0) {
            mask = calloc(n + 1, 1);
            rc = mask ? sce_select_exact(&c, topk, mask, nt, err)
                      : alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
        }
    }
    if (!rc && K > 0) {
        if (c.sel == SEL_RULE && !weighed && mask) c.keep = mask;
        if (!weighed) rc = merge_stream_reduce(call, K, sce_sq_chunk, &c, acc, err);
        if (weighed || c.keep) c.sel = SEL_MASK, c.mask = mask, c.keep = NULL;
        double wsum = 0.0;
        for (int i = 0; i < K && !rc; i++) {
            w[i] = (float)(acc[i] / (double)n);
            wsum += w[i];
        }
        if (!rc && fabs(wsum) < 1e-6)
            for (int i = 0; i < K; i++) w[i] = 1.0f / (float)K;
        else if (!rc)
            for (int i = 0; i < K; i++) w[i] = (float)(w[i] / wsum);
    }
    if (!rc) rc = merge_stream_elementwise(call, out, "sce", K + 1, which, sce_out_block, &c, err);
    if (own_mask) free(mask);
    free(which), free(w), free(acc);
    return rc;
}

static const merge_param_def sce_params[] = {
    {"int8_mask", false, false, 0, 0, 1},
    {"select_topk", false, false, 1, 0, 1},
};

const merge_method merge_sce = {"sce", BASE_REQUIRED, 1, 0, sce_params, 2, sce_merge, true, true};
