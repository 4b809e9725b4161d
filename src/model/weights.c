/* weights.c — pointers over a mapped checkpoint (see weights.h). */
#include "model/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/dtype.h"
#include "util/err.h"

static const struct {
    tensor_kind kind;
    const char *suffix; /* after "model.layers.N." */
    int rows, cols;     /* 'd' dim, 'h' hidden, 'q' q_dim, 'k' kv_dim, 0 = none (1-D) */
} LAYER_TENSORS[] = {
    {T_WQ, "self_attn.q_proj.weight", 'q', 'd'}, {T_BQ, "self_attn.q_proj.bias", 'q', 0},
    {T_WK, "self_attn.k_proj.weight", 'k', 'd'}, {T_BK, "self_attn.k_proj.bias", 'k', 0},
    {T_WV, "self_attn.v_proj.weight", 'k', 'd'}, {T_BV, "self_attn.v_proj.bias", 'k', 0},
    {T_WO, "self_attn.o_proj.weight", 'd', 'q'}, {T_BO, "self_attn.o_proj.bias", 'd', 0},
    {T_GATE, "mlp.gate_proj.weight", 'h', 'd'},  {T_UP, "mlp.up_proj.weight", 'h', 'd'},
    {T_DOWN, "mlp.down_proj.weight", 'd', 'h'},  {T_LN1, "input_layernorm.weight", 'd', 0},
    {T_LN2, "post_attention_layernorm.weight", 'd', 0},
};
#define NLAYER_TENSORS (int)(sizeof LAYER_TENSORS / sizeof LAYER_TENSORS[0])

static int64_t extent(const Config *c, int code) {
    switch (code) {
    case 'd': return c->dim;
    case 'h': return c->hidden_dim;
    case 'q': return (int64_t)c->n_heads * c->head_dim;
    case 'k': return (int64_t)c->n_kv_heads * c->head_dim;
    default: return 0;
    }
}

static void add(TensorSpec *specs, int *n, const char *name, tensor_kind kind, int layer, int64_t r, int64_t c) {
    if (specs) {
        TensorSpec *s = &specs[*n];
        snprintf(s->name, sizeof s->name, "%s", name);
        s->kind = kind;
        s->layer = layer;
        s->ndim = c ? 2 : 1;
        s->shape[0] = r;
        s->shape[1] = c;
    }
    (*n)++;
}

int model_tensor_specs(const Config *c, TensorSpec *specs) {
    int n = 0;
    add(specs, &n, "model.embed_tokens.weight", T_EMBED, -1, c->vocab_size, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        for (int i = 0; i < NLAYER_TENSORS; i++) {
            tensor_kind k = LAYER_TENSORS[i].kind;
            if ((k == T_BQ || k == T_BK || k == T_BV) && !c->qkv_bias) continue;
            if (k == T_BO && !c->o_bias) continue;
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, LAYER_TENSORS[i].suffix);
            add(specs, &n, name, k, l, extent(c, LAYER_TENSORS[i].rows), extent(c, LAYER_TENSORS[i].cols));
        }
    }
    add(specs, &n, "model.norm.weight", T_NORM, -1, c->dim, 0);
    if (!c->tied) add(specs, &n, "lm_head.weight", T_LM_HEAD, -1, c->vocab_size, c->dim);
    return n;
}

/* Check t against spec s; the message names the checkpoint and the tensor. */
static int check(const st_model *st, const st_tensor *t, const TensorSpec *s, alloy_err *err) {
    if (!t)
        return alloy_fail(err, "%s: missing tensor '%s'", st->source, s->name);
    if (t->dtype != ALLOY_F32 && t->dtype != ALLOY_BF16 && t->dtype != ALLOY_F16)
        return alloy_fail(err, "%s: tensor '%s' has dtype %s (alloy runs F32, BF16, F16)", st->source, s->name,
                          dtype_name(t->dtype));
    bool ok = t->ndim == s->ndim && t->shape[0] == s->shape[0] && (s->ndim == 1 || t->shape[1] == s->shape[1]);
    if (!ok) {
        if (s->ndim == 1)
            return alloy_fail(err, "%s: tensor '%s' should have shape [%lld] (from config.json)", st->source,
                              s->name, (long long)s->shape[0]);
        return alloy_fail(err, "%s: tensor '%s' should have shape [%lld, %lld] (from config.json)", st->source,
                          s->name, (long long)s->shape[0], (long long)s->shape[1]);
    }
    return 0;
}

