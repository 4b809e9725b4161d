/* forward.c — the Qwen2 / Llama / Mistral forward pass (see forward.h). */
#include "model/forward.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "util/err.h"

/* Scratch for converted weight rows: 4 Mi floats (16 MiB), at least one row. */
#define WBUF_FLOATS ((size_t)4 << 20)

int model_state_alloc(RunState *s, const Config *c, int n_ctx, int max_batch, alloy_err *err) {
    memset(s, 0, sizeof *s);
    if (n_ctx < 1 || n_ctx > c->max_pos)
        return alloy_fail(err, "context of %d positions is outside 1..%d (max_position_embeddings)", n_ctx,
                          c->max_pos);
    if (max_batch < 1) max_batch = 1;
    if (max_batch > n_ctx) max_batch = n_ctx;
    size_t B = (size_t)max_batch, q_dim = (size_t)c->n_heads * c->head_dim;
    size_t kv = (size_t)c->n_layers * n_ctx * c->n_kv_heads * c->head_dim;
    size_t xb = q_dim > (size_t)c->dim ? q_dim : (size_t)c->dim;
    size_t widest = (size_t)(c->dim > c->hidden_dim ? c->dim : c->hidden_dim);
    if (q_dim > widest) widest = q_dim;
    s->n_ctx = n_ctx;
    s->max_batch = max_batch;
    s->wbuf_floats = WBUF_FLOATS > widest ? WBUF_FLOATS : widest;
    s->x = malloc(B * c->dim * sizeof(float));
    s->xb = malloc(B * xb * sizeof(float));
    s->xb2 = malloc(B * c->dim * sizeof(float));
    s->q = malloc(B * q_dim * sizeof(float));
    s->hb = malloc(B * c->hidden_dim * sizeof(float));
    s->hb2 = malloc(B * c->hidden_dim * sizeof(float));
    s->att = malloc((size_t)c->n_heads * n_ctx * sizeof(float));
    s->key_cache = malloc(kv * sizeof(float));
    s->value_cache = malloc(kv * sizeof(float));
    s->wbuf = max_batch > 1 ? malloc(s->wbuf_floats * sizeof(float)) : NULL;
    if (!s->x || !s->xb || !s->xb2 || !s->q || !s->hb || !s->hb2 || !s->att || !s->key_cache ||
        !s->value_cache || (max_batch > 1 && !s->wbuf)) {
        model_state_free(s);
        return alloy_fail(err, "out of memory for the run state (%d positions, KV cache %.1f MiB)", n_ctx,
                          2.0 * kv * sizeof(float) / (1 << 20));
    }
    return 0;
}

void model_state_free(RunState *s) {
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->q);
    free(s->hb);
    free(s->hb2);
    free(s->att);
    free(s->key_cache);
    free(s->value_cache);
    free(s->wbuf);
    free(s->lrbuf);
    memset(s, 0, sizeof *s);
}

static void add_bias(float *y, const float *b, int n, int dim) {
    if (!b) return;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) y[(size_t)t * dim + i] += b[i];
}

/* Causal grouped-query attention of n queries (positions pos..pos+n-1)
 * against the cached keys/values of layer l; result in out (n, q_dim). */
static void attention(const Config *c, RunState *s, float *out, const float *q, const float *kc,
                      const float *vc, int n, int pos, int window) {
    int hd = c->head_dim, kv_dim = c->n_kv_heads * hd, q_dim = c->n_heads * hd;
    int group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(dynamic, 1) if (n * pos + n * n > 64)
    for (int h = 0; h < c->n_heads; h++) {
        float *att = s->att + (size_t)h * s->n_ctx;
        int kvh = h / group;
        for (int t = 0; t < n; t++) {
            int p = pos + t;
            int start = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
            const float *qh = q + (size_t)t * q_dim + (size_t)h * hd;
            for (int j = start; j <= p; j++) {
                att[j - start] = k_dot(qh, kc + (size_t)j * kv_dim + (size_t)kvh * hd, hd) * scale;
            }
            k_softmax(att, p - start + 1);
            float *o = out + (size_t)t * q_dim + (size_t)h * hd;
            memset(o, 0, (size_t)hd * sizeof(float));
            for (int j = start; j <= p; j++) {
                k_axpy(o, att[j - start], vc + (size_t)j * kv_dim + (size_t)kvh * hd, hd);
            }
        }
    }
}

