/* library.c — the TTMM expert library on disk:
 *   LIB/alloy_experts.json      manifest (below)
 *   LIB/centroids.safetensors   "centroids" [K, d] f32, unit rows φ_k
 *   LIB/expert-00000/ ...       one PEFT LoRA adapter per cluster
 *   LIB/tokenizer*.json         the base's tokenizer files
 * Manifest keys: format ("alloy-experts"), version (1), base (directory),
 * base_checksum (ex_base_checksum), embed {model, pooling, doc_tokens,
 * query_tokens}, select {beta, tau, max_experts}, lora {rank, alpha},
 * clusters (K), sizes ([K] documents per cluster), complete (bool).
 * Not here: building the library (build.c), using it (lm_experts.c). */
#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/experts.h"
#include "util/err.h"
#include "util/fs.h"

void ex_logf(void (*on_log)(void *user, const char *line), void *user, const char *fmt, ...) {
    if (!on_log) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    on_log(user, buf);
}

void ex_expert_name(int k, char out[32]) { snprintf(out, 32, "expert-%05d", k); }

static void fnv(uint64_t *h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) *h = (*h ^ b[i]) * 0x100000001b3ull;
}

int ex_base_checksum(const char *dir, char hex[17], alloy_err *err) {
    uint64_t h = 0xcbf29ce484222325ull;
    char *cfg_path = fs_join(dir, "config.json"), *idx_path = fs_join(dir, "model.safetensors.index.json");
    size_t len = 0;
    char *cfg = cfg_path ? fs_read_file(cfg_path, &len, err) : NULL;
    free(cfg_path);
    if (!cfg) {
        free(idx_path);
        return alloy_wrap(err, "base checkpoint %s: ", dir);
    }
    fnv(&h, cfg, len);
    free(cfg);
    if (idx_path && fs_exists(idx_path)) {
        char *idx = fs_read_file(idx_path, &len, err);
        if (!idx) {
            free(idx_path);
            return -1;
        }
        fnv(&h, idx, len);
        free(idx);
    }
    free(idx_path);
    st_model st;
    if (st_open_dir(&st, dir, err)) return -1;
    for (int f = 0; f < st.nfiles; f++) {
        const unsigned char *map = st.files[f].map;
        size_t size = st.files[f].size;
        fnv(&h, &size, sizeof size);
        uint64_t hl = 0;
        for (int i = 0; i < 8 && (size_t)i < size; i++) hl |= (uint64_t)map[i] << (8 * i);
        size_t head = 8 + hl < size ? 8 + hl : size;
        fnv(&h, map, head);
        size_t data = size - head, blk = 4096;
        for (int s = 0; s < 16 && data > 0; s++) {
            size_t off = head + (data > blk ? (data - blk) / 15 * s : 0);
            size_t nb = data < blk ? data : blk;
            fnv(&h, map + off, nb);
        }
    }
    st_close(&st);
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
    return 0;
}

