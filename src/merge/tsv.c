/* tsv.c — TSV-M, Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025,
 * arXiv 2412.00081), one of the SVD baselines DRM is compared against.
 *
 * Per weight matrix: each task delta is compressed to its leading singular
 * triplets (a 1/k share of the rank each), the concatenated left and right
 * singular vectors are decorrelated by replacing each stack with its nearest
 * orthogonal matrix (Procrustes / polar factor), and the delta is rebuilt
 * from them with the tasks' singular values. Not here: the SVD (svd.c). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/svd.h"
#include "merge/svd_methods.h"
#include "merge/vec.h"
#include "util/err.h"

/* weight: scales task i's singular values (not in the paper; 1 = the paper).
 * lambda: the paper's alpha (1.0 for TSV-M). */
enum { P_WEIGHT, P_LAMBDA, P_COUNT };

static const merge_param_def tsv_params[] = {
    {"weight", true, false, 1.0, -INFINITY, INFINITY},
    {"lambda", false, false, 1.0, -INFINITY, INFINITY},
};

/* TSV-M as the paper defines it (low-rank task matrices, then Procrustes
 * orthogonalisation of the stacked singular vectors): D_i = U_i S_i V_i^T, keep rr = floor(p/k)
 * triplets per task (p = min(m, n); at least 1, a choice of alloy's where
 * the paper's rule gives 0); U = [U_1^rr ... U_k^rr], S = blockdiag(w_i
 * S_i^rr), V = [V_1^rr ... V_k^rr]; U_perp = P_U Q_U^T from U = P_U
 * Sigma Q_U^T, likewise V_perp; delta = U_perp S V_perp^T; out = base +
 * lambda delta. Exact SVDs throughout (no randomized shortcut), so the
 * result does not depend on a seed. Tensors that are not weight matrices,
 * and embeddings / lm_head, get the weighted mean of the deltas
 * (sum_i w_i D_i / k), as the official code averages non-matrix
 * parameters. */
static int tsv_merge(const merge_call *call, float *out, alloy_err *err) {
    const char *name = call->tensor_name;
    if (!call->base) return alloy_fail(err, "tensor '%s': tsv needs a base model", name);
    int k = call->k, nt = vec_threads(call->threads);
    double lambda = call->gparam[P_LAMBDA];
    if (k == 0) {
        memcpy(out, call->base, call->n * sizeof *out);
        return 0;
    }
    if (call->ndim != 2 || call->n == 0 || svdm_is_embedding(name)) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < call->n; e++) {
            double sum = 0.0;
            for (int i = 0; i < k; i++) sum += MPARAM(call, i, P_WEIGHT) * ((double)call->x[i][e] - call->base[e]);
            out[e] = (float)((double)call->base[e] + lambda * sum / k);
        }
        return 0;
    }
    int64_t m = call->shape[0], n = call->shape[1], p = m < n ? m : n;
    int64_t rr = p / k > 0 ? p / k : 1, K = rr * k;
    double *d = malloc((size_t)(m * n) * sizeof *d);
    double *u = malloc((size_t)(m * p) * sizeof *u), *vt = malloc((size_t)(p * n) * sizeof *vt);
    double *s = malloc((size_t)p * sizeof *s);
    double *uc = malloc((size_t)(m * K) * sizeof *uc), *vc = malloc((size_t)(K * n) * sizeof *vc);
    double *sc = malloc((size_t)K * sizeof *sc);
    double *up = malloc((size_t)(m * K) * sizeof *up), *vp = malloc((size_t)(K * n) * sizeof *vp);
    int rc = 0;
    if (!d || !u || !vt || !s || !uc || !vc || !sc || !up || !vp)
        rc = alloy_fail(err, "tensor '%s': out of memory for TSV", name);
    svd_set_threads(nt);
    for (int i = 0; i < k && !rc; i++) {
        const float *x = call->x[i], *b = call->base;
        for (size_t e = 0; e < call->n; e++) d[e] = (double)x[e] - (double)b[e];
        rc = svd_thin(d, m, n, u, s, vt, name, err);
        if (rc) break;
        double wi = MPARAM(call, i, P_WEIGHT);
        for (int64_t a = 0; a < m; a++) memcpy(uc + a * K + i * rr, u + a * p, (size_t)rr * sizeof *uc);
        for (int64_t j = 0; j < rr; j++) sc[i * rr + j] = wi * s[j];
        memcpy(vc + i * rr * n, vt, (size_t)(rr * n) * sizeof *vc);
    }
    if (!rc) rc = svd_polar(uc, m, K, up, name, err);
    if (!rc) rc = svd_polar(vc, K, n, vp, name, err);
    if (!rc) {
        for (int64_t a = 0; a < m; a++)
            for (int64_t j = 0; j < K; j++) up[a * K + j] *= sc[j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)K, 1.0, up, (int)K, vp, (int)n,
                    0.0, d, (int)n);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (size_t e = 0; e < call->n; e++) out[e] = (float)((double)call->base[e] + lambda * d[e]);
    }
    free(d);
    free(u);
    free(vt);
    free(s);
    free(uc);
    free(vc);
    free(sc);
    free(up);
    free(vp);
    return rc;
}

const merge_method merge_tsv = {"tsv", BASE_REQUIRED, 1, 0, tsv_params, P_COUNT, tsv_merge, false, false};
