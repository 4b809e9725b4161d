/* sphere.c — barycentres on the hypersphere: multislerp
 * (mergekit/merge_methods/multislerp.py) and karcher
 * (mergekit/merge_methods/karcher.py). Whole tensors are the points; every
 * reduction is deterministic (vec.h), element updates are f32. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/gta_kernel.h"
#include "merge/method.h"
#include "merge/sink.h"
#include "merge/vec.h"
#include "util/err.h"
#include "util/mem.h"

/* ---- multislerp ---- */

enum { MS_NORMALIZE_WEIGHTS, MS_EPS, MS_WEIGHT };

/* mergekit's multislerp, with u_i = v_i / (|v_i| + eps), m = sum_i w_i u_i,
 * m_hat = m / |m| and d_i = u_i . m_hat, takes the tangent mean
 *   T = sum_i w_i (u_i - d_i m_hat) = m - (sum_i w_i d_i) m_hat = m - |m| m_hat
 * which is zero: sum_i w_i d_i = m . m_hat = |m|. What it computes from T
 * (r = |T| + eps, cos r, sin(r)/r) is 1 up to the rounding noise in T,
 * about 1e-7 of the result, so the result is m_hat sum_i w_i |v_i|, a
 * linear combination of the task vectors:
 *   out = sum_i c_i v_i (+ base),  c_i = w_i inv_i avg / |m|
 * with inv_i = 1 / (|v_i| + eps), avg = sum_i w_i |v_i|, and every norm
 * from the Gram matrix G_ij = v_i . v_j: |v_i| = sqrt(G_ii), |m|^2 =
 * sum_ij w_i inv_i w_j inv_j G_ij. Two passes over the inputs (the Gram
 * matrix; the combination, as task_arithmetic's or linear's fused loop
 * where they apply) where following mergekit's steps takes four. */
#define MSL_BLOCK 1024
#if MERGE_EW_BLOCK > MSL_BLOCK
#error "msl_out_block's buffers hold MSL_BLOCK elements"
#endif

typedef struct msl_ctx {
    const merge_call *call;
    int k;
    bool base;
    const float *c; /* the coefficients c_i (output pass) */
} msl_ctx;

/* The block's inputs: in[i] = x_i, in[k] = base when there is one. */
static bool msl_load(const msl_ctx *c, size_t lo, size_t m, float *const *in) {
    bool bad = false;
    for (int i = 0; i < c->k; i++) bad |= merge_load(merge_input(c->call, i), lo, m, in[i]);
    if (c->base) bad |= merge_load(merge_input(c->call, -1), lo, m, in[c->k]);
    return bad;
}

/* vec_reduce chunk of the Gram pass: acc[p] = v_i . v_j for the pairs
 * i <= j in row order (p = 0 is |v_0|^2), each block's products (of the f32
 * v_i, in double) summed in vec_sum8's lanes; the slot after them counts
 * non-finite inputs, the next one allocation failures. */
static void msl_gram_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const msl_ctx *c = p;
    int k = c->k, np = k * (k + 1) / 2;
    float *buf = malloc((size_t)(k + 1) * MSL_BLOCK * sizeof *buf);
    float **in = malloc((size_t)(k + 1) * sizeof *in);
    double *pairs = malloc((size_t)np * sizeof *pairs); /* one block's pair sums */
    if (!buf || !in || !pairs) {
        acc[np + 1] += 1.0;
        free(buf), free(in), free(pairs);
        return;
    }
    for (int i = 0; i <= k; i++) in[i] = buf + (size_t)i * MSL_BLOCK;
    for (size_t b0 = lo; b0 < hi; b0 += MSL_BLOCK) {
        size_t m = hi - b0 < MSL_BLOCK ? hi - b0 : MSL_BLOCK;
        if (msl_load(c, b0, m, in)) acc[np] += 1.0;
        if (c->base) {
            const float *restrict b = in[k];
            for (int i = 0; i < k; i++) {
                float *restrict x = in[i];
#pragma omp simd
                for (size_t e = 0; e < m; e++) x[e] -= b[e];
            }
        }
        vec_gram_block(k, (const float *const *)in, NULL, m, pairs);
        for (int q = 0; q < np; q++) acc[q] += pairs[q];
    }
    free(pairs);
    free(in);
    free(buf);
}

/* The result of one block, generic: sum_i c_i v_i in model order (+ base). */
static void msl_out_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    const msl_ctx *c = p;
    const float *restrict b = c->base ? in[c->k] : NULL;
