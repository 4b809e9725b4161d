/* perplexity.h — perplexity of a runnable model (model/lm.h: a checkpoint, a
 * mixture, an expert library, TTT) over a token stream.
 *
 * The stream is cut into non-overlapping windows of ctx tokens; each window is
 * a fresh sequence (lm_begin sees the whole window, so expert libraries and
 * TTT choose per window) and every token but its first is scored by the
 * position before it: NLL = lse(z_t) − z_t[target]. A final window of a
 * single token has nothing to score. Not here: tokenisation, printing. */
#ifndef ALLOY_EVAL_PERPLEXITY_H
#define ALLOY_EVAL_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "model/lm.h"

/* Positions run per forward call (bounds the logits buffer to this many rows);
 * callers may use it as the lm's max_batch. */
#define EVAL_PPL_CHUNK 128

typedef struct eval_ppl {
    double nll_sum; /* natural-log NLL summed over the scored tokens */
    long scored;    /* tokens scored */
} eval_ppl;

/* −log softmax(logits)[target] over vocab entries. */
double eval_token_nll(const float *logits, int vocab, int32_t target);

/* Score ids[0..n) in windows of ctx (2..lm_n_ctx(m)) tokens into *out;
 * on_window (may be NULL) is called after each window's lm_begin. Errors:
 * ctx out of range, out of memory, the model's own (err names them). */
int eval_perplexity(lm *m, const int32_t *ids, size_t n, int ctx, void (*on_window)(void *user, lm *m),
                    void *user, eval_ppl *out, alloy_err *err);

#endif
