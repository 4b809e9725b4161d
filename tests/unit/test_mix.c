/* test_mix.c — MoD mixing math (stable log-sum-exp, arithmetic and geometric
 * rules, weight validation), alloy_mixture.json round trip, the
 * shared-tokenizer check and mod recipes (src/mix). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/recipe.h"
#include "mix/manifest.h"
#include "mix/mixture.h"
#include "mix/mod_recipe.h"
#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-mix-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

static double lse_d(const float *z, int n) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    for (int i = 0; i < n; i++) s += exp(z[i] - mx);
    return mx + log(s);
}

static void test_logsumexp_stable(void **state) {
    (void)state;
    float big[3] = {1000, 1000, 1000}, small[2] = {-1000, -1000}, mixed[2] = {0, -INFINITY};
    assert_true(fabs(mix_logsumexp(big, 3) - (1000 + log(3.0))) < 1e-9);
    assert_true(fabs(mix_logsumexp(small, 2) - (-1000 + log(2.0))) < 1e-9);
    assert_true(fabs(mix_logsumexp(mixed, 2)) < 1e-12);
}

/* Arithmetic rule against a double-precision evaluation of Σ α_i softmax(z_i). */
static void test_arithmetic_matches_definition(void **state) {
    (void)state;
    enum { V = 50, K = 3 };
    float z[K][V], out[V];
    double alpha[K] = {0.5, 0.3, 0.2};
    unsigned s = 12345;
    for (int i = 0; i < K; i++)
        for (int v = 0; v < V; v++) {
            s = s * 1103515245u + 12345u;
            z[i][v] = (float)((s >> 8) % 2000) / 100.0f - 10.0f;
        }
    const float *zp[K] = {z[0], z[1], z[2]};
    mix_log_probs(zp, alpha, K, V, MIX_ARITHMETIC, out);
    double total = 0;
    for (int v = 0; v < V; v++) {
        double p = 0;
        for (int i = 0; i < K; i++) p += alpha[i] * exp(z[i][v] - lse_d(z[i], V));
        assert_true(fabs(out[v] - log(p)) < 1e-5);
        total += exp(out[v]);
    }
    assert_true(fabs(total - 1) < 1e-5);
}

/* Probabilities far below float's range: a naive float Σ α p would be 0 and
 * its log -inf; the log-space form keeps them. */
static void test_arithmetic_underflow(void **state) {
    (void)state;
    float z0[2] = {0, -200}, z1[2] = {0, -250}, out[2];
    const float *zp[2] = {z0, z1};
    double alpha[2] = {0.5, 0.5};
    mix_log_probs(zp, alpha, 2, 2, MIX_ARITHMETIC, out);
    /* p[1] ≈ 0.5 e^-200 (the e^-250 term is negligible) */
    assert_true(isfinite(out[1]));
    assert_true(fabs(out[1] - (-200 + log(0.5))) < 1e-3);
    assert_true(fabs(out[0]) < 1e-6);
}

static void test_geometric_renormalised(void **state) {
    (void)state;
    enum { V = 40 };
    float z0[V], z1[V], out[V];
    for (int v = 0; v < V; v++) {
        z0[v] = (float)sin(v * 0.7) * 5 + 30;  /* offsets must not matter */
        z1[v] = (float)cos(v * 1.3) * 4 - 80;
    }
    const float *zp[2] = {z0, z1};
    double alpha[2] = {0.25, 0.75};
    mix_log_probs(zp, alpha, 2, V, MIX_GEOMETRIC, out);
    double l0 = lse_d(z0, V), l1 = lse_d(z1, V), s[V], total = 0;
    for (int v = 0; v < V; v++) s[v] = 0.25 * (z0[v] - l0) + 0.75 * (z1[v] - l1);
    double mx = -INFINITY, acc = 0;
    for (int v = 0; v < V; v++) mx = s[v] > mx ? s[v] : mx;
    for (int v = 0; v < V; v++) acc += exp(s[v] - mx);
    double ls = mx + log(acc);
    for (int v = 0; v < V; v++) {
        assert_true(fabs(out[v] - (s[v] - ls)) < 1e-5);
        total += exp(out[v]);
    }
    assert_true(fabs(total - 1) < 1e-5);
    /* geometric != arithmetic on distinct members */
    float ar[V];
    mix_log_probs(zp, alpha, 2, V, MIX_ARITHMETIC, ar);
    double diff = 0;
    for (int v = 0; v < V; v++) diff = fmax(diff, fabs(ar[v] - out[v]));
    assert_true(diff > 1e-2);
}

