/* sparsify.c — masks for task-vector sparsification (see sparsify.h).
 *
 * Source of the semantics: mergekit/sparsify.py (magnitude, bernoulli,
 * magnitude_outliers, della_magprune, rescaled_masked_tensor). Selection by
 * rank uses quickselect, never a full sort; della's keep decisions need
 * each element's rank within its row only where a bucket histogram cannot
 * settle them (della_row_decide), and a row is sorted only when too many
 * are left. */
#include "merge/sparsify.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "merge/vec.h"
#include "util/err.h"
#include "util/rng.h"

static inline void swapf(float *a, float *b) {
    float t = *a;
    *a = *b;
    *b = t;
}

static inline float median3(float a, float b, float c) {
    if (a < b) return b < c ? b : (a < c ? c : a);
    return a < c ? a : (b < c ? c : b);
}

/* The k-th smallest (0-based) of a[0..n), leaving a[0..k) <= it <= a[k..n).
 * Three-way partitions, so runs of equal values (zeros in deltas) are cheap. */
static float select_kth(float *a, size_t n, size_t k) {
    size_t l = 0, r = n;
    while (r - l > 1) {
        float p = median3(a[l], a[l + (r - l) / 2], a[r - 1]);
        size_t lt = l, i = l, gt = r;
        while (i < gt) {
            if (a[i] < p)
                swapf(&a[lt++], &a[i++]);
            else if (a[i] > p)
                swapf(&a[i], &a[--gt]);
            else
                i++;
        }
        if (k < lt)
            r = lt;
        else if (k >= gt)
            l = gt;
        else
            return p;
    }
    return a[k];
}

