/* drm.c — Decom-Renorm-Merge (DRM, Chaichana et al., arXiv 2505.23117) and
 * the joint-space machinery it shares with KnOTS (knots.c): magnitude trims,
 * sign election with a disjoint mean, the TIES fallback for tensors that are
 * not decomposed, and the joint decomposition itself (svd_methods.h).
 *
 * Read from the paper (§3) and its official code (yophis/decom-renorm-merge,
 * drm/_decom_renorm_merge.py: left_drm = DRM-V, right_drm = DRM-H). Where
 * alloy differs from that code it says so below. Not here: the SVD routines
 * (svd.c), parameter resolution (the planner). */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/svd.h"
#include "merge/svd_methods.h"
#include "merge/vec.h"
#include "util/err.h"

/* ---- trims ---- */

/* Value of rank kth (0-based, ascending) of a[0..n), reordering a (Wirth's
 * selection, O(n) expected). */
#define DEFINE_SELECT(NAME, T)                                   \
    static T NAME(T *a, size_t n, size_t kth) {                  \
        int64_t l = 0, r = (int64_t)n - 1, k = (int64_t)kth;     \
        while (l < r) {                                          \
            T x = a[k];                                          \
            int64_t i = l, j = r;                                \
            do {                                                 \
                while (a[i] < x) i++;                            \
                while (x < a[j]) j--;                            \
                if (i <= j) {                                    \
                    T t = a[i];                                  \
                    a[i] = a[j];                                 \
                    a[j] = t;                                    \
                    i++;                                         \
                    j--;                                         \
                }                                                \
            } while (i <= j);                                    \
            if (j < k) l = i;                                    \
            if (k < i) r = j;                                    \
        }                                                        \
        return a[k];                                             \
    }
DEFINE_SELECT(select_f64, double)
DEFINE_SELECT(select_f32, float)

size_t svdm_keep_count(double density, size_t n) {
    if (n == 0) return 0;
    double q = floor(density * (double)n + 0.5);
    if (q < 1) return 1;
    if (q > (double)n) return n;
    return (size_t)q;
}

void svdm_keep_topk(double *v, size_t n, size_t q, double *scratch) {
    if (q >= n) return;
    for (size_t e = 0; e < n; e++) scratch[e] = fabs(v[e]);
    double t = select_f64(scratch, n, n - q); /* the q-th largest magnitude */
    size_t above = 0;
    for (size_t e = 0; e < n; e++) above += fabs(v[e]) > t;
    size_t ties = q - above; /* entries equal to t that still fit, lowest index first */
    for (size_t e = 0; e < n; e++) {
        double a = fabs(v[e]);
        if (a > t) continue;
        if (a == t && ties > 0) {
            ties--;
            continue;
        }
        v[e] = 0.0;
    }
}

/* As svdm_keep_topk, for the f32 delta x - base, into a byte mask. */
static void mask_topk_f32(const float *x, const float *base, size_t n, size_t q, float *scratch, uint8_t *mask) {
    if (q >= n) {
        memset(mask, 1, n);
        return;
    }
    for (size_t e = 0; e < n; e++) scratch[e] = fabsf(x[e] - base[e]);
    float t = select_f32(scratch, n, n - q);
    size_t above = 0;
    for (size_t e = 0; e < n; e++) above += fabsf(x[e] - base[e]) > t;
    size_t ties = q - above;
    for (size_t e = 0; e < n; e++) {
        float a = fabsf(x[e] - base[e]);
        mask[e] = a > t || (a == t && ties > 0);
        if (a == t && ties > 0) ties--;
    }
}

static double sgn(double v) { return (double)((v > 0) - (v < 0)); }

/* ---- sign election and disjoint mean ---- */

/* The official code's resolve_elementwise_sign_conflict(mass) followed by
 * the coefficient product and disjoint_averaging: gamma = sgn(sum_i c_i),
 * zeros of gamma replaced by sgn(sum_e gamma_e); keep c_i where sgn(c_i) =
 * gamma; out = sum_i w_i c_i / max(1, #{i : w_i c_i != 0}). */
void svdm_elect_mean(const double *c, int k, size_t n, const double *w, double *out, int threads) {
    int nt = vec_threads(threads);
    long long total = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total)
    for (size_t e = 0; e < n; e++) {
        double mass = 0.0;
        for (int i = 0; i < k; i++) mass += c[(size_t)i * n + e];
        total += (mass > 0) - (mass < 0);
    }
    double major = (double)((total > 0) - (total < 0));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < n; e++) {
        double mass = 0.0;
        for (int i = 0; i < k; i++) mass += c[(size_t)i * n + e];
        double g = mass != 0.0 ? sgn(mass) : major;
        double sum = 0.0;
        int cnt = 0;
        for (int i = 0; i < k; i++) {
            double v = c[(size_t)i * n + e];
            if (sgn(v) != g) continue;
            v *= w[i];
            sum += v;
            cnt += v != 0.0;
        }
        out[e] = sum / (cnt > 0 ? cnt : 1);
    }
}