/* Decode-sized batches: all terms of a projection in two parallel passes
 * (t = A_j x for every term, then out_i += Σ_j c_j B_j[i,:] t_j) instead of
 * two BLAS calls per term, whose fixed cost dominates at one token. */
#define LOWRANK_FUSED_MAX_TOKENS 4

static void lowrank_fused(float *out, int ldo, const float *x, int n, const Mat *m, const LowRank *d, float *t) {
    int R = 0;
    for (int j = 0; j < d->n; j++) R += d->terms[j].rank;
    for (int tok = 0; tok < n; tok++) {
        const float *xt = x + (size_t)tok * m->cols;
        float *tt = t + (size_t)tok * R;
#pragma omp parallel for schedule(static) if (R * m->cols > 32768)
        for (int q = 0; q < R; q++) {
            int j = 0, off = q;
            while (off >= d->terms[j].rank) off -= d->terms[j++].rank;
            tt[q] = k_dot(d->terms[j].A + (size_t)off * m->cols, xt, m->cols);
        }
        float *ot = out + (size_t)tok * ldo;
#pragma omp parallel for schedule(static) if (R * m->rows > 32768)
        for (int i = 0; i < m->rows; i++) {
            float acc = 0.0f;
            for (int j = 0, off = 0; j < d->n; off += d->terms[j++].rank) {
                const LowRankTerm *lt = &d->terms[j];
                acc += lt->scale * k_dot(lt->B + (size_t)i * lt->rank, tt + off, lt->rank);
            }
            ot[i] += acc;
        }
    }
}

/* out (n, ldo) = x W^T for the n rows of x (n, m->cols), plus the run-time
 * low-rank terms when there are any (LoRA, Hu et al. 2021: h = W x + (α/r) B A x):
 *   out += c_j (x A_j^T) B_j^T */
static void project(float *out, int ldo, const float *x, int n, const Mat *m, const LowRank *d, RunState *s) {
    k_matmul(out, ldo, x, n, m, s->wbuf, s->wbuf_floats);
    if (d->n == 0) return;
    if (n <= LOWRANK_FUSED_MAX_TOKENS) {
        lowrank_fused(out, ldo, x, n, m, d, s->lrbuf);
        return;
    }
    for (int j = 0; j < d->n; j++) {
        const LowRankTerm *t = &d->terms[j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, t->rank, m->cols, 1.0f, x, m->cols, t->A, m->cols,
                    0.0f, s->lrbuf, t->rank);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m->rows, t->rank, t->scale, s->lrbuf, t->rank,
                    t->B, t->rank, 1.0f, out, ldo);
    }
}

/* One chunk of n <= max_batch tokens through every layer; the final-norm
 * output lands in s->xb (n, dim). */
