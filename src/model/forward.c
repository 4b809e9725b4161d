/* forward.c — the Qwen2 / Llama / Mistral forward pass (see forward.h). */
#include "model/forward.h"

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
                const float *k = kc + (size_t)j * kv_dim + (size_t)kvh * hd;
                float dot = 0;
                for (int i = 0; i < hd; i++) dot += qh[i] * k[i];
                att[j - start] = dot * scale;
            }
            k_softmax(att, p - start + 1);
            float *o = out + (size_t)t * q_dim + (size_t)h * hd;
            memset(o, 0, (size_t)hd * sizeof(float));
            for (int j = start; j <= p; j++) {
                const float *v = vc + (size_t)j * kv_dim + (size_t)kvh * hd;
                float a = att[j - start];
                for (int i = 0; i < hd; i++) o[i] += a * v[i];
            }
        }
    }
}

/* One chunk of n <= max_batch tokens through every layer; the final-norm
 * output lands in s->xb (n, dim). */
static void forward_chunk(const Model *m, RunState *s, const int32_t *tokens, int n, int pos) {
    const Config *c = &m->config;
    const Weights *w = &m->weights;
    int dim = c->dim, hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    int hidden = c->hidden_dim;
    float *wb = s->wbuf;
    size_t wbn = s->wbuf_floats;

    for (int t = 0; t < n; t++) k_row_f32(s->x + (size_t)t * dim, &w->embed, tokens[t]);

    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *L = &w->layers[l];
        float *kc = s->key_cache + (size_t)l * s->n_ctx * kv_dim;
        float *vc = s->value_cache + (size_t)l * s->n_ctx * kv_dim;
        float *k_new = kc + (size_t)pos * kv_dim, *v_new = vc + (size_t)pos * kv_dim;

        /* attention block: rmsnorm -> q, k, v -> RoPE -> attention -> o -> residual */
        for (int t = 0; t < n; t++)
            k_rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ln1, dim, c->norm_eps);
        k_matmul(s->q, q_dim, s->xb, n, &L->wq, wb, wbn);
        k_matmul(k_new, kv_dim, s->xb, n, &L->wk, wb, wbn);
        k_matmul(v_new, kv_dim, s->xb, n, &L->wv, wb, wbn);
        add_bias(s->q, L->bq, n, q_dim);
        add_bias(k_new, L->bk, n, kv_dim);
        add_bias(v_new, L->bv, n, kv_dim);
        for (int t = 0; t < n; t++) {
            k_rope(s->q + (size_t)t * q_dim, c->n_heads, hd, pos + t, m->rope_inv_freq);
            k_rope(k_new + (size_t)t * kv_dim, c->n_kv_heads, hd, pos + t, m->rope_inv_freq);
        }
        attention(c, s, s->xb, s->q, kc, vc, n, pos, model_layer_window(c, l));
        k_matmul(s->xb2, dim, s->xb, n, &L->wo, wb, wbn);
        add_bias(s->xb2, L->bo, n, dim);
        for (size_t i = 0; i < (size_t)n * dim; i++) s->x[i] += s->xb2[i];

        /* MLP block: rmsnorm -> down(silu(gate(x)) * up(x)) -> residual */
        for (int t = 0; t < n; t++)
            k_rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ln2, dim, c->norm_eps);
        k_matmul(s->hb, hidden, s->xb, n, &L->w_gate, wb, wbn);
        k_matmul(s->hb2, hidden, s->xb, n, &L->w_up, wb, wbn);
        k_swiglu(s->hb, s->hb2, (size_t)n * hidden);
        k_matmul(s->xb2, dim, s->hb, n, &L->w_down, wb, wbn);
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