int ex_library_write_manifest(const ex_library *lib, alloy_err *err) {
    cJSON *j = cJSON_CreateObject(), *e = cJSON_CreateObject(), *s = cJSON_CreateObject(),
          *l = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", "alloy-experts");
    cJSON_AddNumberToObject(j, "version", 1);
    cJSON_AddStringToObject(j, "base", lib->base);
    cJSON_AddStringToObject(j, "base_checksum", lib->base_checksum);
    cJSON_AddStringToObject(e, "model", lib->embed_model);
    cJSON_AddStringToObject(e, "pooling", "mean_final_norm_hidden");
    cJSON_AddNumberToObject(e, "doc_tokens", lib->doc_tokens);
    cJSON_AddNumberToObject(e, "query_tokens", lib->query_tokens);
    cJSON_AddItemToObject(j, "embed", e);
    cJSON_AddNumberToObject(s, "beta", lib->sel.beta);
    cJSON_AddNumberToObject(s, "tau", lib->sel.tau);
    cJSON_AddNumberToObject(s, "max_experts", lib->sel.max_experts);
    cJSON_AddItemToObject(j, "select", s);
    cJSON_AddNumberToObject(l, "rank", lib->lora_rank);
    cJSON_AddNumberToObject(l, "alpha", lib->lora_alpha);
    cJSON_AddItemToObject(j, "lora", l);
    cJSON_AddNumberToObject(j, "clusters", lib->k);
    cJSON_AddItemToObject(j, "sizes", cJSON_CreateIntArray(lib->sizes, lib->k));
    cJSON_AddBoolToObject(j, "complete", lib->complete);
    cJSON_AddStringToObject(j, "fingerprint", lib->fingerprint ? lib->fingerprint : "");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    char *path = fs_join(lib->dir, EX_MANIFEST), *tmp = malloc(strlen(path) + 8);
    int rc = -1;
    if (txt && path && tmp) {
        sprintf(tmp, "%s.tmp", path);
        if (fs_write_file(tmp, txt, strlen(txt), err) == 0) {
            if (rename(tmp, path) == 0) rc = 0;
            else alloy_fail(err, "%s: cannot rename into place", path);
        }
    } else {
        alloy_fail(err, "%s: out of memory", lib->dir);
    }
    free(txt), free(path), free(tmp);
    return rc;
}

int ex_library_write_centroids(const ex_library *lib, alloy_err *err) {
    st_spec spec = {.name = "centroids", .dtype = ALLOY_F32, .ndim = 2, .shape = {lib->k, lib->dim}};
    st_writer *w = st_writer_open(lib->dir, &spec, 1, UINT64_MAX, err);
    if (!w) return alloy_wrap(err, "%s: ", lib->dir);
    if (st_writer_put(w, 0, lib->centroids, err)) {
        st_writer_abort(w);
        return -1;
    }
    if (st_writer_finish(w, err)) return -1;
    /* the writer names a single shard model.safetensors */
    char *from = fs_join(lib->dir, "model.safetensors"), *to = fs_join(lib->dir, EX_CENTROIDS);
    int rc = 0;
    if (!from || !to || rename(from, to) != 0) rc = alloy_fail(err, "%s: cannot write %s", lib->dir, EX_CENTROIDS);
    free(from), free(to);
    return rc;
}

static const cJSON *need(const cJSON *o, const char *key, bool num, const char *path, alloy_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || (num ? !cJSON_IsNumber(v) : !cJSON_IsString(v))) {
        alloy_fail(err, "%s: missing or invalid key \"%s\"", path, key);
        return NULL;
    }
    return v;
}

static char *dupstr(const char *s) {
    char *d = malloc(strlen(s) + 1);
    if (d) strcpy(d, s);
    return d;
}

