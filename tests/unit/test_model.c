/* test_model.c — the inference engine (src/model): config.json parsing and
 * its errors, missing/misshapen tensor errors, the kernels on hand-computed
 * values, and the KV-cache path (token by token) against batched prefill. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/init.h"
#include "model/kernels.h"
#include "model/weights.h"
#include "util/dtype.h"
#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-model-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

#define TINY_QWEN2                                                                                        \
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 32, \"intermediate_size\": 48,"         \
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"                  \
    " \"vocab_size\": 50, \"max_position_embeddings\": 16, \"rope_theta\": 1000000.0,"                    \
    " \"tie_word_embeddings\": false, \"eos_token_id\": [7, 8]}"

static int parse(Config *c, const char *text, alloy_err *err) {
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    int rc = model_config_parse(c, j, "x/config.json", err);
    cJSON_Delete(j);
    return rc;
}

static void test_config_ok(void **state) {
    (void)state;
    Config c;
    alloy_err err = {{0}};
    assert_int_equal(parse(&c, TINY_QWEN2, &err), 0);
    assert_int_equal(c.arch, ARCH_QWEN2);
    assert_int_equal(c.dim, 32);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.qkv_bias);  /* Qwen2 always */
    assert_false(c.o_bias);
    assert_false(c.tied);
    assert_int_equal(c.eos_id, 7);
    assert_int_equal(c.bos_id, -1);
    assert_true(fabsf(c.norm_eps - 1e-6f) < 1e-12f); /* default */
    assert_int_equal(model_layer_window(&c, 1), 0);

    /* Llama: explicit head_dim, biases only with attention_bias, kv default = heads */
    assert_int_equal(parse(&c,
                           "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 48,"
                           " \"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 7,"
                           " \"head_dim\": 16, \"vocab_size\": 10, \"max_position_embeddings\": 8,"
                           " \"attention_bias\": true, \"tie_word_embeddings\": true}",
                           &err),
                     0);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_kv_heads, 7);
    assert_true(c.qkv_bias && c.o_bias && c.tied);

    /* Qwen2 sliding window from max_window_layers on */
    assert_int_equal(parse(&c,
                           "{\"model_type\": \"qwen2\", \"hidden_size\": 8, \"intermediate_size\": 8,"
                           " \"num_hidden_layers\": 3, \"num_attention_heads\": 2, \"vocab_size\": 10,"
                           " \"max_position_embeddings\": 8, \"use_sliding_window\": true,"
                           " \"sliding_window\": 4, \"max_window_layers\": 1}",
                           &err),
                     0);
    assert_int_equal(model_layer_window(&c, 0), 0);
    assert_int_equal(model_layer_window(&c, 1), 4);
    assert_int_equal(model_layer_window(&c, 2), 4);
}

static void test_config_errors(void **state) {
    (void)state;
    Config c;
    alloy_err err = {{0}};
    assert_int_equal(parse(&c,
                           "{\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 48,"
                           " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 50,"
                           " \"max_position_embeddings\": 16}",
                           &err),
                     -1);
    assert_non_null(strstr(err.msg, "x/config.json"));
    assert_non_null(strstr(err.msg, "missing key 'hidden_size'"));

    assert_int_equal(parse(&c, "{\"architectures\": [\"GPT2LMHeadModel\"], \"hidden_size\": 8}", &err), -1);
    assert_non_null(strstr(err.msg, "unsupported architecture 'GPT2LMHeadModel'"));
    assert_non_null(strstr(err.msg, "x/config.json"));

    assert_int_equal(parse(&c, "{\"hidden_size\": 8}", &err), -1);
    assert_non_null(strstr(err.msg, "'architectures'"));

    const char *yarn =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"vocab_size\": 10,"
        " \"max_position_embeddings\": 8, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}";
    assert_int_equal(parse(&c, yarn, &err), -1);
    assert_non_null(strstr(err.msg, "yarn"));

    const char *gqa =
        "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 12, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 3, \"num_key_value_heads\": 2,"
        " \"vocab_size\": 10, \"max_position_embeddings\": 8}";
    assert_int_equal(parse(&c, gqa, &err), -1);
    assert_non_null(strstr(err.msg, "num_key_value_heads"));

    const char *neg =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": -8, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"vocab_size\": 10,"
        " \"max_position_embeddings\": 8}";
    assert_int_equal(parse(&c, neg, &err), -1);
    assert_non_null(strstr(err.msg, "'hidden_size'"));
}

