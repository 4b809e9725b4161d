/* tokenizer.c — loading tokenizer.json / tokenizer_config.json into a
 * tokenizer, and the encode/decode pipelines: added tokens -> normalizer ->
 * pre-tokenizer -> BPE -> post-processor, and ids -> bytes -> UTF-8. The
 * pieces live in their own files (added_tokens.c, normalize.c,
 * pretokenize.c, bpe.c, bytelevel.c); chat formatting is chat.c. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"
#include "util/fs.h"

/* ---- small containers ---- */

int tok_buf_put(tok_buf *b, const void *data, size_t n, alloy_err *err) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return alloy_fail(err, "tokenizer: out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int tok_spans_push(tok_spans *s, uint32_t start, uint32_t len, alloy_err *err) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        void *p = realloc(s->v, cap * sizeof *s->v);
        if (!p) return alloy_fail(err, "tokenizer: out of memory");
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = (tok_span){start, len};
    return 0;
}

int tok_ids_push(tok_ids *ids, int32_t id, alloy_err *err) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        void *p = realloc(ids->v, cap * sizeof *ids->v);
        if (!p) return alloy_fail(err, "tokenizer: out of memory");
        ids->v = p;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

void tok_ids_free(tok_ids *ids) {
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

/* ---- loading ---- */

void tok_free(tokenizer *t) {
    if (!t) return;
    free(t->json_path);
    free(t->arena.p);
    free(t->str_off);
    free(t->str_len);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->special);
    strmap_free(&t->by_str);
    strmap_free(&t->by_bytes);
    free(t->merges);
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    free(t->added);
    trie_free(&t->trie_raw);
    trie_free(&t->trie_norm);
    tok_ids_free(&t->post_prefix);
    tok_ids_free(&t->post_suffix);
    free(t->cache);
    pthread_mutex_destroy(&t->cache_lock);
    free(t);
}

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static bool flag(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* Record id's vocabulary string and the bytes it decodes to. */
static int set_token(tokenizer *t, int32_t id, const char *s, size_t len, bool bytelevel,
                     alloy_err *err) {
    uint32_t off = (uint32_t)t->arena.n;
    if (tok_buf_put(&t->arena, s, len, err) || tok_buf_put(&t->arena, "", 1, err)) return -1;
    t->str_off[id] = off;
    t->str_len[id] = (uint32_t)len;
    long nb = -1;
    if (bytelevel) {
        uint8_t tmp[256];
        uint8_t *buf = len <= sizeof tmp ? tmp : malloc(len);
        if (!buf) return alloy_fail(err, "tokenizer: out of memory");
        nb = bytelevel_decode(s, len, buf);
        if (nb >= 0) {
            t->bytes_off[id] = (uint32_t)t->arena.n;
            t->bytes_len[id] = (uint32_t)nb;
            if (tok_buf_put(&t->arena, buf, (size_t)nb, err) ||
                strmap_put(&t->by_bytes, (const char *)buf, (size_t)nb, id, err)) {
                if (buf != tmp) free(buf);
                return -1;
            }
        }
        if (buf != tmp) free(buf);
    }
    if (nb < 0) {  /* not in the byte alphabet: the string stands for itself */
        t->bytes_off[id] = off;
        t->bytes_len[id] = (uint32_t)len;
    }
    return 0;
}

static int load_merges(tokenizer *t, const cJSON *merges, alloy_err *err) {
    int n = cJSON_GetArraySize(merges);
    size_t slots = 1024;
    while (slots < 2 * (size_t)n) slots *= 2;
    t->merges = malloc(slots * sizeof *t->merges);
    if (!t->merges) return alloy_fail(err, "tokenizer: out of memory");
    memset(t->merges, 0xFF, slots * sizeof *t->merges);
    t->merge_mask = slots - 1;
    tok_buf cat = {0};
    uint32_t rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(m)) {  /* "left right" */
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(cat.p);
                return alloy_fail(err, "%s: model.merges[%u] \"%s\" is not two tokens", t->json_path,
                                  rank, m->valuestring);
            }
            a = m->valuestring, la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) && cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring, la = strlen(a);
            b = cJSON_GetArrayItem(m, 1)->valuestring, lb = strlen(b);
        } else {
            free(cat.p);
            return alloy_fail(err, "%s: model.merges[%u] is neither \"a b\" nor [a, b]", t->json_path, rank);
        }
        cat.n = 0;
        if (tok_buf_put(&cat, a, la, err) || tok_buf_put(&cat, b, lb, err)) {
            free(cat.p);
            return -1;
        }
        int32_t ia = strmap_get(&t->by_str, a, la), ib = strmap_get(&t->by_str, b, lb);
        int32_t ic = strmap_get(&t->by_str, cat.p, cat.n);
        if (ia < 0 || ib < 0 || ic < 0) {
            alloy_fail(err, "%s: model.merges[%u] (\"%.*s\", \"%.*s\") uses a token missing from model.vocab",
                       t->json_path, rank, (int)la, a, (int)lb, b);
            free(cat.p);
            return -1;
        }
        merge_put(t->merges, t->merge_mask, ia, ib, rank++, ic);
    }
    free(cat.p);
    return 0;
}

