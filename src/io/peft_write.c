/* peft_write.c — PEFT LoRA adapter directories (see peft_write.h): the
 * safetensors writer lays out adapter_model.safetensors (its single-shard
 * name model.safetensors is renamed), cJSON writes adapter_config.json.
 * Not here: reading adapters (peft.c), the SVD that makes them. */
#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/peft_write.h"
#include "io/safetensors.h"
#include "util/err.h"
#include "util/fs.h"

struct peft_writer {
    char *out_dir, *tmp_dir, *base_model;
    int r, n;
    double alpha;
    char **modules;
    st_writer *st;
};

static void free_writer(peft_writer *w) {
    if (!w) return;
    if (w->modules)
        for (int i = 0; i < w->n; i++) free(w->modules[i]);
    free(w->modules);
    free(w->out_dir);
    free(w->tmp_dir);
    free(w->base_model);
    free(w);
}

void peft_writer_abort(peft_writer *w) {
    if (!w) return;
    if (w->st) st_writer_abort(w->st);
    if (w->tmp_dir) fs_remove_tree(w->tmp_dir, NULL);
    free_writer(w);
}

peft_writer *peft_writer_open(const char *out_dir, const char *base_model, int r, double alpha,
                              const peft_write_module *mods, int n, alloy_err *err) {
    if (n <= 0) {
        alloy_fail(err, "%s: no modules to write", out_dir);
        return NULL;
    }
    peft_writer *w = calloc(1, sizeof *w);
    st_spec *specs = calloc((size_t)n * 2, sizeof *specs);
    char **names = calloc((size_t)n * 2, sizeof *names);
    if (!w || !specs || !names) goto oom;
    w->r = r, w->n = n, w->alpha = alpha;
    w->out_dir = strdup(out_dir);
    w->base_model = strdup(base_model ? base_model : "");
    w->modules = calloc((size_t)n, sizeof *w->modules);
    if (!w->out_dir || !w->base_model || !w->modules) goto oom;
    for (int i = 0; i < n; i++) {
        const char *mname = mods[i].module;
        size_t len = strlen(mname) + 64;
        w->modules[i] = strdup(mname);
        names[2 * i] = malloc(len);
        names[2 * i + 1] = malloc(len);
        if (!w->modules[i] || !names[2 * i] || !names[2 * i + 1]) goto oom;
        snprintf(names[2 * i], len, "base_model.model.%s.lora_A.weight", mname);
        snprintf(names[2 * i + 1], len, "base_model.model.%s.lora_B.weight", mname);
        specs[2 * i] = (st_spec){.name = names[2 * i], .dtype = ALLOY_F32, .ndim = 2,
                                 .shape = {r, mods[i].in_features}};
        specs[2 * i + 1] = (st_spec){.name = names[2 * i + 1], .dtype = ALLOY_F32, .ndim = 2,
                                     .shape = {mods[i].out_features, r}};
    }
    w->tmp_dir = fs_make_temp_sibling(out_dir, err);
    if (!w->tmp_dir) goto fail;
    w->st = st_writer_open(w->tmp_dir, specs, 2 * n, UINT64_MAX, err);
    if (!w->st) goto fail;
    for (int i = 0; i < 2 * n; i++) free(names[i]);
    free(names);
    free(specs);
    return w;
oom:
    alloy_fail(err, "%s: out of memory", out_dir);
fail:
    if (names)
        for (int i = 0; i < 2 * n; i++) free(names[i]);
    free(names);
    free(specs);
    peft_writer_abort(w);
    return NULL;
}

int peft_writer_put(peft_writer *w, int i, const float *A, const float *B, alloy_err *err) {
    if (i < 0 || i >= w->n) return alloy_fail(err, "%s: module index %d out of range", w->out_dir, i);
    if (st_writer_put(w->st, 2 * i, A, err) || st_writer_put(w->st, 2 * i + 1, B, err))
        return alloy_wrap(err, "%s: module '%s': ", w->out_dir, w->modules[i]);
    return 0;
}

/* adapter_config.json: the fields PEFT needs to load a LoRA adapter; the
 * target modules are the distinct leaf names (q_proj, up_proj, ...). */
static char *config_json(const peft_writer *w) {
    cJSON *j = cJSON_CreateObject();
    cJSON *tm = cJSON_CreateArray();
    if (!j || !tm) {
        cJSON_Delete(j);
        cJSON_Delete(tm);
        return NULL;
    }
    for (int i = 0; i < w->n; i++) {
        const char *dot = strrchr(w->modules[i], '.');
        const char *leaf = dot ? dot + 1 : w->modules[i];
        bool seen = false;
        for (int t = 0; t < cJSON_GetArraySize(tm) && !seen; t++)
            seen = !strcmp(cJSON_GetArrayItem(tm, t)->valuestring, leaf);
        if (!seen) cJSON_AddItemToArray(tm, cJSON_CreateString(leaf));
    }
    cJSON_AddStringToObject(j, "base_model_name_or_path", w->base_model);
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(j, "r", w->r);
    cJSON_AddNumberToObject(j, "lora_alpha", w->alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", 0.0);
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", false);
    cJSON_AddBoolToObject(j, "use_rslora", false);
    cJSON_AddBoolToObject(j, "inference_mode", true);
    cJSON_AddItemToObject(j, "target_modules", tm);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}

int peft_writer_finish(peft_writer *w, alloy_err *err) {
    st_writer *st = w->st;
    w->st = NULL;
    if (st_writer_finish(st, err)) {
        peft_writer_abort(w);
        return -1;
    }
    char *from = fs_join(w->tmp_dir, "model.safetensors"), *to = fs_join(w->tmp_dir, "adapter_model.safetensors");
    char *cfg_path = fs_join(w->tmp_dir, "adapter_config.json"), *cfg = config_json(w);
    int rc = 0;
    if (!from || !to || !cfg_path || !cfg) rc = alloy_fail(err, "%s: out of memory", w->out_dir);
    if (!rc && rename(from, to) != 0) rc = alloy_fail(err, "%s: cannot rename %s", w->out_dir, from);
    if (!rc) rc = fs_write_file(cfg_path, cfg, strlen(cfg), err);
    if (!rc) rc = fs_commit_dir(w->tmp_dir, w->out_dir, err);
    free(from);
    free(to);
    free(cfg_path);
    free(cfg);
    if (rc) {
        peft_writer_abort(w);
        return -1;
    }
    free_writer(w);
    return 0;
}
