/* select.c — TTMM expert coefficients for one query.
 *
 * Owns the arithmetic of test-time selection only; the embeddings come from
 * embed.c and the merge happens in lm_experts.c. */
#include <math.h>
#include <stdlib.h>

#include "experts/experts.h"

void ex_select_defaults(ex_select_opts *o) {
    o->beta = 0.2;
    o->tau = 0.01;
    o->max_experts = 50;
    o->top_k = 0;
}

/* Indices of the m largest kappa (ties: lower index first) into top; a
 * simple selection, k is at most thousands. */
static void top_m(const double *kappa, int k, int m, int *top) {
    char *used = calloc((size_t)k, 1);
    for (int j = 0; j < m; j++) {
        int best = -1;
        for (int i = 0; i < k; i++) {
            if ((used && used[i]) || isnan(kappa[i])) continue;
            if (best < 0 || kappa[i] > kappa[best]) best = i;
        }
        top[j] = best;
        if (best >= 0 && used) used[best] = 1;
    }
    free(used);
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Local Mixtures of Experts (arXiv 2505.14136), test time, as the authors'
 * released implementation (ttmerge, merging_model.py) computes it:
 *   s_k = q·φ_k,  κ_k = exp(−(1 − s_k)/β²),  w_k = κ_k / Σ_j κ_j;
 *   keep w_k > τ; more than max_experts kept → the max_experts largest κ;
 *   renormalise the kept w to sum 1; none kept → base model; a NaN weight →
 *   the single most similar expert.
 * With top_k > 0 the paper's fixed active counts (TTMM-1/3/10): the top_k
 * largest κ, weights κ_k / Σ_kept κ. Sums run in double. */
int ex_select(const float *q, const float *C, int k, int d, const ex_select_opts *o, int *idx, double *w) {
    if (k < 1) return 0;
    double *sim = malloc((size_t)k * sizeof *sim), *kappa = malloc((size_t)k * sizeof *kappa);
    if (!sim || !kappa) {
        free(sim);
        free(kappa);
        return 0;
    }
    double b2 = o->beta * o->beta, sum = 0;
    bool any_nan = false;
    for (int i = 0; i < k; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)q[j] * C[(size_t)i * d + j];
        sim[i] = s;
        kappa[i] = exp(-(1.0 - s) / b2);
        if (isnan(kappa[i])) any_nan = true;
        sum += kappa[i];
    }
    int n = 0;
    bool fallback = any_nan || isnan(sum) || !(sum > 0);
    if (fallback) {
        /* NaN fallback: the closest finite expert at weight 1 */
        int best = -1;
        for (int i = 0; i < k; i++)
            if (!isnan(sim[i]) && (best < 0 || sim[i] > sim[best])) best = i;
        if (best >= 0) {
            idx[0] = best;
            w[0] = 1.0;
            n = 1;
        }
    } else if (o->top_k > 0) {
        int m = o->top_k < k ? o->top_k : k;
        top_m(kappa, k, m, idx);
        n = m;
        qsort(idx, (size_t)n, sizeof *idx, cmp_int);
    } else {
        for (int i = 0; i < k; i++)
            if (kappa[i] / sum > o->tau) idx[n++] = i;
        if (o->max_experts > 0 && n > o->max_experts) {
            n = o->max_experts;
            top_m(kappa, k, n, idx);
            qsort(idx, (size_t)n, sizeof *idx, cmp_int);
        }
    }
    if (!fallback) {
        double ks = 0;
        for (int j = 0; j < n; j++) ks += kappa[idx[j]] / sum;
        for (int j = 0; j < n; j++) w[j] = kappa[idx[j]] / sum / ks;
    }
    free(sim);
    free(kappa);
    return n;
}