/* Order-preserving map of a float to an unsigned key (NaN excluded). */
static inline uint32_t order_key(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float order_value(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* The value of rank k (0-based, ascending) of key[0..n), by a two-pass radix
 * select on the order-preserving bits: a parallel 16-bit histogram of the high
 * halves finds the bucket holding rank k, a second of the low halves inside
 * that bucket finds the value. Two streaming passes, no copy, no data
 * movement: on large tensors several times faster than quickselect. */
static float radix_kth(const float *key, size_t n, size_t k, int threads) {
    enum { BINS = 1 << 16 };
    int nt = threads > 0 ? threads : 1;
    size_t *hist = calloc((size_t)nt * BINS, sizeof *hist);
    size_t *tot = calloc(BINS, sizeof *tot);
    if (!hist || !tot) { /* fall back to nothing clever: quickselect on a copy */
        free(hist);
        free(tot);
        float *tmp = malloc(n * sizeof *tmp);
        if (!tmp) return 0.0f;
        memcpy(tmp, key, n * sizeof *tmp);
        float v = select_kth(tmp, n, k);
        free(tmp);
        return v;
    }
    uint32_t hi = 0;
    size_t below = 0;
    for (int pass = 0; pass < 2; pass++) {
        memset(hist, 0, (size_t)nt * BINS * sizeof *hist);
#pragma omp parallel num_threads(nt)
        {
            size_t *h = hist + (size_t)omp_get_thread_num() * BINS;
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i++) {
                uint32_t q = order_key(key[i]);
                if (pass == 0)
                    h[q >> 16]++;
                else if ((q >> 16) == hi)
                    h[q & 0xffffu]++;
            }
        }
        for (size_t b = 0; b < BINS; b++) {
            size_t t = 0;
            for (int j = 0; j < nt; j++) t += hist[(size_t)j * BINS + b];
            tot[b] = t;
        }
        size_t b = 0;
        while (b < BINS - 1 && below + tot[b] <= k) below += tot[b++];
        if (pass == 0) {
            hi = (uint32_t)b;
        } else {
            hi = (hi << 16) | (uint32_t)b;
        }
    }
    free(hist);
    free(tot);
    return order_value(hi);
}

void sparsify_rank_mask(const float *key, size_t n, size_t lo, size_t hi, float *scratch, uint8_t *mask,
                        int threads) {
    if (hi > n) hi = n;
    if (lo >= hi) {
        memset(mask, 0, n);
        return;
    }
    if (lo == 0 && hi == n) {
        memset(mask, 1, n);
        return;
    }
    float L, U;
    if (n < (1u << 16)) { /* small: quickselect on a copy */
        memcpy(scratch, key, n * sizeof *scratch);
        L = select_kth(scratch, n, lo);                    /* value of rank lo */
        U = select_kth(scratch + lo, n - lo, hi - 1 - lo); /* value of rank hi-1 */
    } else {
        /* open ends need no select: keys are finite (inputs were checked) */
        L = lo == 0 ? -INFINITY : radix_kth(key, n, lo, vec_threads(threads));
        U = hi == n ? INFINITY : radix_kth(key, n, hi - 1, vec_threads(threads));
    }
    /* Per chunk: how many keys are below L and U, and how many equal them;
     * prefix sums of the equal counts give each tie its order by index. */
    size_t nc = vec_nchunks(n);
    size_t lessL[VEC_CHUNKS_MAX], lessU[VEC_CHUNKS_MAX], eqL[VEC_CHUNKS_MAX], eqU[VEC_CHUNKS_MAX];
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(static)
    for (size_t c = 0; c < nc; c++) {
        size_t b, e, ll = 0, lu = 0, el = 0, eu = 0;
        vec_chunk(n, c, &b, &e);
#pragma omp simd reduction(+ : ll, lu, el, eu)
        for (size_t i = b; i < e; i++) {
            float v = key[i];
            ll += v < L;
            lu += v < U;
            el += v == L;
            eu += v == U;
        }
        lessL[c] = ll, lessU[c] = lu, eqL[c] = el, eqU[c] = eu;
    }
    size_t cL = 0, cU = 0, tl = 0, tu = 0, nL[VEC_CHUNKS_MAX], nU[VEC_CHUNKS_MAX];
    for (size_t c = 0; c < nc; c++) {
        nL[c] = eqL[c], nU[c] = eqU[c];
        cL += lessL[c], cU += lessU[c];
        eqL[c] = tl, eqU[c] = tu; /* now: ties before this chunk */
        tl += nL[c], tu += nU[c];
    }
    /* A tie at L is kept when at least lo - cL ties at L come before it, a
     * tie at U when fewer than hi - cU do. Only the (at most two) chunks in
     * which that cut falls need a walk in index order; everywhere else whole
     * chunks keep or drop their ties, and one branch-free pass is exact. */
    size_t needL = lo > cL ? lo - cL : 0, capU = hi > cU ? hi - cU : 0;
#pragma omp parallel for num_threads(vec_threads(threads)) schedule(static)
    for (size_t c = 0; c < nc; c++) {
        size_t b, e, tL = eqL[c], tU = eqU[c];
        vec_chunk(n, c, &b, &e);
        bool cutL = nL[c] > 0 && tL < needL && tL + nL[c] > needL;
        bool cutU = nU[c] > 0 && tU < capU && tU + nU[c] > capU;
        if (!cutL && !cutU) {
            int incL = tL >= needL, incU = tU + nU[c] <= capU;
#pragma omp simd
            for (size_t i = b; i < e; i++) {
                float v = key[i];
                mask[i] = (uint8_t)(((v > L) | (incL & (v == L))) & ((v < U) | (incU & (v == U))));
            }
            continue;
        }
        for (size_t i = b; i < e; i++) {
            float v = key[i];
            bool ok_lo = v > L || (v == L && cL + tL >= lo);
            bool ok_hi = v < U || (v == U && cU + tU < hi);
            tL += v == L;
            tU += v == U;
            mask[i] = ok_lo && ok_hi;
        }
    }
}

/* Indices 0..len-1 ordered by key ascending, ties by index: a stable LSD
 * radix sort over the four bytes of the keys (bit patterns of magnitudes
 * >= 0, which order as the values). key/idx/tk/ti: len each; the result is
 * in idx. Several times faster than qsort on rows of a few thousand. */
static void sort_by_key(uint32_t *key, uint32_t *idx, uint32_t *tk, uint32_t *ti, size_t len) {
    for (size_t j = 0; j < len; j++) idx[j] = (uint32_t)j;
    if (!len) return;
    /* the four digits' histograms in one read */
    size_t cnt[4][256] = {{0}};
    for (size_t j = 0; j < len; j++) {
        uint32_t u = key[j];
        cnt[0][u & 255]++, cnt[1][(u >> 8) & 255]++, cnt[2][(u >> 16) & 255]++, cnt[3][u >> 24]++;
    }
    /* stable scatters, back and forth between the two buffer pairs */
    uint32_t *sk = key, *si = idx, *dk = tk, *di = ti;
    for (int d = 0; d < 4; d++) {
        int sh = 8 * d;
        size_t *c = cnt[d];
        if (c[(sk[0] >> sh) & 255] == len) continue; /* one digit: nothing moves */
        for (size_t v = 0, at = 0; v < 256; v++) {
            size_t k = c[v];
            c[v] = at;
            at += k;
        }
        for (size_t j = 0; j < len; j++) {
            size_t to = c[(sk[j] >> sh) & 255]++;
            dk[to] = sk[j];
            di[to] = si[j];
        }
        uint32_t *t = sk;
        sk = dk, dk = t;
        t = si, si = di, di = t;
    }
    if (sk != key) {
        memcpy(key, sk, len * sizeof *key);
        memcpy(idx, si, len * sizeof *idx);
    }
}

/* The keep decisions of one contiguous row of della, without sorting it.
 * Element j of rank r_j (ascending key, ties by index) is kept iff
 *   u_j < P(r_j),  P(r) = (double)(lo_p + ((float)r / (len - 1)) * 2 eps)
 * (ptab[r]), u_j = rng_uniform_at(key, e0 + j). P is monotone in r (each
 * float step is), so the decision is too: when keep at the lowest and the
 * highest rank that j can have agree, every rank between gives the same.
 * One histogram of the keys over NB buckets in key order (bucket 0 the
 * zeros, the rest linear in the bit pattern from the smallest non-zero key)
 * bounds each rank by its bucket's span; a zero's rank is exact (zeros tie
 * and rank by index: a running count), and the few elements whose span
 * straddles their draw's threshold get their exact rank in one vector pass
 * over the row (keys below, plus equal keys at lower indices). On the bench
 * model 0.28 % of elements need that, and no row is sorted. Returns false, with kb unwritten,
 * when more than DELLA_EXACT_MAX do (rows of a few repeated values): the
 * caller sorts. */
#define DELLA_NB 4096       /* buckets at most (a power of two) */
#define DELLA_EXACT_MAX 48  /* exact ranks per row before sorting is cheaper */
typedef struct della_row_buf {
    uint32_t *key;   /* len */
    uint16_t *bkt;   /* len */
    uint32_t *start; /* DELLA_NB + 1 */
    uint32_t *todo;  /* DELLA_EXACT_MAX */
    double *u;       /* len: the draws */
} della_row_buf;

static bool della_row_decide(const della_row_buf *w, const float *mag, size_t len, const double *ptab, uint64_t key,
                             size_t e0, uint8_t *kb) {
    uint32_t *k = w->key, kmax = 0, kmin = UINT32_MAX;
    memcpy(k, mag, len * sizeof *k);
#pragma omp simd reduction(max : kmax) reduction(min : kmin)
    for (size_t j = 0; j < len; j++) {
        uint32_t u = k[j];
        kmax = u > kmax ? u : kmax;
        kmin = u && u < kmin ? u : kmin; /* the smallest non-zero */
    }
    size_t nb = 2;
    while (nb < DELLA_NB && nb < len) nb <<= 1;
    int sh = 0;
    if (kmin <= kmax)
        while (((kmax - kmin) >> sh) > nb - 2) sh++;
    uint32_t *start = w->start;
    memset(start, 0, (nb + 1) * sizeof *start);
    uint16_t *b = w->bkt;
#pragma omp simd
    for (size_t j = 0; j < len; j++) b[j] = (uint16_t)(k[j] ? 1u + ((k[j] - kmin) >> sh) : 0u);
    for (size_t j = 0; j < len; j++) start[b[j] + 1]++;
    for (size_t t = 1; t <= nb; t++) start[t] += start[t - 1];
    /* bucket t holds ranks start[t] .. start[t + 1] - 1 */
    /* the draws in one vector loop (the 64-bit mixer vectorises on AVX-512) */
    double *ud = w->u;
#pragma omp simd
    for (size_t j = 0; j < len; j++) ud[j] = rng_uniform_at(key, e0 + j);
    /* a zero's rank is the zeros before it; without a branch */
    uint32_t nz = 0;
    size_t ntodo = 0;
    for (size_t j = 0; j < len; j++) {
        uint32_t t = b[j];
        uint32_t rl = t ? start[t] : nz, rh = t ? start[t + 1] - 1 : nz;
        nz += t == 0;
        bool lo = ud[j] < ptab[rl], hi = ud[j] < ptab[rh];
        kb[j] = lo;
        if (lo != hi) {
            if (ntodo == DELLA_EXACT_MAX) return false;
            w->todo[ntodo++] = (uint32_t)j;
        }
    }
    for (size_t q = 0; q < ntodo; q++) {
        size_t j = w->todo[q];
        uint32_t kj = k[j], r = 0;
#pragma omp simd reduction(+ : r)
        for (size_t i = 0; i < len; i++) r += (k[i] < kj) | ((k[i] == kj) & (i < j));
        kb[j] = ud[j] < ptab[r];
    }
    return true;
}

/* The keep bytes kb[0..n) (0 or 1) of elements e0.. ORed into bits (bit e,
 * LSB first). Eight at a time where they fill a byte: one 64-bit load, the
 * low bit of each byte gathered by a multiply (byte i's bit lands on bit
 * 56 + i and nothing carries into the top byte), one OR; byte by byte,
 * each a read-modify-write of the same byte, the loop waited on its own
 * stores (13 % of a della merge). */
static void or_bits(uint8_t *bits, size_t e0, const uint8_t *kb, size_t n) {
    size_t j = 0;
    for (; j < n && (e0 + j) % 8; j++) bits[(e0 + j) / 8] |= (uint8_t)(kb[j] << ((e0 + j) % 8));
    for (; j + 8 <= n; j += 8) {
        uint64_t w;
        memcpy(&w, kb + j, 8);
        bits[(e0 + j) / 8] |= (uint8_t)((w * 0x0102040810204080ull) >> 56);
    }
    for (; j < n; j++) bits[(e0 + j) / 8] |= (uint8_t)(kb[j] << ((e0 + j) % 8));
}

/* della_magprune: in each row (axis 1; a 1-D tensor is one row) the element
 * of ascending |delta| rank r (0-based, ties by index) is kept with
 * probability p = (density - epsilon) + r/(len-1) * 2 epsilon. A row of one
 * element (where mergekit divides 0 by 0) uses r/(len-1) = 1/2.
 * Magnitudes come from f; the mask goes to mask (a byte per element) or,
 * when mask is NULL, to bits (a bit per element, zeroed by the caller).
 * Rows along the last axis are contiguous: threads take groups of rows
 * that begin on a whole byte of bits; other layouts (axis 1 of a tensor
 * of 3 or more dimensions) run on one thread. */
static int della_rows(const sparsify_args *a, sparsify_mag_fn f, const void *ctx, int ndim, const int64_t *shape,
                      size_t n, uint8_t *mask, uint8_t *bits, int threads, alloy_err *err) {
    vec_layout l = vec_layout_axis(ndim, shape, n, ndim >= 2 ? 1 : 0);
    float lo_p = (float)(a->density - a->epsilon), two_eps = (float)(2.0 * a->epsilon);
    uint64_t key = rng_stream_key(a->seed, a->stream);
    if (l.len > UINT32_MAX) return alloy_fail(err, "della: rows of %zu elements are too long", l.len);
    size_t len = l.len ? l.len : 1, group = 1;
    while ((group * len) % 8) group++; /* rows per group: a group starts on a byte */
    size_t ngroups = (l.count + group - 1) / group;
    int oom = 0, bad = 0;
    bool contiguous = l.inner == 1;
    /* P(r) of every rank (della_row_decide): the same for every row */
    double *ptab = contiguous && len > 1 ? malloc(len * sizeof *ptab) : NULL;
    if (ptab) {
        float den = (float)(len - 1);
        for (size_t r = 0; r < len; r++) ptab[r] = (double)(lo_p + ((float)r / den) * two_eps);
    }
#pragma omp parallel num_threads(contiguous || mask ? vec_threads(threads) : 1) reduction(| : oom, bad)
    {
        uint32_t *buf = malloc(4 * len * sizeof *buf);
        float *mag = malloc(len * sizeof *mag);
        della_row_buf rb = {malloc(len * sizeof(uint32_t)), malloc(len * sizeof(uint16_t)),
                            malloc((DELLA_NB + 1) * sizeof(uint32_t)), malloc(DELLA_EXACT_MAX * sizeof(uint32_t)),
                            malloc(len * sizeof(double))};
        oom = !buf || !mag || !rb.key || !rb.bkt || !rb.start || !rb.todo || !rb.u || (contiguous && len > 1 && !ptab);
#pragma omp for schedule(dynamic, 4)
        for (size_t gi = 0; gi < ngroups; gi++) {
            for (size_t v = gi * group; !oom && v < l.count && v < (gi + 1) * group; v++) {
                uint32_t *k = buf, *idx = buf + len, *tk = buf + 2 * len, *ti = buf + 3 * len;
                if (contiguous) {
                    bad |= f(ctx, v * l.len, l.len, mag);
                } else {
                    for (size_t j = 0; j < l.len; j++) bad |= f(ctx, vec_at(&l, v, j), 1, &mag[j]);
                }
                if (ptab) {
                    uint8_t *kb = (uint8_t *)ti;
                    size_t e0 = v * l.len;
                    if (della_row_decide(&rb, mag, l.len, ptab, key, e0, kb)) {
                        if (mask)
                            memcpy(mask + e0, kb, l.len);
                        else
                            or_bits(bits, e0, kb, l.len);
                        continue;
                    }
                }
                memcpy(k, mag, l.len * sizeof *k);
                sort_by_key(k, idx, tk, ti, l.len);
                if (contiguous) {
                    /* each element's rank, then the draws in index order: one
                     * vector loop (the 64-bit mixer vectorises on AVX-512) */
                    uint32_t *rank = tk;
                    uint8_t *kb = (uint8_t *)ti;
                    for (size_t r = 0; r < l.len; r++) rank[idx[r]] = (uint32_t)r;
                    size_t e0 = v * l.len;
                    float den = l.len > 1 ? (float)(l.len - 1) : 0.0f;
#pragma omp simd
                    for (size_t j = 0; j < l.len; j++) {
                        float rn = l.len > 1 ? (float)rank[j] / den : 0.5f;
                        float p = lo_p + rn * two_eps;
                        kb[j] = rng_uniform_at(key, e0 + j) < (double)p;
                    }
                    if (mask)
                        memcpy(mask + e0, kb, l.len);
                    else
                        or_bits(bits, e0, kb, l.len);
                    continue;
                }
                for (size_t r = 0; r < l.len; r++) {
                    size_t e = vec_at(&l, v, idx[r]);
                    float rn = l.len > 1 ? (float)r / (float)(l.len - 1) : 0.5f;
                    float p = lo_p + rn * two_eps;
                    uint8_t keep = rng_uniform_at(key, e) < (double)p;
                    if (mask)
                        mask[e] = keep;
                    else
                        bits[e / 8] |= (uint8_t)(keep << (e % 8));
                }
            }
        }
        free(mag);
        free(buf);
        free(rb.key), free(rb.bkt), free(rb.start), free(rb.todo), free(rb.u);
    }
    free(ptab);
    if (oom) return alloy_fail(err, "out of memory (della row buffers)");
    return bad ? 1 : 0;
}

typedef struct dense_mag {
    const float *x, *base;
} dense_mag;

static bool dense_mag_fn(const void *p, size_t lo, size_t m, float *a) {
    const dense_mag *c = p;
    for (size_t j = 0; j < m; j++) a[j] = fabsf(c->x[lo + j] - c->base[lo + j]);
    return false;
}

/* della's density and epsilon: 1 when nothing is dropped (density <= 0
 * keeps nothing: 2), -1 (err) when density +- epsilon leaves (0, 1). */
static int della_check(const sparsify_args *a, const char *name, alloy_err *err) {
    if (a->density <= 0.0) return 2;
    if (a->density + a->epsilon >= 1.0 || a->density - a->epsilon <= 0.0)
        return alloy_fail(err, "tensor '%s': della needs density +/- epsilon inside (0, 1), got density %g, "
                          "epsilon %g", name, a->density, a->epsilon);
    return 0;
}

int sparsify_della_bits(const sparsify_args *a, sparsify_mag_fn f, const void *ctx, int ndim, const int64_t *shape,
                        size_t n, uint8_t *bits, int threads, const char *name, alloy_err *err) {
    if (a->density >= 1.0) return 1;
    int c = della_check(a, name, err);
    if (c < 0) return -1;
    if (c == 2) return 0; /* bits stay zero: nothing kept */
    int r = della_rows(a, f, ctx, ndim, shape, n, NULL, bits, threads, err);
    return r < 0 ? -1 : r ? 2 : 0;
}

int sparsify_rank_bounds(const sparsify_args *a, size_t n, size_t *lo, size_t *hi, bool *neg_key, const char *name,
                         alloy_err *err) {
    if (a->kind == SPARSIFY_MAGNITUDE) {
        size_t k = (size_t)(a->density * (double)n);
        if (k == 0)
            return alloy_fail(err, "tensor '%s': density %g keeps no element of %zu (mergekit refuses this too)",
                              name, a->density, n);
        *neg_key = true;
        *lo = 0, *hi = k;
        return 0;
    }
    /* Keep sorted positions [n_bot, n - n_top) of the ascending |delta|
     * order. Deliberate deviation: when int(gamma*n) == 0, mergekit's
     * slice indices[n_bot:-0] is empty and drops the whole task vector
     * (small tensors: biases, norms); alloy keeps the top band instead,
     * which is what the method describes (docs/merge_methods.md). */
    int64_t target = (int64_t)(a->density * (double)n), top = (int64_t)(a->gamma * (double)n);
    int64_t bot = (int64_t)n - target - top;
    if (bot < 0) top += bot, bot = 0;
    *neg_key = false;
    *lo = (size_t)bot, *hi = n - (size_t)top;
    return 0;
}

int sparsify_mask(const sparsify_args *a, const float *x, const float *base, int ndim, const int64_t *shape,
                  size_t n, float *key, float *scratch, uint8_t *mask, int threads, const char *name,
                  alloy_err *err) {
    int nt = vec_threads(threads);
    if (a->kind == SPARSIFY_NONE || a->density >= 1.0) return 1;
    switch (a->kind) {
    case SPARSIFY_MAGNITUDE:
    case SPARSIFY_OUTLIERS: {
        size_t lo, hi;
        bool neg;
        if (sparsify_rank_bounds(a, n, &lo, &hi, &neg, name, err)) return -1;
        float sign = neg ? -1.0f : 1.0f;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) key[e] = sign * fabsf(x[e] - base[e]);
        sparsify_rank_mask(key, n, lo, hi, scratch, mask, nt);
        return 0;
    }
    case SPARSIFY_RANDOM: {
        uint64_t key = rng_stream_key(a->seed, a->stream);
        uint32_t thr = rng_thr32(a->density);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) mask[e] = (uint8_t)rng_keep32(key, e, thr);
        return 0;
    }
    case SPARSIFY_DELLA: {
        int c = della_check(a, name, err);
        if (c < 0) return -1;
        if (c == 2) {
            memset(mask, 0, n);
            return 0;
        }
        dense_mag dm = {x, base};
        return della_rows(a, dense_mag_fn, &dm, ndim, shape, n, mask, NULL, nt, err) < 0 ? -1 : 0;
    }
    case SPARSIFY_NONE:
        break;
    }
    return 1;
}
