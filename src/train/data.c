/* data.c — tokenized training windows from .txt / .jsonl (see data.h). */
#include "train/data.h"

#include <cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/fs.h"
#include "util/rng.h"

/* Append one window (inputs ids[0..n-2], targets ids[1..n-1] where mask
 * allows) padded to ctx. */
static int push_window(tr_data *d, int64_t *cap, const int32_t *ids, const bool *mask, int64_t n,
                       alloy_err *err) {
    if (d->nseq == *cap) {
        int64_t nc = *cap ? *cap * 2 : 64;
        int32_t *t = realloc(d->tokens, (size_t)nc * d->ctx * sizeof(int32_t));
        if (!t) return alloy_fail(err, "out of memory");
        d->tokens = t;
        int32_t *g = realloc(d->targets, (size_t)nc * d->ctx * sizeof(int32_t));
        if (!g) return alloy_fail(err, "out of memory");
        d->targets = g;
        *cap = nc;
    }
    int32_t *tk = d->tokens + d->nseq * d->ctx, *tg = d->targets + d->nseq * d->ctx;
    for (int i = 0; i < d->ctx; i++) {
        bool in = i + 1 < n;
        tk[i] = i < n ? ids[i] : 0;
        tg[i] = in && (!mask || mask[i + 1]) ? ids[i + 1] : -1;
        if (tg[i] >= 0) d->ntargets++;
    }
    d->nseq++;
    return 0;
}

static int check_vocab(const tok_ids *ids, int vocab, const char *path, alloy_err *err) {
    for (size_t i = 0; i < ids->n; i++)
        if (ids->v[i] < 0 || ids->v[i] >= vocab)
            return alloy_fail(err, "%s: token id %d is outside the model's vocabulary (%d)", path,
                              ids->v[i], vocab);
    return 0;
}

static int load_text(tr_data *d, const char *path, const char *text, size_t len, const tokenizer *tok,
                     int vocab, alloy_err *err) {
    tok_ids ids = {0};
    int64_t cap = 0;
    if (tok_encode(tok, text, len, true, &ids, err)) {
        tok_ids_free(&ids);
        return alloy_wrap(err, "%s: ", path);
    }
    if (tok_eos(tok) >= 0 && ids.n > 0 && tok_ids_push(&ids, tok_eos(tok), err)) goto fail;
    if (check_vocab(&ids, vocab, path, err)) goto fail;
    for (size_t s = 0; s + 1 < ids.n; s += (size_t)d->ctx) {
        int64_t n = (int64_t)(ids.n - s);
        if (n > d->ctx + 1) n = d->ctx + 1;
        if (push_window(d, &cap, ids.v + s, NULL, n, err)) goto fail;
    }
    tok_ids_free(&ids);
    return 0;
fail:
    tok_ids_free(&ids);
    return -1;
}

