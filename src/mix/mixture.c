/* mixture.c — MoD mixtures behind lm.h: open the members, run them in
 * lockstep on one token stream, mix their next-token distributions.
 *
 * The paper (Dang & Ngo, "MoD: A Distribution-Based Approach for Merging
 * Large Language Models", arXiv 2411.00406) defines the merged model by its
 * output distribution, a finite mixture of the members' distributions
 *     p_MoD(x_t | x_<t) = Σ_i α_i p_i(x_t | x_<t),  α_i ≥ 0, Σ_i α_i = 1   (Eq. 1)
 * with one fixed weight per model (its experiments set them by hand, e.g.
 * 0.9 / 0.1 for Qwen2.5-1.5B-Instruct / Qwen2.5-Math-1.5B-Instruct); there is
 * no per-token gate and no temperature inside the mixture. Sampling
 * temperature etc. apply afterwards, to the mixed distribution, like for any
 * model.
 *
 * The released code (github knovel-eng/mod, mod/mod.py) does something else:
 * it writes a single checkpoint whose MLP *weights* are chosen element-wise
 * from two models with a mask `minmax(W_0) < α_0` (W_0 min-max normalised
 * over the tensor), i.e. a weight-space merge, limited to two models. alloy
 * implements the paper's output-space mixture; the released weight mask is
 * not offered.
 *
 * Execution: members run one after the other at every step, each using all
 * threads for its own forward pass (its matmuls are parallel; splitting the
 * cores between members would leave each one's memory-bound matmuls with
 * fewer cores and measured no faster). Each member keeps its own KV cache
 * and maps its weights once. Members with weight 0 are validated but never
 * opened or run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mix/manifest.h"
#include "mix/mixture.h"
#include "model/forward.h"
#include "model/lm_impl.h"
#include "model/weights.h"
#include "util/err.h"
#include "util/fastmath.h"
#include "util/fs.h"

int mix_rule_parse(const char *s, mix_rule *out, alloy_err *err) {
    if (s && !strcmp(s, "arithmetic")) *out = MIX_ARITHMETIC;
    else if (s && !strcmp(s, "geometric")) *out = MIX_GEOMETRIC;
    else return alloy_fail(err, "mixture rule '%s' is not 'arithmetic' or 'geometric'", s ? s : "(null)");
    return 0;
}

const char *mix_rule_name(mix_rule r) { return r == MIX_GEOMETRIC ? "geometric" : "arithmetic"; }

int mix_normalize_weights(const double *w, int n, double *alpha, const char *where, alloy_err *err) {
    if (n < 1) return alloy_fail(err, "%s: no mixture weights", where);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(w[i])) return alloy_fail(err, "%s: weight %d is not a finite number", where, i + 1);
        if (w[i] < 0) return alloy_fail(err, "%s: weight %d is negative (%g)", where, i + 1, w[i]);
        sum += w[i];
    }
    if (!(sum > 0)) return alloy_fail(err, "%s: all %d weights are zero", where, n);
    for (int i = 0; i < n; i++) alpha[i] = w[i] / sum;
    return 0;
}

double mix_logsumexp(const float *z, int n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < n; v++) mx = z[v] > mx ? z[v] : mx;
    if (mx == -INFINITY) return -INFINITY;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int v = 0; v < n; v++) s += fm_expf(z[v] - mx);
    return mx + log(s);
}

#define MIX_MAX_MEMBERS 64

void mix_log_probs(const float *const *z, const double *alpha, int k, int vocab, mix_rule rule, float *out) {
    /* Members in play, their log α_i and lse(z_i). */
    const float *zz[MIX_MAX_MEMBERS];
    float la[MIX_MAX_MEMBERS], a[MIX_MAX_MEMBERS];
    int m = 0;
    for (int i = 0; i < k && m < MIX_MAX_MEMBERS; i++) {
        if (!(alpha[i] > 0)) continue;
        zz[m] = z[i];
        double lse = mix_logsumexp(z[i], vocab);
        a[m] = (float)alpha[i];
        /* log α_i - lse_i folded into one offset per member */
        la[m] = (float)(rule == MIX_ARITHMETIC ? log(alpha[i]) - lse : -alpha[i] * lse);
        m++;
    }
    if (rule == MIX_ARITHMETIC) {
        /* log p[v] = log Σ_i exp(t_i), t_i = log α_i + log_softmax(z_i)[v]:
         * subtract max_i t_i so the largest term is exp(0) = 1. */
        /* vectorised in blocks: t (m x B) member terms, their max, then the sum */
        enum { B = 256 };
#pragma omp parallel for schedule(static) if ((long)vocab * m > (1L << 17))
        for (int v0 = 0; v0 < vocab; v0 += B) {
            int nb = vocab - v0 < B ? vocab - v0 : B;
            float mx[B], sum[B];
            for (int j = 0; j < nb; j++) mx[j] = -INFINITY, sum[j] = 0.0f;
            for (int i = 0; i < m; i++) {
                const float *zi = zz[i] + v0;
                float li = la[i];
#pragma omp simd
                for (int j = 0; j < nb; j++) mx[j] = zi[j] + li > mx[j] ? zi[j] + li : mx[j];
            }
            for (int i = 0; i < m; i++) {
                const float *zi = zz[i] + v0;
                float li = la[i];
#pragma omp simd
                for (int j = 0; j < nb; j++) sum[j] += fm_expf(zi[j] + li - mx[j]);
            }
#pragma omp simd
            for (int j = 0; j < nb; j++) out[v0 + j] = mx[j] == -INFINITY ? -INFINITY : mx[j] + fm_logf(sum[j]);
        }
        return;
    }
    /* Geometric: s[v] = Σ_i α_i log_softmax(z_i)[v], then renormalise. */
