/* lm.c — lm_open's dispatch between dense checkpoints, MoD mixtures and TTMM
 * expert libraries, the tokenizer every kind shares, and the accessors of
 * lm.h. The kinds themselves live in lm_dense.c, src/mix and src/experts. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model/lm_impl.h"
#include "util/err.h"
#include "util/fs.h"

static bool has_file(const char *dir, const char *name) {
    char *p = fs_join(dir, name);
    bool r = p && fs_is_file(p);
    free(p);
    return r;
}

int lm_open(lm **out, const char *const *paths, int npaths, const lm_options *opt, alloy_err *err) {
    *out = NULL;
    lm_options defaults = {0};
    if (!opt) opt = &defaults;
    if (npaths < 1) return alloy_fail(err, "no model directory given");
    for (int i = 0; i < npaths; i++)
        if (!fs_is_dir(paths[i])) return alloy_fail(err, "%s: not a directory", paths[i]);
    if (npaths > 1 && opt->nmix_weights > 0 && opt->nmix_weights != npaths)
        return alloy_fail(err, "%d mixture weights for %d models", opt->nmix_weights, npaths);
    if (opt->threads > 0) {
        omp_set_num_threads(opt->threads);
        openblas_set_num_threads(opt->threads);
    }
    lm *m = calloc(1, sizeof *m);
    if (!m) return alloy_fail(err, "out of memory");
    int rc;
    bool mixture = npaths > 1 || has_file(paths[0], "alloy_mixture.json");
    bool experts = !mixture && has_file(paths[0], "alloy_experts.json");
    if (mixture) rc = lm_open_mixture(m, paths, npaths, opt, err);
    else if (experts) rc = lm_open_experts(m, paths[0], opt, err);
    else if (opt->nmix_weights > 0 || opt->mix_rule)
        rc = alloy_fail(err, "%s: --mix-weights / --mix need several models or a mixture directory", paths[0]);
    else rc = lm_open_dense(m, paths[0], opt, err);
    if (rc) {
        free(m);
        return -1;
    }
    /* Every kind runs model_forward, whose batched products split their rows
     * over OpenMP threads themselves (kernels.c k_matmul): OpenBLAS' own pool
     * would only compete with them, so it runs single-threaded from here on
     * (expert merges raise it around their large GEMMs). */
    openblas_set_num_threads(1);
    /* The opener may have set the tokenizer itself; otherwise the first
     * directory's, when it has one (a checkpoint without tokenizer.json still
     * runs on token ids). */
    if (!m->tok && has_file(paths[0], "tokenizer.json") && tok_load(&m->tok, paths[0], err)) {
        lm_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void lm_free(lm *m) {
    if (!m) return;
    if (m->ops && m->ops->free) m->ops->free(m);
    tok_free(m->tok);
    free(m);
}

const tokenizer *lm_tokenizer(const lm *m) { return m->tok; }
int lm_vocab_size(const lm *m) { return m->vocab; }
int lm_n_ctx(const lm *m) { return m->n_ctx; }
const char *lm_describe(const lm *m) { return m->desc; }

int lm_begin(lm *m, const int32_t *ids, int n, alloy_err *err) {
    if (n < 0 || n > m->n_ctx)
        return alloy_fail(err, "a prompt of %d tokens does not fit the context of %d", n, m->n_ctx);
    return m->ops->begin ? m->ops->begin(m, ids, n, err) : 0;
}

int lm_forward(lm *m, const int32_t *tokens, int n, int pos, float *logits, bool all, alloy_err *err) {
    if (n < 1) return alloy_fail(err, "forward: no tokens");
    if (pos < 0 || pos + n > m->n_ctx)
        return alloy_fail(err, "forward: positions %d..%d exceed the context of %d", pos, pos + n - 1, m->n_ctx);
    return m->ops->forward(m, tokens, n, pos, logits, all, err);
}
