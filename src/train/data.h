/* data.h — training data: token windows with targets.
 *
 * Plain text (any file not ending in .jsonl): the whole file is tokenized
 * (special tokens of the post-processor added once at the start, eos
 * appended) and packed into consecutive windows of ctx inputs; the targets
 * are the next tokens. The last partial window is padded (target -1).
 * JSON lines (.jsonl): one example per line, either {"text": ...} (loss on
 * every token) or {"prompt": ..., "completion": ...} (loss on the completion
 * tokens and the eos only). Each example is one window, truncated to ctx+1
 * tokens and padded. Blank lines are skipped; anything else is an error with
 * the line number.
 *
 * Batches are a pure function of (seed, step): sample i = step*B + b is
 * window perm_e[i mod nseq] with e = i / nseq and perm_e a seeded shuffle of
 * epoch e, so a resumed run sees the same data as an uninterrupted one.
 *
 * Not here: tokenization itself (src/tokenizer). */
#ifndef ALLOY_TRAIN_DATA_H
#define ALLOY_TRAIN_DATA_H

#include <stdint.h>

#include "alloy.h"
#include "tokenizer/tokenizer.h"

typedef struct tr_data {
    int ctx;
    int64_t nseq;
    int32_t *tokens;   /* (nseq, ctx) inputs (padding: 0) */
    int32_t *targets;  /* (nseq, ctx) next tokens, -1 = no loss */
    int64_t ntargets;  /* counted targets over the whole set */
    int64_t perm_epoch;
    int64_t *perm;     /* shuffle of the cached epoch */
} tr_data;

/* Load and tokenize path. Token ids >= vocab are an error. Empty data (no
 * targets at all) is an error naming the file. */
int tr_data_load(tr_data *d, const char *path, const tokenizer *tok, int ctx, int vocab,
                 alloy_err *err);
void tr_data_free(tr_data *d);

/* Fill tokens/targets (B*ctx each) for a step. */
void tr_data_batch(tr_data *d, uint64_t seed, int64_t step, int B, int32_t *tokens, int32_t *targets);

/* Steps that make `epochs` passes over the data with batch B (at least 1). */
int64_t tr_data_steps_for_epochs(const tr_data *d, double epochs, int B);

#endif
