/* lm_impl.h — how each kind of runnable model plugs into lm.h.
 * Internal to the library: src/model (dense), src/mix (mixtures) and
 * src/experts (expert libraries) each provide an lm_ops table and an opener. */
#ifndef ALLOY_MODEL_LM_IMPL_H
#define ALLOY_MODEL_LM_IMPL_H

#include "model/lm.h"

typedef struct lm_ops {
    int (*begin)(lm *m, const int32_t *ids, int n, alloy_err *err);
    int (*forward)(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err);
    void (*free)(lm *m); /* frees m->impl (not the tokenizer, not m) */
} lm_ops;

struct lm {
    const lm_ops *ops;
    void *impl;
    tokenizer *tok;   /* owned by the lm */
    int vocab;
    int n_ctx;
    char desc[256];
};

/* Openers, dispatched by lm_open. Each fills m->ops, m->impl, m->vocab,
 * m->n_ctx and m->desc; lm_open loads m->tok itself (from the first path, or
 * the mixture / library directory). */
int lm_open_dense(lm *m, const char *dir, const lm_options *opt, alloy_err *err);
int lm_open_mixture(lm *m, const char *const *paths, int npaths, const lm_options *opt, alloy_err *err);
int lm_open_experts(lm *m, const char *dir, const lm_options *opt, alloy_err *err);

#endif