int ex_library_load(ex_library *lib, const char *dir, bool check_base, alloy_err *err) {
    memset(lib, 0, sizeof *lib);
    char *path = fs_join(dir, EX_MANIFEST);
    char *txt = path ? fs_read_file(path, NULL, err) : NULL;
    if (!txt) {
        free(path);
        return -1;
    }
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    int rc = -1;
    const cJSON *v, *e, *s, *l, *sz;
    lib->dir = dupstr(dir);
    if (!j) {
        alloy_fail(err, "%s: not valid JSON", path);
        goto done;
    }
    if (!(v = need(j, "format", false, path, err))) goto done;
    if (strcmp(v->valuestring, "alloy-experts") != 0) {
        alloy_fail(err, "%s: \"format\" is \"%s\", expected \"alloy-experts\"", path, v->valuestring);
        goto done;
    }
    if (!(v = need(j, "base", false, path, err))) goto done;
    lib->base = dupstr(v->valuestring);
    if (!(v = need(j, "base_checksum", false, path, err))) goto done;
    lib->base_checksum = dupstr(v->valuestring);
    e = cJSON_GetObjectItemCaseSensitive(j, "embed");
    s = cJSON_GetObjectItemCaseSensitive(j, "select");
    l = cJSON_GetObjectItemCaseSensitive(j, "lora");
    if (!cJSON_IsObject(e) || !cJSON_IsObject(s) || !cJSON_IsObject(l)) {
        alloy_fail(err, "%s: missing object \"embed\", \"select\" or \"lora\"", path);
        goto done;
    }
    if (!(v = need(e, "model", false, path, err))) goto done;
    lib->embed_model = dupstr(v->valuestring);
    if (!(v = need(e, "doc_tokens", true, path, err))) goto done;
    lib->doc_tokens = v->valueint;
    if (!(v = need(e, "query_tokens", true, path, err))) goto done;
    lib->query_tokens = v->valueint;
    if (!(v = need(s, "beta", true, path, err))) goto done;
    lib->sel.beta = v->valuedouble;
    if (!(v = need(s, "tau", true, path, err))) goto done;
    lib->sel.tau = v->valuedouble;
    if (!(v = need(s, "max_experts", true, path, err))) goto done;
    lib->sel.max_experts = v->valueint;
    if (!(v = need(l, "rank", true, path, err))) goto done;
    lib->lora_rank = v->valueint;
    if (!(v = need(l, "alpha", true, path, err))) goto done;
    lib->lora_alpha = v->valuedouble;
    if (!(v = need(j, "clusters", true, path, err))) goto done;
    lib->k = v->valueint;
    sz = cJSON_GetObjectItemCaseSensitive(j, "sizes");
    if (lib->k < 1 || !cJSON_IsArray(sz) || cJSON_GetArraySize(sz) != lib->k) {
        alloy_fail(err, "%s: \"sizes\" must list %d cluster sizes", path, lib->k);
        goto done;
    }
    lib->sizes = calloc((size_t)lib->k, sizeof *lib->sizes);
    for (int i = 0; lib->sizes && i < lib->k; i++) lib->sizes[i] = cJSON_GetArrayItem(sz, i)->valueint;
    lib->complete = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "complete"));
    v = cJSON_GetObjectItemCaseSensitive(j, "fingerprint");
    lib->fingerprint = dupstr(cJSON_IsString(v) ? v->valuestring : "");
    if (!lib->base || !lib->base_checksum || !lib->embed_model || !lib->sizes || !lib->fingerprint) {
        alloy_fail(err, "%s: out of memory", path);
        goto done;
    }
    if (check_base) {
        char hex[17];
        if (ex_base_checksum(lib->base, hex, err)) {
            alloy_wrap(err, "%s: base model: ", path);
            goto done;
        }
        if (strcmp(hex, lib->base_checksum) != 0) {
            alloy_fail(err, "%s: base model %s changed since the library was built (checksum %s, recorded %s); "
                       "rebuild the library", path, lib->base, hex, lib->base_checksum);
            goto done;
        }
    }
    /* centroids */
    {
        char *cp = fs_join(dir, EX_CENTROIDS);
        st_model st;
        if (!cp || st_open_file(&st, cp, err)) {
            free(cp);
            goto done;
        }
        const st_tensor *t = st_find(&st, "centroids");
        if (!t || t->dtype != ALLOY_F32 || t->ndim != 2 || t->shape[0] != lib->k) {
            alloy_fail(err, "%s: tensor \"centroids\" must be f32 [%d, d]", cp, lib->k);
            st_close(&st);
            free(cp);
            goto done;
        }
        lib->dim = (int)t->shape[1];
        lib->centroids = malloc(t->nbytes);
        if (lib->centroids) memcpy(lib->centroids, t->data, t->nbytes);
        st_close(&st);
        free(cp);
        if (!lib->centroids) {
            alloy_fail(err, "%s: out of memory", dir);
            goto done;
        }
    }
    rc = 0;
done:
    cJSON_Delete(j);
    free(path);
    if (rc) ex_library_free(lib);
    return rc;
}

void ex_library_free(ex_library *lib) {
    free(lib->dir), free(lib->base), free(lib->base_checksum), free(lib->embed_model);
    free(lib->sizes), free(lib->centroids), free(lib->fingerprint);
    memset(lib, 0, sizeof *lib);
}
