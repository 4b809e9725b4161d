/* sphere.c — barycentres on the hypersphere: multislerp
 * (mergekit/merge_methods/multislerp.py) and karcher
 * (mergekit/merge_methods/karcher.py). Whole tensors are the points; every
 * reduction is deterministic (vec.h), element updates are f32. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "merge/method.h"
#include "merge/vec.h"
#include "util/err.h"
#include "util/mem.h"

/* ---- multislerp ---- */

enum { MS_NORMALIZE_WEIGHTS, MS_EPS, MS_WEIGHT };

/* The streaming passes: each reads the blocks of every input again and
 * recomputes m (element-wise, the same f32 operations every time, as passes
 * over the block), so no tensor-sized buffer exists. Every sum is double per
 * fixed chunk (vec.h), in vec_sum8's lanes per block. */
#define MSL_BLOCK 1024
#if MERGE_EW_BLOCK > MSL_BLOCK
#error "msl_out_block's buffers hold MSL_BLOCK elements"
#endif
enum { MSL_NORMS, MSL_DOTS, MSL_TANGENT };

typedef struct msl_ctx {
    const merge_call *call;
    int k, pass;
    bool base;
    const float *w;   /* weights (normalised) */
    const float *inv; /* 1 / (|v_i| + eps) */
    const float *dot; /* u_i . m_hat */
    float inv_mnorm;
} msl_ctx;

/* The block's inputs: in[i] = x_i, in[k] = base when there is one. */
static bool msl_load(const msl_ctx *c, size_t lo, size_t m, float *const *in) {
    bool bad = false;
    for (int i = 0; i < c->k; i++) bad |= merge_load(merge_input(c->call, i), lo, m, in[i]);
    if (c->base) bad |= merge_load(merge_input(c->call, -1), lo, m, in[c->k]);
    return bad;
}

/* v_i = x_i (- base) at e, in f32 */
static inline float msl_v(const msl_ctx *c, const float *const *in, int i, size_t e) {
    return c->base ? in[i][e] - in[c->k][e] : in[i][e];
}

/* m = sum_i w_i v_i / (|v_i| + eps) of elements [0, m) of a block into mv,
 * then the tangent sum_i w_i (u_i - (u_i . m_hat) m_hat) into tv from it:
 * per element in model order, as passes over the block (so they vectorise). */
static void msl_m_block(const msl_ctx *c, const float *const *in, size_t m, float *restrict mv) {
    const float *restrict b = c->base ? in[c->k] : NULL;
    for (size_t e = 0; e < m; e++) mv[e] = 0.0f;
    for (int i = 0; i < c->k; i++) {
        const float *restrict x = in[i];
        float wi = c->w[i], ii = c->inv[i];
        if (b) {
#pragma omp simd
            for (size_t e = 0; e < m; e++) mv[e] += wi * (x[e] - b[e]) * ii;
        } else {
#pragma omp simd
            for (size_t e = 0; e < m; e++) mv[e] += wi * x[e] * ii;
        }
    }
}

static void msl_tangent_block(const msl_ctx *c, const float *const *in, size_t m, const float *restrict mv,
                              float *restrict tv) {
    const float *restrict b = c->base ? in[c->k] : NULL;
    float inv_mnorm = c->inv_mnorm;
    for (size_t e = 0; e < m; e++) tv[e] = 0.0f;
    for (int i = 0; i < c->k; i++) {
        const float *restrict x = in[i];
        float wi = c->w[i], ii = c->inv[i], di = c->dot[i];
#pragma omp simd
        for (size_t e = 0; e < m; e++) {
            float v = b ? x[e] - b[e] : x[e];
            tv[e] += wi * (v * ii - di * (mv[e] * inv_mnorm));
        }
    }
}

/* vec_reduce chunk of pass MSL_NORMS (acc[i] = |v_i|^2), MSL_DOTS (acc[0] =
 * |m|^2, acc[1 + i] = v_i . m) or MSL_TANGENT (acc[0] = |T|^2); the slot
 * after them counts non-finite inputs, the next one allocation failures. */
