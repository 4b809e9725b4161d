/* lm_dense.c — a dense checkpoint (model/weights.h + model/forward.h) behind
 * the lm.h interface, with an optional PEFT LoRA adapter.
 *
 * LoRA is merged at load time: every weight the adapter targets is copied to
 * a private f32 matrix, W + scale * B A is added there (peft_apply), and the
 * model's Mat is pointed at the copy. Untargeted weights stay mmapped in their
 * stored dtype, so the run-time cost is nil and the extra memory is 4 bytes
 * per targeted weight. A bf16 base therefore runs its adapted matrices in f32
 * (more precise than re-rounding the merged weight to bf16).
 * Not here: the forward pass, mixtures (src/mix), expert libraries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/peft.h"
#include "model/forward.h"
#include "model/kernels.h"
#include "model/lm_impl.h"
#include "model/weights.h"
#include "util/dtype.h"
#include "util/err.h"

typedef struct dense {
    Model model;
    RunState state;
    int nlora;      /* weights replaced by merged copies */
    float **lora_w; /* (nlora) owned f32 matrices */
} dense;

static void dense_free(lm *m) {
    dense *d = m->impl;
    if (!d) return;
    for (int i = 0; i < d->nlora; i++) free(d->lora_w[i]);
    free(d->lora_w);
    model_state_free(&d->state);
    model_close(&d->model);
    free(d);
    m->impl = NULL;
}

static int dense_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err) {
    dense *d = m->impl;
    return model_forward(&d->model, &d->state, tokens, n, pos, logits, all, err);
}

static const lm_ops DENSE_OPS = {NULL, dense_forward, dense_free};

/* The Mat of a 2-D tensor kind. */
static Mat *mat_for(Weights *w, tensor_kind kind, int layer) {
    LayerWeights *L = layer >= 0 ? &w->layers[layer] : NULL;
    switch (kind) {
    case T_EMBED: return &w->embed;
    case T_WQ: return &L->wq;
    case T_WK: return &L->wk;
    case T_WV: return &L->wv;
    case T_WO: return &L->wo;
    case T_GATE: return &L->w_gate;
    case T_UP: return &L->w_up;
    case T_DOWN: return &L->w_down;
    case T_LM_HEAD: return &w->lm_head;
    default: return NULL;
    }
}

/* Merge the adapter at dir into private copies of the weights it targets. */
static int apply_lora(dense *d, const char *model_dir, const char *dir, alloy_err *err) {
    peft_adapter a;
    if (peft_load(&a, dir, err)) return -1;
    Config *c = &d->model.config;
    Weights *w = &d->model.weights;
    int n = model_tensor_specs(c, NULL);
    TensorSpec *specs = malloc((size_t)(n + 1) * sizeof *specs);
    d->lora_w = calloc((size_t)a.nmodules + 1, sizeof *d->lora_w);
    int rc = specs && d->lora_w ? 0 : alloy_fail(err, "out of memory");
    if (!rc) {
        model_tensor_specs(c, specs);
        /* A tied model has no lm_head tensor, but an adapter may target the
         * head: it then gets its own copy of the embedding. */
        if (c->tied) {
            specs[n] = (TensorSpec){"lm_head.weight", T_LM_HEAD, -1, 2, {c->vocab_size, c->dim}};
            n++;
        }
    }
    int used = 0;
    for (int i = 0; i < n && !rc; i++) {
        const peft_module *mod = specs[i].ndim == 2 ? peft_find(&a, specs[i].name) : NULL;
        if (!mod) continue;
        Mat *mat = mat_for(w, specs[i].kind, specs[i].layer);
        float *copy = malloc((size_t)mat->rows * mat->cols * sizeof(float));
        if (!copy) {
            rc = alloy_fail(err, "%s: out of memory for the f32 copy of '%s'", dir, specs[i].name);
            break;
        }
        d->lora_w[d->nlora++] = copy;
        for (int r = 0; r < mat->rows; r++) k_row_f32(copy + (size_t)r * mat->cols, mat, r);
        if (peft_apply(&a, mod, copy, mat->rows, mat->cols, err)) {
            rc = -1;
            break;
        }
        Mat merged = {copy, ALLOY_F32, mat->rows, mat->cols};
        bool head_is_embed = c->tied && w->lm_head.w == w->embed.w;
        *mat = merged;
        /* Adapting the embedding of a tied model adapts its head too (they
         * are one tensor), unless the adapter targets the head separately. */
        if (specs[i].kind == T_EMBED && head_is_embed && !peft_find(&a, "lm_head.weight")) w->lm_head = merged;
        used++;
    }
    if (!rc && used < a.nmodules) {
        for (int j = 0; j < a.nmodules; j++) {
            bool found = false;
            for (int i = 0; i < n && !found; i++) found = !strcmp(specs[i].name, a.modules[j].weight_name);
            if (!found) {
                rc = alloy_fail(err, "%s: LoRA module targets '%s', which %s does not have", dir,
                                a.modules[j].weight_name, model_dir);
                break;
            }
        }
    }
    free(specs);
    peft_free(&a);
    return rc;
}

int lm_open_dense(lm *m, const char *dir, const lm_options *opt, alloy_err *err) {
    dense *d = calloc(1, sizeof *d);
    if (!d) return alloy_fail(err, "out of memory");
    m->impl = d;
    m->ops = &DENSE_OPS;
    if (model_open(&d->model, dir, err)) {
        free(d);
        m->impl = NULL;
        return -1;
    }
    const Config *c = &d->model.config;
    int n_ctx = opt->n_ctx > 0 ? opt->n_ctx : (c->max_pos < 4096 ? c->max_pos : 4096);
    int batch = opt->max_batch > 0 ? opt->max_batch : 512;
    if (opt->n_ctx > c->max_pos) {
        int max_pos = c->max_pos;
        dense_free(m);
        return alloy_fail(err, "%s: a context of %d exceeds max_position_embeddings (%d)", dir, opt->n_ctx, max_pos);
    }
    alloy_dtype dtype = d->model.weights.layers[0].wq.dtype;
    if ((opt->lora && apply_lora(d, dir, opt->lora, err)) || model_state_alloc(&d->state, c, n_ctx, batch, err)) {
        dense_free(m);
        return -1;
    }
    m->vocab = c->vocab_size;
    m->n_ctx = n_ctx;
    snprintf(m->desc, sizeof m->desc, "dense %s, %d layers, %s%s%s", model_arch_name(c->arch), c->n_layers,
             dtype_name(dtype), opt->lora ? ", LoRA " : "", opt->lora ? opt->lora : "");
    return 0;
}
