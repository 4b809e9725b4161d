/* ttt.c — the test-time training (TTT) baseline of TTMM (Bertolissi et al.,
 * arXiv 2505.14136, §2 and the TTT rows of its tables), after TTT on nearest
 * neighbours (Hardt & Sun, "Test-Time Training on Nearest Neighbors for Large
 * Language Models", ICLR 2024): per prompt, retrieve the K corpus documents
 * nearest to the prompt and fine-tune a fresh LoRA adapter on them, one
 * gradient step per neighbour (nearest first), then run the prompt through
 * base + adapter.
 *
 * As a runnable model (lm.h): ex_ttt_open embeds and tokenizes the corpus
 * once; every lm_begin(prompt) is one TTT run:
 *   1. query: the prompt's first query_tokens tokens, decoded and re-embedded
 *      (as lm_experts.c does), q = φ(x*);
 *   2. retrieval: the K documents of largest cosine similarity q·φ(d)
 *      (ex_nearest);
 *   3. training: the adapter is reset (A from the seed, B = 0, so it starts
 *      at the base) and AdamW is reset; for each neighbour, nearest first,
 *      steps_per_neighbor steps of batch 1 on its token windows (step s uses
 *      window s mod windows), constant learning rate, gradient clipping 1.0
 *      (nearest_last reverses the order: the nearest document is seen last);
 *   4. inference: the trained A, B are wired into the inference model as
 *      run-time low-rank terms (weights.h LowRank, y = W x + (α/r) B A x), so
 *      lm_forward runs base + adapter without copying or merging weights.
 *
 * Not here: the training kernels (src/train), the forward pass (src/model),
 * argument parsing and output (src/cli/ttt.c). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "experts/experts.h"
#include "model/lm_impl.h"
#include "train/adamw.h"
#include "train/lora.h"
#include "train/train_model.h"
#include "util/err.h"

void ex_ttt_defaults(ex_ttt_opts *o) {
    memset(o, 0, sizeof *o);
    o->neighbors = 50;
    o->steps_per_neighbor = 1;
    o->lora_rank = 8;
    o->lr = 2e-4f;
    o->train_ctx = 512;
    o->doc_tokens = EX_DOC_TOKENS;
    o->query_tokens = EX_QUERY_TOKENS;
}

/* Top-k by cosine similarity of unit vectors: s_i = q·X_i, largest first,
 * lower index on ties; NaN similarities rank below every number. Kept in
 * idx/sim by insertion (k is small next to n). */
int ex_nearest(const float *X, int n, int d, const float *q, int k, int *idx, float *sim) {
    if (k > n) k = n;
    if (k < 1) return 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * d;
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)x[j] * q[j];
        float v = isnan(s) ? -INFINITY : (float)s;
        if (m == k && !(v > sim[m - 1])) continue; /* ties keep the earlier index */
        int p = m < k ? m++ : k - 1;
        while (p > 0 && v > sim[p - 1]) {
            sim[p] = sim[p - 1];
            idx[p] = idx[p - 1];
            p--;
        }
        sim[p] = v;
        idx[p] = i;
    }
    return m;
}

typedef struct ttt_lm {
    ex_ttt_opts o;          /* pointers inside are not used after open */
    int K;                  /* neighbours per prompt: min(o.neighbors, ndocs) */
    Model base;             /* inference: the mmapped base, deltas -> lora */
    RunState st;
    LowRankTerm *terms;     /* (n_layers, 7) one term per adapted projection */
    tm_model tm;            /* training: f32 master copy of the base */
    tr_lora lora;
    float *lora_init;       /* (lora.ps.n) the adapter at initialisation */
    tr_adamw opt;
    ex_embedder emb;
    int ndocs, dim;
    float *X;               /* (ndocs, dim) unit document embeddings */
    int64_t *doc_off;       /* (ndocs + 1) offsets into doc_ids */
    int32_t *doc_ids;       /* training tokens of every document */
    int T;                  /* training window (inputs per step) */
    int32_t *tk, *tg;       /* (T) one step's inputs and targets */
    int *nb;                /* (K) neighbours of the last prompt, nearest first */
    float *nb_sim;          /* (K) their similarities */
    ex_ttt_stats stats;
} ttt_lm;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define logf_(o, ...) ex_logf((o)->on_log, (o)->user, __VA_ARGS__)

static void ttt_free(lm *m) {
    ttt_lm *x = m->impl;
    if (!x) return;
    model_state_free(&x->st);
    model_close(&x->base);
    free(x->terms);
    tm_free(&x->tm);
    tr_lora_free(&x->lora);
    free(x->lora_init);
    tr_adamw_free(&x->opt);
    if (x->emb.tok) ex_embedder_close(&x->emb);
    free(x->X), free(x->doc_off), free(x->doc_ids), free(x->tk), free(x->tg), free(x->nb), free(x->nb_sim);
    free(x);
    m->impl = NULL;
}

