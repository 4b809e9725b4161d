/* init.c — random checkpoints for a config.json (see init.h). */
#include "model/init.h"

#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/rng.h"

#define INIT_STD 0.02

float model_init_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    /* Box-Muller on two counter-based uniforms; 1 - u1 is in (0, 1]. */
    double u1 = 1.0 - rng_uniform(seed, stream, 2 * i);
    double u2 = rng_uniform(seed, stream, 2 * i + 1);
    return (float)(INIT_STD * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* An existing out_dir may be replaced only when it is empty or a checkpoint. */
static int check_out_dir(const char *out_dir, alloy_err *err) {
    if (!fs_exists(out_dir)) return 0;
    if (!fs_is_dir(out_dir)) return alloy_fail(err, "%s: exists and is not a directory", out_dir);
    char *cfg = fs_join(out_dir, "config.json");
    bool is_ckpt = cfg && fs_exists(cfg);
    free(cfg);
    if (is_ckpt) return 0;
    DIR *d = opendir(out_dir);
    if (!d) return alloy_fail(err, "%s: cannot read directory", out_dir);
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    if (!empty) return alloy_fail(err, "%s: not empty and not a checkpoint; refusing to replace it", out_dir);
    return 0;
}

static int write_tensors(const char *dir, const Config *c, const model_init_options *opt, alloy_err *err) {
    int n = model_tensor_specs(c, NULL);
    TensorSpec *specs = malloc((size_t)n * sizeof *specs);
    st_spec *st = calloc((size_t)n, sizeof *st);
    if (!specs || !st) {
        free(specs);
        free(st);
        return alloy_fail(err, "out of memory");
    }
    model_tensor_specs(c, specs);
    size_t most = 0;
    for (int i = 0; i < n; i++) {
        st[i].name = specs[i].name;
        st[i].dtype = opt->dtype;
        st[i].ndim = specs[i].ndim;
        st[i].shape[0] = specs[i].shape[0];
        st[i].shape[1] = specs[i].shape[1];
        size_t numel = (size_t)specs[i].shape[0] * (size_t)(specs[i].ndim == 2 ? specs[i].shape[1] : 1);
        if (numel > most) most = numel;
    }
    st_writer *w = st_writer_open(dir, st, n, 5000000000ull, err);
    float *f = w ? malloc(most * sizeof(float)) : NULL;
    void *raw = f ? malloc(most * dtype_size(opt->dtype)) : NULL;
    int rc = w ? 0 : -1;
    if (w && !raw) rc = alloy_fail(err, "out of memory");
    for (int i = 0; rc == 0 && i < n; i++) {
        const TensorSpec *s = &specs[i];
        size_t numel = (size_t)s->shape[0] * (size_t)(s->ndim == 2 ? s->shape[1] : 1);
        bool norm = s->kind == T_LN1 || s->kind == T_LN2 || s->kind == T_NORM;
        uint64_t stream = rng_hash_str(s->name);
#pragma omp parallel for schedule(static) if (numel > 65536)
        for (size_t k = 0; k < numel; k++) f[k] = norm ? 1.0f : model_init_normal(opt->seed, stream, k);
        dtype_from_f32(f, opt->dtype, raw, numel);
        rc = st_writer_put(w, i, raw, err);
    }
    if (w) {
        if (rc == 0) rc = st_writer_finish(w, err);
        else st_writer_abort(w);
    }
    free(raw);
    free(f);
    free(st);
    free(specs);
    return rc;
}

int model_init_random(const char *config_path, const char *out_dir, const model_init_options *opt,
                      alloy_err *err) {
    if (opt->dtype != ALLOY_F32 && opt->dtype != ALLOY_BF16 && opt->dtype != ALLOY_F16)
        return alloy_fail(err, "init: dtype must be f32, bf16 or f16");
    char *text = fs_read_file(config_path, NULL, err);
    if (!text) return -1;
    cJSON *json = cJSON_Parse(text);
    free(text);
    if (!json) return alloy_fail(err, "%s: malformed JSON", config_path);
    Config c;
    if (model_config_parse(&c, json, config_path, err) || check_out_dir(out_dir, err)) {
        cJSON_Delete(json);
        return -1;
    }
    char *tmp = fs_make_temp_sibling(out_dir, err);
    if (!tmp) {
        cJSON_Delete(json);
        return -1;
    }
    int rc = write_tensors(tmp, &c, opt, err);
    if (rc == 0 && ckpt_set_string(json, "torch_dtype", dtype_torch_name(opt->dtype)))
        rc = alloy_fail(err, "out of memory");
    if (rc == 0) rc = ckpt_write_config(tmp, json, err);
    if (rc == 0 && opt->tokenizer_dir) {
        if (!fs_is_dir(opt->tokenizer_dir))
            rc = alloy_fail(err, "%s: tokenizer directory not found", opt->tokenizer_dir);
        else
            rc = ckpt_copy_side_files(opt->tokenizer_dir, tmp, NULL, err);
    }
    if (rc == 0) rc = fs_commit_dir(tmp, out_dir, err);
    if (rc) fs_remove_tree(tmp, NULL);
    free(tmp);
    cJSON_Delete(json);
    return rc;
}