static int load_added(tokenizer *t, const cJSON *arr, alloy_err *err) {
    int n = cJSON_GetArraySize(arr);
    t->added = calloc((size_t)(n ? n : 1), sizeof *t->added);
    if (!t->added) return alloy_fail(err, "tokenizer: out of memory");
    const cJSON *a;
    cJSON_ArrayForEach(a, arr) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= t->n_ids ||
            !cJSON_IsString(content))
            return alloy_fail(err, "%s: added_tokens[%d] needs an \"id\" and a \"content\"", t->json_path,
                              t->n_added);
        tok_added *ad = &t->added[t->n_added];
        ad->id = (int32_t)id->valuedouble;
        ad->len = (uint32_t)strlen(content->valuestring);
        ad->special = flag(a, "special", false);
        ad->lstrip = flag(a, "lstrip", false);
        ad->rstrip = flag(a, "rstrip", false);
        ad->single_word = flag(a, "single_word", false);
        ad->normalized = flag(a, "normalized", !ad->special);
        if (set_token(t, ad->id, content->valuestring, ad->len, false, err)) return -1;
        ad->off = t->str_off[ad->id];
        t->special[ad->id] = ad->special;
        if (strmap_put(&t->by_str, content->valuestring, ad->len, ad->id, err)) return -1;
        tok_trie *tr = ad->normalized && t->nfc ? &t->trie_norm : &t->trie_raw;
        if (trie_add(tr, content->valuestring, ad->len, t->n_added, err)) return -1;
        t->n_added++;
    }
    return 0;
}

static int add_step(tokenizer *t, tok_pretok st, alloy_err *err) {
    void *p = realloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *t->pre);
    if (!p) {
        pcre2_code_free(st.re);
        return alloy_fail(err, "tokenizer: out of memory");
    }
    t->pre = p;
    t->pre[t->n_pre++] = st;
    return 0;
}

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static int load_pretok(tokenizer *t, const cJSON *p, alloy_err *err) {
    const char *ty = type_of(p);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"))
            if (load_pretok(t, s, err)) return -1;
        return 0;
    }
    tok_pretok st = {0};
    if (ty && !strcmp(ty, "ByteLevel")) {
        st.bytelevel = true;
        st.add_prefix_space = flag(p, "add_prefix_space", true);
        st.behavior = SPLIT_ISOLATED;
        if (flag(p, "use_regex", true) && !(st.re = regex_compile(GPT2_PATTERN, false, t->json_path, err)))
            return -1;
        return add_step(t, st, err);
    }
    if (ty && !strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        if (!strcmp(b, "Isolated")) st.behavior = SPLIT_ISOLATED;
        else if (!strcmp(b, "Removed")) st.behavior = SPLIT_REMOVED;
        else if (!strcmp(b, "MergedWithPrevious")) st.behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) st.behavior = SPLIT_MERGED_NEXT;
        else return alloy_fail(err, "%s: pre_tokenizer Split behavior \"%s\" is not supported", t->json_path, b);
        if (flag(p, "invert", false))
            return alloy_fail(err, "%s: pre_tokenizer Split with invert=true is not supported", t->json_path);
        if (cJSON_IsString(rx)) st.re = regex_compile(rx->valuestring, false, t->json_path, err);
        else if (cJSON_IsString(lit)) st.re = regex_compile(lit->valuestring, true, t->json_path, err);
        else return alloy_fail(err, "%s: pre_tokenizer Split has no pattern", t->json_path);
        return st.re ? add_step(t, st, err) : -1;
    }
    return alloy_fail(err, "%s: pre_tokenizer type \"%s\" is not supported (ByteLevel, Split, Sequence)",
                      t->json_path, ty ? ty : "?");
}