/* K copies of one model give that model's log-softmax under both rules;
 * weight 0 members are skipped (their rows may be NULL). */
static void test_copies_and_zero_weight(void **state) {
    (void)state;
    enum { V = 30 };
    float z[V], out[V];
    for (int v = 0; v < V; v++) z[v] = (float)((v * 37) % 11) - 3.5f;
    double l = lse_d(z, V);
    const float *zp[3] = {z, z, z};
    double alpha[3] = {0.2, 0.3, 0.5};
    for (int r = 0; r < 2; r++) {
        mix_log_probs(zp, alpha, 3, V, (mix_rule)r, out);
        for (int v = 0; v < V; v++) assert_true(fabs(out[v] - (z[v] - l)) < 1e-5);
    }
    const float *zq[2] = {z, NULL};
    double a1[2] = {1, 0};
    mix_log_probs(zq, a1, 2, V, MIX_ARITHMETIC, out);
    for (int v = 0; v < V; v++) assert_true(fabs(out[v] - (z[v] - l)) < 1e-5);
    mix_log_probs(zq, a1, 2, V, MIX_GEOMETRIC, out);
    for (int v = 0; v < V; v++) assert_true(fabs(out[v] - (z[v] - l)) < 1e-5);
}

static void test_weights(void **state) {
    (void)state;
    alloy_err err;
    double a[3];
    double w1[2] = {2, 6};
    assert_int_equal(mix_normalize_weights(w1, 2, a, "w", &err), 0);
    assert_true(fabs(a[0] - 0.25) < 1e-15 && fabs(a[1] - 0.75) < 1e-15);
    double neg[2] = {1, -0.5};
    assert_int_equal(mix_normalize_weights(neg, 2, a, "w", &err), -1);
    assert_non_null(strstr(err.msg, "weight 2 is negative"));
    double zero[3] = {0, 0, 0};
    assert_int_equal(mix_normalize_weights(zero, 3, a, "w", &err), -1);
    assert_non_null(strstr(err.msg, "all 3 weights are zero"));
    double nan_[2] = {1, NAN};
    assert_int_equal(mix_normalize_weights(nan_, 2, a, "w", &err), -1);
    assert_non_null(strstr(err.msg, "weight 2"));
    mix_rule r;
    assert_int_equal(mix_rule_parse("geometric", &r, &err), 0);
    assert_int_equal(r, MIX_GEOMETRIC);
    assert_int_equal(mix_rule_parse("harmonic", &r, &err), -1);
    assert_non_null(strstr(err.msg, "harmonic"));
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = fs_join(dir, name);
    alloy_err err;
    assert_int_equal(fs_write_file(p, text, strlen(text), &err), 0);
    free(p);
}