#pragma omp simd
    for (size_t e = 0; e < m; e++) o[e] = 0.0f;
    for (int i = 0; i < c->k; i++) {
        const float *restrict x = in[i];
        float ci = c->c[i];
        if (b) {
#pragma omp simd
            for (size_t e = 0; e < m; e++) o[e] += (x[e] - b[e]) * ci;
        } else {
#pragma omp simd
            for (size_t e = 0; e < m; e++) o[e] += x[e] * ci;
        }
    }
    if (b) {
#pragma omp simd
        for (size_t e = 0; e < m; e++) o[e] = b[e] + o[e];
    }
}

static void msl_copy_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    (void)p;
    memcpy(o, in[0], m * sizeof *o);
}

typedef struct msl_kernel_args {
    const gk_args *a;
    gk_block_fn fn; /* with a base; else gk_linear */
    const uint16_t *const *x;
    const float *c;
} msl_kernel_args;

static bool msl_kernel_block(const void *p, size_t b0, size_t m, void *dst, size_t *ob) {
    const msl_kernel_args *q = p;
    if (q->fn) return q->fn(q->a, b0, m, dst, ob);
    return gk_linear(q->x, q->c, q->a->k, false, 1.0f, q->a->in_f16, q->a->out_bf16, b0, m, dst, ob);
}

/* The output pass through the fused loops (gta_kernel.h) where every input
 * is bf16: with a base task_arithmetic's (base + sum_i c_i (x_i - base),
 * no masks), without linear's; without a base also where every input and
 * the output are f16; 1 when they do not apply. */
static int msl_kernel(const merge_call *call, const msl_ctx *c, float *out, alloy_err *err) {
    int k = c->k;
    alloy_dtype odt = call->sink ? merge_sink_dtype(call->sink) : ALLOY_F32;
    alloy_dtype idt = merge_input(call, 0).dtype;
    bool f16 = !c->base && idt == ALLOY_F16 && odt == ALLOY_F16;
    if (!GTA_KERNEL || k > GK_MAX_MODELS || (!f16 && (idt != ALLOY_BF16 || (odt != ALLOY_BF16 && odt != ALLOY_F32))))
        return 1;
    const uint16_t *x[GK_MAX_MODELS + 1];
    for (int i = -1; i < k; i++) {
        if (i < 0 && !c->base) continue;
        merge_src in = merge_input(call, i);
        if (in.dtype != idt || ((uintptr_t)in.data & 1)) return 1;
        x[i + 1] = in.data;
    }
    gk_args a = {.k = k, .lambda = 1.0f, .div_all = 1.0f, .base = c->base ? x[0] : NULL, .in_f16 = f16,
                 .out_bf16 = odt != ALLOY_F32};
    for (int i = 0; i < k; i++) a.m[i] = (gk_model){.x = x[i + 1], .w = c->c[i], .s = 1.0f, .keep = GK_WHOLE};
    msl_kernel_args q = {&a, c->base ? gk_select(&a) : NULL, x + 1, c->c};
    if (c->base && !q.fn) return 1;
    return merge_stream_blocks(call, out, "multislerp", msl_kernel_block, &q, err);
}

/* v_i = x_i (- base), w normalised to sum 1 when normalize_weights;
 * |m| < eps: two models fall back to w_0 v_0 + w_1 v_1 (+ base), more is
 * an error; else out = sum_i c_i v_i (+ base) as above. One model: out =
 * x_0. Source: mergekit multislerp()
 * (goddard.blog/posts/multislerp-wow-what-a-cool-idea). */