#pragma omp parallel for schedule(static) if ((long)vocab * m > (1L << 17))
    for (int v = 0; v < vocab; v++) {
        float s = 0;
        for (int i = 0; i < m; i++) s += a[i] * zz[i][v] + la[i];
        out[v] = s;
    }
    float lse = (float)mix_logsumexp(out, vocab);
    for (int v = 0; v < vocab; v++) out[v] -= lse;
}

/* ---- lm_open_mixture ---------------------------------------------------- */

/* Positions per all-logits chunk: bounds each member's logits buffer to
 * MIX_CHUNK x vocab floats while keeping prefill matmuls batched. */
#define MIX_CHUNK 64

typedef struct member {
    char *dir;
    double alpha;   /* normalised weight */
    bool open;      /* alpha > 0: model and state live */
    Model model;
    RunState state;
    float *logits;  /* (chunk, vocab) */
} member;

typedef struct mixture {
    int k;
    member *mem;
    mix_rule rule;
    int chunk;             /* rows in each member's logits buffer */
    const float **zrow;    /* (k) row pointers for mix_log_probs */
    double *alpha;         /* (k) */
} mixture;

static void mixture_free(lm *m) {
    mixture *x = m->impl;
    if (!x) return;
    for (int i = 0; i < x->k; i++) {
        member *e = &x->mem[i];
        if (e->open) {
            model_state_free(&e->state);
            model_close(&e->model);
        }
        free(e->logits);
        free(e->dir);
    }
    free(x->mem);
    free(x->zrow);
    free(x->alpha);
    free(x);
    m->impl = NULL;
}

static int mixture_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err) {
    mixture *x = m->impl;
    int vocab = m->vocab;
    if (!all) {
        /* Each member runs the whole batch and returns its last row. */
        for (int i = 0; i < x->k; i++) {
            member *e = &x->mem[i];
            if (!e->open) continue;
            if (model_forward(&e->model, &e->state, tokens, n, pos, e->logits, false, err))
                return alloy_wrap(err, "%s: ", e->dir);
            x->zrow[i] = e->logits;
        }
        mix_log_probs(x->zrow, x->alpha, x->k, vocab, x->rule, logits);
        return 0;
    }
    for (int c0 = 0; c0 < n; c0 += x->chunk) {
        int c = n - c0 < x->chunk ? n - c0 : x->chunk;
        for (int i = 0; i < x->k; i++) {
            member *e = &x->mem[i];
            if (!e->open) continue;
            if (model_forward(&e->model, &e->state, tokens + c0, c, pos + c0, e->logits, true, err))
                return alloy_wrap(err, "%s: ", e->dir);
        }
        for (int r = 0; r < c; r++) {
            for (int i = 0; i < x->k; i++) x->zrow[i] = x->mem[i].logits + (size_t)r * vocab;
            mix_log_probs(x->zrow, x->alpha, x->k, vocab, x->rule, logits + (size_t)(c0 + r) * vocab);
        }
    }
    return 0;
}

static const lm_ops mixture_ops = {NULL, mixture_forward, mixture_free};

static bool dir_has(const char *dir, const char *name) {
    char *p = fs_join(dir, name);
    bool r = p && fs_is_file(p);
    free(p);
    return r;
}