static void forward_chunk(const Model *m, RunState *s, const int32_t *tokens, int n, int pos) {
    const Config *c = &m->config;
    const Weights *w = &m->weights;
    int dim = c->dim, hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    int hidden = c->hidden_dim;

    for (int t = 0; t < n; t++) k_row_f32(s->x + (size_t)t * dim, &w->embed, tokens[t]);

    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *L = &w->layers[l];
        float *kc = s->key_cache + (size_t)l * s->n_ctx * kv_dim;
        float *vc = s->value_cache + (size_t)l * s->n_ctx * kv_dim;
        float *k_new = kc + (size_t)pos * kv_dim, *v_new = vc + (size_t)pos * kv_dim;

        /* attention block: rmsnorm -> q, k, v -> RoPE -> attention -> o -> residual */
        for (int t = 0; t < n; t++)
            k_rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ln1, dim, c->norm_eps);
        project(s->q, q_dim, s->xb, n, &L->wq, &L->delta[LW_Q], s);
        project(k_new, kv_dim, s->xb, n, &L->wk, &L->delta[LW_K], s);
        project(v_new, kv_dim, s->xb, n, &L->wv, &L->delta[LW_V], s);
        add_bias(s->q, L->bq, n, q_dim);
        add_bias(k_new, L->bk, n, kv_dim);
        add_bias(v_new, L->bv, n, kv_dim);
        for (int t = 0; t < n; t++) {
            k_rope(s->q + (size_t)t * q_dim, c->n_heads, hd, pos + t, m->rope_inv_freq);
            k_rope(k_new + (size_t)t * kv_dim, c->n_kv_heads, hd, pos + t, m->rope_inv_freq);
        }
        attention(c, s, s->xb, s->q, kc, vc, n, pos, model_layer_window(c, l));
        project(s->xb2, dim, s->xb, n, &L->wo, &L->delta[LW_O], s);
        add_bias(s->xb2, L->bo, n, dim);
        for (size_t i = 0; i < (size_t)n * dim; i++) s->x[i] += s->xb2[i];

        /* MLP block: rmsnorm -> down(silu(gate(x)) * up(x)) -> residual */
        for (int t = 0; t < n; t++)
            k_rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ln2, dim, c->norm_eps);
        project(s->hb, hidden, s->xb, n, &L->w_gate, &L->delta[LW_GATE], s);
        project(s->hb2, hidden, s->xb, n, &L->w_up, &L->delta[LW_UP], s);
        k_swiglu(s->hb, s->hb2, (size_t)n * hidden);
        project(s->xb2, dim, s->hb, n, &L->w_down, &L->delta[LW_DOWN], s);
        for (size_t i = 0; i < (size_t)n * dim; i++) s->x[i] += s->xb2[i];
    }
    for (int t = 0; t < n; t++)
        k_rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, w->ln_f, dim, c->norm_eps);
}

int model_forward(const Model *m, RunState *s, const int32_t *tokens, int n, int pos, float *logits,
                  bool all_logits, alloy_err *err) {
    const Config *c = &m->config;
    if (n < 1) return alloy_fail(err, "forward: no tokens");
    if (pos < 0 || pos + n > s->n_ctx)
        return alloy_fail(err, "forward: positions %d..%d exceed the context of %d", pos, pos + n - 1, s->n_ctx);
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return alloy_fail(err, "forward: token id %d at index %d is outside the vocabulary (size %d)",
                              (int)tokens[t], t, c->vocab_size);
    /* scratch: (max_batch, rank) for one term at a time, or (few tokens, Σ ranks) fused */
    size_t need = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LW_NMAT; k++) {
            const LowRank *d = &m->weights.layers[l].delta[k];
            size_t total = 0;
            for (int j = 0; j < d->n; j++) {
                const LowRankTerm *t = &d->terms[j];
                if (t->rank < 1 || !t->A || !t->B)
                    return alloy_fail(err, "forward: layer %d projection %d: malformed low-rank term %d", l, k, j);
                total += (size_t)t->rank;
                if ((size_t)t->rank * s->max_batch > need) need = (size_t)t->rank * s->max_batch;
            }
            if (total * LOWRANK_FUSED_MAX_TOKENS > need) need = total * LOWRANK_FUSED_MAX_TOKENS;
        }
    if (need > s->lrbuf_floats) {
        float *p = realloc(s->lrbuf, need * sizeof *p);
        if (!p) return alloy_fail(err, "forward: out of memory for the low-rank terms");
        s->lrbuf = p, s->lrbuf_floats = need;
    }
    int vocab = c->vocab_size;
    for (int t0 = 0; t0 < n; t0 += s->max_batch) {
        int nb = n - t0 < s->max_batch ? n - t0 : s->max_batch;
        forward_chunk(m, s, tokens + t0, nb, pos + t0);
        if (all_logits)
            k_matmul(logits + (size_t)t0 * vocab, vocab, s->xb, nb, &m->weights.lm_head, s->wbuf, s->wbuf_floats);
        else if (t0 + nb == n)
            k_matvec(logits, s->xb + (size_t)(nb - 1) * c->dim, &m->weights.lm_head);
    }
    return 0;
}