/* Point (on) or not (off) every adapted projection of the inference model at
 * the adapter. */
static void wire_adapter(ttt_lm *x, bool on) {
    int L = x->base.config.n_layers;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LW_NMAT; k++) {
            LowRankTerm *t = &x->terms[l * LW_NMAT + k];
            x->base.weights.layers[l].delta[k] = (LowRank){t, on && t->A ? 1 : 0};
        }
}

/* One step of batch 1 on window w of document i. */
static float train_step(ttt_lm *x, int i, int64_t w) {
    const int32_t *ids = x->doc_ids + x->doc_off[i];
    int64_t n = x->doc_off[i + 1] - x->doc_off[i], T = x->T;
    int64_t nwin = n > 1 ? (n - 2) / T + 1 : 1; /* windows of T targets over n - 1 targets */
    int64_t s = (w % nwin) * T;
    for (int64_t t = 0; t < T; t++) {
        x->tk[t] = s + t < n ? ids[s + t] : 0;
        x->tg[t] = s + t + 1 < n ? ids[s + t + 1] : -1;
    }
    tr_pset *ps = &x->lora.ps;
    tr_pset_zero_grad(ps);
    float loss = tm_forward(&x->tm, x->tk, x->tg);
    tm_backward(&x->tm);
    tr_clip_grad_norm(ps, 1.0);
    tr_adamw_step(&x->opt, ps, x->o.lr);
    return loss;
}

/* One TTT run for the prompt ids[0..n): retrieve, reset, train, wire. */
static int ttt_begin(lm *m, const int32_t *ids, int n, alloy_err *err) {
    ttt_lm *x = m->impl;
    double t0 = now_s();
    wire_adapter(x, false); /* a failed begin leaves the plain base */
    int nq = n < x->o.query_tokens ? n : x->o.query_tokens;
    char *text = NULL;
    size_t len = 0;
    if (nq < 1) return alloy_fail(err, "ttt: empty prompt: there is nothing to retrieve neighbours for");
    /* the paper decodes the prompt prefix and re-encodes it for its encoder */
    if (tok_decode(m->tok, ids, (size_t)nq, true, &text, &len, err)) return -1;
    tok_ids q_ids = {0};
    float *q = malloc((size_t)x->dim * sizeof *q);
    int rc = q ? 0 : alloy_fail(err, "ttt: out of memory");
    if (!rc && tok_encode(x->emb.tok, text, len, false, &q_ids, err)) rc = -1;
    free(text);
    if (!rc && q_ids.n == 0)
        rc = alloy_fail(err, "ttt: the prompt's first %d tokens hold no text (only special tokens?); nothing to "
                        "retrieve neighbours for", nq);
    int nqe = q_ids.n < (size_t)x->o.query_tokens ? (int)q_ids.n : x->o.query_tokens;
    if (!rc) rc = ex_embed_ids(&x->emb, q_ids.v, nqe, q, err);
    tok_ids_free(&q_ids);
    int k = rc ? 0 : ex_nearest(x->X, x->ndocs, x->dim, q, x->K, x->nb, x->nb_sim);
    free(q);
    if (rc) return -1;
    double t1 = now_s();

    /* a fresh adapter (B = 0: the base model) and optimizer */
    memcpy(x->lora.ps.data, x->lora_init, x->lora.ps.n * sizeof(float));
    memset(x->opt.m, 0, x->opt.n * sizeof(float));
    memset(x->opt.v, 0, x->opt.n * sizeof(float));
    x->opt.t = 0;
    int64_t steps = 0;
    double loss_sum = 0;
    for (int j = 0; j < k; j++)
        for (int s = 0; s < x->o.steps_per_neighbor; s++) {
            int nb = x->nb[x->o.nearest_last ? k - 1 - j : j];
            float l = train_step(x, nb, s);
            if (!isfinite(l))
                return alloy_fail(err, "ttt: training diverged at step %lld (neighbour %d, loss %g); lower --lr",
                                  (long long)steps + 1, nb, (double)l);
            loss_sum += l;
            steps++;
        }
    wire_adapter(x, steps > 0);
    double t2 = now_s();

    ex_ttt_stats *st = &x->stats;
    st->prompts++;
    st->neighbors = k;
    st->steps = steps;
    st->mean_loss = steps ? loss_sum / (double)steps : NAN;
    st->retrieval_s = t1 - t0;
    st->training_s = t2 - t1;
    st->total_retrieval_s += t1 - t0;
    st->total_training_s += t2 - t1;
    st->idx = x->nb;
    st->sim = x->nb_sim;
    return 0;
}

