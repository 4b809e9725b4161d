/* peft.c — reading and applying PEFT LoRA adapters (see peft.h). */
#include "io/peft.h"

#include <cJSON.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

static const char PREFIX[] = "base_model.model.";

static int parse_config(peft_adapter *a, const char *dir, alloy_err *err) {
    char *path = fs_join(dir, "adapter_config.json");
    char *text = path ? fs_read_file(path, NULL, err) : NULL;
    if (!text) {
        free(path);
        return -1;
    }
    int rc = 0;
    cJSON *j = cJSON_Parse(text);
    const cJSON *r = j ? cJSON_GetObjectItemCaseSensitive(j, "r") : NULL;
    const cJSON *alpha = j ? cJSON_GetObjectItemCaseSensitive(j, "lora_alpha") : NULL;
    const cJSON *rs = j ? cJSON_GetObjectItemCaseSensitive(j, "use_rslora") : NULL;
    const cJSON *ap = j ? cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern") : NULL;
    const cJSON *rp = j ? cJSON_GetObjectItemCaseSensitive(j, "rank_pattern") : NULL;
    if (!j || !cJSON_IsObject(j))
        rc = alloy_fail(err, "%s: not a JSON object", path);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1)
        rc = alloy_fail(err, "%s: missing or invalid \"r\"", path);
    else if (alpha && !cJSON_IsNumber(alpha))
        rc = alloy_fail(err, "%s: invalid \"lora_alpha\"", path);
    else if ((ap && cJSON_IsObject(ap) && ap->child) || (rp && cJSON_IsObject(rp) && rp->child))
        rc = alloy_fail(err, "%s: per-module rank_pattern/alpha_pattern is not supported", path);
    else {
        a->rank = r->valueint;
        a->alpha = alpha ? alpha->valuedouble : 8.0; /* PEFT's default lora_alpha */
        a->rslora = cJSON_IsTrue(rs);
    }
    cJSON_Delete(j);
    free(text);
    free(path);
    return rc;
}

