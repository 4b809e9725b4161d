/* forward.h — the transformer forward pass of Qwen2 / Llama / Mistral with a
 * KV cache: batched prefill of a prompt, then one token at a time.
 *
 * RunState (llama2.c's) holds every activation buffer and the KV cache; it is
 * allocated once for a context length and a prefill batch size, and reused.
 * Not here: weights (weights.h), kernels (kernels.h), sampling. */
#ifndef ALLOY_MODEL_FORWARD_H
#define ALLOY_MODEL_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"
#include "model/weights.h"

typedef struct RunState {
    int n_ctx;          /* positions the KV cache holds */
    int max_batch;      /* tokens per prefill chunk */
    float *x;           /* (max_batch, dim) residual stream */
    float *xb;          /* (max_batch, max(dim, q_dim)) normed input / attention output */
    float *xb2;         /* (max_batch, dim) projection output */
    float *q;           /* (max_batch, n_heads * head_dim) */
    float *hb;          /* (max_batch, hidden_dim) gate, then silu(gate) * up */
    float *hb2;         /* (max_batch, hidden_dim) up */
    float *att;         /* (n_heads, n_ctx) attention scores */
    float *key_cache;   /* (n_layers, n_ctx, n_kv_heads * head_dim), RoPE applied */
    float *value_cache; /* (n_layers, n_ctx, n_kv_heads * head_dim) */
    float *wbuf;        /* weight rows converted to f32 for batched products */
    size_t wbuf_floats;
    float *lrbuf;       /* (max_batch, rank) intermediate A x of the low-rank terms */
    size_t lrbuf_floats;
} RunState;

/* Allocate s for contexts of n_ctx positions (1..max_position_embeddings)
 * and prefill chunks of max_batch tokens. On failure nothing stays allocated. */
int model_state_alloc(RunState *s, const Config *c, int n_ctx, int max_batch, alloy_err *err);
void model_state_free(RunState *s);

/* Run tokens[0..n) at positions pos .. pos+n-1; the cache must already hold
 * positions < pos (from earlier calls on the same s). Low-rank terms in the
 * layers (weights.h LowRank) are applied after their projections; s grows
 * its scratch for them on first use. Writes the logits of
 * every one of the n positions to logits (n, vocab_size) when all_logits,
 * else only those of the last position (vocab_size). Errors: a token outside
 * the vocabulary, pos + n beyond n_ctx. */
int model_forward(const Model *m, RunState *s, const int32_t *tokens, int n, int pos, float *logits,
                  bool all_logits, alloy_err *err);

#endif
