/* checkpoint.c — config.json and side files of checkpoint directories (see checkpoint.h). */
#include "io/checkpoint.h"

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/fs.h"

const char *const CKPT_SIDE_FILES[] = {
    "tokenizer.json",   "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.json",       "merges.txt",            "tokenizer.model",         "added_tokens.json",
    "chat_template.json", "chat_template.jinja", NULL,
};

cJSON *ckpt_read_config(const char *dir, alloy_err *err) {
    char *path = fs_join(dir, "config.json");
    char *text = fs_read_file(path, NULL, err);
    cJSON *j = NULL;
    if (text) {
        j = cJSON_Parse(text);
        if (!j || !cJSON_IsObject(j)) {
            alloy_fail(err, "%s: malformed JSON near byte %ld", path,
                       j ? 0L : (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : 0));
            cJSON_Delete(j);
            j = NULL;
        }
    }
    free(text);
    free(path);
    return j;
}

int ckpt_write_config(const char *dir, const cJSON *cfg, alloy_err *err) {
    char *text = cJSON_Print(cfg);
    char *path = fs_join(dir, "config.json");
    int rc = -1;
    if (text && path) {
        size_t n = strlen(text);
        text[n] = '\n'; /* replace the NUL: files end with a newline */
        rc = fs_write_file(path, text, n + 1, err);
    } else {
        alloy_fail(err, "out of memory");
    }
    free(text);
    free(path);
    return rc;
}

int ckpt_num_layers(const cJSON *cfg) {
    static const char *const keys[] = {"num_hidden_layers", "n_layer", "num_layers", NULL};
    const cJSON *objs[2] = {cfg, cJSON_GetObjectItemCaseSensitive(cfg, "text_config")};
    for (int o = 0; o < 2; o++)
        for (int i = 0; objs[o] && keys[i]; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(objs[o], keys[i]);
            if (cJSON_IsNumber(v)) return v->valueint;
        }
    return -1;
}

int ckpt_set_string(cJSON *obj, const char *key, const char *value) {
    cJSON *v = cJSON_CreateString(value);
    if (!v) return -1;
    if (cJSON_HasObjectItem(obj, key)) return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v) ? 0 : -1;
    return cJSON_AddItemToObject(obj, key, v) ? 0 : -1;
}

int ckpt_set_number(cJSON *obj, const char *key, double value) {
    cJSON *v = cJSON_CreateNumber(value);
    if (!v) return -1;
    if (cJSON_HasObjectItem(obj, key)) return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v) ? 0 : -1;
    return cJSON_AddItemToObject(obj, key, v) ? 0 : -1;
}

int ckpt_copy_side_files(const char *src_dir, const char *dst_dir, int *copied, alloy_err *err) {
    int n = 0;
    for (int i = 0; CKPT_SIDE_FILES[i]; i++) {
        char *src = fs_join(src_dir, CKPT_SIDE_FILES[i]);
        char *dst = fs_join(dst_dir, CKPT_SIDE_FILES[i]);
        int rc = 0;
        if (fs_is_file(src)) {
            rc = fs_copy_file(src, dst, err);
            n += rc == 0;
        }
        free(src);
        free(dst);
        if (rc) return -1;
    }
    if (copied) *copied = n;
    return 0;
}