bool svdm_is_embedding(const char *name) {
    return strstr(name, "embed") || strstr(name, "lm_head") || strstr(name, "wte.") || strstr(name, "wpe.");
}

/* TIES as DRM's official code applies it to the parameters it does not
 * decompose (biases, norms; its config also routes embed_tokens and lm_head
 * here): per-task magnitude trim, mass sign election on the unweighted
 * trimmed deltas, then weights and the disjoint mean. The official code trims
 * those parameters at a separate rate (non_linear_module_entries_drop_rate,
 * default 0) over the whole model at once; alloy trims each tensor with the
 * method's density. */
int svdm_ties_fallback(const merge_call *call, const double *w, const double *density, double lambda, float *out,
                       alloy_err *err) {
    size_t n = call->n;
    int k = call->k, nt = vec_threads(call->threads);
    const float *base = call->base;
    uint8_t *mask = malloc((size_t)k * n + 1);
    float *scratch = malloc(n * sizeof *scratch + 1);
    if (!mask || !scratch) {
        free(mask);
        free(scratch);
        return alloy_fail(err, "tensor '%s': out of memory", call->tensor_name);
    }
    for (int i = 0; i < k; i++)
        mask_topk_f32(call->x[i], base, n, svdm_keep_count(density[i], n), scratch, mask + (size_t)i * n);
    long long total = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total)
    for (size_t e = 0; e < n; e++) {
        double mass = 0.0;
        for (int i = 0; i < k; i++)
            if (mask[(size_t)i * n + e]) mass += (double)(call->x[i][e] - base[e]);
        total += (mass > 0) - (mass < 0);
    }
    double major = (double)((total > 0) - (total < 0));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < n; e++) {
        double mass = 0.0;
        for (int i = 0; i < k; i++)
            if (mask[(size_t)i * n + e]) mass += (double)(call->x[i][e] - base[e]);
        double g = mass != 0.0 ? sgn(mass) : major, sum = 0.0;
        int cnt = 0;
        for (int i = 0; i < k; i++) {
            if (!mask[(size_t)i * n + e]) continue;
            double v = (double)(call->x[i][e] - base[e]);
            if (sgn(v) != g) continue;
            v *= w[i];
            sum += v;
            cnt += v != 0.0;
        }
        out[e] = (float)((double)base[e] + lambda * (sum / (cnt > 0 ? cnt : 1)));
    }
    free(mask);
    free(scratch);
    return 0;
}

/* ---- the joint decomposition ---- */

/* DRM, §3 of the paper (its four steps), for one weight matrix with task deltas D_i (m x n), i = 1..k:
 *   Decompose: DRM-V  [D_1; ...; D_k] = U S Vh,  U = [U_1; ...; U_k]
 *                        DRM-H  [D_1 ... D_k]   = U S Vh,  Vh = [Vh_1 ... Vh_k]
 *     and drop the null space: keep the r triplets with s_j > rel_tol * s_1
 *     (official: 1e-2), at most rank_cap.
 *   Renormalize: each task block X_i (U_i columns for V, Vh_i rows
 *     for H) becomes X_i / ||X_i,j|| per singular direction j, with the norm
 *     folded into the task's singular values S_i,j = s_j ||X_i,j||.
 *   Merge: trim the normalised blocks to the top `density` fraction
 *     by magnitude (jointly over all tasks, as the official code), scale back
 *     by S_i, elect signs by mass, weight, disjoint mean: X*.
 *   Reconstruct: delta = X* Vh (V) or U X* (H); out = base + lambda delta.
 * KnOTS (knots.c) is the same with renorm off, its coordinates diag(s) Vh_i
 * trimmed per task. Sign and ordering of singular vectors cancel in the
 * reconstruction. */
