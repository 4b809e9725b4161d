/* train_model.c — the trainable Qwen2/Llama decoder (see train_model.h). */
#include "train/train_model.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "train/layers.h"
#include "util/dtype.h"
#include "util/err.h"

/* ---- config ---- */

static int cfg_int(const cJSON *j, const char *key, int def, int *out, const char *where,
                   alloy_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0) return alloy_fail(err, "%s: missing '%s'", where, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > INT_MAX ||
        v->valuedouble != floor(v->valuedouble))
        return alloy_fail(err, "%s: '%s' must be a positive integer", where, key);
    *out = (int)v->valuedouble;
    return 0;
}

static double cfg_num(const cJSON *j, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static bool cfg_bool(const cJSON *j, const char *key, bool def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

int tm_config_parse(tm_config *c, const cJSON *j, const char *where, alloy_err *err) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(j)) return alloy_fail(err, "%s: not a JSON object", where);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : "llama";
    bool qwen2 = !strcmp(type, "qwen2");
    if (!qwen2 && strcmp(type, "llama") && strcmp(type, "mistral"))
        return alloy_fail(err, "%s: model_type '%s' is not supported for training (qwen2, llama, mistral)",
                          where, type);
    if (cfg_int(j, "vocab_size", -1, &c->vocab, where, err) ||
        cfg_int(j, "hidden_size", -1, &c->dim, where, err) ||
        cfg_int(j, "intermediate_size", -1, &c->hidden, where, err) ||
        cfg_int(j, "num_hidden_layers", -1, &c->n_layers, where, err) ||
        cfg_int(j, "num_attention_heads", -1, &c->n_heads, where, err) ||
        cfg_int(j, "num_key_value_heads", c->n_heads, &c->n_kv_heads, where, err) ||
        cfg_int(j, "head_dim", c->dim / c->n_heads, &c->head_dim, where, err) ||
        cfg_int(j, "max_position_embeddings", INT_MAX, &c->max_pos, where, err))
        return -1;
    if (c->n_heads % c->n_kv_heads)
        return alloy_fail(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                          where, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2) return alloy_fail(err, "%s: head_dim %d must be even", where, c->head_dim);
    c->rope_theta = cfg_num(j, "rope_theta", 10000.0);
    c->norm_eps = (float)cfg_num(j, "rms_norm_eps", 1e-6);
    c->tied = cfg_bool(j, "tie_word_embeddings", false);
    bool attn_bias = cfg_bool(j, "attention_bias", false);
    c->qkv_bias = qwen2 || attn_bias;
    c->o_bias = !qwen2 && attn_bias;
    if (cfg_bool(j, "mlp_bias", false)) return alloy_fail(err, "%s: 'mlp_bias' true is not supported", where);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu"))
        return alloy_fail(err, "%s: hidden_act '%s' is not supported (silu)", where, act->valuestring);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsString(rt)) rt = cJSON_GetObjectItemCaseSensitive(rs, "type");
        const char *rtype = cJSON_IsString(rt) ? rt->valuestring : "?";
        if (!strcmp(rtype, "llama3")) {
            c->rope_llama3 = true;
            c->rope_factor = cfg_num(rs, "factor", 8.0);
            c->rope_low = cfg_num(rs, "low_freq_factor", 1.0);
            c->rope_high = cfg_num(rs, "high_freq_factor", 4.0);
            c->rope_orig_max = cfg_num(rs, "original_max_position_embeddings", 8192);
        } else if (strcmp(rtype, "default")) {
            return alloy_fail(err, "%s: rope_scaling type '%s' is not supported (llama3)", where, rtype);
        }
    }
    c->dtype = ALLOY_F32;
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(j, "torch_dtype");
    if (cJSON_IsString(td) && dtype_parse_torch(td->valuestring, &c->dtype))
        return alloy_fail(err, "%s: unknown torch_dtype '%s'", where, td->valuestring);
    return 0;
}

void tm_linear_dims(const tm_config *c, int in[TM_NLIN], int out[TM_NLIN]) {
    int D = c->dim, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, F = c->hidden;
    int i[TM_NLIN] = {D, D, D, QD, D, D, F}, o[TM_NLIN] = {QD, KD, KD, D, F, F, D};
    memcpy(in, i, sizeof i);
    memcpy(out, o, sizeof o);
}

/* ---- parameters ---- */