static int load_normalizer(tokenizer *t, const cJSON *n, alloy_err *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *ty = type_of(n);
    if (ty && !strcmp(ty, "NFC")) {
        t->nfc = true;
        return 0;
    }
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
            if (load_normalizer(t, s, err)) return -1;
        return 0;
    }
    return alloy_fail(err, "%s: normalizer type \"%s\" is not supported (only NFC)", t->json_path,
                      ty ? ty : "?");
}

static int push_special(tokenizer *t, const cJSON *specials, const char *name, tok_ids *dst,
                        alloy_err *err) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(specials, name), "ids");
    if (!cJSON_IsArray(ids))
        return alloy_fail(err, "%s: post_processor.special_tokens has no \"%s\"", t->json_path, name);
    const cJSON *id;
    cJSON_ArrayForEach(id, ids) {
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= t->n_ids)
            return alloy_fail(err, "%s: post_processor.special_tokens \"%s\" has a bad id", t->json_path, name);
        if (tok_ids_push(dst, (int32_t)id->valuedouble, err)) return -1;
    }
    return 0;
}

static int cls_sep(tokenizer *t, const cJSON *p, const char *key, tok_ids *dst, alloy_err *err) {
    const cJSON *pair = cJSON_GetObjectItemCaseSensitive(p, key);
    const cJSON *id = cJSON_GetArrayItem(pair, 1);
    if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= t->n_ids)
        return alloy_fail(err, "%s: post_processor.%s is not [token, id]", t->json_path, key);
    return tok_ids_push(dst, (int32_t)id->valuedouble, err);
}

static int load_post(tokenizer *t, const cJSON *p, alloy_err *err) {
    if (!p || cJSON_IsNull(p)) return 0;
    const char *ty = type_of(p);
    if (ty && !strcmp(ty, "ByteLevel")) return 0;  /* offsets only */
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(p, "processors"))
            if (load_post(t, s, err)) return -1;
        return 0;
    }
    if (ty && !strcmp(ty, "TemplateProcessing")) {
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens"), *it;
        bool after = false;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "single")) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                after = true;
            } else if (sp) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
                if (!cJSON_IsString(name))
                    return alloy_fail(err, "%s: post_processor.single has a SpecialToken without id", t->json_path);
                if (push_special(t, specials, name->valuestring, after ? &t->post_suffix : &t->post_prefix, err))
                    return -1;
            }
        }
        return 0;
    }
    if (ty && (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")))
        return cls_sep(t, p, "cls", &t->post_prefix, err) || cls_sep(t, p, "sep", &t->post_suffix, err) ? -1 : 0;
    return alloy_fail(err, "%s: post_processor type \"%s\" is not supported", t->json_path, ty ? ty : "?");
}

static int check_decoder(tokenizer *t, const cJSON *d, alloy_err *err) {
    if (!d || cJSON_IsNull(d)) return 0;
    const char *ty = type_of(d);
    if (ty && !strcmp(ty, "ByteLevel")) return 0;
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(d, "decoders"))
            if (check_decoder(t, s, err)) return -1;
        return 0;
    }
    return alloy_fail(err, "%s: decoder type \"%s\" is not supported (only ByteLevel)", t->json_path,
                      ty ? ty : "?");
}

