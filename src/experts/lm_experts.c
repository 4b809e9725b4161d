/* lm_experts.c — a TTMM expert library as a runnable model (lm.h).
 *
 * Per sequence (lm_begin): embed the prompt's first query_tokens tokens,
 * weight the experts (select.c), then run the sequence in one of three modes:
 *
 *   merge     W_l = W_l,base + Σ_k w_k (α_k/r_k) B_k A_k formed once per
 *             prompt into private f32 copies of the adapted weights (the
 *             mmapped base is never written); the dense forward then runs
 *             over a Model whose layer table points at the copies.
 *   unmerged  the base weights stay as they are and every adapted projection
 *             gets the selected adapters as run-time low-rank terms,
 *             y = W x + Σ_k w_k (α_k/r_k) B_k (A_k x)  (weights.h LowRank);
 *             "merging" is then only pointer bookkeeping.
 *   ensemble  the paper's output-space baseline: each selected expert runs
 *             as base + its own adapter (own KV cache) and their next-token
 *             distributions are mixed, p = Σ_k w_k p_k (src/mix).
 *
 * The same weights give the same function in merge and unmerged modes; which
 * is cheaper depends on how many tokens run: merging costs a pass over every
 * adapted weight (rows·cols·(2R+1) flops), the run-time terms cost
 * 2R(rows+cols) flops per token. Without a forced mode, lm_begin picks the
 * cheaper one for the prompt plus EX_AUTO_GEN_TOKENS generated tokens.
 * Not here: the forward pass (src/model), the library format (library.c),
 * the coefficients (select.c), the mixing math (src/mix). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "experts/experts.h"
#include "io/peft.h"
#include "mix/mixture.h"
#include "model/lm_impl.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

/* Generated tokens assumed after a prompt when choosing the mode. */
#define EX_AUTO_GEN_TOKENS 128
/* Positions an ensemble runs per member before mixing (bounds member logits). */
#define EX_ENSEMBLE_CHUNK 64

static const char *const KIND_NAME[LW_NMAT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                               "mlp.down_proj"};

static Mat *layer_mat(LayerWeights *L, int kind) {
    switch (kind) {
    case LW_Q: return &L->wq;
    case LW_K: return &L->wk;
    case LW_V: return &L->wv;
    case LW_O: return &L->wo;
    case LW_GATE: return &L->w_gate;
    case LW_UP: return &L->w_up;
    default: return &L->w_down;
    }
}

typedef enum ex_mode { EX_AUTO = 0, EX_MERGE, EX_UNMERGED, EX_ENSEMBLE } ex_mode;
static const char *const MODE_NAME[] = {"auto", "merge", "unmerged", "ensemble"};

/* One expert's factors of one adapted projection, in f32 (scale α/r apart). */
typedef struct xfac {
    const float *A, *B; /* (rank, cols), (rows, rank); NULL when the expert skips it */
    int rank;
    double scale;
} xfac;

/* one adapted base weight */
typedef struct xw {
    char name[96];
    int layer, kind;
    Mat base;           /* the mmapped base matrix */
    float *buf;         /* (rows, cols) merged copy, allocated on the first merge */
    LowRankTerm *terms; /* (k) run-time terms of the current selection */
} xw;

/* An ensemble member: base + one expert, with its own KV cache. */
typedef struct xmember {
    Model run;
    LayerWeights *layers;
    LowRankTerm *terms; /* (ntw) one term per adapted weight */
    RunState st;
    bool st_ready;
    float *logits;      /* (EX_ENSEMBLE_CHUNK, vocab) */
} xmember;