/* Declare every tensor in HF order; offsets land in *offs (same order as the
 * fields of tm_params, SIZE_MAX when absent). */
enum { P_EMBED, P_LN1, P_WQ, P_BQ, P_WK, P_BK, P_WV, P_BV, P_WO, P_BO, P_LN2, P_WGATE, P_WUP, P_WDOWN,
       P_LNF, P_LMHEAD, P_COUNT };

static int declare_params(tm_model *m, size_t layer_off[P_COUNT], alloy_err *err) {
    const tm_config *c = &m->cfg;
    int in[TM_NLIN], out[TM_NLIN];
    tm_linear_dims(c, in, out);
    tr_pset *ps = &m->params;
    char name[128];
    size_t first[P_COUNT];
    for (int k = 0; k < P_COUNT; k++) first[k] = SIZE_MAX;
#define ADD(slot, nm, r, co, dec)                                                            \
    do {                                                                                     \
        size_t o_ = tr_pset_add(ps, nm, r, co, dec);                                         \
        if (o_ == (size_t)-1) return alloy_fail(err, "out of memory");                       \
        if (first[slot] == SIZE_MAX) first[slot] = o_;                                       \
    } while (0)
    ADD(P_EMBED, "model.embed_tokens.weight", c->vocab, c->dim, true);
    /* Layer tensors of one kind are declared for all layers together so that
     * each kind is one (L, ...) array, as the struct of pointers promises. */
    static const int lin_slot[TM_NLIN] = {P_WQ, P_WK, P_WV, P_WO, P_WGATE, P_WUP, P_WDOWN};
    static const int bias_slot[TM_NLIN] = {P_BQ, P_BK, P_BV, P_BO, -1, -1, -1};
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        ADD(P_LN1, name, c->dim, 0, false);
    }
    for (int mm = 0; mm < TM_NLIN; mm++) {
        for (int l = 0; l < c->n_layers; l++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, TR_LIN_PARENT[mm], TR_LIN_NAMES[mm]);
            ADD(lin_slot[mm], name, out[mm], in[mm], true);
        }
        bool has_bias = (mm <= TM_V && c->qkv_bias) || (mm == TM_O && c->o_bias);
        if (bias_slot[mm] >= 0 && has_bias)
            for (int l = 0; l < c->n_layers; l++) {
                snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.bias", l, TR_LIN_NAMES[mm]);
                ADD(bias_slot[mm], name, out[mm], 0, false);
            }
    }
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(P_LN2, name, c->dim, 0, false);
    }
    ADD(P_LNF, "model.norm.weight", c->dim, 0, false);
    if (!c->tied) ADD(P_LMHEAD, "lm_head.weight", c->vocab, c->dim, true);
#undef ADD
    memcpy(layer_off, first, sizeof first);
    return 0;
}

static void bind_params(tm_params *p, float *base, const size_t off[P_COUNT]) {
    float **f[P_COUNT] = {&p->embed, &p->ln1, &p->wq, &p->bq, &p->wk, &p->bk, &p->wv, &p->bv, &p->wo,
                          &p->bo, &p->ln2, &p->wgate, &p->wup, &p->wdown, &p->lnf, &p->lm_head};
    for (int k = 0; k < P_COUNT; k++) *f[k] = off[k] == SIZE_MAX ? NULL : base + off[k];
    if (!p->lm_head) p->lm_head = p->embed;
}

