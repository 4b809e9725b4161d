/* lora.c — LoRA adapters for training and the PEFT adapter writer (see lora.h). */
#include "train/lora.h"

#include <cJSON.h>
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/rng.h"

const char *const TR_LIN_NAMES[TM_NLIN] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
const char *const TR_LIN_PARENT[TM_NLIN] = {"self_attn", "self_attn", "self_attn", "self_attn",
                                            "mlp",       "mlp",       "mlp"};

int tr_lora_parse_targets(const char *list, unsigned *mask, alloy_err *err) {
    *mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && *p == ' ') p++, len--;
        while (len && p[len - 1] == ' ') len--;
        if (len == 10 && !strncmp(p, "all-linear", len)) {
            *mask |= (1u << TM_NLIN) - 1;
        } else if (len) {
            int found = -1;
            for (int m = 0; m < TM_NLIN; m++)
                if (strlen(TR_LIN_NAMES[m]) == len && !strncmp(p, TR_LIN_NAMES[m], len)) found = m;
            if (found < 0)
                return alloy_fail(err,
                                  "LoRA target '%.*s' matches no module (known: q_proj, k_proj, v_proj, "
                                  "o_proj, gate_proj, up_proj, down_proj, all-linear)",
                                  (int)len, p);
            *mask |= 1u << found;
        }
        if (!e) break;
        p = e + 1;
    }
    if (!*mask) return alloy_fail(err, "LoRA target list '%s' is empty", list);
    return 0;
}

int tr_lora_init(tr_lora *lo, int n_layers, const int in[TM_NLIN], const int out[TM_NLIN],
                 unsigned targets, int rank, float alpha, uint64_t seed, alloy_err *err) {
    memset(lo, 0, sizeof *lo);
    lo->rank = rank;
    lo->alpha = alpha;
    lo->scale = alpha / (float)rank;
    lo->targets = targets;
    lo->n_layers = n_layers;
    for (int m = 0; m < TM_NLIN; m++) {
        lo->in[m] = in[m];
        lo->out[m] = out[m];
        lo->pos[m] = (targets >> m & 1) ? lo->ntargets++ : -1;
    }
    char name[128];
    for (int l = 0; l < n_layers; l++)
        for (int m = 0; m < TM_NLIN; m++) {
            if (lo->pos[m] < 0) continue;
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l,
                     TR_LIN_PARENT[m], TR_LIN_NAMES[m]);
            size_t a = tr_pset_add(&lo->ps, name, rank, in[m], true);
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l,
                     TR_LIN_PARENT[m], TR_LIN_NAMES[m]);
            size_t b = tr_pset_add(&lo->ps, name, out[m], rank, true);
            if (a == (size_t)-1 || b == (size_t)-1) return alloy_fail(err, "out of memory");
        }
    if (tr_pset_alloc(&lo->ps, true, err)) return -1;
    /* PEFT: kaiming_uniform_(A, a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in)). */
    for (int k = 0; k < lo->ps.ntensors; k += 2) {
        const tr_tensor *t = &lo->ps.t[k];
        double bound = 1.0 / sqrt((double)t->shape[1]);
        uint64_t stream = rng_hash_str(t->name);
        float *A = lo->ps.data + t->off;
        for (size_t i = 0; i < t->numel; i++)
            A[i] = (float)((2.0 * rng_uniform(seed, stream, i) - 1.0) * bound);
    }
    return 0;
}

void tr_lora_free(tr_lora *lo) { tr_pset_free(&lo->ps); }

static const tr_tensor *lora_tensor(const tr_lora *lo, int l, int m, int which) {
    if (lo->pos[m] < 0) return NULL;
    return &lo->ps.t[2 * (l * lo->ntargets + lo->pos[m]) + which];
}

