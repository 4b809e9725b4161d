/* embed.c — document and query embeddings for TTMM: the hidden state after
 * the final RMSNorm of a model alloy runs, mean-pooled over the first N
 * tokens and L2-normalised (N = EX_DOC_TOKENS for documents, the paper's 50
 * for queries). The paper uses a sentence encoder (all-mpnet-base-v2);
 * alloy has none, so any checkpoint it runs (the base by default) serves.
 *
 * Relies on model_forward leaving the final-norm output of its last chunk
 * in RunState.xb (forward.c); a single chunk holds all N tokens here.
 * Not here: clustering (kmeans.c), selection (select.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "experts/experts.h"
#include "util/err.h"

/* State, scratch and tokenizer of an embedder whose model is in e->model. */
static int embedder_finish(ex_embedder *e, const char *dir, int max_tokens, alloy_err *err) {
    if (max_tokens > e->model.config.max_pos) max_tokens = e->model.config.max_pos;
    if (max_tokens < 1) max_tokens = 1;
    e->max_tokens = max_tokens;
    e->dim = e->model.config.dim;
    int rc = model_state_alloc(&e->st, &e->model.config, max_tokens, max_tokens, err);
    if (rc == 0 && !(e->logits = malloc((size_t)e->model.config.vocab_size * sizeof(float))))
        rc = alloy_fail(err, "%s: out of memory for the embedding model", dir);
    if (rc == 0 && tok_load(&e->tok, dir, err)) rc = alloy_wrap(err, "embedding model %s: ", dir);
    if (rc) ex_embedder_close(e);
    return rc;
}

int ex_embedder_open(ex_embedder *e, const char *dir, int max_tokens, alloy_err *err) {
    memset(e, 0, sizeof *e);
    if (model_open(&e->model, dir, err)) return -1;
    return embedder_finish(e, dir, max_tokens, err);
}

int ex_embedder_open_shared(ex_embedder *e, const Model *shared, const char *dir, int max_tokens, alloy_err *err) {
    memset(e, 0, sizeof *e);
    int L = shared->config.n_layers;
    if (!(e->layers = malloc((size_t)L * sizeof *e->layers))) return alloy_fail(err, "%s: out of memory", dir);
    memcpy(e->layers, shared->weights.layers, (size_t)L * sizeof *e->layers);
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LW_NMAT; k++) e->layers[l].delta[k] = (LowRank){NULL, 0};
    e->model = *shared;
    e->model.weights.layers = e->layers;
    return embedder_finish(e, dir, max_tokens, err);
}

void ex_embedder_close(ex_embedder *e) {
    if (e->tok) tok_free(e->tok);
    free(e->logits);
    model_state_free(&e->st);
    if (e->layers) free(e->layers); /* borrowed weights: the owner closes them */
    else model_close(&e->model);
    memset(e, 0, sizeof *e);
}

int ex_embed_ids(ex_embedder *e, const int32_t *ids, int n, float *out, alloy_err *err) {
    int d = e->dim;
    memset(out, 0, (size_t)d * sizeof *out);
    if (n > e->max_tokens) n = e->max_tokens;
    if (n <= 0) return 0;
    if (model_forward(&e->model, &e->st, ids, n, 0, e->logits, false, err)) return -1;
    double nn = 0;
    for (int j = 0; j < d; j++) {
        double s = 0;
        for (int t = 0; t < n; t++) s += e->st.xb[(size_t)t * d + j];
        out[j] = (float)(s / n);
        nn += (double)out[j] * out[j];
    }
    if (nn > 0)
        for (int j = 0; j < d; j++) out[j] = (float)(out[j] / sqrt(nn));
    return 0;
}

int ex_embed_text(ex_embedder *e, const char *text, size_t len, float *out, alloy_err *err) {
    tok_ids ids = {0};
    if (tok_encode(e->tok, text, len, false, &ids, err)) {
        tok_ids_free(&ids);
        return -1;
    }
    int n = ids.n > (size_t)e->max_tokens ? e->max_tokens : (int)ids.n;
    int rc = ex_embed_ids(e, ids.v, n, out, err);
    tok_ids_free(&ids);
    return rc;
}