int tm_load(tm_model *m, const char *dir, bool train_base, alloy_err *err) {
    memset(m, 0, sizeof *m);
    cJSON *json = ckpt_read_config(dir, err);
    if (!json) return -1;
    char where[1100];
    snprintf(where, sizeof where, "%s/config.json", dir);
    int rc = tm_config_parse(&m->cfg, json, where, err);
    cJSON_Delete(json);
    if (rc) return -1;
    size_t off[P_COUNT];
    if (declare_params(m, off, err) || tr_pset_alloc(&m->params, train_base, err)) goto fail;
    m->train_base = train_base;
    bind_params(&m->p, m->params.data, off);
    if (train_base) bind_params(&m->g, m->params.grad, off);

    st_model st;
    if (st_open_dir(&st, dir, err)) goto fail;
    for (int i = 0; i < m->params.ntensors; i++) {
        const tr_tensor *t = &m->params.t[i];
        const st_tensor *s = st_find(&st, t->name);
        if (!s) {
            alloy_fail(err, "%s: tensor '%s' is missing", dir, t->name);
            st_close(&st);
            goto fail;
        }
        bool ok = s->ndim == t->ndim && s->shape[0] == t->shape[0] && (t->ndim == 1 || s->shape[1] == t->shape[1]);
        if (!ok) {
            alloy_fail(err, "%s: tensor '%s' has shape %s, expected [%lld%s%lld]", dir, t->name,
                       s->ndim == 1 ? "1-D or other" : "of another size", (long long)t->shape[0],
                       t->ndim == 2 ? ", " : "", t->ndim == 2 ? (long long)t->shape[1] : 0LL);
            st_close(&st);
            goto fail;
        }
        if (s->dtype != ALLOY_F32 && s->dtype != ALLOY_BF16 && s->dtype != ALLOY_F16) {
            alloy_fail(err, "%s: tensor '%s' has dtype %s (expected F32, BF16 or F16)", dir, t->name,
                       dtype_name(s->dtype));
            st_close(&st);
            goto fail;
        }
        if (dtype_to_f32(s->data, s->dtype, m->params.data + t->off, t->numel) >= 0) {
            alloy_fail(err, "%s: tensor '%s' has a non-finite value", dir, t->name);
            st_close(&st);
            goto fail;
        }
    }
    st_close(&st);
    return 0;
fail:
    tm_free(m);
    return -1;
}

void tm_free(tm_model *m) {
    tr_pset_free(&m->params);
    free(m->a.res);
    free(m->tokens);
    free(m->targets);
    memset(m, 0, sizeof *m);
}

void tm_set_lora(tm_model *m, tr_lora *lora) { m->lora = lora; }

/* ---- activations ---- */

int tm_alloc_acts(tm_model *m, int B, int T, alloy_err *err) {
    const tm_config *c = &m->cfg;
    tm_acts *a = &m->a;
    free(a->res);
    free(m->tokens);
    free(m->targets);
    memset(a, 0, sizeof *a);
    a->B = B;
    a->T = T;
    size_t N = (size_t)B * T, L = (size_t)c->n_layers, D = (size_t)c->dim, F = (size_t)c->hidden;
    size_t QD = (size_t)c->n_heads * c->head_dim, KD = (size_t)c->n_kv_heads * c->head_dim;
    size_t r = m->lora ? (size_t)m->lora->rank : 0, half = (size_t)c->head_dim / 2;
    size_t big = D > F ? D : F;
    struct { float **p; size_t n; } list[] = {
        {&a->res, (L + 1) * N * D}, {&a->ln1, L * N * D}, {&a->rstd1, L * N},
        {&a->q, L * N * QD}, {&a->k, L * N * KD}, {&a->v, L * N * KD},
        {&a->att, L * B * (size_t)c->n_heads * T * T}, {&a->atty, L * N * QD},
        {&a->res_mid, L * N * D}, {&a->ln2, L * N * D}, {&a->rstd2, L * N},
        {&a->gate, L * N * F}, {&a->up, L * N * F}, {&a->h, L * N * F},
        {&a->lnf, N * D}, {&a->rstdf, N}, {&a->logits, N * (size_t)c->vocab},
        {&a->lora_ax, L * TM_NLIN * N * r}, {&a->cos_t, (size_t)T * half}, {&a->sin_t, (size_t)T * half},
        {&a->dres, N * D}, {&a->dtmp, N * big}, {&a->dq, N * QD}, {&a->dk, N * KD}, {&a->dv, N * KD},
        {&a->datty, N * QD}, {&a->dgate, N * F}, {&a->dup, N * F}, {&a->dh, N * F},
        {&a->dlora, N * r}, {&a->tmp, N * big},
    };
    size_t total = 0, nl = sizeof list / sizeof list[0];
    for (size_t i = 0; i < nl; i++) total += list[i].n;
    float *block = malloc(total * sizeof(float));
    m->tokens = malloc(N * sizeof(int32_t));
    m->targets = malloc(N * sizeof(int32_t));
    if (!block || !m->tokens || !m->targets) {
        free(block);
        return alloy_fail(err, "out of memory for activations (%.1f GB for batch %d x ctx %d)",
                          (double)total * 4 / 1e9, B, T);
    }
    for (size_t i = 0; i < nl; i++) {
        *list[i].p = list[i].n ? block : NULL;
        block += list[i].n;
    }

    /* RoPE inverse frequencies, as HF computes them (llama3 scaling optional). */
    double *inv = malloc(half * sizeof(double));
    if (!inv) return alloy_fail(err, "out of memory");
    for (size_t i = 0; i < half; i++) {
        inv[i] = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_llama3) {
            double lo_wl = c->rope_orig_max / c->rope_low, hi_wl = c->rope_orig_max / c->rope_high;
            double wl = 2 * M_PI / inv[i];
            if (wl > lo_wl) {
                inv[i] /= c->rope_factor;
            } else if (wl >= hi_wl) {
                double s = (c->rope_orig_max / wl - c->rope_low) / (c->rope_high - c->rope_low);
                inv[i] = (1 - s) * inv[i] / c->rope_factor + s * inv[i];
            }
        }
    }
    tr_rope_tables(a->cos_t, a->sin_t, inv, T, c->head_dim);
    free(inv);
    return 0;
}