static int multislerp_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k, np = k * (k + 1) / 2;
    int *which = malloc(sizeof(int) * (size_t)(k + 1));
    float *w = malloc(sizeof(float) * 2 * (size_t)k);
    double *acc = malloc(sizeof(double) * (size_t)(np + 2) + sizeof(double) * (size_t)(k * k));
    if (!w || !which || !acc) {
        free(w), free(which), free(acc);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    for (int i = 0; i < k; i++) which[i] = i;
    which[k] = -1;
    bool base = merge_has_base(call);
    int rc = 0;
    if (k == 1) {
        rc = merge_stream_elementwise(call, out, "multislerp", 1, which, msl_copy_block, NULL, err);
        free(w), free(which), free(acc);
        return rc;
    }
    float *coef = w + k;
    double wsum = 0.0;
    for (int i = 0; i < k; i++) w[i] = (float)MPARAM(call, i, MS_WEIGHT), wsum += w[i];
    if (call->gparam[MS_NORMALIZE_WEIGHTS] != 0.0) {
        float ws = (float)wsum;
        for (int i = 0; i < k; i++) w[i] /= ws;
    }
    float eps = (float)call->gparam[MS_EPS];
    msl_ctx c = {call, k, base, coef};
    rc = merge_stream_reduce(call, np, msl_gram_chunk, &c, acc, err);
    double *G = acc + np + 2, avg = 0.0, m2 = 0.0, a[GK_MAX_MODELS > 8 ? GK_MAX_MODELS : 8];
    double *ai = k <= 8 ? a : malloc(sizeof(double) * (size_t)k);
    if (!ai) rc = alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    for (int i = 0, q = 0; i < k && !rc; i++)
        for (int j = i; j < k; j++, q++) G[i * k + j] = G[j * k + i] = acc[q];
    for (int i = 0; i < k && !rc; i++) {
        float norm = (float)sqrt(G[i * k + i]);
        ai[i] = (double)w[i] * (double)(1.0f / (norm + eps));
        avg += (double)norm * w[i];
    }
    for (int i = 0; i < k && !rc; i++)
        for (int j = 0; j < k; j++) m2 += ai[i] * ai[j] * G[i * k + j];
    double mnorm = sqrt(m2 > 0.0 ? m2 : 0.0);
    if (!rc && mnorm < eps) {
        if (k != 2)
            rc = alloy_fail(err, "tensor '%s': multislerp: the weighted sum of the unit task vectors is zero "
                            "(antipodal inputs with balancing weights); change the weights", call->tensor_name);
        coef[0] = w[0], coef[1] = w[1];
    } else if (!rc) {
        for (int i = 0; i < k; i++) coef[i] = (float)(ai[i] * avg / mnorm);
    }
    if (ai != a) free(ai);
    if (!rc) rc = msl_kernel(call, &c, out, err);
    if (rc == 1) rc = merge_stream_elementwise(call, out, "multislerp", base ? k + 1 : k, which, msl_out_block, &c, err);
    free(w), free(which), free(acc);
    return rc;
}