typedef struct ex_lm {
    ex_library lib;
    Model base, run;       /* run: base with its layer table replaced */
    LayerWeights *layers;  /* (n_layers) private table of run */
    RunState st;
    int nad;
    peft_adapter *ad;      /* (k) */
    int ntw;
    xw *tw;
    xfac *fac;             /* (k, ntw) */
    float **owned;         /* converted factors (adapters not stored as aligned f32) */
    int nowned;
    ex_embedder emb;
    ex_select_opts sel;
    ex_mode forced, mode;  /* as asked; as used for the current sequence */
    int nsel;
    int *idx;              /* (k) */
    double *w;             /* (k) */
    int n_ctx, max_batch;
    xmember *mem;          /* (k) ensemble members, states allocated on use */
    const float **zrow;    /* (k) */
    double t_embed, t_select, t_merge; /* seconds spent by the last lm_begin */
} ex_lm;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void ex_free(lm *m) {
    ex_lm *x = m->impl;
    if (!x) return;
    for (int i = 0; i < x->nad; i++) peft_free(&x->ad[i]);
    free(x->ad);
    for (int i = 0; i < x->ntw; i++) free(x->tw[i].buf), free(x->tw[i].terms);
    free(x->tw);
    for (int i = 0; i < x->nowned; i++) free(x->owned[i]);
    free(x->owned);
    free(x->fac);
    if (x->mem)
        for (int k = 0; k < x->lib.k; k++) {
            xmember *e = &x->mem[k];
            free(e->layers), free(e->terms), free(e->logits);
            if (e->st_ready) model_state_free(&e->st);
        }
    free(x->mem);
    free(x->zrow);
    free(x->layers);
    model_state_free(&x->st);
    model_close(&x->base);
    if (x->emb.tok) ex_embedder_close(&x->emb);
    ex_library_free(&x->lib);
    free(x->idx), free(x->w);
    free(x);
    m->impl = NULL;
}

/* Local Mixtures of Experts (arXiv 2505.14136), test time step 4: merge the
 * selected experts in ΔW space, W = W_base + Σ_k w_k (α_k/r_k) B_k A_k, for
 * every adapted linear layer (embeddings and lm_head never). */
static int merge_weights(ex_lm *x, alloy_err *err) {
    memcpy(x->layers, x->base.weights.layers, (size_t)x->base.config.n_layers * sizeof *x->layers);
    openblas_set_num_threads(omp_get_max_threads()); /* the merge GEMMs are large: BLAS's own threads */
    for (int t = 0; t < x->ntw; t++) {
        xw *tw = &x->tw[t];
        int rows = tw->base.rows, cols = tw->base.cols;
        if (!tw->buf && !(tw->buf = malloc((size_t)rows * cols * sizeof(float)))) {
            openblas_set_num_threads(1);
            return alloy_fail(err, "%s: out of memory for a merged copy of %s", x->lib.dir, tw->name);
        }
        dtype_to_f32(tw->base.w, tw->base.dtype, tw->buf, (size_t)rows * cols);
        for (int j = 0; j < x->nsel; j++) {
            const xfac *f = &x->fac[(size_t)x->idx[j] * x->ntw + t];
            if (!f->A) continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, f->rank, (float)(x->w[j] * f->scale),
                        f->B, f->rank, f->A, cols, 1.0f, tw->buf, cols);
        }
        *layer_mat(&x->layers[tw->layer], tw->kind) = (Mat){tw->buf, ALLOY_F32, rows, cols};
    }
    openblas_set_num_threads(1);
    x->run.weights.layers = x->layers;
    return 0;
}

/* The un-merged form of the same sum: per adapted weight, one run-time term
 * (A_k, B_k, w_k α_k/r_k) per selected expert. */
static void set_terms(ex_lm *x) {
    memcpy(x->layers, x->base.weights.layers, (size_t)x->base.config.n_layers * sizeof *x->layers);
    for (int t = 0; t < x->ntw; t++) {
        xw *tw = &x->tw[t];
        int n = 0;
        for (int j = 0; j < x->nsel; j++) {
            const xfac *f = &x->fac[(size_t)x->idx[j] * x->ntw + t];
            if (f->A) tw->terms[n++] = (LowRankTerm){f->A, f->B, f->rank, (float)(x->w[j] * f->scale)};
        }
        x->layers[tw->layer].delta[tw->kind] = (LowRank){tw->terms, n};
    }
    x->run.weights.layers = x->layers;
}

