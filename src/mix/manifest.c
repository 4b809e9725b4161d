/* manifest.c — reading and writing alloy_mixture.json, and checking that
 * mixture members share a tokenizer and a vocabulary size (manifest.h).
 * Not here: running members (mixture.c), recipes (mod_recipe.c). */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mix/manifest.h"
#include "model/config.h"
#include "util/err.h"
#include "util/fs.h"

void mix_manifest_free(mix_manifest *m) {
    for (int i = 0; i < m->n; i++) free(m->paths ? m->paths[i] : NULL);
    for (int i = 0; i < m->nparams; i++) free(m->param_names ? m->param_names[i] : NULL);
    free(m->paths);
    free(m->weights);
    free(m->param_names);
    free(m->param_values);
    memset(m, 0, sizeof *m);
}

static int parse_manifest(mix_manifest *m, const cJSON *j, const char *dir, const char *file, alloy_err *err) {
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "alloy-mixture"))
        return alloy_fail(err, "%s: key 'format' must be \"alloy-mixture\"", file);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "version");
    if (ver && (!cJSON_IsNumber(ver) || ver->valuedouble != 1))
        return alloy_fail(err, "%s: key 'version': only version 1 is known", file);
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(j, "method");
    if (method && (!cJSON_IsString(method) || strcmp(method->valuestring, "mod")))
        return alloy_fail(err, "%s: key 'method' must be \"mod\"", file);
    const cJSON *rule = cJSON_GetObjectItemCaseSensitive(j, "rule");
    if (rule) {
        if (!cJSON_IsString(rule) || mix_rule_parse(rule->valuestring, &m->rule, err))
            return alloy_fail(err, "%s: key 'rule' must be \"arithmetic\" or \"geometric\"", file);
    }
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(j, "members");
    int n = cJSON_IsArray(mem) ? cJSON_GetArraySize(mem) : 0;
    if (n < 1) return alloy_fail(err, "%s: key 'members' must be a non-empty list", file);
    m->paths = calloc((size_t)n, sizeof *m->paths);
    m->weights = calloc((size_t)n, sizeof *m->weights);
    if (!m->paths || !m->weights) return alloy_fail(err, "out of memory");
    m->n = n;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, mem) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "path");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(e, "weight");
        if (!cJSON_IsString(p) || !p->valuestring[0])
            return alloy_fail(err, "%s: members[%d]: key 'path' must be a non-empty string", file, i);
        if (w && !cJSON_IsNumber(w))
            return alloy_fail(err, "%s: members[%d]: key 'weight' must be a number", file, i);
        m->weights[i] = w ? w->valuedouble : 1.0;
        m->paths[i] = p->valuestring[0] == '/' ? strdup(p->valuestring) : fs_join(dir, p->valuestring);
        if (!m->paths[i]) return alloy_fail(err, "out of memory");
        i++;
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "parameters");
    if (params && !cJSON_IsObject(params)) return alloy_fail(err, "%s: key 'parameters' must be an object", file);
    int np = params ? cJSON_GetArraySize(params) : 0;
    if (np > 0) {
        m->param_names = calloc((size_t)np, sizeof *m->param_names);
        m->param_values = calloc((size_t)np, sizeof *m->param_values);
        if (!m->param_names || !m->param_values) return alloy_fail(err, "out of memory");
        cJSON_ArrayForEach(e, params) {
            if (!cJSON_IsNumber(e) && !cJSON_IsBool(e))
                return alloy_fail(err, "%s: parameters.%s must be a number", file, e->string);
            if (!(m->param_names[m->nparams] = strdup(e->string))) return alloy_fail(err, "out of memory");
            m->param_values[m->nparams++] = cJSON_IsBool(e) ? (cJSON_IsTrue(e) ? 1 : 0) : e->valuedouble;
        }
    }
    return 0;
}

int mix_manifest_read(mix_manifest *m, const char *dir, alloy_err *err) {
    memset(m, 0, sizeof *m);
    char *file = fs_join(dir, MIX_MANIFEST);
    if (!file) return alloy_fail(err, "out of memory");
    char *text = fs_read_file(file, NULL, err);
    int rc = -1;
    cJSON *j = NULL;
    if (!text) goto done;
    j = cJSON_Parse(text);
    if (!j || !cJSON_IsObject(j)) {
        alloy_fail(err, "%s: not a JSON object", file);
        goto done;
    }
    rc = parse_manifest(m, j, dir, file, err);
done:
    if (rc) mix_manifest_free(m);
    cJSON_Delete(j);
    free(text);
    free(file);
    return rc;
}