static void test_rope_llama3_freqs(void **state) {
    (void)state;
    Config c;
    alloy_err err = {{0}};
    assert_int_equal(parse(&c,
                           "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64,"
                           " \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                           " \"vocab_size\": 10, \"max_position_embeddings\": 8, \"rope_theta\": 10000.0,"
                           " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                           " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                           " \"original_max_position_embeddings\": 64}}",
                           &err),
                     0);
    float f[8];
    model_rope_inv_freq(&c, f);
    /* head_dim 16: base freqs 10^(-i/2). wavelength 2pi < 16: kept. */
    assert_true(fabsf(f[0] - 1.0f) < 1e-7f);
    /* i=2: 0.1, wavelength 62.8 is between 16 and 64: blended. */
    double s = (64.0 / (2 * M_PI / 0.1) - 1.0) / 3.0;
    assert_true(fabs(f[2] - ((1 - s) * 0.1 / 8 + s * 0.1)) < 1e-7);
    /* i=7: 10^-3.5, wavelength ~19869 > 64: divided by 8. */
    assert_true(fabs(f[7] - pow(10, -3.5) / 8) < 1e-9);
}

static void test_kernels(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f}, out[4];
    k_rmsnorm(out, x, w, 4, 0.0f);
    float r = 1.0f / sqrtf(7.5f);
    for (int i = 0; i < 4; i++) assert_true(fabsf(out[i] - w[i] * x[i] * r) < 1e-6f);
    k_rmsnorm(out, x, w, 4, 2.5f); /* eps enters under the root: mean 7.5 + 2.5 = 10 */
    assert_true(fabsf(out[3] - 0.5f * 4 / sqrtf(10)) < 1e-6f);

    float sm[3] = {1, 2, 3};
    k_softmax(sm, 3);
    double z = exp(1) + exp(2) + exp(3);
    assert_true(fabs(sm[0] - exp(1) / z) < 1e-6 && fabs(sm[2] - exp(3) / z) < 1e-6);
    float big[2] = {1000, 1000}; /* max subtraction keeps it finite */
    k_softmax(big, 2);
    assert_true(fabsf(big[0] - 0.5f) < 1e-6f);

    /* rotate_half pairs (i, i + hd/2): two heads of 4 at position 1 */
    float inv[2] = {1.0f, 0.5f};
    float q[8] = {1, 2, 3, 4, 1, 2, 3, 4};
    k_rope(q, 2, 4, 1, inv);
    for (int h = 0; h < 2; h++) {
        float *v = q + 4 * h;
        assert_true(fabsf(v[0] - (1 * cosf(1) - 3 * sinf(1))) < 1e-6f);
        assert_true(fabsf(v[2] - (3 * cosf(1) + 1 * sinf(1))) < 1e-6f);
        assert_true(fabsf(v[1] - (2 * cosf(0.5f) - 4 * sinf(0.5f))) < 1e-6f);
        assert_true(fabsf(v[3] - (4 * cosf(0.5f) + 2 * sinf(0.5f))) < 1e-6f);
    }
    float p0[4] = {1, 2, 3, 4};
    k_rope(p0, 1, 4, 0, inv); /* position 0 is the identity */
    assert_true(p0[0] == 1 && p0[1] == 2 && p0[2] == 3 && p0[3] == 4);

    float g[2] = {0, 2}, u[2] = {5, 3};
    k_swiglu(g, u, 2);
    assert_true(fabsf(g[0]) < 1e-7f && fabsf(g[1] - 2 / (1 + expf(-2)) * 3) < 1e-5f);
}