/* Ensemble member k: base + expert k alone, with a KV cache of its own. */
static int member_ready(ex_lm *x, int k, int vocab, alloy_err *err) {
    xmember *e = &x->mem[k];
    if (e->st_ready) return 0;
    int L = x->base.config.n_layers;
    e->layers = malloc((size_t)L * sizeof *e->layers);
    e->terms = malloc((size_t)(x->ntw ? x->ntw : 1) * sizeof *e->terms);
    e->logits = malloc((size_t)EX_ENSEMBLE_CHUNK * vocab * sizeof(float));
    if (!e->layers || !e->terms || !e->logits) return alloy_fail(err, "%s: out of memory for expert %d", x->lib.dir, k);
    memcpy(e->layers, x->base.weights.layers, (size_t)L * sizeof *e->layers);
    for (int t = 0; t < x->ntw; t++) {
        const xfac *f = &x->fac[(size_t)k * x->ntw + t];
        if (!f->A) continue;
        e->terms[t] = (LowRankTerm){f->A, f->B, f->rank, (float)f->scale};
        e->layers[x->tw[t].layer].delta[x->tw[t].kind] = (LowRank){&e->terms[t], 1};
    }
    e->run = x->base;
    e->run.weights.layers = e->layers;
    if (model_state_alloc(&e->st, &x->base.config, x->n_ctx, x->max_batch, err)) {
        alloy_wrap(err, "%s: expert %d of the ensemble: ", x->lib.dir, k);
        return -1;
    }
    e->st_ready = true;
    return 0;
}

/* Flops of forming the merged weights vs. running n tokens with run-time
 * terms, for the current selection; the cheaper mode wins. */
static ex_mode cheaper_mode(const ex_lm *x, int n_tokens) {
    double merge = 0, terms = 0;
    for (int t = 0; t < x->ntw; t++) {
        double rows = x->tw[t].base.rows, cols = x->tw[t].base.cols;
        int R = 0;
        for (int j = 0; j < x->nsel; j++) R += x->fac[(size_t)x->idx[j] * x->ntw + t].rank;
        if (R == 0) continue;
        merge += rows * cols * (2.0 * R + 1.0);
        terms += (double)n_tokens * 2.0 * R * (rows + cols);
    }
    return terms <= merge ? EX_UNMERGED : EX_MERGE;
}

static int ex_begin(lm *m, const int32_t *ids, int n, alloy_err *err) {
    ex_lm *x = m->impl;
    x->nsel = 0;
    x->t_embed = x->t_select = x->t_merge = 0;
    int nq = n < x->lib.query_tokens ? n : x->lib.query_tokens;
    if (nq > 0) {
        /* the paper decodes the prompt prefix and re-encodes it for its encoder */
        double t0 = now_s();
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(m->tok, ids, (size_t)nq, true, &text, &len, err)) return -1;
        float *q = malloc((size_t)x->lib.dim * sizeof *q);
        int rc = q ? ex_embed_text(&x->emb, text, len, q, err) : alloy_fail(err, "out of memory");
        free(text);
        if (rc == 0 && x->emb.dim != x->lib.dim)
            rc = alloy_fail(err, "%s: embedding size %d differs from the centroids' %d", x->lib.dir, x->emb.dim,
                            x->lib.dim);
        double t1 = now_s();
        if (rc == 0) x->nsel = ex_select(q, x->lib.centroids, x->lib.k, x->lib.dim, &x->sel, x->idx, x->w);
        free(q);
        x->t_embed = t1 - t0, x->t_select = now_s() - t1;
        if (rc) return -1;
    }
    double t2 = now_s();
    x->mode = x->forced != EX_AUTO ? x->forced : cheaper_mode(x, n + EX_AUTO_GEN_TOKENS);
    int rc = 0;
    if (x->nsel == 0) { /* no expert near: the base model itself */
        x->run.weights.layers = x->base.weights.layers;
        if (x->mode == EX_ENSEMBLE) x->mode = EX_MERGE;
    } else if (x->mode == EX_MERGE) {
        rc = merge_weights(x, err);
    } else if (x->mode == EX_UNMERGED) {
        set_terms(x);
    } else {
        for (int j = 0; j < x->nsel && rc == 0; j++) rc = member_ready(x, x->idx[j], m->vocab, err);
    }
    x->t_merge = now_s() - t2;
    return rc;
}

/* The ensemble: every selected expert runs the tokens, chunk by chunk, and
 * each position's distributions are mixed, p = Σ_j w_j p_j (MoD Eq. 1). */