static const merge_param_def multislerp_params[] = {
    {"normalize_weights", false, false, 1, 0, 1},
    {"eps", false, false, 1e-8, 0, INFINITY},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_multislerp = {"multislerp", BASE_OPTIONAL, 1, 0, multislerp_params,
                                       3, multislerp_merge, true, true};

/* ---- karcher ---- */

enum { KA_MAX_ITER, KA_TOL };

/* The inputs are streamed in every pass; the iterate is the only
 * tensor-sized buffer (f32), stored unnormalised as u_s with its scale iu:
 * every pass takes u = u_s * iu element by element (the value the stored,
 * normalised iterate had when each pass renormalised it in place). The
 * tangent is never stored: the pass that needs its norm and the one that
 * steps along it both make it element by element from the inputs. */
#define KA_BLOCK 1024
enum { KA_NORMS, KA_INIT, KA_DOTS, KA_TANGENT, KA_STEP };

typedef struct ka_ctx {
    const merge_call *call;
    int K, nv, pass;
    const int *idx;     /* the models taking part (|x_i| > tol) */
    const double *norm; /* |x_i| */
    float a;            /* 1 / nv */
    bool first;         /* KA_INIT: u = x_idx[0] * in0 instead */
    float in0;
    float *u;           /* u_s */
    float iu;           /* u = u_s * iu */
    float cu, cT;       /* KA_STEP: u_s = cu u + cT T */
    const float *coef;  /* a_i theta_i / sin theta_i / |x_i|, 0 when skipped */
    const float *dotu;  /* a_i theta_i / sin theta_i * dot_i */
} ka_ctx;

/* The tangent at m elements: T = sum_j coef_j x_j - dotu_j u (in model
 * order, from 0), u = u_s * iu. */
static inline void ka_tangent(const ka_ctx *c, const float *buf, const float *restrict us, size_t m,
                              float *restrict T) {
    float iu = c->iu;
    for (size_t e = 0; e < m; e++) T[e] = 0.0f;
    for (int j = 0; j < c->nv; j++) {
        const float *restrict x = buf + (size_t)j * KA_BLOCK;
        float cj = c->coef[j], dj = c->dotu[j];
#pragma omp simd
        for (size_t e = 0; e < m; e++) T[e] += cj * x[e] - dj * (us[e] * iu);
    }
}

/* vec_reduce chunk of one pass: KA_NORMS acc[i] = |x_i|^2 (every model),
 * KA_INIT u_s = sum_j a x_j / |x_j| (or x_idx[0] in0) and acc[0] = |u_s|^2,
 * KA_DOTS acc[j] = u . x_idx[j], KA_TANGENT acc[0] = |T|^2, KA_STEP u_s =
 * cu u + cT T stored, acc[0] = |u_s|^2 and acc[1 + j] = u_s . x_idx[j].
 * The slot after the sums counts non-finite inputs, the next one
 * allocation failures. */
static void ka_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const ka_ctx *c = p;
    int K = c->K, nv = c->nv;
    int nin = c->pass == KA_NORMS ? K : nv;
    int na = c->pass == KA_NORMS ? K : c->pass == KA_DOTS ? nv : c->pass == KA_STEP ? nv + 1 : 1;
    float *buf = malloc((size_t)nin * KA_BLOCK * sizeof *buf);
    float T[KA_BLOCK];
    if (!buf) {
        acc[na + 1] += 1.0;
        return;
    }
    for (size_t b0 = lo; b0 < hi; b0 += KA_BLOCK) {
        size_t m = hi - b0 < KA_BLOCK ? hi - b0 : KA_BLOCK;
        bool bad = false;
        for (int j = 0; j < nin; j++)
            bad |= merge_load(merge_input(c->call, c->pass == KA_NORMS ? j : c->idx[j]), b0, m, buf + (size_t)j * KA_BLOCK);
        if (bad) acc[na] += 1.0;
        /* per element in model order, as passes over the block; sums in
         * vec_sum8's lanes */
        float *restrict u = c->u + b0, iu = c->iu;
        if (c->pass == KA_NORMS) {
            for (int i = 0; i < K; i++) {
                const float *x = buf + (size_t)i * KA_BLOCK;
                acc[i] += vec_dot8f(x, x, m);
            }
        } else if (c->pass == KA_INIT) {
            if (c->first) {
                for (size_t e = 0; e < m; e++) u[e] = buf[e] * c->in0;
            } else {
                for (size_t e = 0; e < m; e++) u[e] = 0.0f;
                for (int j = 0; j < nv; j++) {
                    const float *restrict x = buf + (size_t)j * KA_BLOCK;
                    double nj = c->norm[c->idx[j]];
                    float a = c->a;
#pragma omp simd
                    for (size_t e = 0; e < m; e++) u[e] += a * (float)(x[e] / nj);
                }
            }
            acc[0] += vec_dot8f(u, u, m);
        } else if (c->pass == KA_DOTS) {
#pragma omp simd
            for (size_t e = 0; e < m; e++) T[e] = u[e] * iu; /* the iterate */
            for (int j = 0; j < nv; j++) acc[j] += vec_dot8f(T, buf + (size_t)j * KA_BLOCK, m);
        } else if (c->pass == KA_TANGENT) {
            ka_tangent(c, buf, u, m, T);
            acc[0] += vec_dot8f(T, T, m);
        } else {
            ka_tangent(c, buf, u, m, T);
            float cu = c->cu, cT = c->cT;
#pragma omp simd
            for (size_t e = 0; e < m; e++) u[e] = cu * (u[e] * iu) + cT * T[e];
            acc[0] += vec_dot8f(u, u, m);
            for (int j = 0; j < nv; j++) acc[1 + j] += vec_dot8f(u, buf + (size_t)j * KA_BLOCK, m);
        }
    }
    free(buf);
}

/* One pass (merge_stream_reduce). */
static int ka_pass(ka_ctx *c, int pass, double *acc, int na, alloy_err *err) {
    c->pass = pass;
    return merge_stream_reduce(c->call, na, ka_chunk, c, acc, err);
}

static void ka_scale_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)in;
    const ka_ctx *c = p;
    for (size_t e = 0; e < m; e++) o[e] = c->a * (c->u[lo + e] * c->iu);
}

/* Equal weights a = 1/K. u_i = x_i / |x_i|; models with |x_i| <= tol drop out
 * (weights renormalised over the rest; none left: zeros). Start from
 * u = normalise(sum a_i u_i) (or u_first if that is below tol), then up to
 * max_iter times: T = sum over theta_i = acos(clamp(u . u_i)) >= tol of
 * a_i theta_i / sin(theta_i) (u_i - (u . u_i) u); stop when |T| < tol; else
 * u = cos|T| u + sin|T| T/|T|, renormalised. out = (sum_i |x_i| / K) u.
 * Source: mergekit karcher_merge_tensors (Riemannian / Karcher mean).
 * Streams its inputs: a pass for the norms, one for the start and one for
 * its dots, then two per iteration: the tangent's norm, and the step
 * along it, which also makes the next iteration's dots (u_s . x_i, divided
 * by |u_s|: the dots of the renormalised iterate up to rounding). */
