/* perplexity.c — windowed perplexity of an lm (see perplexity.h). */
#include "eval/perplexity.h"

#include <stdlib.h>

#include "mix/mixture.h"
#include "util/err.h"

double eval_token_nll(const float *logits, int vocab, int32_t target) {
    return mix_logsumexp(logits, vocab) - (double)logits[target];
}

int eval_perplexity(lm *m, const int32_t *ids, size_t n, int ctx, void (*on_window)(void *user, lm *m),
                    void *user, eval_ppl *out, alloy_err *err) {
    out->nll_sum = 0;
    out->scored = 0;
    if (ctx < 2 || ctx > lm_n_ctx(m))
        return alloy_fail(err, "perplexity: window of %d tokens outside 2..%d", ctx, lm_n_ctx(m));
    int vocab = lm_vocab_size(m);
    float *logits = malloc((size_t)EVAL_PPL_CHUNK * vocab * sizeof *logits);
    if (!logits) return alloy_fail(err, "perplexity: out of memory for %d x %d logits", EVAL_PPL_CHUNK, vocab);
    int rc = 0;
    for (size_t w0 = 0; !rc && w0 + 1 < n; w0 += (size_t)ctx) {
        int wn = n - w0 < (size_t)ctx ? (int)(n - w0) : ctx;
        const int32_t *wt = ids + w0;
        if ((rc = lm_begin(m, wt, wn, err))) break;
        if (on_window) on_window(user, m);
        /* positions 0..wn-2 predict tokens 1..wn-1 */
        for (int c0 = 0; c0 < wn - 1 && !rc; c0 += EVAL_PPL_CHUNK) {
            int cn = wn - 1 - c0 < EVAL_PPL_CHUNK ? wn - 1 - c0 : EVAL_PPL_CHUNK;
            if ((rc = lm_forward(m, wt + c0, cn, c0, logits, true, err))) break;
            for (int t = 0; t < cn; t++) out->nll_sum += eval_token_nll(logits + (size_t)t * vocab, vocab, wt[c0 + t + 1]);
            out->scored += cn;
        }
    }
    free(logits);
    return rc ? -1 : 0;
}