static void msl_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const msl_ctx *c = p;
    int k = c->k, na = c->pass == MSL_NORMS ? k : c->pass == MSL_DOTS ? k + 1 : 1;
    float *buf = malloc((size_t)(k + 2) * MSL_BLOCK * sizeof *buf);
    float **in = malloc((size_t)(k + 1) * sizeof *in);
    if (!buf || !in) {
        acc[na + 1] += 1.0;
        free(buf), free(in);
        return;
    }
    for (int i = 0; i <= k; i++) in[i] = buf + (size_t)i * MSL_BLOCK;
    float *mv = buf + (size_t)(k + 1) * MSL_BLOCK;
    double sq[MSL_BLOCK];
    const float *const *cin = (const float *const *)in;
    for (size_t b0 = lo; b0 < hi; b0 += MSL_BLOCK) {
        size_t m = hi - b0 < MSL_BLOCK ? hi - b0 : MSL_BLOCK;
        if (msl_load(c, b0, m, in)) acc[na] += 1.0;
        const float *b = c->base ? in[k] : NULL;
        /* each block's terms into sq, then summed in vec_sum8's lanes */
        if (c->pass == MSL_NORMS) {
            for (int i = 0; i < k; i++) {
                const float *restrict x = in[i];
                if (b) {
#pragma omp simd
                    for (size_t e = 0; e < m; e++) sq[e] = ((double)x[e] - b[e]) * ((double)x[e] - b[e]);
                } else {
#pragma omp simd
                    for (size_t e = 0; e < m; e++) sq[e] = (double)x[e] * x[e];
                }
                acc[i] += vec_sum8(sq, m);
            }
        } else if (c->pass == MSL_DOTS) {
            msl_m_block(c, cin, m, mv);
#pragma omp simd
            for (size_t e = 0; e < m; e++) sq[e] = (double)mv[e] * mv[e];
            acc[0] += vec_sum8(sq, m);
            for (int i = 0; i < k; i++) {
                const float *restrict x = in[i];
                if (b) {
#pragma omp simd
                    for (size_t e = 0; e < m; e++) sq[e] = ((double)x[e] - b[e]) * mv[e];
                } else {
#pragma omp simd
                    for (size_t e = 0; e < m; e++) sq[e] = ((double)x[e] - 0.0f) * mv[e];
                }
                acc[1 + i] += vec_sum8(sq, m);
            }
        } else {
            float tv[MSL_BLOCK];
            msl_m_block(c, cin, m, mv);
            msl_tangent_block(c, cin, m, mv, tv);
#pragma omp simd
            for (size_t e = 0; e < m; e++) sq[e] = (double)tv[e] * tv[e];
            acc[0] += vec_sum8(sq, m);
        }
    }
    free(in);
    free(buf);
}

/* One pass of the reduction (merge_stream_reduce). */
static int msl_reduce(msl_ctx *c, int pass, double *acc, int na, alloy_err *err) {
    c->pass = pass;
    return merge_stream_reduce(c->call, na, msl_chunk, c, acc, err);
}

typedef struct msl_out {
    const msl_ctx *c;
    float cm, ct;  /* cos(r) |v|avg, sin(r)/r |v|avg */
    bool fallback; /* |m| < eps with two models: w_0 v_0 + w_1 v_1 */
} msl_out;

/* The result of one block: in[i] = x_i, in[k] = base (merge_stream_elementwise). */
static void msl_out_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    const msl_out *q = p;
    const msl_ctx *c = q->c;
    if (q->fallback) {
        for (size_t e = 0; e < m; e++) {
            float r = msl_v(c, in, 0, e) * c->w[0] + msl_v(c, in, 1, e) * c->w[1];
            o[e] = c->base ? r + in[c->k][e] : r;
        }
        return;
    }
    float mv[MSL_BLOCK], tv[MSL_BLOCK]; /* m <= MERGE_EW_BLOCK <= MSL_BLOCK */
    msl_m_block(c, in, m, mv);
    msl_tangent_block(c, in, m, mv, tv);
    const float *restrict b = c->base ? in[c->k] : NULL;
    float inv_mnorm = c->inv_mnorm, cm = q->cm, ct = q->ct;
