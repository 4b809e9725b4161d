/* knots.c — KnOTS-TIES (Stoica et al., "Model merging with SVD to tie the
 * KnOTS", ICLR 2025, arXiv 2410.19735), one of the SVD baselines DRM is
 * compared against.
 *
 * KnOTS aligns the task updates of one layer in a shared basis: the SVD of
 * the column-concatenated deltas [D_1 ... D_k] = U S [V_1 ... V_k]^T (§3,
 * "concat_across_output" in the official code), then merges the per-task
 * coordinates S V_i^T with TIES and reconstructs U · merged. It is DRM-H
 * without DRM's renormalisation, trimmed per task instead of jointly, so it
 * runs through drm.c's svdm_joint_merge. Written for LoRA updates, it applies
 * as is to full fine-tunes (the delta of a weight matrix). Not here: the SVD
 * (svd.c), the joint-space TIES (drm.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/svd_methods.h"
#include "util/err.h"

/* weight: per-model coefficient of the disjoint mean (the official code's
 * scaling_coeffs enter as lambda). density: per-task fraction of coordinates
 * kept (the official topK / 100; 0.2 in its ViT configs). lambda: scale of
 * the merged update (official scaling_coeffs, 0.5-0.6 in its configs; alloy
 * defaults to 1 like the other task-vector methods). */
enum { P_WEIGHT, P_DENSITY, P_LAMBDA, P_COUNT };

static const merge_param_def knots_params[] = {
    {"weight", true, false, 1.0, -INFINITY, INFINITY},
    {"density", true, false, 0.2, 0.0, 1.0},
    {"lambda", false, false, 1.0, -INFINITY, INFINITY},
};

/* KnOTS-TIES (the paper's method section): [D_1 ... D_k] = U S V^T; keep s_j > 1e-5 s_1
 * (the official code keeps s > 1e-5 in absolute terms, alloy makes the cut
 * relative so it does not depend on the scale of the deltas); coordinates
 * Z_i = S V_i^T; TIES over the Z_i (per-task top-density trim, mass sign
 * election, weighted disjoint mean): Z*; out = base + lambda U Z*.
 * Tensors that are not weight matrices, and embeddings / lm_head, take the
 * TIES fallback (drm.c) with the same densities. */
static int knots_merge(const merge_call *call, float *out, alloy_err *err) {
    if (!call->base) return alloy_fail(err, "tensor '%s': knots needs a base model", call->tensor_name);
    int k = call->k;
    if (k == 0) {
        memcpy(out, call->base, call->n * sizeof *out);
        return 0;
    }
    double *w = malloc((size_t)k * 2 * sizeof *w);
    if (!w) return alloy_fail(err, "out of memory");
    double *dens = w + k;
    for (int i = 0; i < k; i++) w[i] = MPARAM(call, i, P_WEIGHT), dens[i] = MPARAM(call, i, P_DENSITY);
    double lambda = call->gparam[P_LAMBDA];
    int rc;
    if (call->ndim == 2 && call->n > 0 && !svdm_is_embedding(call->tensor_name)) {
        svdm_joint o = {.vertical = false,
                        .renorm = false,
                        .global_trim = false,
                        .rel_tol = 1e-5,
                        .rank_cap = 0,
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

const merge_method merge_knots = {"knots", BASE_REQUIRED, 1, 0, knots_params, P_COUNT, knots_merge, false, false};