int mix_manifest_write(const mix_manifest *m, const char *dir, alloy_err *err) {
    cJSON *j = cJSON_CreateObject(), *mem = NULL, *params = NULL;
    char *file = fs_join(dir, MIX_MANIFEST), *text = NULL;
    int rc = -1;
    if (!j || !file) goto oom;
    if (!cJSON_AddStringToObject(j, "format", "alloy-mixture") || !cJSON_AddNumberToObject(j, "version", 1) ||
        !cJSON_AddStringToObject(j, "method", "mod") ||
        !cJSON_AddStringToObject(j, "rule", mix_rule_name(m->rule)) ||
        !(mem = cJSON_AddArrayToObject(j, "members")))
        goto oom;
    for (int i = 0; i < m->n; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddItemToArray(mem, e)) {
            cJSON_Delete(e);
            goto oom;
        }
        if (!cJSON_AddStringToObject(e, "path", m->paths[i]) || !cJSON_AddNumberToObject(e, "weight", m->weights[i]))
            goto oom;
    }
    if (!(params = cJSON_AddObjectToObject(j, "parameters"))) goto oom;
    for (int i = 0; i < m->nparams; i++)
        if (!cJSON_AddNumberToObject(params, m->param_names[i], m->param_values[i])) goto oom;
    if (!(text = cJSON_Print(j))) goto oom;
    size_t len = strlen(text);
    char *t2 = realloc(text, len + 2);
    if (!t2) goto oom;
    text = t2;
    text[len] = '\n';
    text[len + 1] = 0;
    rc = fs_write_file(file, text, len + 1, err);
    goto done;
oom:
    alloy_fail(err, "%s: out of memory", file ? file : MIX_MANIFEST);
done:
    free(text);
    free(file);
    cJSON_Delete(j);
    return rc;
}

/* ---- member checks ------------------------------------------------------ */

typedef struct tokjson {
    char *text;
    size_t len;
    cJSON *json;
    const cJSON *vocab, *merges, *added;
} tokjson;

static void tokjson_free(tokjson *t) {
    cJSON_Delete(t->json);
    free(t->text);
}

static int tokjson_load(tokjson *t, const char *dir, alloy_err *err) {
    memset(t, 0, sizeof *t);
    char *path = fs_join(dir, "tokenizer.json");
    if (!path) return alloy_fail(err, "out of memory");
    t->text = fs_read_file(path, &t->len, err);
    int rc = -1;
    if (!t->text) goto done;
    t->json = cJSON_Parse(t->text);
    if (!t->json) {
        alloy_fail(err, "%s: not valid JSON", path);
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(t->json, "model");
    t->vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    t->merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    t->added = cJSON_GetObjectItemCaseSensitive(t->json, "added_tokens");
    if (!cJSON_IsObject(t->vocab)) {
        alloy_fail(err, "%s: key 'model.vocab' is missing", path);
        goto done;
    }
    rc = 0;
done:
    free(path);
    if (rc) tokjson_free(t);
    return rc;
}

/* A merge as text: "a b" whether written as a string or a pair. */
static void merge_text(const cJSON *e, char *buf, size_t cap) {
    if (cJSON_IsString(e)) snprintf(buf, cap, "%s", e->valuestring);
    else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
             cJSON_IsString(cJSON_GetArrayItem(e, 1)))
        snprintf(buf, cap, "%s %s", cJSON_GetArrayItem(e, 0)->valuestring, cJSON_GetArrayItem(e, 1)->valuestring);
    else snprintf(buf, cap, "?");
}