/* Open the members of x (dirs and alpha already set). */
static int open_members(lm *m, mixture *x, const lm_options *opt, alloy_err *err) {
    int n_ctx = opt->n_ctx, vocab = -1;
    /* n_ctx: as asked, else the smallest member's min(max_pos, 4096). */
    for (int i = 0; i < x->k; i++) {
        member *e = &x->mem[i];
        if (!(e->alpha > 0)) continue;
        if (model_open(&e->model, e->dir, err)) return -1;
        e->open = true;
        const Config *c = &e->model.config;
        if (vocab < 0) vocab = c->vocab_size;
        int cap = c->max_pos < 4096 ? c->max_pos : 4096;
        if (opt->n_ctx > c->max_pos)
            return alloy_fail(err, "%s: a context of %d exceeds max_position_embeddings (%d)", e->dir, opt->n_ctx,
                              c->max_pos);
        if (opt->n_ctx <= 0 && (n_ctx <= 0 || cap < n_ctx)) n_ctx = cap;
    }
    int max_batch = opt->max_batch > 0 ? opt->max_batch : 512;
    if (max_batch > n_ctx) max_batch = n_ctx;
    x->chunk = max_batch < MIX_CHUNK ? max_batch : MIX_CHUNK;
    for (int i = 0; i < x->k; i++) {
        member *e = &x->mem[i];
        if (!e->open) continue;
        if (model_state_alloc(&e->state, &e->model.config, n_ctx, max_batch, err)) {
            model_close(&e->model);
            e->open = false;
            return alloy_wrap(err, "%s: ", e->dir);
        }
        e->logits = malloc((size_t)x->chunk * vocab * sizeof(float));
        if (!e->logits) return alloy_fail(err, "%s: out of memory for mixture logits", e->dir);
    }
    m->vocab = vocab;
    m->n_ctx = n_ctx;
    return 0;
}

static void describe(lm *m, const mixture *x) {
    int len = snprintf(m->desc, sizeof m->desc, "MoD mixture (%s) of %d:", mix_rule_name(x->rule), x->k);
    for (int i = 0; i < x->k && len > 0 && len < (int)sizeof m->desc; i++) {
        const char *base = strrchr(x->mem[i].dir, '/');
        base = base && base[1] ? base + 1 : x->mem[i].dir;
        len += snprintf(m->desc + len, sizeof m->desc - (size_t)len, "%s %s %.3g", i ? "," : "", base,
                        x->mem[i].alpha);
    }
}

int lm_open_mixture(lm *m, const char *const *paths, int npaths, const lm_options *opt, alloy_err *err) {
    lm_options defaults = {0};
    if (!opt) opt = &defaults;
    mix_manifest man = {0};
    const char *const *dirs = paths;
    const double *w = opt->nmix_weights > 0 ? opt->mix_weights : NULL;
    int k = npaths;
    mix_rule rule = MIX_ARITHMETIC;
    const char *where = "--mix-weights";
    bool manifest = npaths == 1;
    if (manifest) {
        if (opt->nmix_weights > 0)
            return alloy_fail(err, "%s: --mix-weights applies to several -m models; a mixture directory's weights "
                                   "are in its %s", paths[0], MIX_MANIFEST);
        if (mix_manifest_read(&man, paths[0], err)) return -1;
        dirs = (const char *const *)man.paths;
        w = man.weights;
        k = man.n;
        rule = man.rule;
        where = paths[0];
    }
    if (k > MIX_MAX_MEMBERS) {
        mix_manifest_free(&man);
        return alloy_fail(err, "%s: %d members; at most %d can be mixed", paths[0], k, MIX_MAX_MEMBERS);
    }
    if (opt->mix_rule && mix_rule_parse(opt->mix_rule, &rule, err)) {
        mix_manifest_free(&man);
        return -1;
    }
    mixture *x = calloc(1, sizeof *x);
    int rc = -1;
    if (!x) {
        mix_manifest_free(&man);
        return alloy_fail(err, "out of memory");
    }
    m->ops = &mixture_ops;
    m->impl = x;
    x->k = k;
    x->rule = rule;
    x->mem = calloc((size_t)k, sizeof *x->mem);
    x->zrow = calloc((size_t)k, sizeof *x->zrow);
    x->alpha = calloc((size_t)k, sizeof *x->alpha);
    if (!x->mem || !x->zrow || !x->alpha) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < k; i++) x->alpha[i] = 1;
    if (w && mix_normalize_weights(w, k, x->alpha, where, err)) goto done;
    if (!w && mix_normalize_weights(x->alpha, k, x->alpha, where, err)) goto done;
    for (int i = 0; i < k; i++) {
        x->mem[i].alpha = x->alpha[i];
        if (!(x->mem[i].dir = strdup(dirs[i]))) {
            alloy_fail(err, "out of memory");
            goto done;
        }
    }
    if (mix_check_members(dirs, k, err)) {
        if (manifest) alloy_wrap(err, "%s: ", paths[0]);
        goto done;
    }
    if (open_members(m, x, opt, err)) goto done;
    /* A mixture directory carries the shared tokenizer; when it does not,
     * take the first member's (lm_open loads paths[0]'s otherwise). */
    if (manifest && !dir_has(paths[0], "tokenizer.json") && dir_has(dirs[0], "tokenizer.json") &&
        tok_load(&m->tok, dirs[0], err))
        goto done;
    describe(m, x);
    rc = 0;
done:
    mix_manifest_free(&man);
    if (rc) {
        mixture_free(m);
        m->ops = NULL;
        tok_free(m->tok);
        m->tok = NULL;
    }
    return rc;
}