static void test_manifest_round_trip(void **state) {
    (void)state;
    alloy_err err;
    char *dir = fs_join(root, "mixdir");
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    char *paths[2] = {"/abs/member-a", "rel/member-b"};
    double weights[2] = {0.7, 0.3};
    char *names[1] = {"geometric"};
    double values[1] = {1};
    mix_manifest m = {2, paths, weights, MIX_GEOMETRIC, 1, names, values};
    assert_int_equal(mix_manifest_write(&m, dir, &err), 0);
    mix_manifest b;
    assert_int_equal(mix_manifest_read(&b, dir, &err), 0);
    assert_int_equal(b.n, 2);
    assert_string_equal(b.paths[0], "/abs/member-a");
    char *want = fs_join(dir, "rel/member-b");
    assert_string_equal(b.paths[1], want);
    assert_true(b.weights[0] == 0.7 && b.weights[1] == 0.3);
    assert_int_equal(b.rule, MIX_GEOMETRIC);
    assert_int_equal(b.nparams, 1);
    assert_string_equal(b.param_names[0], "geometric");
    mix_manifest_free(&b);
    free(want);
    /* bad manifests name the key */
    write_text(dir, MIX_MANIFEST, "{\"format\": \"alloy-mixture\", \"members\": []}");
    assert_int_equal(mix_manifest_read(&b, dir, &err), -1);
    assert_non_null(strstr(err.msg, "members"));
    write_text(dir, MIX_MANIFEST, "{\"format\": \"alloy-mixture\", \"rule\": \"max\", \"members\": [{\"path\": \"a\"}]}");
    assert_int_equal(mix_manifest_read(&b, dir, &err), -1);
    assert_non_null(strstr(err.msg, "rule"));
    write_text(dir, MIX_MANIFEST, "{\"members\": [{\"path\": \"a\"}]}");
    assert_int_equal(mix_manifest_read(&b, dir, &err), -1);
    assert_non_null(strstr(err.msg, "format"));
    free(dir);
}

static const char *CONFIG =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 8, \"intermediate_size\": 16, "
    "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"vocab_size\": %d, "
    "\"max_position_embeddings\": 32, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true}";
static const char *TOK =
    "{\"added_tokens\": [{\"id\": 5, \"content\": \"<|end|>\", \"special\": true}], "
    "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"%s\": 4}, "
    "\"merges\": [\"a b\", \"%s\"]}}";

static char *member(const char *name, int vocab, const char *tok4, const char *merge1) {
    alloy_err err;
    char *dir = fs_join(root, name), buf[1024];
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    snprintf(buf, sizeof buf, CONFIG, vocab);
    write_text(dir, "config.json", buf);
    if (tok4) {
        snprintf(buf, sizeof buf, TOK, tok4, merge1);
        write_text(dir, "tokenizer.json", buf);
    }
    return dir;
}

static void test_check_members(void **state) {
    (void)state;
    alloy_err err;
    char *a = member("a", 6, "abc", "ab c"), *b = member("b", 6, "abc", "ab c");
    char *c = member("c", 6, "abc", "a bc"), *d = member("d", 6, "abd", "ab c");
    char *e = member("e", 7, "abc", "ab c"), *f = member("f", 6, NULL, NULL);
    const char *ok[2] = {a, b};
    assert_int_equal(mix_check_members(ok, 2, &err), 0);
    const char *merge[2] = {a, c};
    assert_int_equal(mix_check_members(merge, 2, &err), -1);
    assert_non_null(strstr(err.msg, "merge 1"));
    const char *vocab[2] = {a, d};
    assert_int_equal(mix_check_members(vocab, 2, &err), -1);
    assert_non_null(strstr(err.msg, "token 'abc'"));
    const char *size[2] = {a, e};
    assert_int_equal(mix_check_members(size, 2, &err), -1);
    assert_non_null(strstr(err.msg, "vocab_size"));
    const char *none[2] = {a, f};
    assert_int_equal(mix_check_members(none, 2, &err), -1);
    assert_non_null(strstr(err.msg, "has none"));
    char *gone = fs_join(root, "vanished");
    const char *missing[2] = {a, gone};
    assert_int_equal(mix_check_members(missing, 2, &err), -1);
    assert_non_null(strstr(err.msg, "vanished"));
    free(a), free(b), free(c), free(d), free(e), free(f), free(gone);
}

/* A mod recipe becomes a directory with the manifest, the tokenizer, the
 * recipe and a model card; bad weights and mismatched members fail and leave
 * nothing behind. */