/* Compare b against a; on a difference fill err naming both and return -1. */
static int tok_compare(const tokjson *a, const char *da, const tokjson *b, const char *db, alloy_err *err) {
    if (a->len == b->len && !memcmp(a->text, b->text, a->len)) return 0;
    int na = cJSON_GetArraySize(a->vocab), nb = cJSON_GetArraySize(b->vocab);
    const cJSON *e;
    cJSON_ArrayForEach(e, a->vocab) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(b->vocab, e->string);
        if (!o)
            return alloy_fail(err, "tokenizers differ: token '%s' (id %d) of %s/tokenizer.json is not in %s's",
                              e->string, (int)e->valuedouble, da, db);
        if (!cJSON_IsNumber(o) || o->valuedouble != e->valuedouble)
            return alloy_fail(err, "tokenizers differ: token '%s' has id %d in %s but %d in %s", e->string,
                              (int)e->valuedouble, da, (int)o->valuedouble, db);
    }
    if (na != nb)
        return alloy_fail(err, "tokenizers differ: %s has %d vocabulary entries, %s has %d", da, na, db, nb);
    int ma = cJSON_GetArraySize(a->merges), mb = cJSON_GetArraySize(b->merges);
    for (int i = 0; i < ma && i < mb; i++) {
        const cJSON *x = cJSON_GetArrayItem(a->merges, i), *y = cJSON_GetArrayItem(b->merges, i);
        char sx[256], sy[256];
        merge_text(x, sx, sizeof sx);
        merge_text(y, sy, sizeof sy);
        if (strcmp(sx, sy))
            return alloy_fail(err, "tokenizers differ: merge %d is '%s' in %s but '%s' in %s", i, sx, da, sy, db);
    }
    if (ma != mb) return alloy_fail(err, "tokenizers differ: %s has %d merges, %s has %d", da, ma, db, mb);
    int aa = cJSON_GetArraySize(a->added), ab = cJSON_GetArraySize(b->added);
    for (int i = 0; i < aa && i < ab; i++) {
        const cJSON *x = cJSON_GetArrayItem(a->added, i), *y = cJSON_GetArrayItem(b->added, i);
        const cJSON *cx = cJSON_GetObjectItemCaseSensitive(x, "content");
        const cJSON *cy = cJSON_GetObjectItemCaseSensitive(y, "content");
        if (!cJSON_Compare(x, y, true))
            return alloy_fail(err, "tokenizers differ: added token %d is '%s' in %s but '%s' in %s", i,
                              cJSON_IsString(cx) ? cx->valuestring : "?", da,
                              cJSON_IsString(cy) ? cy->valuestring : "?", db);
    }
    if (aa != ab) return alloy_fail(err, "tokenizers differ: %s has %d added tokens, %s has %d", da, aa, db, ab);
    /* Same vocabulary, merges and added tokens; formatting or other settings
     * (pre-tokenizer, normaliser) may still differ: compare those too. */
    static const char *const keys[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(a->json, keys[i]);
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b->json, keys[i]);
        if ((x || y) && !(x && y && cJSON_Compare(x, y, true)))
            return alloy_fail(err, "tokenizers differ: key '%s' of %s/tokenizer.json differs from %s's", keys[i], da,
                              db);
    }
    return 0;
}

int mix_check_members(const char *const *dirs, int n, alloy_err *err) {
    int vocab0 = 0;
    for (int i = 0; i < n; i++) {
        if (!fs_is_dir(dirs[i])) return alloy_fail(err, "mixture member %s: not a directory", dirs[i]);
        Config c;
        if (model_config_load(&c, dirs[i], err)) return alloy_wrap(err, "mixture member: ");
        if (i == 0) vocab0 = c.vocab_size;
        else if (c.vocab_size != vocab0)
            return alloy_fail(err, "mixture members differ in vocab_size: %d in %s, %d in %s", vocab0, dirs[0],
                              c.vocab_size, dirs[i]);
    }
    int have = -1; /* first member with a tokenizer.json */
    for (int i = 0; i < n; i++) {
        char *p = fs_join(dirs[i], "tokenizer.json");
        bool has = p && fs_is_file(p);
        free(p);
        if (has && have < 0) have = i;
        if (!has && have >= 0)
            return alloy_fail(err, "mixture members must share a tokenizer: %s has tokenizer.json, %s has none",
                              dirs[have], dirs[i]);
        if (has && i > 0 && have != 0)
            return alloy_fail(err, "mixture members must share a tokenizer: %s has tokenizer.json, %s has none",
                              dirs[i], dirs[0]);
    }
    if (have < 0) return 0; /* token ids only */
    tokjson first;
    if (tokjson_load(&first, dirs[0], err)) return -1;
    int rc = 0;
    for (int i = 1; i < n && !rc; i++) {
        tokjson t;
        if (tokjson_load(&t, dirs[i], err)) {
            rc = -1;
            break;
        }
        rc = tok_compare(&first, dirs[0], &t, dirs[i], err);
        tokjson_free(&t);
    }
    tokjson_free(&first);
    return rc;
}