static int load_jsonl(tr_data *d, const char *path, const char *text, size_t len, const tokenizer *tok,
                      int vocab, alloy_err *err) {
    int64_t cap = 0;
    size_t pos = 0;
    int lineno = 0;
    tok_ids ids = {0};
    bool *mask = NULL;
    size_t mask_cap = 0;
    while (pos < len) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + 1;
        lineno++;
        size_t k = 0;
        while (k < ll && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == ll) continue;
        cJSON *j = cJSON_ParseWithLength(line, ll);
        const cJSON *jt = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
        const cJSON *jp = j ? cJSON_GetObjectItemCaseSensitive(j, "prompt") : NULL;
        const cJSON *jc = j ? cJSON_GetObjectItemCaseSensitive(j, "completion") : NULL;
        bool is_text = cJSON_IsString(jt), is_pc = cJSON_IsString(jp) && cJSON_IsString(jc);
        if (!cJSON_IsObject(j) || (!is_text && !is_pc)) {
            cJSON_Delete(j);
            alloy_fail(err, "%s:%d: %s", path, lineno,
                       cJSON_IsObject(j) ? "expected string fields \"text\" or \"prompt\" and \"completion\""
                                         : "not a valid JSON object");
            goto fail;
        }
        ids.n = 0;
        size_t prompt_n = 0;
        int rc;
        if (is_text) {
            rc = tok_encode(tok, jt->valuestring, strlen(jt->valuestring), true, &ids, err);
        } else {
            rc = tok_encode(tok, jp->valuestring, strlen(jp->valuestring), true, &ids, err);
            prompt_n = ids.n;
            if (!rc) rc = tok_encode(tok, jc->valuestring, strlen(jc->valuestring), false, &ids, err);
        }
        cJSON_Delete(j);
        if (rc) {
            alloy_wrap(err, "%s:%d: ", path, lineno);
            goto fail;
        }
        if (tok_eos(tok) >= 0 && tok_ids_push(&ids, tok_eos(tok), err)) goto fail;
        if (check_vocab(&ids, vocab, path, err)) {
            alloy_wrap(err, "line %d: ", lineno);
            goto fail;
        }
        if (ids.n > mask_cap) {
            bool *nm = realloc(mask, ids.n * sizeof *nm);
            if (!nm) {
                alloy_fail(err, "out of memory");
                goto fail;
            }
            mask = nm;
            mask_cap = ids.n;
        }
        for (size_t i = 0; i < ids.n; i++) mask[i] = i >= prompt_n;
        int64_t n = (int64_t)ids.n;
        if (n > d->ctx + 1) n = d->ctx + 1;
        if (n >= 2 && push_window(d, &cap, ids.v, mask, n, err)) goto fail;
    }
    tok_ids_free(&ids);
    free(mask);
    return 0;
fail:
    tok_ids_free(&ids);
    free(mask);
    return -1;
}

int tr_data_load(tr_data *d, const char *path, const tokenizer *tok, int ctx, int vocab, alloy_err *err) {
    memset(d, 0, sizeof *d);
    d->ctx = ctx;
    d->perm_epoch = -1;
    size_t len;
    char *text = fs_read_file(path, &len, err);
    if (!text) return -1;
    size_t pl = strlen(path);
    bool jsonl = pl >= 6 && !strcmp(path + pl - 6, ".jsonl");
    int rc = jsonl ? load_jsonl(d, path, text, len, tok, vocab, err)
                   : load_text(d, path, text, len, tok, vocab, err);
    free(text);
    if (!rc && d->ntargets == 0) rc = alloy_fail(err, "%s: no training tokens (empty data?)", path);
    if (!rc) {
        d->perm = malloc((size_t)d->nseq * sizeof(int64_t));
        if (!d->perm) rc = alloy_fail(err, "out of memory");
    }
    if (rc) tr_data_free(d);
    return rc;
}

void tr_data_free(tr_data *d) {
    free(d->tokens);
    free(d->targets);
    free(d->perm);
    memset(d, 0, sizeof *d);
}

void tr_data_batch(tr_data *d, uint64_t seed, int64_t step, int B, int32_t *tokens, int32_t *targets) {
    for (int b = 0; b < B; b++) {
        int64_t i = step * B + b, e = i / d->nseq, j = i % d->nseq;
        if (e != d->perm_epoch) {
            for (int64_t k = 0; k < d->nseq; k++) d->perm[k] = k;
            for (int64_t k = d->nseq - 1; k > 0; k--) {
                int64_t r = (int64_t)(rng_uniform(seed, 0x7a11 + (uint64_t)e, (uint64_t)k) * (double)(k + 1));
                int64_t t = d->perm[k];
                d->perm[k] = d->perm[r];
                d->perm[r] = t;
            }
            d->perm_epoch = e;
        }
        int64_t s = d->perm[j];
        memcpy(tokens + (size_t)b * d->ctx, d->tokens + s * d->ctx, (size_t)d->ctx * sizeof(int32_t));
        memcpy(targets + (size_t)b * d->ctx, d->targets + s * d->ctx, (size_t)d->ctx * sizeof(int32_t));
    }
}

int64_t tr_data_steps_for_epochs(const tr_data *d, double epochs, int B) {
    int64_t s = (int64_t)ceil(epochs * (double)d->nseq / (double)B);
    return s < 1 ? 1 : s;
}