/* ---- forward / backward ---- */

static void lin_weight(const tm_config *c, const tm_params *p, int l, int mod, float **w, float **b) {
    int in[TM_NLIN], out[TM_NLIN];
    tm_linear_dims(c, in, out);
    size_t sz = (size_t)in[mod] * out[mod];
    float *ws[TM_NLIN] = {p->wq, p->wk, p->wv, p->wo, p->wgate, p->wup, p->wdown};
    float *bs[TM_NLIN] = {p->bq, p->bk, p->bv, p->bo, NULL, NULL, NULL};
    *w = ws[mod] + (size_t)l * sz;
    *b = bs[mod] ? bs[mod] + (size_t)l * out[mod] : NULL;
}

static float *lora_ax(const tm_model *m, int l, int mod) {
    size_t N = (size_t)m->a.B * m->a.T;
    return m->a.lora_ax + ((size_t)l * TM_NLIN + mod) * N * m->lora->rank;
}

static void lin_forward(tm_model *m, int l, int mod, float *out, const float *inp) {
    int in[TM_NLIN], outd[TM_NLIN], N = m->a.B * m->a.T;
    tm_linear_dims(&m->cfg, in, outd);
    float *w, *b;
    lin_weight(&m->cfg, &m->p, l, mod, &w, &b);
    tr_matmul_forward(out, inp, w, b, N, in[mod], outd[mod]);
    if (m->lora && m->lora->pos[mod] >= 0)
        tr_lora_forward(out, lora_ax(m, l, mod), inp, tr_lora_A(m->lora, l, mod), tr_lora_B(m->lora, l, mod),
                        m->lora->scale, N, in[mod], outd[mod], m->lora->rank);
}

static void lin_backward(tm_model *m, int l, int mod, float *dinp, const float *dout, const float *inp) {
    int in[TM_NLIN], outd[TM_NLIN], N = m->a.B * m->a.T;
    tm_linear_dims(&m->cfg, in, outd);
    float *w, *b, *dw = NULL, *db = NULL;
    lin_weight(&m->cfg, &m->p, l, mod, &w, &b);
    if (m->train_base) lin_weight(&m->cfg, &m->g, l, mod, &dw, &db);
    tr_matmul_backward(dinp, dw, db, dout, inp, w, N, in[mod], outd[mod]);
    if (m->lora && m->lora->pos[mod] >= 0)
        tr_lora_backward(dinp, tr_lora_dA(m->lora, l, mod), tr_lora_dB(m->lora, l, mod), dout, m->a.dlora,
                         inp, lora_ax(m, l, mod), tr_lora_A(m->lora, l, mod), tr_lora_B(m->lora, l, mod),
                         m->lora->scale, N, in[mod], outd[mod], m->lora->rank);
}