int svdm_joint_merge(const merge_call *call, const svdm_joint *o, float *out, alloy_err *err) {
    const char *name = call->tensor_name;
    int k = call->k, nt = vec_threads(call->threads);
    int64_t m = call->shape[0], n = call->shape[1];
    int64_t R = o->vertical ? (int64_t)k * m : m, C = o->vertical ? n : (int64_t)k * n;
    int64_t p = R < C ? R : C;
    bool randomized = o->rank_cap > 0 && svd_prefer_randomized(R, C, o->rank_cap);
    int64_t pu = randomized ? o->rank_cap : p; /* triplets computed */
    double *d = malloc((size_t)(R * C) * sizeof *d);
    double *u = malloc((size_t)(R * pu) * sizeof *u);
    double *vt = malloc((size_t)(pu * C) * sizeof *vt);
    double *s = malloc((size_t)pu * sizeof *s);
    double *coord = NULL, *scratch = NULL, *scale = NULL, *merged = NULL, *delta = NULL;
    int rc = 0;
    if (!d || !u || !vt || !s) rc = alloy_fail(err, "tensor '%s': out of memory for the joint SVD", name);
    if (!rc) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t a = 0; a < m; a++)
            for (int i = 0; i < k; i++) {
                double *row = o->vertical ? d + ((int64_t)i * m + a) * n : d + a * C + (int64_t)i * n;
                const float *xr = call->x[i] + a * n, *br = call->base + a * n;
                for (int64_t b = 0; b < n; b++) row[b] = (double)xr[b] - (double)br[b];
            }
        svd_set_threads(nt);
        rc = randomized ? svd_randomized(d, R, C, o->rank_cap, SVD_OVERSAMPLE, SVD_POWER_ITERS, call->seed, u, s, vt,
                                         name, err)
                        : svd_thin(d, R, C, u, s, vt, name, err);
        if (rc) alloy_wrap(err, "tensor '%s': ", name);
    }
    int64_t r = 0;
    if (!rc) {
        while (r < pu && s[r] > o->rel_tol * s[0]) r++;
        if (o->rank_cap > 0 && r > o->rank_cap) r = o->rank_cap;
    }
    if (!rc && r == 0) { /* every delta is zero */
        memcpy(out, call->base, call->n * sizeof *out);
        goto done;
    }
    /* Task coordinates: V: X_i = U_i, m x r (entry a*r + j); H: X_i = Vh_i, r x n (entry j*n + b). */
    size_t n1 = (size_t)(o->vertical ? m * r : r * n);
    if (!rc) {
        coord = malloc((size_t)k * n1 * sizeof *coord);
        scratch = malloc((size_t)k * n1 * sizeof *scratch);
        scale = malloc((size_t)k * (size_t)r * sizeof *scale);
        merged = malloc(n1 * sizeof *merged);
        delta = malloc((size_t)(m * n) * sizeof *delta);
        if (!coord || !scratch || !scale || !merged || !delta) rc = alloy_fail(err, "tensor '%s': out of memory", name);
    }
    if (rc) goto done;
    for (int i = 0; i < k; i++) {
        double *x = coord + (size_t)i * n1;
        if (o->vertical) {
            for (int64_t a = 0; a < m; a++) memcpy(x + a * r, u + ((int64_t)i * m + a) * pu, (size_t)r * sizeof *x);
        } else {
            for (int64_t j = 0; j < r; j++) memcpy(x + j * n, vt + j * C + (int64_t)i * n, (size_t)n * sizeof *x);
        }
        /* scale[i*r + j]: s_j times the block's norm along direction j (renorm), or s_j. */
        for (int64_t j = 0; j < r; j++) scale[(size_t)i * (size_t)r + (size_t)j] = 0.0;
        if (o->renorm) {
            double *nrm = scale + (size_t)i * (size_t)r;
            if (o->vertical) {
                for (int64_t a = 0; a < m; a++)
                    for (int64_t j = 0; j < r; j++) nrm[j] += x[a * r + j] * x[a * r + j];
            } else {
                for (int64_t j = 0; j < r; j++)
                    for (int64_t b = 0; b < n; b++) nrm[j] += x[j * n + b] * x[j * n + b];
            }
            for (int64_t j = 0; j < r; j++) nrm[j] = sqrt(nrm[j]);
            for (size_t e = 0; e < n1; e++) {
                int64_t j = o->vertical ? (int64_t)(e % (size_t)r) : (int64_t)(e / (size_t)n);
                x[e] = nrm[j] > 0.0 ? x[e] / nrm[j] : 0.0;
            }
            for (int64_t j = 0; j < r; j++) nrm[j] *= s[j];
        } else {
            for (int64_t j = 0; j < r; j++) scale[(size_t)i * (size_t)r + (size_t)j] = s[j];
            for (size_t e = 0; e < n1; e++) x[e] *= s[o->vertical ? e % (size_t)r : e / (size_t)n];
        }
    }
    /* Trim, then (renorm) fold the task singular values back in. */
    if (o->global_trim) {
        svdm_keep_topk(coord, (size_t)k * n1, svdm_keep_count(o->density[0], (size_t)k * n1), scratch);
    } else {
        for (int i = 0; i < k; i++)
            svdm_keep_topk(coord + (size_t)i * n1, n1, svdm_keep_count(o->density[i], n1), scratch);
    }
    if (o->renorm)
        for (int i = 0; i < k; i++) {
            double *x = coord + (size_t)i * n1;
            const double *sc = scale + (size_t)i * (size_t)r;
            for (size_t e = 0; e < n1; e++) x[e] *= sc[o->vertical ? e % (size_t)r : e / (size_t)n];
        }
    svdm_elect_mean(coord, k, n1, o->w, merged, nt);
    if (o->vertical) /* delta = X* (m x r) · Vh[:r] (r x n) */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, merged, (int)r, vt, (int)C,
                    0.0, delta, (int)n);
    else /* delta = U[:, :r] (m x r) · X* (r x n) */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, u, (int)pu, merged,
                    (int)n, 0.0, delta, (int)n);
    double lambda = o->lambda;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t e = 0; e < call->n; e++) out[e] = (float)((double)call->base[e] + lambda * delta[e]);
