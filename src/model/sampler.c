/* sampler.c — greedy and filtered random sampling (see sampler.h). */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>

#include "util/err.h"
#include "util/rng.h"

typedef struct sampler_cand {
    float p; /* unnormalised probability exp((logit - max) / temp) */
    int32_t id;
} cand;

/* a ranks before b: more probable, or as probable with a lower id. */
static inline int before(const cand *a, const cand *b) { return a->p > b->p || (a->p == b->p && a->id < b->id); }

static int cmp_desc(const void *x, const void *y) {
    const cand *a = x, *b = y;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* Min-heap on `before` (the root is the worst kept candidate). */
static void sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && before(&h[w], &h[l])) w = l;
        if (r < n && before(&h[w], &h[r])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Move the k best of c[0..n) to c[0..k) (unordered). */
static void select_top_k(cand *c, int n, int k) {
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(c, k, i);
    for (int i = k; i < n; i++)
        if (before(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
}

int sampler_init(sampler *s, int vocab, const sampler_params *p, alloy_err *err) {
    s->cand = NULL;
    if (vocab < 1) return alloy_fail(err, "sampler: vocabulary of %d tokens", vocab);
    if (isnan(p->temp) || isinf(p->temp)) return alloy_fail(err, "sampler: temperature is not a finite number");
    if (!(p->top_p > 0) || isnan(p->top_p))
        return alloy_fail(err, "sampler: top-p %g is outside (0, 1]", (double)p->top_p);
    if (isnan(p->min_p) || p->min_p > 1)
        return alloy_fail(err, "sampler: min-p %g is outside [0, 1]", (double)p->min_p);
    s->p = *p;
    s->vocab = vocab;
    s->draws = 0;
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    if (!s->cand) return alloy_fail(err, "sampler: out of memory for %d candidates", vocab);
    return 0;
}

void sampler_free(sampler *s) {
    free(s->cand);
    s->cand = NULL;
}

int32_t sampler_sample(sampler *s, const float *logits) {
    int V = s->vocab, best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->p.temp <= 0) return best;

    cand *c = s->cand;
    float mx = logits[best], inv_t = 1.0f / s->p.temp;
    int n = V;
    for (int i = 0; i < V; i++) c[i] = (cand){expf((logits[i] - mx) * inv_t), i};
    if (s->p.top_k > 0 && s->p.top_k < V) {
        select_top_k(c, V, s->p.top_k);
        n = s->p.top_k;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += c[i].p;

    if (s->p.top_p < 1) {
        /* A token below (1 - top_p) / (n - 1) of the mass cannot be in the
         * nucleus (llama2.c's argument); drop those before sorting. The most
         * probable token (p = 1) always stays. */
        if (n > 1) {
            double cut = (1.0 - s->p.top_p) / (n - 1) * total;
            int m = 0;
            for (int i = 0; i < n; i++)
                if (c[i].p >= cut || c[i].id == best) c[m++] = c[i];
            n = m;
        }
        qsort(c, (size_t)n, sizeof *c, cmp_desc);
        double cum = 0, want = s->p.top_p * total;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= want) {
                n = i + 1;
                break;
            }
        }
    }
    if (s->p.min_p > 0) {
        /* the most probable candidate has p = exp(0) = 1 */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= s->p.min_p || c[i].id == best) c[m++] = c[i];
        n = m;
    }
    total = 0;
    for (int i = 0; i < n; i++) total += c[i].p;
    double r = rng_uniform(s->p.seed, 0, s->draws++) * total, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += c[i].p;
        if (r < cum) return c[i].id;
    }
    return c[n - 1].id;
}