float tm_forward(tm_model *m, const int32_t *tokens, const int32_t *targets) {
    const tm_config *c = &m->cfg;
    tm_acts *a = &m->a;
    const tm_params *p = &m->p;
    int B = a->B, T = a->T, N = B * T, D = c->dim, F = c->hidden, hd = c->head_dim;
    int Hq = c->n_heads, Hkv = c->n_kv_heads, QD = Hq * hd, KD = Hkv * hd;
    memcpy(m->tokens, tokens, (size_t)N * sizeof(int32_t));
    memcpy(m->targets, targets, (size_t)N * sizeof(int32_t));

    tr_embed_forward(a->res, tokens, p->embed, N, D);
    for (int l = 0; l < c->n_layers; l++) {
        size_t nd = (size_t)N * D;
        float *x = a->res + l * nd, *ln1 = a->ln1 + l * nd, *mid = a->res_mid + l * nd;
        float *ln2 = a->ln2 + l * nd, *xo = a->res + (l + 1) * nd;
        float *q = a->q + (size_t)l * N * QD, *k = a->k + (size_t)l * N * KD, *v = a->v + (size_t)l * N * KD;
        float *att = a->att + (size_t)l * B * Hq * T * T, *atty = a->atty + (size_t)l * N * QD;
        float *gate = a->gate + (size_t)l * N * F, *up = a->up + (size_t)l * N * F, *h = a->h + (size_t)l * N * F;

        tr_rmsnorm_forward(ln1, a->rstd1 + (size_t)l * N, x, p->ln1 + (size_t)l * D, N, D, c->norm_eps);
        lin_forward(m, l, TM_Q, q, ln1);
        lin_forward(m, l, TM_K, k, ln1);
        lin_forward(m, l, TM_V, v, ln1);
        tr_rope_forward(q, a->cos_t, a->sin_t, N, T, Hq, hd);
        tr_rope_forward(k, a->cos_t, a->sin_t, N, T, Hkv, hd);
        tr_attention_forward(atty, att, q, k, v, B, T, Hq, Hkv, hd);
        lin_forward(m, l, TM_O, a->tmp, atty);
        for (size_t i = 0; i < nd; i++) mid[i] = x[i] + a->tmp[i];
        tr_rmsnorm_forward(ln2, a->rstd2 + (size_t)l * N, mid, p->ln2 + (size_t)l * D, N, D, c->norm_eps);
        lin_forward(m, l, TM_GATE, gate, ln2);
        lin_forward(m, l, TM_UP, up, ln2);
        tr_swiglu_forward(h, gate, up, (int64_t)N * F);
        lin_forward(m, l, TM_DOWN, a->tmp, h);
        for (size_t i = 0; i < nd; i++) xo[i] = mid[i] + a->tmp[i];
    }
    tr_rmsnorm_forward(a->lnf, a->rstdf, a->res + (size_t)c->n_layers * N * D, p->lnf, N, D, c->norm_eps);
    tr_matmul_forward(a->logits, a->lnf, p->lm_head, NULL, N, D, c->vocab);
    double sum = tr_xent_forward(a->logits, targets, N, c->vocab, &m->n_targets);
    return m->n_targets ? (float)(sum / (double)m->n_targets) : NAN;
}