static int load_model(tokenizer *t, const cJSON *root, alloy_err *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return alloy_fail(err, "%s: no \"model\" object", t->json_path);
    const char *ty = type_of(model);
    if (ty ? strcmp(ty, "BPE") != 0 : !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return alloy_fail(err, "%s: model.type \"%s\" is not supported (alloy reads byte-level BPE only)",
                          t->json_path, ty ? ty : "?");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(v) && v->valuedouble > 0)
        return alloy_fail(err, "%s: model.dropout is not supported", t->json_path);
    if (flag(model, "byte_fallback", false))
        return alloy_fail(err, "%s: model.byte_fallback is not supported (not a byte-level BPE)", t->json_path);
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affix[k]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return alloy_fail(err, "%s: model.%s is not supported", t->json_path, affix[k]);
    }
    t->ignore_merges = flag(model, "ignore_merges", false);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) return alloy_fail(err, "%s: model.vocab is not an object", t->json_path);
    if (!cJSON_IsArray(merges)) return alloy_fail(err, "%s: model.merges is not an array", t->json_path);
    double max = -1;
    cJSON_ArrayForEach(v, vocab) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e8)
            return alloy_fail(err, "%s: model.vocab[\"%s\"] is not a valid id", t->json_path, v->string);
        if (v->valuedouble > max) max = v->valuedouble;
    }
    cJSON_ArrayForEach(v, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(v, "id");
        if (cJSON_IsNumber(id) && id->valuedouble > max && id->valuedouble <= 1e8) max = id->valuedouble;
    }
    t->n_ids = (int32_t)max + 1;
    size_t n = (size_t)(t->n_ids ? t->n_ids : 1);
    t->str_off = calloc(n, sizeof *t->str_off);
    t->str_len = malloc(n * sizeof *t->str_len);
    t->bytes_off = calloc(n, sizeof *t->bytes_off);
    t->bytes_len = calloc(n, sizeof *t->bytes_len);
    t->special = calloc(n, 1);
    if (!t->str_off || !t->str_len || !t->bytes_off || !t->bytes_len || !t->special)
        return alloy_fail(err, "tokenizer: out of memory");
    memset(t->str_len, 0xFF, n * sizeof *t->str_len);
    cJSON_ArrayForEach(v, vocab) {
        size_t len = strlen(v->string);
        if (set_token(t, (int32_t)v->valuedouble, v->string, len, true, err) ||
            strmap_put(&t->by_str, v->string, len, (int32_t)v->valuedouble, err))
            return -1;
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        t->byte_id[b] = strmap_get(&t->by_str, u, (size_t)utf8_put(bytelevel_char((uint8_t)b), u));
    }
    if (load_merges(t, merges, err)) return -1;
    return load_added(t, added, err);
}

/* bos/eos in tokenizer_config.json are a string or {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int load_config(tokenizer *t, const char *path, alloy_err *err) {
    const char *bos = NULL, *eos = NULL, *tmpl = NULL;
    bool add_bos = false;
    cJSON *cfg = NULL;
    if (path) {
        size_t len;
        char *txt = fs_read_file(path, &len, err);
        if (!txt) return -1;
        cfg = cJSON_ParseWithLength(txt, len);
        free(txt);
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            return alloy_fail(err, "%s: not a JSON object", path);
        }
        bos = config_token(cfg, "bos_token");
        eos = config_token(cfg, "eos_token");
        add_bos = flag(cfg, "add_bos_token", false);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(ct)) {
            tmpl = ct->valuestring;
        } else if (cJSON_IsArray(ct)) {  /* [{"name": ..., "template": ...}] */
            const cJSON *e;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (!cJSON_IsString(tx)) continue;
                if (!tmpl || (cJSON_IsString(name) && !strcmp(name->valuestring, "default")))
                    tmpl = tx->valuestring;
            }
        }
    }
    if (tmpl && strstr(tmpl, "<|im_start|>")) t->chat = TOK_CHAT_CHATML;
    else if (tmpl && strstr(tmpl, "<|start_header_id|>")) t->chat = TOK_CHAT_LLAMA3;
    t->bos = bos ? tok_token_id(t, bos) : -1;
    t->eos = eos ? tok_token_id(t, eos) : -1;
    cJSON_Delete(cfg);
    if (t->bos < 0 && !bos) {
        if (t->post_prefix.n == 1) t->bos = t->post_prefix.v[0];
        else t->bos = tok_token_id(t, "<|begin_of_text|>");
    }
    const char *eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
    for (int k = 0; k < 3 && t->eos < 0 && !eos; k++) t->eos = tok_token_id(t, eos_names[k]);
    /* transformers honours add_bos_token for Llama-style tokenizers even when
     * tokenizer.json's post-processor does not add it */
    if (add_bos && t->bos >= 0 && !(t->post_prefix.n && t->post_prefix.v[0] == t->bos)) {
        if (tok_ids_push(&t->post_prefix, t->bos, err)) return -1;
        memmove(t->post_prefix.v + 1, t->post_prefix.v, (t->post_prefix.n - 1) * sizeof(int32_t));
        t->post_prefix.v[0] = t->bos;
    }
    if (t->eos >= 0) t->stop[t->n_stop++] = t->eos;
    const char *stops[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"};
    for (int k = 0; k < 5; k++) {
        int32_t id = tok_token_id(t, stops[k]);
        if (id >= 0 && id != t->eos) t->stop[t->n_stop++] = id;
    }
    return 0;
}