int peft_load(peft_adapter *a, const char *dir, alloy_err *err) {
    memset(a, 0, sizeof *a);
    a->dir = strdup(dir);
    if (!fs_is_dir(dir)) {
        alloy_fail(err, "%s: LoRA adapter directory not found", dir);
        goto fail;
    }
    if (parse_config(a, dir, err)) goto fail;
    char *file = fs_join(dir, "adapter_model.safetensors");
    int rc = st_open_file(&a->st, file, err);
    free(file);
    if (rc) goto fail;
    a->modules = calloc((size_t)a->st.ntensors, sizeof *a->modules);
    if (!a->modules && a->st.ntensors) {
        alloy_fail(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < a->st.ntensors; i++) {
        const st_tensor *t = &a->st.tensors[i];
        const char *name = t->name;
        size_t len = strlen(name), plen = sizeof PREFIX - 1;
        const char *suffix_a = ".lora_A.weight", *suffix_b = ".lora_B.weight";
        size_t slen = strlen(suffix_a);
        bool is_a = len > plen + slen && !strcmp(name + len - slen, suffix_a);
        bool is_b = len > plen + slen && !strcmp(name + len - slen, suffix_b);
        if (strncmp(name, PREFIX, plen) != 0 || (!is_a && !is_b)) {
            alloy_fail(err, "%s/adapter_model.safetensors: tensor '%s' is not a LoRA A/B weight of a "
                       "linear module", dir, name);
            goto fail;
        }
        if (is_b) continue; /* paired from its A */
        if (t->ndim != 2 || !dtype_is_mergeable(t->dtype)) {
            alloy_fail(err, "%s/adapter_model.safetensors: tensor '%s' must be a 2-D float matrix", dir, name);
            goto fail;
        }
        size_t mlen = len - plen - slen;
        char *bname = strdup(name);
        memcpy(bname + len - slen, suffix_b, slen);
        const st_tensor *b = st_find(&a->st, bname);
        free(bname);
        if (!b || b->ndim != 2 || b->shape[1] != t->shape[0] || !dtype_is_mergeable(b->dtype)) {
            alloy_fail(err, "%s/adapter_model.safetensors: tensor '%s' has no matching lora_B of shape "
                       "[out, %lld]", dir, name, (long long)t->shape[0]);
            goto fail;
        }
        peft_module *m = &a->modules[a->nmodules++];
        m->weight_name = malloc(mlen + sizeof ".weight");
        memcpy(m->weight_name, name + plen, mlen);
        memcpy(m->weight_name + mlen, ".weight", sizeof ".weight");
        m->A = t;
        m->B = b;
        m->rank = (int)t->shape[0];
        if (m->rank != a->rank) {
            alloy_fail(err, "%s: module '%.*s' has rank %d but adapter_config.json says r=%d", dir,
                       (int)mlen, name + plen, m->rank, a->rank);
            goto fail;
        }
        m->scale = a->rslora ? a->alpha / sqrt((double)m->rank) : a->alpha / m->rank;
    }
    /* every B must have been paired with an A */
    for (int i = 0; i < a->st.ntensors; i++) {
        const char *name = a->st.tensors[i].name;
        size_t len = strlen(name);
        if (len > 14 && !strcmp(name + len - 14, ".lora_B.weight")) {
            bool found = false;
            for (int k = 0; k < a->nmodules && !found; k++) found = a->modules[k].B == &a->st.tensors[i];
            if (!found) {
                alloy_fail(err, "%s/adapter_model.safetensors: tensor '%s' has no matching lora_A", dir, name);
                goto fail;
            }
        }
    }
    if (a->nmodules == 0) {
        alloy_fail(err, "%s/adapter_model.safetensors: no LoRA modules", dir);
        goto fail;
    }
    return 0;
fail:
    peft_free(a);
    return -1;
}

void peft_free(peft_adapter *a) {
    if (!a) return;
    for (int i = 0; i < a->nmodules; i++) free(a->modules[i].weight_name);
    free(a->modules);
    st_close(&a->st);
    free(a->dir);
    memset(a, 0, sizeof *a);
}

const peft_module *peft_find(const peft_adapter *a, const char *weight_name) {
    for (int i = 0; i < a->nmodules; i++)
        if (!strcmp(a->modules[i].weight_name, weight_name)) return &a->modules[i];
    return NULL;
}

/* LoRA (Hu et al. 2021, eq. 3): h = W0 x + (alpha / r) B A x, so the merged
 * weight is W0 + (alpha / r) · B · A; rsLoRA (Kalajdzievski 2023) uses
 * alpha / sqrt(r). */
int peft_apply(const peft_adapter *a, const peft_module *m, float *W, int64_t rows, int64_t cols,
               alloy_err *err) {
    int64_t r = m->rank;
    if (m->B->shape[0] != rows || m->A->shape[1] != cols)
        return alloy_fail(err, "%s: module '%s': LoRA shapes B[%lld,%lld]·A[%lld,%lld] do not match the "
                          "base weight [%lld,%lld]", a->dir, m->weight_name, (long long)m->B->shape[0],
                          (long long)r, (long long)r, (long long)m->A->shape[1], (long long)rows,
                          (long long)cols);
    float *A = malloc(sizeof(float) * (size_t)(r * cols));
    float *B = malloc(sizeof(float) * (size_t)(rows * r));
    int rc = 0;
    if (!A || !B) {
        rc = alloy_fail(err, "out of memory");
    } else if (dtype_to_f32(m->A->data, m->A->dtype, A, (size_t)(r * cols)) >= 0 ||
               dtype_to_f32(m->B->data, m->B->dtype, B, (size_t)(rows * r)) >= 0) {
        rc = alloy_fail(err, "%s/adapter_model.safetensors: module '%s': non-finite value in LoRA weights",
                        a->dir, m->weight_name);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)r,
                    (float)m->scale, B, (int)r, A, (int)cols, 1.0f, W, (int)cols);
    }
    free(A);
    free(B);
    return rc;
}
