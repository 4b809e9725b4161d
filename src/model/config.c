/* config.c — config.json of Qwen2 / Llama / Mistral checkpoints (see config.h). */
#include "model/config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

static const struct {
    const char *arch, *model_type;
    model_arch id;
} ARCHS[] = {
    {"Qwen2ForCausalLM", "qwen2", ARCH_QWEN2},
    {"LlamaForCausalLM", "llama", ARCH_LLAMA},
    {"MistralForCausalLM", "mistral", ARCH_MISTRAL},
};
#define NARCHS (int)(sizeof ARCHS / sizeof ARCHS[0])

const char *model_arch_name(model_arch a) { return ARCHS[a].arch; }

static const cJSON *item(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNull(v) ? NULL : v;
}

/* An integer >= lo under key; `def` < 0 means the key is required. */
static int get_int_lo(const cJSON *j, const char *key, int def, int lo, int *out, const char *where,
                      alloy_err *err) {
    const cJSON *v = item(j, key);
    if (!v) {
        if (def < 0) return alloy_fail(err, "%s: missing key '%s'", where, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > 1e9)
        return alloy_fail(err, "%s: '%s' must be an integer >= %d", where, key, lo);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *j, const char *key, int def, int *out, const char *where, alloy_err *err) {
    return get_int_lo(j, key, def, 1, out, where, err);
}

static int get_num(const cJSON *j, const char *key, double def, double *out, const char *where,
                   alloy_err *err) {
    const cJSON *v = item(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0)
        return alloy_fail(err, "%s: '%s' must be a positive number", where, key);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *j, const char *key, bool def, bool *out, const char *where, alloy_err *err) {
    const cJSON *v = item(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return alloy_fail(err, "%s: '%s' must be true or false", where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* bos/eos ids: an integer, a list (first entry), or absent (-1). */
static int get_token_id(const cJSON *j, const char *key, int *out) {
    const cJSON *v = item(j, key);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    *out = cJSON_IsNumber(v) && v->valuedouble >= 0 ? (int)v->valuedouble : -1;
    return 0;
}

static int parse_arch(Config *c, const cJSON *json, const char *where, alloy_err *err) {
    const cJSON *archs = item(json, "architectures");
    const cJSON *mt = item(json, "model_type");
    const char *name = NULL;
    if (cJSON_IsArray(archs) && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        name = cJSON_GetArrayItem(archs, 0)->valuestring;
    for (int i = 0; i < NARCHS; i++) {
        if (name ? !strcmp(name, ARCHS[i].arch)
                 : (cJSON_IsString(mt) && !strcmp(mt->valuestring, ARCHS[i].model_type))) {
            c->arch = ARCHS[i].id;
            return 0;
        }
    }
    if (!name && !cJSON_IsString(mt)) return alloy_fail(err, "%s: missing key 'architectures'", where);
    return alloy_fail(err,
                      "%s: unsupported architecture '%s' (alloy runs Qwen2ForCausalLM, LlamaForCausalLM, "
                      "MistralForCausalLM)",
                      where, name ? name : mt->valuestring);
}

static int parse_rope_scaling(Config *c, const cJSON *json, const char *where, alloy_err *err) {
    c->rope = ROPE_DEFAULT;
    c->rope_factor = 1;
    const cJSON *rs = item(json, "rope_scaling");
    if (!rs) return 0;
    if (!cJSON_IsObject(rs)) return alloy_fail(err, "%s: 'rope_scaling' must be an object or null", where);
    const cJSON *t = item(rs, "rope_type");
    if (!t) t = item(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (!strcmp(type, "default")) return 0;
    if (get_num(rs, "factor", -1, &c->rope_factor, where, err)) return -1;
    if (c->rope_factor < 0) return alloy_fail(err, "%s: missing key 'rope_scaling.factor'", where);
    if (!strcmp(type, "linear")) {
        c->rope = ROPE_LINEAR;
        return 0;
    }
    if (strcmp(type, "llama3") != 0)
        return alloy_fail(err, "%s: unsupported 'rope_scaling.rope_type' '%s' (alloy supports default, "
                               "linear, llama3)", where, type);
    c->rope = ROPE_LLAMA3;
    static const char *const keys[] = {"low_freq_factor", "high_freq_factor",
                                       "original_max_position_embeddings"};
    double *dst[] = {&c->rope_low_freq, &c->rope_high_freq, &c->rope_orig_max};
    for (int i = 0; i < 3; i++) {
        if (get_num(rs, keys[i], -1, dst[i], where, err)) return -1;
        if (*dst[i] < 0) return alloy_fail(err, "%s: missing key 'rope_scaling.%s'", where, keys[i]);
    }
    if (c->rope_high_freq <= c->rope_low_freq)
        return alloy_fail(err, "%s: 'rope_scaling.high_freq_factor' must exceed 'low_freq_factor'", where);
    return 0;
}

static int parse_window(Config *c, const cJSON *json, const char *where, alloy_err *err) {
    c->sliding_window = 0;
    c->window_from_layer = 0;
    bool use = c->arch == ARCH_MISTRAL;
    if (c->arch == ARCH_QWEN2 && get_bool(json, "use_sliding_window", false, &use, where, err)) return -1;
    if (c->arch == ARCH_LLAMA || !use || !item(json, "sliding_window")) return 0;
    if (get_int(json, "sliding_window", -1, &c->sliding_window, where, err)) return -1;
    /* Qwen2: layers below max_window_layers keep full attention. */
    if (c->arch == ARCH_QWEN2 &&
        get_int_lo(json, "max_window_layers", c->n_layers, 0, &c->window_from_layer, where, err))
        return -1;
    return 0;
}

int model_config_parse(Config *c, const cJSON *json, const char *where, alloy_err *err) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(json)) return alloy_fail(err, "%s: not a JSON object", where);
    if (parse_arch(c, json, where, err)) return -1;
    if (get_int(json, "hidden_size", -1, &c->dim, where, err) ||
        get_int(json, "intermediate_size", -1, &c->hidden_dim, where, err) ||
        get_int(json, "num_hidden_layers", -1, &c->n_layers, where, err) ||
        get_int(json, "num_attention_heads", -1, &c->n_heads, where, err) ||
        get_int(json, "vocab_size", -1, &c->vocab_size, where, err) ||
        get_int(json, "num_key_value_heads", c->n_heads, &c->n_kv_heads, where, err) ||
        get_int(json, "max_position_embeddings", -1, &c->max_pos, where, err))
        return -1;
    if (c->n_heads % c->n_kv_heads)
        return alloy_fail(err, "%s: 'num_attention_heads' (%d) is not a multiple of 'num_key_value_heads' (%d)",
                          where, c->n_heads, c->n_kv_heads);
    if (!item(json, "head_dim") && c->dim % c->n_heads)
        return alloy_fail(err, "%s: 'hidden_size' (%d) is not a multiple of 'num_attention_heads' (%d)", where,
                          c->dim, c->n_heads);
    if (get_int(json, "head_dim", c->dim / c->n_heads, &c->head_dim, where, err)) return -1;
    if (c->head_dim % 2) return alloy_fail(err, "%s: 'head_dim' (%d) must be even for RoPE", where, c->head_dim);
    double eps, theta;
    if (get_num(json, "rms_norm_eps", 1e-6, &eps, where, err) ||
        get_num(json, "rope_theta", 10000.0, &theta, where, err))
        return -1;
    c->norm_eps = (float)eps;
    c->rope_theta = theta;
    if (parse_rope_scaling(c, json, where, err)) return -1;
    const cJSON *prf = item(json, "partial_rotary_factor");
    if (prf && (!cJSON_IsNumber(prf) || prf->valuedouble != 1.0))
        return alloy_fail(err, "%s: unsupported 'partial_rotary_factor' (only 1.0)", where);
    if (get_bool(json, "tie_word_embeddings", false, &c->tied, where, err)) return -1;
    bool attn_bias = false, mlp_bias = false;
    if (get_bool(json, "attention_bias", false, &attn_bias, where, err) ||
        get_bool(json, "mlp_bias", false, &mlp_bias, where, err))
        return -1;
    if (mlp_bias) return alloy_fail(err, "%s: unsupported 'mlp_bias': true", where);
    c->qkv_bias = c->arch == ARCH_QWEN2 || (c->arch == ARCH_LLAMA && attn_bias);
    c->o_bias = c->arch == ARCH_LLAMA && attn_bias;
    const cJSON *act = item(json, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return alloy_fail(err, "%s: unsupported 'hidden_act' (only \"silu\")", where);
    if (parse_window(c, json, where, err)) return -1;
    get_token_id(json, "bos_token_id", &c->bos_id);
    get_token_id(json, "eos_token_id", &c->eos_id);
    const cJSON *dt = item(json, "torch_dtype");
    if (!dt) dt = item(json, "dtype");
    if (cJSON_IsString(dt)) {
        if (dtype_parse_torch(dt->valuestring, &c->dtype))
            return alloy_fail(err, "%s: unsupported 'torch_dtype' '%s'", where, dt->valuestring);
        c->has_dtype = true;
    }
    return 0;
}

int model_config_load(Config *c, const char *dir, alloy_err *err) {
    cJSON *json = ckpt_read_config(dir, err);
    if (!json) return -1;
    char *where = fs_join(dir, "config.json");
    int rc = where ? model_config_parse(c, json, where, err) : alloy_fail(err, "out of memory");
    free(where);
    cJSON_Delete(json);
    return rc;
}

void model_rope_inv_freq(const Config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf((float)c->rope_theta, expo);
        if (c->rope == ROPE_LINEAR) {
            f = (float)(f / c->rope_factor);
        } else if (c->rope == ROPE_LLAMA3) {
            /* transformers' _compute_llama3_parameters: long wavelengths are
             * divided by factor, short ones kept, the band between blended. */
            double wavelen = 2 * M_PI / f;
            double low_wl = c->rope_orig_max / c->rope_low_freq;
            double high_wl = c->rope_orig_max / c->rope_high_freq;
            if (wavelen > low_wl) {
                f = (float)(f / c->rope_factor);
            } else if (wavelen >= high_wl) {
                double s = (c->rope_orig_max / wavelen - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                f = (float)((1 - s) * f / c->rope_factor + s * f);
            }
        }
        inv_freq[i] = f;
    }
}

int model_layer_window(const Config *c, int l) {
    return c->sliding_window > 0 && l >= c->window_from_layer ? c->sliding_window : 0;
}
