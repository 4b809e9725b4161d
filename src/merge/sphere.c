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

/* ---- multislerp ---- */

enum { MS_NORMALIZE_WEIGHTS, MS_EPS, MS_WEIGHT };

typedef struct {
    const merge_call *call;
    const float *w;   /* weights (normalised) */
    const float *inv; /* 1 / (|v_i| + eps) */
    const float *dot; /* u_i . m_hat */
    const float *mean; /* m (not yet normalised) */
    float inv_mnorm;
} ms_ctx;

static inline float ms_v(const merge_call *c, int i, size_t e) {
    return c->base ? c->x[i][e] - c->base[e] : c->x[i][e];
}

/* The tangent vector at element e: sum_i w_i (u_i - (u_i . m_hat) m_hat). */
static inline float ms_tangent(const ms_ctx *c, size_t e) {
    float mh = c->mean[e] * c->inv_mnorm, s = 0.0f;
    for (int i = 0; i < c->call->k; i++) s += c->w[i] * (ms_v(c->call, i, e) * c->inv[i] - c->dot[i] * mh);
    return s;
}

static void ms_tangent_sq(const void *p, size_t lo, size_t hi, double *acc) {
    double s = 0.0;
    for (size_t e = lo; e < hi; e++) {
        double t = ms_tangent(p, e);
        s += t * t;
    }
    acc[0] += s;
}

/* v_i = x_i (- base), w normalised to sum 1 when normalize_weights,
 * u_i = v_i / (|v_i| + eps), m = sum w_i u_i (|m| < eps: two models fall
 * back to w_0 v_0 + w_1 v_1, more is an error), m_hat = m / |m|,
 * T = sum w_i (u_i - (u_i . m_hat) m_hat), r = |T| + eps,
 * out = (m_hat cos r + T sin(r)/r) * sum_i w_i |v_i| (+ base).
 * One model: out = x_0. Source: mergekit multislerp()
 * (goddard.blog/posts/multislerp-wow-what-a-cool-idea). */