/* Matrix products in every dtype, with row lengths that exercise the SIMD
 * tails, against a double-precision dot product. */
static void test_matmul_dtypes(void **state) {
    (void)state;
    enum { R = 5, C = 45, N = 3 };
    float wf[R * C], x[N * C];
    for (int i = 0; i < R * C; i++) wf[i] = (float)((i * 37 % 23) - 11) / 8.0f; /* exact in bf16/f16 */
    for (int i = 0; i < N * C; i++) x[i] = (float)((i * 13 % 17) - 8) / 16.0f;
    alloy_dtype dts[3] = {ALLOY_F32, ALLOY_BF16, ALLOY_F16};
    for (int d = 0; d < 3; d++) {
        unsigned char raw[R * C * 4 + 1];
        dtype_from_f32(wf, dts[d], raw + 1, R * C); /* deliberately misaligned */
        Mat m = {raw + 1, dts[d], R, C};
        if (dts[d] == ALLOY_F32) {
            memcpy(raw, wf, sizeof wf); /* sgemm wants aligned floats */
            m.w = raw;
        }
        float out[N * R], scratch[2 * C];
        k_matmul(out, R, x, N, &m, scratch, 2 * C); /* blocks of 2 rows */
        float mv[R];
        k_matvec(mv, x + C, &m);
        for (int t = 0; t < N; t++)
            for (int r = 0; r < R; r++) {
                double ref = 0;
                for (int k = 0; k < C; k++) ref += (double)wf[r * C + k] * x[t * C + k];
                assert_true(fabs(out[t * R + r] - ref) < 1e-4);
                if (t == 1) assert_true(fabs(mv[r] - ref) < 1e-4);
            }
    }
}

static int write_config(const char *dir, const char *json) {
    char *p = fs_join(dir, "config.json");
    int rc = fs_write_file(p, json, strlen(json), NULL);
    free(p);
    return rc;
}

/* A checkpoint lacking one tensor, and one with a wrong shape. */
static void test_missing_tensor(void **state) {
    (void)state;
    Config c;
    alloy_err err = {{0}};
    assert_int_equal(parse(&c, TINY_QWEN2, &err), 0);
    int n = model_tensor_specs(&c, NULL);
    TensorSpec *specs = calloc((size_t)n, sizeof *specs);
    model_tensor_specs(&c, specs);
    assert_string_equal(specs[0].name, "model.embed_tokens.weight");
    assert_string_equal(specs[n - 1].name, "lm_head.weight");
    for (int pass = 0; pass < 2; pass++) {
        char dir[128];
        snprintf(dir, sizeof dir, "%s/ckpt%d", root, pass);
        assert_int_equal(fs_mkdirs(dir, NULL), 0);
        st_spec *st = calloc((size_t)n, sizeof *st);
        int k = 0, drop = -1;
        for (int i = 0; i < n; i++) {
            bool victim = !strcmp(specs[i].name, "model.layers.1.mlp.up_proj.weight");
            if (victim && pass == 0) {
                drop = i;
                continue;
            }
            st[k].name = specs[i].name;
            st[k].dtype = ALLOY_BF16;
            st[k].ndim = specs[i].ndim;
            st[k].shape[0] = specs[i].shape[0] - (victim ? 1 : 0);
            st[k].shape[1] = specs[i].shape[1];
            k++;
        }
        assert_true(pass == 1 || drop >= 0);
        st_writer *w = st_writer_open(dir, st, k, UINT64_MAX / 2, &err);
        assert_non_null(w);
        static uint16_t zeros[50 * 32];
        memset(zeros, 0, sizeof zeros);
        for (int i = 0; i < k; i++) assert_int_equal(st_writer_put(w, i, zeros, &err), 0);
        assert_int_equal(st_writer_finish(w, &err), 0);
        assert_int_equal(write_config(dir, TINY_QWEN2), 0);
        Model m;
        assert_int_equal(model_open(&m, dir, &err), -1);
        assert_non_null(strstr(err.msg, dir));
        assert_non_null(strstr(err.msg, "model.layers.1.mlp.up_proj.weight"));
        assert_non_null(strstr(err.msg, pass == 0 ? "missing tensor" : "shape"));
        free(st);
    }
    free(specs);
}