static int ensemble_forward(lm *m, ex_lm *x, const int32_t *tokens, int n, int pos, float *logits, bool all,
                            alloy_err *err) {
    int vocab = m->vocab;
    for (int c0 = 0; c0 < n; c0 += EX_ENSEMBLE_CHUNK) {
        int nc = n - c0 < EX_ENSEMBLE_CHUNK ? n - c0 : EX_ENSEMBLE_CHUNK;
        bool last = c0 + nc == n;
        for (int j = 0; j < x->nsel; j++) {
            xmember *e = &x->mem[x->idx[j]];
            if (model_forward(&e->run, &e->st, tokens + c0, nc, pos + c0, e->logits, all, err)) return -1;
        }
        if (!all && !last) continue;
        int rows = all ? nc : 1;
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < x->nsel; j++) x->zrow[j] = x->mem[x->idx[j]].logits + (size_t)r * vocab;
            float *out = all ? logits + (size_t)(c0 + r) * vocab : logits;
            mix_log_probs(x->zrow, x->w, x->nsel, vocab, MIX_ARITHMETIC, out);
        }
    }
    return 0;
}

static int ex_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err) {
    ex_lm *x = m->impl;
    if (x->mode == EX_ENSEMBLE && x->nsel > 0) return ensemble_forward(m, x, tokens, n, pos, logits, all, err);
    return model_forward(&x->run, &x->st, tokens, n, pos, logits, all, err);
}

static const lm_ops EX_OPS = {ex_begin, ex_forward, ex_free};

int ex_lm_selection(const lm *m, const int **idx, const double **w) {
    const ex_lm *x = m->impl;
    *idx = x->idx, *w = x->w;
    return x->nsel;
}

const char *ex_lm_mode(const lm *m) {
    const ex_lm *x = m->impl;
    return MODE_NAME[x->mode];
}

void ex_lm_timings(const lm *m, double *embed_s, double *select_s, double *merge_s) {
    const ex_lm *x = m->impl;
    *embed_s = x->t_embed, *select_s = x->t_select, *merge_s = x->t_merge;
}

/* f32 factors of one adapter tensor: the mapping itself when it is aligned
 * f32, else a converted copy owned by x. */
static const float *factor_f32(ex_lm *x, const st_tensor *t, size_t n, alloy_err *err) {
    if (t->dtype == ALLOY_F32 && (uintptr_t)t->data % sizeof(float) == 0) return t->data;
    float **o = realloc(x->owned, (size_t)(x->nowned + 1) * sizeof *o);
    if (!o) return alloy_fail(err, "%s: out of memory", x->lib.dir), NULL;
    x->owned = o;
    float *f = malloc(n * sizeof *f);
    if (!f) return alloy_fail(err, "%s: out of memory converting an adapter", x->lib.dir), NULL;
    dtype_to_f32(t->data, t->dtype, f, n);
    x->owned[x->nowned++] = f;
    return f;
}

static int parse_mode(const char *s, ex_mode *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, MODE_NAME[i])) return *out = (ex_mode)i, 0;
    return -1;
}