int tok_load_files(tokenizer **out, const char *json_path, const char *config_path, alloy_err *err) {
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return alloy_fail(err, "tokenizer: out of memory");
    pthread_mutex_init(&t->cache_lock, NULL);
    t->json_path = strdup(json_path);
    t->cache = calloc(TOK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->json_path || !t->cache) {
        tok_free(t);
        return alloy_fail(err, "tokenizer: out of memory");
    }
    size_t len;
    char *txt = fs_read_file(json_path, &len, err);
    if (!txt) {
        tok_free(t);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(txt, len);
    if (!cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        alloy_fail(err, "%s: invalid JSON (near byte %ld)", json_path,
                   at && at >= txt && at <= txt + len ? (long)(at - txt) : -1L);
        cJSON_Delete(root);
        free(txt);
        tok_free(t);
        return -1;
    }
    free(txt);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    int rc = load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err);
    if (!rc) rc = load_model(t, root, err);
    if (!rc && pre && !cJSON_IsNull(pre)) rc = load_pretok(t, pre, err);
    if (!rc) rc = load_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err);
    if (!rc) rc = check_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err);
    cJSON_Delete(root);
    bool bytelevel = false;
    for (int i = 0; i < t->n_pre; i++) bytelevel |= t->pre[i].bytelevel;
    if (!rc && !bytelevel)
        rc = alloy_fail(err, "%s: pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)",
                        json_path);
    if (!rc) rc = load_config(t, config_path, err);
    if (rc) {
        tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int tok_load(tokenizer **out, const char *dir, alloy_err *err) {
    *out = NULL;
    char *json = fs_join(dir, "tokenizer.json"), *cfg = fs_join(dir, "tokenizer_config.json");
    int rc;
    if (!json || !cfg) rc = alloy_fail(err, "tokenizer: out of memory");
    else if (!fs_is_file(json)) rc = alloy_fail(err, "%s: no such file (the model directory needs a tokenizer.json)", json);
    else rc = tok_load_files(out, json, fs_is_file(cfg) ? cfg : NULL, err);
    free(json);
    free(cfg);
    return rc;
}

/* ---- encoding ---- */

static void work_free(tok_work *w) {
    pcre2_match_data_free(w->md);
    free(w->a.v);
    free(w->b.v);
    free(w->segs.v);
    free(w->segs2.v);
    free(w->norm.p);
    free(w->scratch.p);
    free(w->sym);
    free(w->heap);
}

static int encode_words(const tokenizer *t, tok_work *w, tok_spans *pieces, const char *s, size_t n,
                        tok_ids *ids, alloy_err *err) {
    if (pretokenize(t, w, &s, &n, pieces, err)) return -1;
    for (size_t k = 0; k < pieces->n; k++)
        if (bpe_word(t, w, (const uint8_t *)s + pieces->v[k].start, pieces->v[k].len, ids, err)) return -1;
    return 0;
}

static int push_all(tok_ids *ids, const tok_ids *src, alloy_err *err) {
    for (size_t i = 0; i < src->n; i++)
        if (tok_ids_push(ids, src->v[i], err)) return -1;
    return 0;
}

int tok_encode(const tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *ids,
               alloy_err *err) {
    size_t bad = utf8_check((const uint8_t *)text, len);
    if (bad != len) return alloy_fail(err, "tokenizer: input is not valid UTF-8 (byte %zu)", bad);
    tok_work w = {0};
    tok_spans pieces = {0};
    int rc = -1;
    if (!(w.md = pcre2_match_data_create(1, NULL))) {
        alloy_fail(err, "tokenizer: out of memory");
        goto done;
    }
    if (add_special && push_all(ids, &t->post_prefix, err)) goto done;
    if (added_split(t, &t->trie_raw, text, len, &w.segs, err)) goto done;
    for (size_t i = 0; i < w.segs.n; i++) {
        tok_seg g = w.segs.v[i];
        if (g.added >= 0) {
            if (tok_ids_push(ids, t->added[g.added].id, err)) goto done;
            continue;
        }
        const char *s = text + g.start;
        size_t n = g.len;
        if (t->nfc && !nfc_quick_yes(s, n)) {
            if (nfc_normalize(s, n, &w.norm, err)) goto done;
            s = w.norm.p;
            n = w.norm.n;
        }
        if (!t->trie_norm.n) {
            if (encode_words(t, &w, &pieces, s, n, ids, err)) goto done;
            continue;
        }
        if (added_split(t, &t->trie_norm, s, n, &w.segs2, err)) goto done;
        for (size_t j = 0; j < w.segs2.n; j++) {
            tok_seg h = w.segs2.v[j];
            if (h.added >= 0 ? tok_ids_push(ids, t->added[h.added].id, err)
                             : encode_words(t, &w, &pieces, s + h.start, h.len, ids, err))
                goto done;
        }
    }
    if (add_special && push_all(ids, &t->post_suffix, err)) goto done;
    rc = 0;
done:
    free(pieces.v);
    work_free(&w);
    return rc;
}

/* ---- decoding and lookups ---- */

static bool known(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->str_len[id] != UINT32_MAX;
}

int tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
               size_t *out_len, alloy_err *err) {
    *out = NULL;
    tok_buf raw = {0}, txt = {0};
    for (size_t i = 0; i < n; i++) {
        if (!known(t, ids[i])) {
            free(raw.p);
            return alloy_fail(err, "tokenizer: unknown token id %d (vocabulary size %d)", ids[i], t->n_ids);
        }
        if (skip_special && t->special[ids[i]]) continue;
        if (tok_buf_put(&raw, t->arena.p + t->bytes_off[ids[i]], t->bytes_len[ids[i]], err)) {
            free(raw.p);
            return -1;
        }
    }
    int rc = utf8_lossy(&txt, (const uint8_t *)raw.p, raw.n, err);
    if (!rc && !txt.p) rc = tok_buf_put(&txt, "", 0, err);
    free(raw.p);
    if (rc) {
        free(txt.p);
        return -1;
    }
    *out = txt.p;
    if (out_len) *out_len = txt.n;
    return 0;
}

const char *tok_token_bytes(const tokenizer *t, int32_t id, size_t *len) {
    if (!known(t, id)) return NULL;
    if (len) *len = t->bytes_len[id];
    return t->arena.p + t->bytes_off[id];
}

const char *tok_token_str(const tokenizer *t, int32_t id) {
    /* set_token stores each string followed by a NUL */
    if (!known(t, id)) return NULL;
    return t->arena.p + t->str_off[id];
}

int32_t tok_token_id(const tokenizer *t, const char *str) { return strmap_get(&t->by_str, str, strlen(str)); }
bool tok_is_special(const tokenizer *t, int32_t id) { return known(t, id) && t->special[id]; }
int32_t tok_vocab_size(const tokenizer *t) { return t->n_ids; }
int32_t tok_bos(const tokenizer *t) { return t->bos; }
int32_t tok_eos(const tokenizer *t) { return t->eos; }
tok_chat_kind tok_chat_format(const tokenizer *t) { return t->chat; }

bool tok_is_stop(const tokenizer *t, int32_t id) {
    for (int k = 0; k < t->n_stop; k++)
        if (t->stop[k] == id) return true;
    return false;
}