#pragma omp simd
    for (size_t e = 0; e < m; e++) {
        float r = mv[e] * inv_mnorm * cm + tv[e] * ct;
        o[e] = b ? r + b[e] : r;
    }
}

static void msl_copy_block(const void *p, size_t lo, const float *const *in, size_t m, float *restrict o) {
    (void)lo;
    (void)p;
    memcpy(o, in[0], m * sizeof *o);
}

/* v_i = x_i (- base), w normalised to sum 1 when normalize_weights,
 * u_i = v_i / (|v_i| + eps), m = sum w_i u_i (|m| < eps: two models fall
 * back to w_0 v_0 + w_1 v_1, more is an error), m_hat = m / |m|,
 * T = sum w_i (u_i - (u_i . m_hat) m_hat), r = |T| + eps,
 * out = (m_hat cos r + T sin(r)/r) * sum_i w_i |v_i| (+ base).
 * One model: out = x_0. Source: mergekit multislerp()
 * (goddard.blog/posts/multislerp-wow-what-a-cool-idea).
 * Streams its inputs: three reduction passes (norms; |m| and the dots;
 * |T|), then the result. */
static int multislerp_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k;
    int *which = malloc(sizeof(int) * (size_t)(k + 1));
    float *w = malloc(sizeof(float) * 4 * (size_t)k);
    double *acc = malloc(sizeof(double) * (size_t)(k + 3));
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
    float *inv = w + k, *dot = w + 2 * k, *norm = w + 3 * k;
    double wsum = 0.0;
    for (int i = 0; i < k; i++) w[i] = (float)MPARAM(call, i, MS_WEIGHT), wsum += w[i];
    if (call->gparam[MS_NORMALIZE_WEIGHTS] != 0.0) {
        float ws = (float)wsum;
        for (int i = 0; i < k; i++) w[i] /= ws;
    }
    float eps = (float)call->gparam[MS_EPS];
    msl_ctx c = {call, k, 0, base, w, inv, dot, 0.0f};
    msl_out q = {&c, 0.0f, 0.0f, false};
    double avg_norm = 0.0;
    rc = msl_reduce(&c, MSL_NORMS, acc, k, err);
    for (int i = 0; i < k && !rc; i++) {
        norm[i] = (float)sqrt(acc[i]);
        inv[i] = 1.0f / (norm[i] + eps);
        avg_norm += (double)norm[i] * w[i];
    }
    if (!rc) rc = msl_reduce(&c, MSL_DOTS, acc, k + 1, err);
    double mnorm = rc ? 0.0 : sqrt(acc[0]);
    if (!rc && mnorm < eps) {
        if (k != 2)
            rc = alloy_fail(err, "tensor '%s': multislerp: the weighted sum of the unit task vectors is zero "
                            "(antipodal inputs with balancing weights); change the weights", call->tensor_name);
        q.fallback = true;
    } else if (!rc) {
        c.inv_mnorm = (float)(1.0 / mnorm);
        for (int i = 0; i < k; i++) dot[i] = (float)(acc[1 + i] * inv[i] / mnorm);
        rc = msl_reduce(&c, MSL_TANGENT, acc, 1, err);
        double r = sqrt(acc[0]) + eps;
        q.cm = (float)(cos(r) * avg_norm), q.ct = (float)(sin(r) / r * avg_norm);
    }
    if (!rc) rc = merge_stream_elementwise(call, out, "multislerp", base ? k + 1 : k, which, msl_out_block, &q, err);
    free(w), free(which), free(acc);
    return rc;
}