static void test_recipe(void **state) {
    (void)state;
    alloy_err err;
    char *a = member("ra", 6, "abc", "ab c"), *b = member("rb", 6, "abc", "ab c");
    char *c = member("rc", 6, "abc", "a bc");
    char text[2048], *out = fs_join(root, "out/mix");
    recipe r;
    snprintf(text, sizeof text,
             "merge_method: mod\nmodels:\n  - model: %s\n    parameters: {weight: 0.7}\n"
             "  - model: %s\n    parameters: {weight: 0.3}\nparameters: {geometric: true}\n", a, b);
    assert_int_equal(recipe_parse(&r, text, strlen(text), "mod.yml", &err), 0);
    assert_int_equal(mix_write_from_recipe(&r, out, &err), 0);
    recipe_free(&r);
    mix_manifest m;
    assert_int_equal(mix_manifest_read(&m, out, &err), 0);
    assert_int_equal(m.n, 2);
    assert_string_equal(m.paths[0], a); /* root is absolute, no symlinks */
    assert_true(m.weights[0] == 0.7 && m.weights[1] == 0.3);
    assert_int_equal(m.rule, MIX_GEOMETRIC);
    mix_manifest_free(&m);
    const char *files[] = {"tokenizer.json", "alloy_recipe.yml", "README.md"};
    for (int i = 0; i < 3; i++) {
        char *p = fs_join(out, files[i]);
        assert_true(fs_is_file(p));
        free(p);
    }
    /* failures: negative weight, all zero, mismatched tokenizer, missing dir, slices */
    const char *bad[][2] = {
        {"-0.5", "weight -0.5 must be a finite number >= 0"}, {"0", "all 2 weights are zero"}};
    for (int i = 0; i < 2; i++) {
        snprintf(text, sizeof text,
                 "merge_method: mod\nmodels:\n  - model: %s\n    parameters: {weight: %s}\n"
                 "  - model: %s\n    parameters: {weight: %s}\n", a, i ? "0" : "1", b, bad[i][0]);
        assert_int_equal(recipe_parse(&r, text, strlen(text), "mod.yml", &err), 0);
        char *o2 = fs_join(root, "out/bad");
        assert_int_equal(mix_write_from_recipe(&r, o2, &err), -1);
        assert_non_null(strstr(err.msg, bad[i][1]));
        assert_false(fs_exists(o2));
        free(o2);
        recipe_free(&r);
    }
    snprintf(text, sizeof text, "merge_method: mod\nmodels:\n  - model: %s\n  - model: %s\n", a, c);
    assert_int_equal(recipe_parse(&r, text, strlen(text), "mod.yml", &err), 0);
    assert_int_equal(mix_write_from_recipe(&r, out, &err), -1);
    assert_non_null(strstr(err.msg, "merge 1"));
    recipe_free(&r);
    snprintf(text, sizeof text, "merge_method: mod\nmodels:\n  - model: %s\n  - model: %s/nope\n", a, root);
    assert_int_equal(recipe_parse(&r, text, strlen(text), "mod.yml", &err), 0);
    assert_int_equal(mix_write_from_recipe(&r, out, &err), -1);
    assert_non_null(strstr(err.msg, "nope"));
    assert_non_null(strstr(err.msg, "mod.yml:4"));
    recipe_free(&r);
    snprintf(text, sizeof text, "merge_method: mod\nmodels:\n  - model: %s\nparameters: {temperature: 2}\n", a);
    assert_int_equal(recipe_parse(&r, text, strlen(text), "mod.yml", &err), 0);
    assert_int_equal(mix_write_from_recipe(&r, out, &err), -1);
    assert_non_null(strstr(err.msg, "temperature"));
    recipe_free(&r);
    /* the earlier good output is untouched by the failures */
    assert_int_equal(mix_manifest_read(&m, out, &err), 0);
    mix_manifest_free(&m);
    free(a), free(b), free(c), free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logsumexp_stable),
        cmocka_unit_test(test_arithmetic_matches_definition),
        cmocka_unit_test(test_arithmetic_underflow),
        cmocka_unit_test(test_geometric_renormalised),
        cmocka_unit_test(test_copies_and_zero_weight),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_manifest_round_trip),
        cmocka_unit_test(test_check_members),
        cmocka_unit_test(test_recipe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