static Mat mat_of(const st_tensor *t) {
    return (Mat){t->data, t->dtype, (int)t->shape[0], (int)t->shape[1]};
}

int model_weights_load(Weights *w, const Config *c, const st_model *st, alloy_err *err) {
    memset(w, 0, sizeof *w);
    int n = model_tensor_specs(c, NULL);
    TensorSpec *specs = malloc((size_t)n * sizeof *specs);
    w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    /* every 1-D tensor, converted to f32 */
    size_t nvec = 0;
    if (specs) {
        model_tensor_specs(c, specs);
        for (int i = 0; i < n; i++)
            if (specs[i].ndim == 1) nvec += (size_t)specs[i].shape[0];
    }
    w->vectors = malloc((nvec ? nvec : 1) * sizeof(float));
    if (!specs || !w->layers || !w->vectors) {
        free(specs);
        model_weights_free(w);
        return alloy_fail(err, "out of memory");
    }
    float *v = w->vectors;
    for (int i = 0; i < n; i++) {
        const TensorSpec *s = &specs[i];
        const st_tensor *t = st_find(st, s->name);
        if (check(st, t, s, err)) {
            free(specs);
            model_weights_free(w);
            return -1;
        }
        const float *vec = NULL;
        if (s->ndim == 1) {
            dtype_to_f32(t->data, t->dtype, v, (size_t)s->shape[0]);
            vec = v;
            v += s->shape[0];
        }
        LayerWeights *L = s->layer >= 0 ? &w->layers[s->layer] : NULL;
        switch (s->kind) {
        case T_EMBED: w->embed = mat_of(t); break;
        case T_WQ: L->wq = mat_of(t); break;
        case T_BQ: L->bq = vec; break;
        case T_WK: L->wk = mat_of(t); break;
        case T_BK: L->bk = vec; break;
        case T_WV: L->wv = mat_of(t); break;
        case T_BV: L->bv = vec; break;
        case T_WO: L->wo = mat_of(t); break;
        case T_BO: L->bo = vec; break;
        case T_GATE: L->w_gate = mat_of(t); break;
        case T_UP: L->w_up = mat_of(t); break;
        case T_DOWN: L->w_down = mat_of(t); break;
        case T_LN1: L->ln1 = vec; break;
        case T_LN2: L->ln2 = vec; break;
        case T_NORM: w->ln_f = vec; break;
        case T_LM_HEAD: w->lm_head = mat_of(t); break;
        }
    }
    if (c->tied) w->lm_head = w->embed;
    free(specs);
    return 0;
}

void model_weights_free(Weights *w) {
    free(w->layers);
    free(w->vectors);
    memset(w, 0, sizeof *w);
}

int model_open(Model *m, const char *dir, alloy_err *err) {
    memset(m, 0, sizeof *m);
    if (model_config_load(&m->config, dir, err)) return -1;
    /* preloaded into huge pages when it fits: the forward pass streams every weight every token */
    if (st_open_dir_ex(&m->st, dir, ST_OPEN_PRELOAD, err)) return -1;
    if (model_weights_load(&m->weights, &m->config, &m->st, err)) {
        st_close(&m->st);
        memset(m, 0, sizeof *m);
        return -1;
    }
    m->rope_inv_freq = malloc((size_t)(m->config.head_dim / 2) * sizeof(float));
    if (!m->rope_inv_freq) {
        model_close(m);
        return alloy_fail(err, "out of memory");
    }
    model_rope_inv_freq(&m->config, m->rope_inv_freq);
    return 0;
}

void model_close(Model *m) {
    model_weights_free(&m->weights);
    st_close(&m->st);
    free(m->rope_inv_freq);
    memset(m, 0, sizeof *m);
}