void tm_backward(tm_model *m) {
    const tm_config *c = &m->cfg;
    tm_acts *a = &m->a;
    const tm_params *p = &m->p;
    const tm_params *g = m->train_base ? &m->g : NULL;
    int B = a->B, T = a->T, N = B * T, D = c->dim, F = c->hidden, hd = c->head_dim;
    int Hq = c->n_heads, Hkv = c->n_kv_heads, QD = Hq * hd, KD = Hkv * hd;
    size_t nd = (size_t)N * D;
    if (!m->n_targets) return;

    tr_xent_backward(a->logits, a->logits, m->targets, N, c->vocab, 1.0f / (float)m->n_targets);
    float *dlnf = a->dtmp;
    memset(dlnf, 0, nd * sizeof(float));
    tr_matmul_backward(dlnf, g ? g->lm_head : NULL, NULL, a->logits, a->lnf, p->lm_head, N, D, c->vocab);
    memset(a->dres, 0, nd * sizeof(float));
    tr_rmsnorm_backward(a->dres, g ? g->lnf : NULL, dlnf, a->rstdf, a->res + (size_t)c->n_layers * nd, p->lnf,
                        N, D);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        float *x = a->res + l * nd, *ln1 = a->ln1 + l * nd, *mid = a->res_mid + l * nd, *ln2 = a->ln2 + l * nd;
        float *q = a->q + (size_t)l * N * QD, *k = a->k + (size_t)l * N * KD, *v = a->v + (size_t)l * N * KD;
        float *att = a->att + (size_t)l * B * Hq * T * T, *atty = a->atty + (size_t)l * N * QD;
        float *gate = a->gate + (size_t)l * N * F, *up = a->up + (size_t)l * N * F, *h = a->h + (size_t)l * N * F;

        /* MLP: xo = mid + down(swiglu(gate(ln2), up(ln2))); dres is d(xo). */
        memset(a->dh, 0, (size_t)N * F * sizeof(float));
        lin_backward(m, l, TM_DOWN, a->dh, a->dres, h);
        memset(a->dgate, 0, (size_t)N * F * sizeof(float));
        memset(a->dup, 0, (size_t)N * F * sizeof(float));
        tr_swiglu_backward(a->dgate, a->dup, a->dh, gate, up, (int64_t)N * F);
        float *dln = a->dtmp;
        memset(dln, 0, nd * sizeof(float));
        lin_backward(m, l, TM_GATE, dln, a->dgate, ln2);
        lin_backward(m, l, TM_UP, dln, a->dup, ln2);
        tr_rmsnorm_backward(a->dres, g ? g->ln2 + (size_t)l * D : NULL, dln, a->rstd2 + (size_t)l * N, mid,
                            p->ln2 + (size_t)l * D, N, D);

        /* Attention: mid = x + o(attn(rope(q(ln1)), rope(k(ln1)), v(ln1))). */
        memset(a->datty, 0, (size_t)N * QD * sizeof(float));
        lin_backward(m, l, TM_O, a->datty, a->dres, atty);
        memset(a->dq, 0, (size_t)N * QD * sizeof(float));
        memset(a->dk, 0, (size_t)N * KD * sizeof(float));
        memset(a->dv, 0, (size_t)N * KD * sizeof(float));
        tr_attention_backward(a->dq, a->dk, a->dv, a->datty, att, q, k, v, B, T, Hq, Hkv, hd);
        tr_rope_backward(a->dq, a->cos_t, a->sin_t, N, T, Hq, hd);
        tr_rope_backward(a->dk, a->cos_t, a->sin_t, N, T, Hkv, hd);
        memset(dln, 0, nd * sizeof(float));
        lin_backward(m, l, TM_Q, dln, a->dq, ln1);
        lin_backward(m, l, TM_K, dln, a->dk, ln1);
        lin_backward(m, l, TM_V, dln, a->dv, ln1);
        tr_rmsnorm_backward(a->dres, g ? g->ln1 + (size_t)l * D : NULL, dln, a->rstd1 + (size_t)l * N, x,
                            p->ln1 + (size_t)l * D, N, D);
    }
    if (g) tr_embed_backward(g->embed, a->dres, m->tokens, N, D);
}

/* ---- saving ---- */

int tm_save_hf(const tm_model *m, const char *src_dir, const char *dir, alloy_dtype dtype,
               alloy_err *err) {
    const tr_pset *ps = &m->params;
    st_spec *specs = calloc((size_t)ps->ntensors, sizeof *specs);
    if (!specs) return alloy_fail(err, "out of memory");
    size_t maxn = 0;
    for (int i = 0; i < ps->ntensors; i++) {
        specs[i].name = ps->t[i].name;
        specs[i].dtype = dtype;
        specs[i].ndim = ps->t[i].ndim;
        specs[i].shape[0] = ps->t[i].shape[0];
        specs[i].shape[1] = ps->t[i].shape[1];
        if (ps->t[i].numel > maxn) maxn = ps->t[i].numel;
    }
    st_writer *w = st_writer_open(dir, specs, ps->ntensors, 5000000000ull, err);
    free(specs);
    if (!w) return -1;
    void *buf = malloc(maxn * dtype_size(dtype));
    if (!buf) {
        st_writer_abort(w);
        return alloy_fail(err, "out of memory");
    }
    for (int i = 0; i < ps->ntensors; i++) {
        dtype_from_f32(ps->data + ps->t[i].off, dtype, buf, ps->t[i].numel);
        if (st_writer_put(w, i, buf, err)) {
            free(buf);
            st_writer_abort(w);
            return -1;
        }
    }
    free(buf);
    if (st_writer_finish(w, err)) return -1;
    cJSON *cfg = ckpt_read_config(src_dir, err);
    if (!cfg) return -1;
    ckpt_set_string(cfg, "torch_dtype", dtype_torch_name(dtype));
    int rc = ckpt_write_config(dir, cfg, err);
    cJSON_Delete(cfg);
    if (rc) return -1;
    return ckpt_copy_side_files(src_dir, dir, NULL, err);
}
