/* lm.h — a runnable language model, whatever the directory holds.
 *
 * "A model is a directory": the inference commands (generate, ppl, logits)
 * run any of
 *   - a dense checkpoint (config.json + safetensors), optionally with a PEFT
 *     LoRA adapter on top (--lora DIR);
 *   - a MoD mixture directory (alloy_mixture.json; src/mix), or an ad-hoc
 *     mixture of several -m directories with --mix-weights;
 *   - a TTMM expert library (alloy_experts.json; src/experts).
 * They all produce next-token logits over one shared tokenizer. For a mixture
 * the "logits" are log-probabilities of the mixed distribution, so softmax,
 * sampling and perplexity treat every kind alike.
 *
 * Use: lm_open, then per sequence lm_begin(prompt) followed by lm_forward
 * calls at increasing positions. lm_begin clears the caches; expert libraries
 * also choose and merge their experts there, from the prompt. */
#ifndef ALLOY_MODEL_LM_H
#define ALLOY_MODEL_LM_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"
#include "tokenizer/tokenizer.h"

typedef struct lm_options {
    int threads;               /* 0: all cores */
    int n_ctx;                 /* positions per sequence; 0: min(max_position_embeddings, 4096) */
    int max_batch;             /* tokens per prefill chunk; 0: 512 */
    const char *lora;          /* PEFT adapter applied to a dense model, or NULL */
    int nmix_weights;          /* ad-hoc mixture weights (one per path), or 0 */
    const double *mix_weights;
    const char *mix_rule;      /* "arithmetic" or "geometric"; NULL: the mixture's own / default */
    /* Expert libraries (TTMM); 0 / NULL: the library's defaults. */
    int experts_top_k;
    double experts_temperature;
    const char *experts_mode;  /* "merge", "unmerged", "ensemble"; NULL: automatic */
} lm_options;

typedef struct lm lm;

/* Open paths[0..npaths). One path: a dense checkpoint, a mixture directory or
 * an expert library, told apart by their manifest files. Several paths: an
 * ad-hoc mixture (weights from opt->mix_weights, default uniform). On failure
 * *out is NULL and err names the directory and what is wrong. */
int lm_open(lm **out, const char *const *paths, int npaths, const lm_options *opt, alloy_err *err);
void lm_free(lm *m);

const tokenizer *lm_tokenizer(const lm *m);
int lm_vocab_size(const lm *m);
int lm_n_ctx(const lm *m);
/* A one-line description for messages ("dense qwen2, 24 layers, bf16", ...). */
const char *lm_describe(const lm *m);

/* Start a new sequence whose prompt is ids[0..n) (n may be 0). */
int lm_begin(lm *m, const int32_t *ids, int n, alloy_err *err);

/* Run tokens[0..n) at positions pos..pos+n-1 of the current sequence; write
 * the logits of all n positions (n x vocab) when all, else of the last one. */
int lm_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err);

#endif