static const merge_param_def multislerp_params[] = {
    {"normalize_weights", false, false, 1, 0, 1},
    {"eps", false, false, 1e-8, 0, INFINITY},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_multislerp = {"multislerp", BASE_OPTIONAL, 1, 0, multislerp_params, 3, multislerp_merge, true};

/* ---- karcher ---- */

enum { KA_MAX_ITER, KA_TOL };

/* The inputs are streamed in every pass; the iterate u and the tangent T
 * are the only tensor-sized buffers (f32). */
#define KA_BLOCK 1024
enum { KA_NORMS, KA_INIT, KA_DOTS, KA_TANGENT };

typedef struct ka_ctx {
    const merge_call *call;
    int K, nv, pass;
    const int *idx;     /* the models taking part (|x_i| > tol) */
    const double *norm; /* |x_i| */
    float a;            /* 1 / nv */
    bool first;         /* KA_INIT: u = x_idx[0] * in0 instead */
    float in0;
    float *u, *T;
    const float *coef;  /* a_i theta_i / sin theta_i / |x_i|, 0 when skipped */
    const float *dotu;  /* a_i theta_i / sin theta_i * dot_i */
} ka_ctx;

/* vec_reduce chunk of one pass: KA_NORMS acc[i] = |x_i|^2 (every model),
 * KA_INIT u = sum_j a x_j / |x_j| (no sums), KA_DOTS acc[j] = u . x_idx[j],
 * KA_TANGENT T = sum_j coef_j x_j - dotu_j u stored and acc[0] = |T|^2.
 * The slot after the sums counts non-finite inputs, the next one
 * allocation failures. */
static void ka_chunk(const void *p, size_t lo, size_t hi, double *acc) {
    const ka_ctx *c = p;
    int K = c->K, nv = c->nv;
    int nin = c->pass == KA_NORMS ? K : nv;
    int na = c->pass == KA_NORMS ? K : c->pass == KA_DOTS ? nv : c->pass == KA_TANGENT ? 1 : 0;
    float *buf = malloc((size_t)nin * KA_BLOCK * sizeof *buf);
    double sq[KA_BLOCK];
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
        float *restrict u = c->u + b0;
        if (c->pass == KA_NORMS) {
            for (int i = 0; i < K; i++) {
                const float *restrict x = buf + (size_t)i * KA_BLOCK;
#pragma omp simd
                for (size_t e = 0; e < m; e++) sq[e] = (double)x[e] * x[e];
                acc[i] += vec_sum8(sq, m);
            }
        } else if (c->pass == KA_INIT && c->first) {
            for (size_t e = 0; e < m; e++) u[e] = buf[e] * c->in0;
        } else if (c->pass == KA_INIT) {
            for (size_t e = 0; e < m; e++) u[e] = 0.0f;
            for (int j = 0; j < nv; j++) {
                const float *restrict x = buf + (size_t)j * KA_BLOCK;
                double nj = c->norm[c->idx[j]];
                float a = c->a;
#pragma omp simd
                for (size_t e = 0; e < m; e++) u[e] += a * (float)(x[e] / nj);
            }
        } else if (c->pass == KA_DOTS) {
            for (int j = 0; j < nv; j++) {
                const float *restrict x = buf + (size_t)j * KA_BLOCK;
#pragma omp simd
                for (size_t e = 0; e < m; e++) sq[e] = (double)u[e] * x[e];
                acc[j] += vec_sum8(sq, m);
            }
        } else {
            float *restrict T = c->T + b0;
            for (size_t e = 0; e < m; e++) T[e] = 0.0f;
            for (int j = 0; j < nv; j++) {
                const float *restrict x = buf + (size_t)j * KA_BLOCK;
                float cj = c->coef[j], dj = c->dotu[j];
#pragma omp simd
                for (size_t e = 0; e < m; e++) T[e] += cj * x[e] - dj * u[e];
            }
#pragma omp simd
            for (size_t e = 0; e < m; e++) sq[e] = (double)T[e] * T[e];
            acc[0] += vec_sum8(sq, m);
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
    for (size_t e = 0; e < m; e++) o[e] = c->a * c->u[lo + e];
}

/* Equal weights a = 1/K. u_i = x_i / |x_i|; models with |x_i| <= tol drop out
 * (weights renormalised over the rest; none left: zeros). Start from
 * u = normalise(sum a_i u_i) (or u_first if that is below tol), then up to
 * max_iter times: T = sum over theta_i = acos(clamp(u . u_i)) >= tol of
 * a_i theta_i / sin(theta_i) (u_i - (u . u_i) u); stop when |T| < tol; else
 * u = cos|T| u + sin|T| T/|T|, renormalised. out = (sum_i |x_i| / K) u.
 * Source: mergekit karcher_merge_tensors (Riemannian / Karcher mean).
 * Streams its inputs: a pass for the norms, one for the start, two per
 * iteration (the dots; the tangent). */
static int karcher_merge(const merge_call *call, float *out, alloy_err *err) {
    int K = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    int max_iter = (int)call->gparam[KA_MAX_ITER];
    double tol = call->gparam[KA_TOL];
    static const int first[] = {0};
    if (K == 1) return merge_stream_elementwise(call, out, "karcher", 1, first, msl_copy_block, NULL, err);
    double *norm = malloc(sizeof(double) * (size_t)K), *acc = malloc(sizeof(double) * (size_t)(K + 2));
    int *idx = malloc(sizeof(int) * (size_t)K);
    float *coef = malloc(sizeof(float) * 2 * (size_t)K);
    float *u = mem_big_alloc(sizeof(float) * 2 * n + 1);
    if (!norm || !acc || !idx || !coef || !u) {
        free(norm), free(acc), free(idx), free(coef), free(u);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    float *T = u + n, *dotu = coef + K;
    ka_ctx c = {call, K, 0, 0, idx, norm, 0.0f, false, 0.0f, u, T, coef, dotu};
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
    if (!rc && nv > 0) rc = ka_pass(&c, KA_INIT, acc, 0, err);
    if (!rc && nv > 0) {
        double nu = sqrt(vec_dot_sub(u, u, NULL, n, nt));
        if (nu < tol) { /* u = x_first / |x_first|: a pass of that model */
            c.nv = 1;
            c.first = true;
            c.in0 = (float)(1.0 / norm[idx[0]]);
            rc = ka_pass(&c, KA_INIT, acc, 0, err);
            c.nv = nv;
            c.first = false;
        } else {
            float inu = (float)(1.0 / nu);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (size_t e = 0; e < n; e++) u[e] *= inu;
        }
    }
    for (int it = 0; it < max_iter && !rc && nv > 0; it++) {
        rc = ka_pass(&c, KA_DOTS, acc, nv, err);
        for (int j = 0; j < nv && !rc; j++) {
            double d = acc[j] / norm[idx[j]];
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
        if (!rc) rc = ka_pass(&c, KA_TANGENT, acc, 1, err);
        if (rc) break;
        double nT = sqrt(acc[0]);
        if (nT < tol) break;
        float cu = (float)cos(nT), cT = (float)(sin(nT) / nT);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) u[e] = cu * u[e] + cT * T[e];
        double un = sqrt(vec_dot_sub(u, u, NULL, n, nt));
        if (un > tol) {
            float iu = (float)(1.0 / un);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (size_t e = 0; e < n; e++) u[e] *= iu;
        }
    }
    if (!rc) {
        if (nv == 0) memset(u, 0, n * sizeof *u);
        c.a = (float)s; /* the result's scale: out = s u */
        rc = merge_stream_elementwise(call, out, "karcher", 0, NULL, ka_scale_block, &c, err);
    }
    free(norm), free(acc), free(idx), free(coef);
    free(u);
    return rc;
}

static const merge_param_def karcher_params[] = {
    {"max_iter", false, false, 10, 1, 1e9},
    {"tol", false, false, 1e-5, 0, INFINITY},
};

const merge_method merge_karcher = {"karcher", BASE_NONE, 1, 0, karcher_params, 2, karcher_merge, true};