done:
    free(d);
    free(u);
    free(vt);
    free(s);
    free(coord);
    free(scratch);
    free(scale);
    free(merged);
    free(delta);
    return rc;
}

/* ---- the drm method ---- */

/* Parameters (table order). direction: 0 = vertical (DRM-V, row-concat, the
 * default of the official configs/config.yaml and README), 1 = horizontal
 * (DRM-H, column-concat). density = 1 - singular_matrices_drop_rate (official
 * default 0.8). weight = the official per-model `coefficient`. rank: cap on
 * the joint rank, 0 = none (a cap well below the matrix size uses the
 * randomized SVD). */
enum { P_WEIGHT, P_DENSITY, P_LAMBDA, P_DIRECTION, P_RANK, P_COUNT };

static const merge_param_def drm_params[] = {
    {"weight", true, false, 1.0, -INFINITY, INFINITY},
    {"density", false, false, 0.2, 0.0, 1.0},
    {"lambda", false, false, 1.0, -INFINITY, INFINITY},
    {"direction", false, false, 0.0, 0.0, 1.0},
    {"rank", false, false, 0.0, 0.0, 1e9},
};

/* DRM for one tensor. Weight matrices (2-D, not embeddings or lm_head) go
 * through svdm_joint_merge. density = 1 without a rank cap is the official
 * code's bypass (no decomposition: the disjoint mean of the deltas), here
 * with the weights applied (the official code drops them there). Other tensors, and embeddings / lm_head (which the official
 * config excludes from the linear set by regex, so they land in its
 * non-linear branch), take svdm_ties_fallback at the same density. */
static int drm_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!call->base) return alloy_fail(err, "tensor '%s': drm needs a base model", call->tensor_name);
    int k = call->k;
    if (k == 0) {
        memcpy(out, call->base, call->n * sizeof *out);
        return 0;
    }
    double *w = malloc((size_t)k * 2 * sizeof *w);
    if (!w) return alloy_fail(err, "out of memory");
    double *dens = w + k;
    double density = call->gparam[P_DENSITY], lambda = call->gparam[P_LAMBDA];
    for (int i = 0; i < k; i++) w[i] = MPARAM(call, i, P_WEIGHT), dens[i] = density;
    int rc;
    bool matrix = call->ndim == 2 && !svdm_is_embedding(call->tensor_name) && call->n > 0;
    if (matrix && density >= 1.0 && call->gparam[P_RANK] < 1) {
        int nt = vec_threads(call->threads);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < call->n; e++) {
            double sum = 0.0;
            int cnt = 0;
            for (int i = 0; i < k; i++) {
                double v = w[i] * ((double)call->x[i][e] - (double)call->base[e]);
                sum += v;
                cnt += v != 0.0;
            }
            out[e] = (float)((double)call->base[e] + lambda * (sum / (cnt > 0 ? cnt : 1)));
        }
        rc = 0;
    } else if (matrix) {
        svdm_joint o = {.vertical = call->gparam[P_DIRECTION] < 0.5,
                        .renorm = true,
                        .global_trim = true,
                        .rel_tol = 1e-2,
                        .rank_cap = (int)call->gparam[P_RANK],
                        .density = dens,
                        .w = w,
                        .lambda = lambda};
        rc = svdm_joint_merge(call, &o, out, err);
    } else {
        rc = svdm_ties_fallback(call, w, dens, lambda, out, err);
    }
    free(w);
    return rc;
}

const merge_method merge_drm = {"drm", BASE_REQUIRED, 1, 0, drm_params, P_COUNT, drm_merge, false, false};