static int multislerp_merge(const merge_call *call, float *out, alloy_err *err) {
    int k = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    const float *b = call->base;
    if (k == 1) {
        memcpy(out, call->x[0], n * sizeof *out);
        return 0;
    }
    float *w = malloc(sizeof(float) * 4 * (size_t)k);
    if (!w) return alloy_fail(err, "out of memory");
    float *inv = w + k, *dot = w + 2 * k, *norm = w + 3 * k;
    double wsum = 0.0;
    for (int i = 0; i < k; i++) w[i] = (float)MPARAM(call, i, MS_WEIGHT), wsum += w[i];
    if (call->gparam[MS_NORMALIZE_WEIGHTS] != 0.0) {
        float ws = (float)wsum;
        for (int i = 0; i < k; i++) w[i] /= ws;
    }
    float eps = (float)call->gparam[MS_EPS];
    double avg_norm = 0.0;
    for (int i = 0; i < k; i++) {
        norm[i] = (float)sqrt(vec_dot_sub(call->x[i], call->x[i], b, n, nt));
        inv[i] = 1.0f / (norm[i] + eps);
        avg_norm += (double)norm[i] * w[i];
    }
    /* m into out. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < n; e++) {
        float s = 0.0f;
        for (int i = 0; i < k; i++) s += w[i] * ms_v(call, i, e) * inv[i];
        out[e] = s;
    }
    double mnorm = sqrt(vec_dot_sub(out, out, NULL, n, nt));
    if (mnorm < eps) {
        if (k != 2) {
            free(w);
            return alloy_fail(err, "tensor '%s': multislerp: the weighted sum of the unit task vectors is zero "
                              "(antipodal inputs with balancing weights); change the weights", call->tensor_name);
        }
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) {
            float r = ms_v(call, 0, e) * w[0] + ms_v(call, 1, e) * w[1];
            out[e] = b ? r + b[e] : r;
        }
        free(w);
        return 0;
    }
    ms_ctx c = {call, w, inv, dot, out, (float)(1.0 / mnorm)};
    for (int i = 0; i < k; i++)
        dot[i] = (float)(vec_dot_diff(call->x[i], b, out, n, nt) * inv[i] / mnorm);
    double tsq;
    if (vec_reduce(n, nt, 1, ms_tangent_sq, &c, &tsq, err)) {
        free(w);
        return -1;
    }
    double r = sqrt(tsq) + eps;
    float cm = (float)(cos(r) * avg_norm), ct = (float)(sin(r) / r * avg_norm);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < n; e++) {
        float tg = ms_tangent(&c, e);
        float res = out[e] * c.inv_mnorm * cm + tg * ct;
        out[e] = b ? res + b[e] : res;
    }
    free(w);
    return 0;
}

static const merge_param_def multislerp_params[] = {
    {"normalize_weights", false, false, 1, 0, 1},
    {"eps", false, false, 1e-8, 0, INFINITY},
    {"weight", true, true, 0, -INFINITY, INFINITY},
};

const merge_method merge_multislerp = {"multislerp", BASE_OPTIONAL, 1, 0, multislerp_params, 3, multislerp_merge, false};

/* ---- karcher ---- */

enum { KA_MAX_ITER, KA_TOL };

typedef struct {
    const float *u;
    const float *const *x;
    const int *idx;
    const float *coef; /* a_i theta_i / sin theta_i / |x_i|, 0 when skipped */
    const float *dotu; /* a_i theta_i / sin theta_i * dot_i */
    int nv;
} ka_ctx;

static inline float ka_T(const ka_ctx *c, size_t e) {
    float s = 0.0f;
    for (int j = 0; j < c->nv; j++) s += c->coef[j] * c->x[c->idx[j]][e] - c->dotu[j] * c->u[e];
    return s;
}

static void ka_T_sq(const void *p, size_t lo, size_t hi, double *acc) {
    double s = 0.0;
    for (size_t e = lo; e < hi; e++) {
        double t = ka_T(p, e);
        s += t * t;
    }
    acc[0] += s;
}

/* Equal weights a = 1/K. u_i = x_i / |x_i|; models with |x_i| <= tol drop out
 * (weights renormalised over the rest; none left: zeros). Start from
 * u = normalise(sum a_i u_i) (or u_first if that is below tol), then up to
 * max_iter times: T = sum over theta_i = acos(clamp(u . u_i)) >= tol of
 * a_i theta_i / sin(theta_i) (u_i - (u . u_i) u); stop when |T| < tol; else
 * u = cos|T| u + sin|T| T/|T|, renormalised. out = (sum_i |x_i| / K) u.
 * Source: mergekit karcher_merge_tensors (Riemannian / Karcher mean). */
static int karcher_merge(const merge_call *call, float *out, alloy_err *err) {
    int K = call->k, nt = vec_threads(call->threads);
    size_t n = call->n;
    int max_iter = (int)call->gparam[KA_MAX_ITER];
    double tol = call->gparam[KA_TOL];
    if (K == 1) {
        memcpy(out, call->x[0], n * sizeof *out);
        return 0;
    }
    double *norm = malloc(sizeof(double) * (size_t)K);
    int *idx = malloc(sizeof(int) * (size_t)K);
    float *coef = malloc(sizeof(float) * 2 * (size_t)K);
    float *T = malloc(sizeof(float) * n + 1);
    if (!norm || !idx || !coef || !T) {
        free(norm), free(idx), free(coef), free(T);
        return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    }
    float *dotu = coef + K;
    double s = 0.0;
    int nv = 0;
    for (int i = 0; i < K; i++) {
        norm[i] = sqrt(vec_dot_sub(call->x[i], call->x[i], NULL, n, nt));
        s += norm[i] / K;
        if (norm[i] > tol) idx[nv++] = i;
    }
    if (nv == 0) {
        memset(out, 0, n * sizeof *out);
        free(norm), free(idx), free(coef), free(T);
        return 0;
    }
    float a = 1.0f / (float)nv;
    float *u = out;
    /* Initial guess. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < n; e++) {
        float v = 0.0f;
        for (int j = 0; j < nv; j++) v += a * (float)(call->x[idx[j]][e] / norm[idx[j]]);
        u[e] = v;
    }
    double nu = sqrt(vec_dot_sub(u, u, NULL, n, nt));
    {
        const float *x0 = call->x[idx[0]];
        float in0 = (float)(1.0 / norm[idx[0]]), inu = (float)(1.0 / nu);
        bool first = nu < tol;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) u[e] = first ? x0[e] * in0 : u[e] * inu;
    }
    ka_ctx c = {u, call->x, idx, coef, dotu, nv};
    int rc = 0;
    for (int it = 0; it < max_iter && !rc; it++) {
        for (int j = 0; j < nv; j++) {
            double d = vec_dot_sub(u, call->x[idx[j]], NULL, n, nt) / norm[idx[j]];
            d = d < -1.0 ? -1.0 : (d > 1.0 ? 1.0 : d);
            double th = acos(d);
            if (th < tol) {
                coef[j] = dotu[j] = 0.0f;
                continue;
            }
            double f = a * th / sin(th);
            coef[j] = (float)(f / norm[idx[j]]);
            dotu[j] = (float)(f * d);
        }
        double tsq;
        if (vec_reduce(n, nt, 1, ka_T_sq, &c, &tsq, err)) {
            rc = -1;
            break;
        }
        double nT = sqrt(tsq);
        if (nT < tol) break;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) T[e] = ka_T(&c, e);
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
        float fs = (float)s;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < n; e++) out[e] = fs * u[e];
    }
    free(norm), free(idx), free(coef), free(T);
    return rc;
}

static const merge_param_def karcher_params[] = {
    {"max_iter", false, false, 10, 1, 1e9},
    {"tol", false, false, 1e-5, 0, INFINITY},
};

const merge_method merge_karcher = {"karcher", BASE_NONE, 1, 0, karcher_params, 2, karcher_merge, false};