static int ttt_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err) {
    ttt_lm *x = m->impl;
    return model_forward(&x->base, &x->st, tokens, n, pos, logits, all, err);
}

static const lm_ops TTT_OPS = {ttt_begin, ttt_forward, ttt_free};

void ex_ttt_stats_get(const lm *m, ex_ttt_stats *s) {
    const ttt_lm *x = m->impl;
    *s = x->stats;
}

/* Embed every document (first doc_tokens tokens) and tokenize it for
 * training (special tokens as the tokenizer adds them, eos appended: as
 * train/data.c does for a text file). */
static int prepare_corpus(ttt_lm *x, lm *m, char **docs, alloy_err *err) {
    const ex_ttt_opts *o = &x->o;
    double t0 = now_s();
    for (int i = 0; i < x->ndocs; i++)
        if (ex_embed_text(&x->emb, docs[i], strlen(docs[i]), x->X + (size_t)i * x->dim, err))
            return alloy_wrap(err, "corpus %s, document %d: ", o->corpus, i);
    double t1 = now_s();
    size_t cap = 0;
    x->doc_off[0] = 0;
    int vocab = x->tm.cfg.vocab;
    int64_t longest = 0;
    for (int i = 0; i < x->ndocs; i++) {
        tok_ids ids = {0};
        if (tok_encode(m->tok, docs[i], strlen(docs[i]), true, &ids, err) ||
            (tok_eos(m->tok) >= 0 && tok_ids_push(&ids, tok_eos(m->tok), err))) {
            tok_ids_free(&ids);
            return alloy_wrap(err, "corpus %s, document %d: ", o->corpus, i);
        }
        for (size_t t = 0; t < ids.n; t++)
            if (ids.v[t] < 0 || ids.v[t] >= vocab) {
                tok_ids_free(&ids);
                return alloy_fail(err, "corpus %s, document %d: token id %d is outside the vocabulary of %s (%d)",
                                  o->corpus, i, ids.v[t], o->base_dir, vocab);
            }
        size_t need = (size_t)x->doc_off[i] + ids.n;
        if (need > cap) {
            size_t nc = need * 2 + 1024;
            int32_t *p = realloc(x->doc_ids, nc * sizeof *p);
            if (!p) {
                tok_ids_free(&ids);
                return alloy_fail(err, "corpus %s: out of memory for the tokens", o->corpus);
            }
            x->doc_ids = p, cap = nc;
        }
        memcpy(x->doc_ids + x->doc_off[i], ids.v, ids.n * sizeof(int32_t));
        x->doc_off[i + 1] = x->doc_off[i] + (int64_t)ids.n;
        if ((int64_t)ids.n - 1 > longest) longest = (int64_t)ids.n - 1;
        tok_ids_free(&ids);
    }
    /* a window needs no more inputs than the longest document has targets */
    if (longest < 1) longest = 1;
    if (x->T > longest) x->T = (int)longest;
    x->stats.embed_s = t1 - t0;
    x->stats.tokenize_s = now_s() - t1;
    return 0;
}

