/* kmeans.c — bisecting k-means and normalised centroids for TTMM's
 * clustering of the training corpus into local neighbourhoods.
 *
 * Owns clustering of in-memory float vectors only; the vectors come from
 * embed.c, the cluster directories from build.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "experts/experts.h"
#include "util/err.h"
#include "util/rng.h"

#define KM_INIT 4   /* seeded starts per split */
#define KM_ITERS 100

static double dist2(const float *a, const double *c, int d) {
    double s = 0;
    for (int j = 0; j < d; j++) {
        double t = a[j] - c[j];
        s += t * t;
    }
    return s;
}

/* 2-means over the points pts[0..m) of X (Lloyd from two seeded distinct
 * starts); side[i] in {0,1}. Returns the inertia, or -1 when one side stays
 * empty (all points identical). */
static double two_means(const float *X, int d, const int *pts, int m, uint64_t seed, uint64_t stream,
                        char *side, double *c, int *cnt) {
    int a = (int)(rng_uniform(seed, stream, 0) * m), b = (int)(rng_uniform(seed, stream, 1) * (m - 1));
    if (b >= a) b++;
    for (int j = 0; j < d; j++) {
        c[j] = X[(size_t)pts[a] * d + j];
        c[d + j] = X[(size_t)pts[b] * d + j];
    }
    double inertia = 0;
    for (int it = 0; it < KM_ITERS; it++) {
        int changed = 0;
        inertia = 0;
        for (int i = 0; i < m; i++) {
            const float *x = X + (size_t)pts[i] * d;
            double d0 = dist2(x, c, d), d1 = dist2(x, c + d, d);
            char s = d1 < d0;
            if (it == 0 || s != side[i]) changed = 1;
            side[i] = s;
            inertia += s ? d1 : d0;
        }
        if (!changed) break;
        memset(c, 0, 2 * (size_t)d * sizeof *c);
        cnt[0] = cnt[1] = 0;
        for (int i = 0; i < m; i++) {
            const float *x = X + (size_t)pts[i] * d;
            double *cc = c + (size_t)side[i] * d;
            cnt[(int)side[i]]++;
            for (int j = 0; j < d; j++) cc[j] += x[j];
        }
        for (int s = 0; s < 2; s++) {
            if (cnt[s] == 0) {
                /* empty side: restart it at the point farthest from the other centroid */
                const double *o = c + (size_t)(1 - s) * d;
                double far = -1;
                int fi = 0;
                for (int i = 0; i < m; i++) {
                    double t = dist2(X + (size_t)pts[i] * d, o, d);
                    if (t > far) far = t, fi = i;
                }
                if (!(far > 0)) return -1;
                for (int j = 0; j < d; j++) c[(size_t)s * d + j] = X[(size_t)pts[fi] * d + j];
            } else {
                for (int j = 0; j < d; j++) c[(size_t)s * d + j] /= cnt[s];
            }
        }
    }
    int n1 = 0;
    for (int i = 0; i < m; i++) n1 += side[i];
    return (n1 == 0 || n1 == m) ? -1 : inertia;
}

/* Bisecting k-means (the paper clusters with it for speed and balance):
 * split the largest cluster until there are k. */
int ex_kmeans_bisect(const float *X, int n, int d, int k, uint64_t seed, int *assign, alloy_err *err) {
    if (k < 1) return alloy_fail(err, "k-means: %d clusters requested (need at least 1)", k);
    if (k > n) return alloy_fail(err, "k-means: %d clusters requested for only %d documents", k, n);
    int *pts = malloc((size_t)n * sizeof *pts), *size = calloc((size_t)k, sizeof *size);
    char *side = malloc((size_t)n), *best = malloc((size_t)n);
    double *c = malloc(2 * (size_t)d * sizeof *c);
    int cnt[2];
    if (!pts || !size || !side || !best || !c) {
        free(pts), free(size), free(side), free(best), free(c);
        return alloy_fail(err, "k-means: out of memory for %d points", n);
    }
    for (int i = 0; i < n; i++) assign[i] = 0;
    size[0] = n;
    for (int nc = 1; nc < k; nc++) {
        int big = 0;
        for (int j = 1; j < nc; j++)
            if (size[j] > size[big]) big = j;
        int m = 0;
        for (int i = 0; i < n; i++)
            if (assign[i] == big) pts[m++] = i;
        double best_in = -1;
        for (int t = 0; t < KM_INIT; t++) {
            double in = two_means(X, d, pts, m, seed, (uint64_t)nc * KM_INIT + t, side, c, cnt);
            if (in >= 0 && (best_in < 0 || in < best_in)) {
                best_in = in;
                memcpy(best, side, (size_t)m);
            }
        }
        if (best_in < 0) /* identical points: halve by index */
            for (int i = 0; i < m; i++) best[i] = i >= m / 2;
        for (int i = 0; i < m; i++)
            if (best[i]) assign[pts[i]] = nc;
        size[nc] = 0;
        for (int i = 0; i < m; i++) size[nc] += best[i];
        size[big] -= size[nc];
    }
    free(pts), free(size), free(side), free(best), free(c);
    return 0;
}

/* Local Mixtures of Experts (arXiv 2505.14136), train time step 4: the
 * expert's centroid φ_k = normalize(mean_{x ∈ D_k} φ(x)). */
int ex_centroids(const float *X, int n, int d, const int *assign, int k, float *C, int *sizes,
                 alloy_err *err) {
    double *acc = calloc((size_t)k * d, sizeof *acc);
    int *cnt = calloc((size_t)k, sizeof *cnt);
    if (!acc || !cnt) {
        free(acc), free(cnt);
        return alloy_fail(err, "centroids: out of memory");
    }
    for (int i = 0; i < n; i++) {
        if (assign[i] < 0 || assign[i] >= k) {
            free(acc), free(cnt);
            return alloy_fail(err, "centroids: point %d has cluster %d outside 0..%d", i, assign[i], k - 1);
        }
        cnt[assign[i]]++;
        for (int j = 0; j < d; j++) acc[(size_t)assign[i] * d + j] += X[(size_t)i * d + j];
    }
    for (int c = 0; c < k; c++) {
        if (cnt[c] == 0) {
            free(acc), free(cnt);
            return alloy_fail(err, "centroids: cluster %d is empty", c);
        }
        double nn = 0;
        for (int j = 0; j < d; j++) nn += acc[(size_t)c * d + j] * acc[(size_t)c * d + j];
        nn = nn > 0 ? 1.0 / sqrt(nn) : 0;
        for (int j = 0; j < d; j++) C[(size_t)c * d + j] = (float)(acc[(size_t)c * d + j] * nn);
        if (sizes) sizes[c] = cnt[c];
    }
    free(acc), free(cnt);
    return 0;
}
