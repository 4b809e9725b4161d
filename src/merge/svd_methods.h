/* svd_methods.h — the SVD family of merge methods (drm, tsv, knots) and the
 * joint-space machinery drm.c and knots.c share.
 *
 * The method objects are registered by merge/registry.c. The helpers below
 * are internal to the family: trimming by magnitude and TIES-style sign
 * election with a disjoint mean, over f64 coordinates (the joint SVD space)
 * or over f32 task vectors (the fallback for tensors that are not weight
 * matrices). drm.c defines them. Not here: SVD itself (svd.h). */
#ifndef ALLOY_MERGE_SVD_METHODS_H
#define ALLOY_MERGE_SVD_METHODS_H

#include <stdbool.h>
#include <stddef.h>

#include "merge/method.h"

extern const merge_method merge_drm, merge_tsv, merge_knots;

/* Number of entries a trim to `density` keeps out of n: floor(density*n + 0.5),
 * at least 1 (n > 0), at most n. */
size_t svdm_keep_count(double density, size_t n);

/* Zero all but the q entries of v[n] with the largest |v| (ties: the lower
 * index wins). scratch holds n doubles. */
void svdm_keep_topk(double *v, size_t n, size_t q, double *scratch);

/* TIES in a joint space (DRM's merge step, KnOTS-TIES): for each entry e of
 * the k coordinate blocks c[i*n + e] (already trimmed), elect the sign of
 * the mass sum_i c_i[e] (a zero mass takes the majority of the elected signs
 * over all entries), keep the c_i[e] of that sign, weight them by w[i], and
 * write their disjoint mean (sum over the count of non-zero weighted
 * entries, at least 1) to out[e]. */
void svdm_elect_mean(const double *c, int k, size_t n, const double *w, double *out, int threads);

/* Whether a 2-D tensor is an embedding or output head by name ("embed",
 * "lm_head", "wte", "wpe"): the SVD methods do not decompose those. */
bool svdm_is_embedding(const char *name);

/* The TIES fallback of drm and knots for tensors they do not decompose:
 * delta_i = x_i - base trimmed to the top density[i] fraction by magnitude
 * (per task), signs elected by mass, weighted by w[i], disjoint mean, then
 * out = base + lambda * mean. Returns 0, or -1 (out of memory). */
int svdm_ties_fallback(const merge_call *call, const double *w, const double *density, double lambda, float *out,
                       alloy_err *err);

/* Options of the joint decomposition, see svdm_joint_merge. */
typedef struct svdm_joint {
    bool vertical;          /* row-concat [D1; ...; Dk] (shared Vh), else column-concat [D1 ... Dk] (shared U) */
    bool renorm;            /* DRM: normalise each task's block of singular vectors, fold norms into S */
    bool global_trim;       /* one top-k over all tasks (DRM) instead of per task (KnOTS) */
    double rel_tol;         /* singular values <= rel_tol * sigma_max are null space */
    int rank_cap;           /* 0: none */
    const double *density;  /* [k] per task; global_trim uses density[0] */
    const double *w;        /* [k] weights */
    double lambda;
} svdm_joint;

/* Merge a 2-D tensor in the joint SVD space of its task deltas (drm.c). */
int svdm_joint_merge(const merge_call *call, const svdm_joint *o, float *out, alloy_err *err);

#endif