int ex_ttt_open(lm **out, const ex_ttt_opts *o, alloy_err *err) {
    *out = NULL;
    if (!o->base_dir || !o->corpus) return alloy_fail(err, "ttt: need a base model and a corpus");
    if (o->neighbors < 1) return alloy_fail(err, "ttt: --neighbors must be at least 1 (got %d)", o->neighbors);
    if (o->steps_per_neighbor < 0)
        return alloy_fail(err, "ttt: --steps-per-neighbor must be >= 0 (got %d)", o->steps_per_neighbor);
    if (o->lora_rank < 1) return alloy_fail(err, "ttt: --lora-rank must be at least 1 (got %d)", o->lora_rank);
    if (!(o->lr > 0) || !isfinite(o->lr)) return alloy_fail(err, "ttt: --lr must be a positive number");
    if (o->train_ctx < 1) return alloy_fail(err, "ttt: --train-ctx must be at least 1 (got %d)", o->train_ctx);
    if (o->query_tokens < 1 || o->doc_tokens < 1) return alloy_fail(err, "ttt: query/document tokens must be >= 1");
    if (o->threads > 0) {
        omp_set_num_threads(o->threads);
        openblas_set_num_threads(o->threads);
    }
    lm *m = calloc(1, sizeof *m);
    ttt_lm *x = calloc(1, sizeof *x);
    if (!m || !x) {
        free(m), free(x);
        return alloy_fail(err, "ttt: out of memory");
    }
    m->impl = x;
    m->ops = &TTT_OPS;
    x->o = *o;
    char **docs = NULL;
    int ndocs = 0;
    if (ex_corpus_read(o->corpus, &docs, &ndocs, err)) goto fail;
    x->ndocs = ndocs;
    x->K = o->neighbors < ndocs ? o->neighbors : ndocs;
    x->stats.ndocs = ndocs;

    /* inference model and tokenizer */
    if (model_open(&x->base, o->base_dir, err)) goto fail;
    const Config *c = &x->base.config;
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : (c->max_pos < 4096 ? c->max_pos : 4096);
    if (n_ctx > c->max_pos) n_ctx = c->max_pos;
    int max_batch = o->max_batch > 0 ? o->max_batch : 512;
    if (model_state_alloc(&x->st, c, n_ctx, max_batch, err)) goto fail;
    if (tok_load(&m->tok, o->base_dir, err)) goto fail;

    /* training model and the adapter on every projection */
    if (tm_load(&x->tm, o->base_dir, false, err)) goto fail;
    unsigned targets = 0;
    if (tr_lora_parse_targets("all-linear", &targets, err)) goto fail;
    int in[TM_NLIN], outd[TM_NLIN];
    tm_linear_dims(&x->tm.cfg, in, outd);
    float alpha = o->lora_alpha > 0 ? o->lora_alpha : 2.0f * (float)o->lora_rank;
    if (tr_lora_init(&x->lora, x->tm.cfg.n_layers, in, outd, targets, o->lora_rank, alpha, o->seed, err)) goto fail;
    tm_set_lora(&x->tm, &x->lora);
    if (tr_adamw_init(&x->opt, x->lora.ps.n, 0.0f, err)) goto fail;
    x->lora_init = malloc(x->lora.ps.n * sizeof(float));
    x->terms = calloc((size_t)c->n_layers * LW_NMAT, sizeof *x->terms);
    if (!x->lora_init || !x->terms) {
        alloy_fail(err, "ttt: out of memory for the adapter");
        goto fail;
    }
    memcpy(x->lora_init, x->lora.ps.data, x->lora.ps.n * sizeof(float));
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LW_NMAT; k++) /* LW_Q.. and TM_Q.. share the projection order */
            x->terms[l * LW_NMAT + k] = (LowRankTerm){tr_lora_A(&x->lora, l, k), tr_lora_B(&x->lora, l, k),
                                                      x->lora.rank, x->lora.scale};
    wire_adapter(x, false);

    /* corpus: embeddings and training tokens */
    /* the base embeds by default: share its weights rather than load them twice */
    const char *embed_dir = o->embed_dir ? o->embed_dir : o->base_dir;
    if (o->embed_dir ? ex_embedder_open(&x->emb, o->embed_dir, o->doc_tokens, err)
                     : ex_embedder_open_shared(&x->emb, &x->base, o->base_dir, o->doc_tokens, err))
        goto fail;
    x->dim = x->emb.dim;
    x->X = malloc((size_t)ndocs * x->dim * sizeof *x->X);
    x->doc_off = malloc((size_t)(ndocs + 1) * sizeof *x->doc_off);
    x->nb = malloc((size_t)x->K * sizeof *x->nb);
    x->nb_sim = malloc((size_t)x->K * sizeof *x->nb_sim);
    if (!x->X || !x->doc_off || !x->nb || !x->nb_sim) {
        alloy_fail(err, "ttt: out of memory for %d documents", ndocs);
        goto fail;
    }
    logf_(o, "embedding %d documents with %s (first %d tokens)", ndocs, embed_dir, x->emb.max_tokens);
    x->T = o->train_ctx < x->tm.cfg.max_pos ? o->train_ctx : x->tm.cfg.max_pos;
    if (prepare_corpus(x, m, docs, err)) goto fail;
    ex_corpus_free(docs, ndocs);
    docs = NULL;
    x->tk = malloc((size_t)x->T * sizeof *x->tk);
    x->tg = malloc((size_t)x->T * sizeof *x->tg);
    if (!x->tk || !x->tg) {
        alloy_fail(err, "ttt: out of memory");
        goto fail;
    }
    if (tm_alloc_acts(&x->tm, 1, x->T, err)) goto fail;
    x->stats.train_ctx = x->T;

    m->vocab = c->vocab_size;
    m->n_ctx = n_ctx;
    snprintf(m->desc, sizeof m->desc, "TTT over %s (%s, %d layers): %d neighbours of %d documents, %d step(s) each, "
             "LoRA r=%d", o->base_dir, model_arch_name(c->arch), c->n_layers, x->K, ndocs, o->steps_per_neighbor,
             o->lora_rank);
    *out = m;
    return 0;
fail:
    ex_corpus_free(docs, ndocs);
    lm_free(m);
    return -1;
}