float *tr_lora_A(const tr_lora *lo, int l, int m) {
    const tr_tensor *t = lora_tensor(lo, l, m, 0);
    return t ? lo->ps.data + t->off : NULL;
}
float *tr_lora_B(const tr_lora *lo, int l, int m) {
    const tr_tensor *t = lora_tensor(lo, l, m, 1);
    return t ? lo->ps.data + t->off : NULL;
}
float *tr_lora_dA(const tr_lora *lo, int l, int m) {
    const tr_tensor *t = lora_tensor(lo, l, m, 0);
    return t ? lo->ps.grad + t->off : NULL;
}
float *tr_lora_dB(const tr_lora *lo, int l, int m) {
    const tr_tensor *t = lora_tensor(lo, l, m, 1);
    return t ? lo->ps.grad + t->off : NULL;
}

void tr_lora_forward(float *out, float *ax, const float *inp, const float *A, const float *B,
                     float scale, int N, int C, int OC, int r) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, C, 1.0f, inp, C, A, C, 0.0f, ax, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, r, scale, ax, r, B, r, 1.0f, out, OC);
}

void tr_lora_backward(float *dinp, float *dA, float *dB, const float *dout, float *scratch,
                      const float *inp, const float *ax, const float *A, const float *B,
                      float scale, int N, int C, int OC, int r) {
    /* dB (OC, r) += scale · dout^T ax */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, r, N, scale, dout, OC, ax, r, 1.0f, dB, r);
    /* scratch (N, r) = scale · dout B */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, OC, scale, dout, OC, B, r, 0.0f,
                scratch, r);
    /* dA (r, C) += scratch^T inp */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, C, N, 1.0f, scratch, r, inp, C, 1.0f, dA, C);
    /* dinp (N, C) += scratch A */
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, r, 1.0f, scratch, r, A, C, 1.0f,
                    dinp, C);
}

int tr_lora_save(const tr_lora *lo, const char *dir, const char *base_model, alloy_err *err) {
    cJSON *cfg = cJSON_CreateObject();
    cJSON *tm = cJSON_AddArrayToObject(cfg, "target_modules");
    for (int m = 0; m < TM_NLIN; m++)
        if (lo->pos[m] >= 0) cJSON_AddItemToArray(tm, cJSON_CreateString(TR_LIN_NAMES[m]));
    cJSON_AddStringToObject(cfg, "peft_type", "LORA");
    cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(cfg, "r", lo->rank);
    cJSON_AddNumberToObject(cfg, "lora_alpha", lo->alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddBoolToObject(cfg, "use_rslora", 0);
    cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(cfg, "inference_mode", 1);
    if (base_model) cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_model);
    else cJSON_AddNullToObject(cfg, "base_model_name_or_path");
    char *text = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!text) return alloy_fail(err, "%s: out of memory", dir);
    char *path = fs_join(dir, "adapter_config.json");
    int rc = fs_write_file(path, text, strlen(text), err);
    free(path);
    free(text);
    if (rc) return -1;

    const tr_pset *ps = &lo->ps;
    st_spec *specs = calloc((size_t)ps->ntensors, sizeof *specs);
    if (!specs) return alloy_fail(err, "out of memory");
    for (int i = 0; i < ps->ntensors; i++) {
        specs[i].name = ps->t[i].name;
        specs[i].dtype = ALLOY_F32;
        specs[i].ndim = 2;
        specs[i].shape[0] = ps->t[i].shape[0];
        specs[i].shape[1] = ps->t[i].shape[1];
    }
    st_writer *w = st_writer_open(dir, specs, ps->ntensors, UINT64_MAX / 2, err);
    free(specs);
    if (!w) return -1;
    for (int i = 0; i < ps->ntensors; i++)
        if (st_writer_put(w, i, ps->data + ps->t[i].off, err)) {
            st_writer_abort(w);
            return -1;
        }
    if (st_writer_finish(w, err)) return -1;
    char *from = fs_join(dir, "model.safetensors"), *to = fs_join(dir, "adapter_model.safetensors");
    rc = rename(from, to);
    free(from);
    free(to);
    if (rc) return alloy_fail(err, "%s: cannot rename model.safetensors to adapter_model.safetensors", dir);
    return 0;
}