static int karcher_merge(const merge_call *call, float *out, alloy_err *err) {
    int K = call->k;
    size_t n = call->n;
    int max_iter = (int)call->gparam[KA_MAX_ITER];
    double tol = call->gparam[KA_TOL];
    static const int first[] = {0};
    if (K == 1) return merge_stream_elementwise(call, out, "karcher", 1, first, msl_copy_block, NULL, err);
    double *norm = malloc(sizeof(double) * (size_t)K), *acc = malloc(sizeof(double) * (size_t)(K + 3));
    int *idx = malloc(sizeof(int) * (size_t)K);
    float *coef = malloc(sizeof(float) * 2 * (size_t)K);
    /* u in the executor's scratch when it has room: a buffer allocated per
     * tensor is faulted in afresh for every tensor */
    bool own = call->work_bytes < sizeof(float) * n + 1;
    float *u = own ? mem_big_alloc(sizeof(float) * n + 1) : call->work;
    if (!norm || !acc || !idx || !coef || !u) {
        free(norm), free(acc), free(idx), free(coef);
        if (own) free(u);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    float *dotu = coef + K;
    ka_ctx c = {.call = call, .K = K, .idx = idx, .norm = norm, .u = u, .iu = 1.0f, .coef = coef, .dotu = dotu};
    int rc = ka_pass(&c, KA_NORMS, acc, K, err);
    double s = 0.0;
    int nv = 0;
    for (int i = 0; i < K && !rc; i++) {
        norm[i] = sqrt(acc[i]);
        s += norm[i] / K;
        if (norm[i] > tol) idx[nv++] = i;
    }
    c.nv = nv;
    c.a = nv ? 1.0f / (float)nv : 0.0f;
    if (!rc && nv > 0) rc = ka_pass(&c, KA_INIT, acc, 1, err);
    if (!rc && nv > 0) {
        double nu = sqrt(acc[0]);
        if (nu < tol) { /* u = x_first / |x_first|: a pass of that model */
            c.nv = 1;
            c.first = true;
            c.in0 = (float)(1.0 / norm[idx[0]]);
            rc = ka_pass(&c, KA_INIT, acc, 1, err);
            c.nv = nv;
            c.first = false;
        } else {
            c.iu = (float)(1.0 / nu);
        }
    }
    double *dots = acc; /* the iterate's dots with the models in play */
    if (!rc && nv > 0) rc = ka_pass(&c, KA_DOTS, acc, nv, err);
    for (int it = 0; it < max_iter && !rc && nv > 0; it++) {
        for (int j = 0; j < nv; j++) {
            double d = dots[j] / norm[idx[j]];
            d = d < -1.0 ? -1.0 : (d > 1.0 ? 1.0 : d);
            double th = acos(d);
            if (th < tol) {
                coef[j] = dotu[j] = 0.0f;
                continue;
            }
            double f = c.a * th / sin(th);
            coef[j] = (float)(f / norm[idx[j]]);
            dotu[j] = (float)(f * d);
        }
        rc = ka_pass(&c, KA_TANGENT, acc, 1, err);
        if (rc) break;
        double nT = sqrt(acc[0]);
        if (nT < tol) break;
        c.cu = (float)cos(nT), c.cT = (float)(sin(nT) / nT);
        rc = ka_pass(&c, KA_STEP, acc, nv + 1, err);
        if (rc) break;
        double un = sqrt(acc[0]), dun = un > tol ? un : 1.0;
        c.iu = un > tol ? (float)(1.0 / un) : 1.0f;
        for (int j = 0; j < nv; j++) acc[j] = acc[1 + j] / dun;
    }
    if (!rc) {
        if (nv == 0) memset(u, 0, n * sizeof *u);
        c.a = (float)s; /* the result's scale: out = s u */
        rc = merge_stream_elementwise(call, out, "karcher", 0, NULL, ka_scale_block, &c, err);
    }
    free(norm), free(acc), free(idx), free(coef);
    if (own) free(u);
    return rc;
}

static const merge_param_def karcher_params[] = {
    {"max_iter", false, false, 10, 1, 1e9},
    {"tol", false, false, 1e-5, 0, INFINITY},
};

const merge_method merge_karcher = {"karcher", BASE_NONE, 1, 0, karcher_params, 2, karcher_merge, true, true};