int lm_open_experts(lm *m, const char *dir, const lm_options *opt, alloy_err *err) {
    ex_lm *x = calloc(1, sizeof *x);
    if (!x) return alloy_fail(err, "%s: out of memory", dir);
    m->impl = x;
    m->ops = &EX_OPS;
    if (ex_library_load(&x->lib, dir, true, err)) goto fail;
    if (!x->lib.complete) {
        alloy_fail(err, "%s: the library is incomplete (build interrupted); run `alloy experts build` again", dir);
        goto fail;
    }
    x->sel = x->lib.sel;
    if (opt && opt->experts_top_k > 0) x->sel.top_k = opt->experts_top_k;
    if (opt && opt->experts_temperature > 0) x->sel.beta = sqrt(opt->experts_temperature);
    if (opt && opt->experts_mode && parse_mode(opt->experts_mode, &x->forced)) {
        alloy_fail(err, "%s: unknown experts mode \"%s\" (auto, merge, unmerged, ensemble)", dir, opt->experts_mode);
        goto fail;
    }
    if (model_open(&x->base, x->lib.base, err)) {
        alloy_wrap(err, "%s: base model: ", dir);
        goto fail;
    }
    const Config *c = &x->base.config;
    x->n_ctx = opt && opt->n_ctx > 0 ? opt->n_ctx : (c->max_pos < 4096 ? c->max_pos : 4096);
    x->max_batch = opt && opt->max_batch > 0 ? opt->max_batch : 512;
    if (x->n_ctx > c->max_pos) x->n_ctx = c->max_pos;
    if (model_state_alloc(&x->st, c, x->n_ctx, x->max_batch, err)) goto fail;
    /* the base embeds by default: share its weights rather than load them twice */
    if (strcmp(x->lib.embed_model, x->lib.base) == 0
            ? ex_embedder_open_shared(&x->emb, &x->base, x->lib.base, x->lib.query_tokens, err)
            : ex_embedder_open(&x->emb, x->lib.embed_model, x->lib.query_tokens, err))
        goto fail;
    int K = x->lib.k;
    x->idx = malloc((size_t)K * sizeof *x->idx);
    x->w = malloc((size_t)K * sizeof *x->w);
    x->ad = calloc((size_t)K, sizeof *x->ad);
    x->mem = calloc((size_t)K, sizeof *x->mem);
    x->zrow = calloc((size_t)K, sizeof *x->zrow);
    x->layers = malloc((size_t)c->n_layers * sizeof *x->layers);
    x->tw = calloc((size_t)c->n_layers * LW_NMAT, sizeof *x->tw);
    if (!x->idx || !x->w || !x->ad || !x->mem || !x->zrow || !x->layers || !x->tw) {
        alloy_fail(err, "%s: out of memory", dir);
        goto fail;
    }
    for (int k = 0; k < K; k++) {
        char name[32];
        ex_expert_name(k, name);
        char *ed = fs_join(dir, name);
        int rc = ed ? peft_load(&x->ad[k], ed, err) : alloy_fail(err, "out of memory");
        free(ed);
        if (rc) goto fail;
        x->nad = k + 1;
    }
    memcpy(x->layers, x->base.weights.layers, (size_t)c->n_layers * sizeof *x->layers);
    x->run = x->base;
    for (int l = 0; l < c->n_layers; l++)
        for (int kind = 0; kind < LW_NMAT; kind++) {
            char wn[96];
            snprintf(wn, sizeof wn, "model.layers.%d.%s.weight", l, KIND_NAME[kind]);
            bool used = false;
            for (int k = 0; k < x->nad && !used; k++) used = peft_find(&x->ad[k], wn) != NULL;
            if (!used) continue;
            xw *tw = &x->tw[x->ntw++];
            snprintf(tw->name, sizeof tw->name, "%s", wn);
            tw->layer = l, tw->kind = kind;
            tw->base = *layer_mat(&x->layers[l], kind);
            if (!(tw->terms = malloc((size_t)K * sizeof *tw->terms))) {
                alloy_fail(err, "%s: out of memory", dir);
                goto fail;
            }
        }
    x->fac = calloc((size_t)K * (x->ntw ? x->ntw : 1), sizeof *x->fac);
    if (!x->fac) {
        alloy_fail(err, "%s: out of memory", dir);
        goto fail;
    }
    for (int k = 0; k < K; k++)
        for (int t = 0; t < x->ntw; t++) {
            const xw *tw = &x->tw[t];
            const peft_module *pm = peft_find(&x->ad[k], tw->name);
            if (!pm) continue;
            int r = pm->rank, rows = tw->base.rows, cols = tw->base.cols;
            if (pm->A->shape[1] != cols || pm->B->shape[0] != rows) {
                alloy_fail(err, "%s: module %s is [%lld, r] x [r, %lld], the base weight is [%d, %d]", x->ad[k].dir,
                           tw->name, (long long)pm->B->shape[0], (long long)pm->A->shape[1], rows, cols);
                goto fail;
            }
            xfac *f = &x->fac[(size_t)k * x->ntw + t];
            f->rank = r, f->scale = pm->scale;
            if (!(f->A = factor_f32(x, pm->A, (size_t)r * cols, err)) ||
                !(f->B = factor_f32(x, pm->B, (size_t)rows * r, err)))
                goto fail;
        }
    m->vocab = c->vocab_size;
    m->n_ctx = x->n_ctx;
    snprintf(m->desc, sizeof m->desc, "TTMM library, %d experts over %s (%s, %d layers), mode %s", K, x->lib.base,
             model_arch_name(c->arch), c->n_layers, MODE_NAME[x->forced]);
    return 0;
fail:
    ex_free(m);
    m->ops = NULL;
    return -1;
}