/* Prefill in one batch, in chunks, and token by token through the KV cache
 * give the same logits; the random checkpoint is reproducible. */
static void test_forward_paths(void **state) {
    (void)state;
    char cfg[128], d1[128], d2[128];
    snprintf(cfg, sizeof cfg, "%s/tiny.json", root);
    snprintf(d1, sizeof d1, "%s/m1", root);
    snprintf(d2, sizeof d2, "%s/m2", root);
    assert_int_equal(fs_write_file(cfg, TINY_QWEN2, strlen(TINY_QWEN2), NULL), 0);
    alloy_err err = {{0}};
    model_init_options opt = {.seed = 3, .dtype = ALLOY_BF16, .tokenizer_dir = NULL};
    assert_int_equal(model_init_random(cfg, d1, &opt, &err), 0);
    assert_int_equal(model_init_random(cfg, d2, &opt, &err), 0);
    char *p1 = fs_join(d1, "model.safetensors"), *p2 = fs_join(d2, "model.safetensors");
    size_t n1, n2;
    char *b1 = fs_read_file(p1, &n1, &err), *b2 = fs_read_file(p2, &n2, &err);
    assert_true(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0);
    free(b1), free(b2), free(p1), free(p2);

    Model m;
    assert_int_equal(model_open(&m, d1, &err), 0);
    assert_int_equal(m.config.dtype, ALLOY_BF16);
    enum { T = 9, V = 50 };
    int32_t ids[T] = {3, 14, 15, 9, 26, 5, 35, 8, 49};
    static float full[T * V], step[T * V], last[V];
    RunState s;
    assert_int_equal(model_state_alloc(&s, &m.config, T, T, &err), 0);
    assert_int_equal(model_forward(&m, &s, ids, T, 0, full, true, &err), 0);
    model_state_free(&s);
    assert_int_equal(model_state_alloc(&s, &m.config, T, 4, &err), 0);
    assert_int_equal(model_forward(&m, &s, ids, 5, 0, step, true, &err), 0);
    for (int t = 5; t < T; t++) assert_int_equal(model_forward(&m, &s, ids + t, 1, t, step + t * V, true, &err), 0);
    assert_int_equal(model_forward(&m, &s, ids + 3, T - 3, 3, last, false, &err), 0); /* recompute 3.. */
    double maxabs = 0, maxdiff = 0;
    for (int i = 0; i < T * V; i++) {
        maxabs = fmax(maxabs, fabs(full[i]));
        maxdiff = fmax(maxdiff, fabs(full[i] - step[i]));
    }
    for (int v = 0; v < V; v++) maxdiff = fmax(maxdiff, fabs(full[(T - 1) * V + v] - last[v]));
    assert_true(maxabs > 0.05);
    assert_true(maxdiff < 1e-5 * maxabs);

    /* errors: token outside the vocabulary, positions past the context */
    int32_t bad = V;
    assert_int_equal(model_forward(&m, &s, &bad, 1, 0, last, false, &err), -1);
    assert_non_null(strstr(err.msg, "vocabulary"));
    assert_int_equal(model_forward(&m, &s, ids, 2, T - 1, step, true, &err), -1);
    assert_int_equal(model_state_alloc(&(RunState){0}, &m.config, 17, 1, &err), -1);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    model_state_free(&s);
    model_close(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_ok),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_rope_llama3_freqs),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_matmul_dtypes),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_forward_paths),
    };
    return cmocka_run_group_tests_name("model", tests, setup, teardown);
}
