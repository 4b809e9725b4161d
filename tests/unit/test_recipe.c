/* test_recipe.c — mergekit YAML recipes: parsing realistic recipes, parameter
 * evaluation (scalars, gradients, filters), precedence, and bad input. */
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
#include "util/fs.h"

#define EPS 1e-12

/* tests/data/recipes/<name>, found from this file's path (make builds from
 * the repository root and runs the tests there). malloc'd. */
static char *data_path(const char *name) {
    char *unit = fs_dirname(__FILE__), *dir = fs_join(unit, "../data/recipes");
    char *p = fs_join(dir, name);
    free(unit);
    free(dir);
    return p;
}

static int parse(recipe *r, const char *yaml, alloy_err *err) {
    return recipe_parse(r, yaml, strlen(yaml), "r.yml", err);
}

static bool is_zeroed(const recipe *r) {
    static const recipe zero;
    return !memcmp(r, &zero, sizeof zero);
}

/* Parsing must fail, leave *r zeroed, and the message must contain every
 * needle (NULL-terminated). */
static void expect_fail(const char *yaml, ...) {
    recipe r;
    memset(&r, 0x5a, sizeof r);
    alloy_err err = {{0}};
    int rc = parse(&r, yaml, &err);
    if (rc != -1) fail_msg("parsed without error:\n%s", yaml);
    assert_true(is_zeroed(&r));
    va_list ap;
    va_start(ap, yaml);
    for (const char *needle; (needle = va_arg(ap, const char *));)
        if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
    va_end(ap);
    assert_null(strchr(err.msg, '\n'));
    recipe_free(&r); /* safe on the zeroed struct */
}

static double param(const recipe *r, int slice, int source, const char *name, const char *tensor, double t) {
    double v = NAN;
    if (!recipe_param(r, slice, source, name, tensor, t, &v)) fail_msg("parameter '%s' not found", name);
    return v;
}

/* ---- realistic recipes ---- */

static const char ties_yaml[] =
    "models:\n"
    "  - model: mistralai/Mistral-7B-v0.1\n"
    "    # no parameters necessary for base model\n"
    "  - model: OpenPipe/mistral-ft-optimized-1218\n"
    "    parameters:\n"
    "      density: 0.5\n"
    "      weight: 0.5\n"
    "  - model: mlabonne/NeuralHermes-2.5-Mistral-7B\n"
    "    parameters:\n"
    "      density: .5\n"
    "      weight: [0.3, 0.6]\n"
    "merge_method: ties\n"
    "base_model: mistralai/Mistral-7B-v0.1\n"
    "parameters:\n"
    "  normalize: true\n"
    "  int8_mask: False\n"
    "  epsilon: 1e-3\n"
    "  lambda: -0.2\n"
    "dtype: float16\n"
    "out_dtype: bfloat16\n"
    "tokenizer_source: base\n"
    "name: my-merge\n";

static void test_ties_models_form(void **state) {
    (void)state;
    recipe r;
    alloy_err err = {{0}};
    assert_int_equal(parse(&r, ties_yaml, &err), 0);
    assert_string_equal(r.path, "r.yml");
    assert_string_equal(r.text, ties_yaml);
    assert_string_equal(r.merge_method, "ties");
    assert_int_equal(r.line_method, 12);
    assert_string_equal(r.base_model, "mistralai/Mistral-7B-v0.1");
    assert_string_equal(r.dtype, "float16");
    assert_string_equal(r.out_dtype, "bfloat16");
    assert_string_equal(r.tokenizer_source, "base");
    assert_null(r.chat_template);
    assert_int_equal(r.nslices, 0);
    assert_null(r.slices);
    assert_int_equal(r.nmodels, 3);
    assert_string_equal(r.models[0].model, "mistralai/Mistral-7B-v0.1");
    assert_int_equal(r.models[0].params.n, 0);
    assert_false(r.models[0].has_range);
    assert_int_equal(r.models[1].line, 4);
    assert_string_equal(r.models[2].model, "mlabonne/NeuralHermes-2.5-Mistral-7B");

    const param_entry *d = param_find(&r.models[1].params, "density");
    assert_non_null(d);
    assert_int_equal(d->line, 6);
    assert_int_equal(d->value.kind, PV_NUMBER);
    assert_null(param_find(&r.models[1].params, "normalize"));

    /* per model */
    assert_float_equal(param(&r, -1, 1, "weight", "x", 0), 0.5, EPS);
    assert_float_equal(param(&r, -1, 2, "density", "x", 0), 0.5, EPS);
    assert_float_equal(param(&r, -1, 2, "weight", "x", 0.5), 0.45, EPS);
    double v = 7;
    assert_int_equal(recipe_param(&r, -1, 0, "weight", "x", 0, &v), 0);
    assert_float_equal(v, 7, 0);
    /* top level, seen from any model and from none */
    assert_float_equal(param(&r, -1, 1, "normalize", "x", 0), 1, 0);
    assert_float_equal(param(&r, -1, -1, "normalize", "x", 0), 1, 0);
    assert_float_equal(param(&r, -1, 0, "int8_mask", "x", 0), 0, 0);
    assert_float_equal(param(&r, -1, -1, "epsilon", NULL, 0), 1e-3, EPS);
    assert_float_equal(param(&r, -1, -1, "lambda", NULL, 0), -0.2, EPS);
    recipe_free(&r);
    assert_true(is_zeroed(&r));
}

static void check_slerp_t(const recipe *r) {
    const char *attn = "model.layers.5.self_attn.q_proj.weight";
    const char *mlp = "model.layers.5.mlp.down_proj.weight";
    /* self_attn: [0, 0.5, 0.3, 0.7, 1] */
    assert_float_equal(param(r, 0, 0, "t", attn, 0), 0, EPS);
    assert_float_equal(param(r, 0, 0, "t", attn, 0.25), 0.5, EPS);
    assert_float_equal(param(r, 0, 1, "t", attn, 0.375), 0.4, EPS);
    assert_float_equal(param(r, 0, 1, "t", attn, 0.5), 0.3, EPS);
    assert_float_equal(param(r, 0, -1, "t", attn, 1), 1, EPS);
    /* mlp: [1, 0.5, 0.7, 0.3, 0] */
    assert_float_equal(param(r, 0, 0, "t", mlp, 0.125), 0.75, EPS);
    assert_float_equal(param(r, 0, 0, "t", mlp, 0.75), 0.3, EPS);
    /* neither: fallback */
    assert_float_equal(param(r, 0, 0, "t", "model.embed_tokens.weight", 0.3), 0.5, EPS);
    assert_float_equal(param(r, 0, 0, "t", NULL, 0.3), 0.5, EPS);
}

static void test_slerp_slices_form(void **state) {
    (void)state;
    char *path = data_path("slerp.yml");
    recipe r;
    alloy_err err = {{0}};
    if (recipe_load(&r, path, &err)) fail_msg("%s", err.msg);
    assert_string_equal(r.path, path);
    assert_string_equal(r.merge_method, "slerp");
    assert_int_equal(r.nmodels, 0);
    assert_int_equal(r.nslices, 1);
    assert_int_equal(r.slices[0].nsources, 2);
    for (int j = 0; j < 2; j++) {
        assert_true(r.slices[0].sources[j].has_range);
        assert_int_equal(r.slices[0].sources[j].layer_start, 0);
        assert_int_equal(r.slices[0].sources[j].layer_end, 32);
    }
    assert_string_equal(r.slices[0].sources[1].model, "mlabonne/NeuralHermes-2.5-Mistral-7B");
    const param_entry *t = param_find(&r.params, "t");
    assert_non_null(t);
    assert_int_equal(t->value.kind, PV_FILTERS);
    assert_int_equal(t->value.n, 3);
    assert_string_equal(t->value.filters[0].filter, "self_attn");
    assert_int_equal(t->value.filters[0].value.kind, PV_GRADIENT);
    assert_int_equal(t->value.filters[0].value.n, 5);
    assert_null(t->value.filters[2].filter);
    check_slerp_t(&r);
    recipe_free(&r);
    free(path);
}

static void test_slerp_flow_style(void **state) {
    (void)state;
    const char *y = "slices:\n"
                    "  - sources:\n"
                    "      - {model: a, layer_range: [0, 32]}\n"
                    "      - {model: b, layer_range: [0, 32]}\n"
                    "merge_method: slerp\n"
                    "base_model: a\n"
                    "parameters:\n"
                    "  t: [{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}, {filter: mlp, value: [1, 0.5, 0.7, "
                    "0.3, 0]}, {value: 0.5}]\n";
    recipe r;
    alloy_err err = {{0}};
    if (parse(&r, y, &err)) fail_msg("%s", err.msg);
    check_slerp_t(&r);
    recipe_free(&r);
}

static void test_passthrough_lora_model(void **state) {
    (void)state;
    char *path = data_path("passthrough.yml");
    recipe r;
    alloy_err err = {{0}};
    if (recipe_load(&r, path, &err)) fail_msg("%s", err.msg);
    assert_string_equal(r.merge_method, "passthrough");
    assert_null(r.base_model);
    assert_int_equal(r.nslices, 2);
    assert_int_equal(r.slices[0].nsources, 1);
    assert_int_equal(r.slices[0].sources[0].layer_start, 0);
    assert_int_equal(r.slices[0].sources[0].layer_end, 24);
    assert_string_equal(r.slices[1].sources[0].model, "mistralai/Mistral-7B-v0.1+loras/my-adapter");
    assert_int_equal(r.slices[1].sources[0].layer_start, 8);
    assert_int_equal(r.slices[1].sources[0].layer_end, 32);
    assert_int_equal(r.slices[1].line, 6); /* line 1 is a comment */
    assert_int_equal(r.slices[1].sources[0].line, 7);
    assert_int_equal(r.params.n, 0);
    recipe_free(&r);
    free(path);
}

static void test_load_example_ties_and_text(void **state) {
    (void)state;
    char *path = data_path("ties.yml");
    size_t len;
    alloy_err err = {{0}};
    char *raw = fs_read_file(path, &len, &err);
    assert_non_null(raw);
    recipe r;
    if (recipe_load(&r, path, &err)) fail_msg("%s", err.msg);
    assert_string_equal(r.text, raw);
    assert_int_equal(r.nmodels, 3);
    assert_float_equal(param(&r, -1, 2, "weight", "w", 0), 0.3, EPS);
    assert_float_equal(param(&r, -1, 2, "int8_mask", "w", 0), 1, 0);
    recipe_free(&r);
    free(raw);
    free(path);

    memset(&r, 0x5a, sizeof r);
    assert_int_equal(recipe_load(&r, "/nonexistent/recipe.yml", &err), -1);
    assert_true(is_zeroed(&r));
    assert_non_null(strstr(err.msg, "/nonexistent/recipe.yml"));
}

static void test_chat_template_and_nulls(void **state) {
    (void)state;
    const char *y = "merge_method: linear\n"
                    "base_model:\n"
                    "models:\n"
                    "  - model: a\n"
                    "    parameters: {weight: 1}\n"
                    "  - model: b\n"
                    "    parameters:\n"
                    "parameters:\n"
                    "chat_template: |\n"
                    "  {% for m in messages %}{{ m.content }}{% endfor %}\n";
    recipe r;
    alloy_err err = {{0}};
    if (parse(&r, y, &err)) fail_msg("%s", err.msg);
    assert_null(r.base_model);
    assert_string_equal(r.chat_template, "{% for m in messages %}{{ m.content }}{% endfor %}\n");
    assert_int_equal(r.models[1].params.n, 0);
    assert_int_equal(r.params.n, 0);
    assert_float_equal(param(&r, -1, 0, "weight", "x", 0), 1, 0);
    recipe_free(&r);
}

/* ---- param_eval ---- */

static void test_eval_scalar_and_gradient(void **state) {
    (void)state;
    double out = -1;
    param_value s = {.kind = PV_NUMBER, .num = 0.7};
    assert_int_equal(param_eval(&s, NULL, 0.9, &out), 1);
    assert_float_equal(out, 0.7, 0);

    double g3[] = {0, 1, 4};
    param_value g = {.kind = PV_GRADIENT, .n = 3, .list = g3};
    const double ts[] = {0, 0.25, 0.5, 0.75, 1};
    const double want[] = {0, 0.5, 1, 2.5, 4}; /* scaled = 2t: [0, 0.5, 1, 1.5, 2] */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(param_eval(&g, "x", ts[i], &out), 1);
        assert_float_equal(out, want[i], EPS);
    }
    double g5[] = {0, 0.5, 0.3, 0.7, 1}; /* scaled = 4t */
    g = (param_value){.kind = PV_GRADIENT, .n = 5, .list = g5};
    const double want5[] = {0, 0.5, 0.3, 0.7, 1};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(param_eval(&g, "x", ts[i], &out), 1);
        assert_float_equal(out, want5[i], EPS);
    }
    assert_int_equal(param_eval(&g, "x", 0.6, &out), 1); /* scaled 2.4: 0.6·0.3 + 0.4·0.7 */
    assert_float_equal(out, 0.46, EPS);
    double g1[] = {0.25};
    g = (param_value){.kind = PV_GRADIENT, .n = 1, .list = g1};
    assert_int_equal(param_eval(&g, "x", 1, &out), 1);
    assert_float_equal(out, 0.25, 0);
}

static void test_eval_filters(void **state) {
    (void)state;
    double ga[] = {0, 1};
    param_filter f[] = {
        {"attn", {.kind = PV_NUMBER, .num = 1}},
        {"self_attn", {.kind = PV_NUMBER, .num = 2}},
        {"mlp", {.kind = PV_GRADIENT, .n = 2, .list = ga}},
        {NULL, {.kind = PV_NUMBER, .num = 3}},
    };
    param_value v = {.kind = PV_FILTERS, .n = 4, .filters = f};
    double out = -1;
    /* first match wins, even when a later filter is more specific */
    assert_int_equal(param_eval(&v, "layers.0.self_attn.k_proj.weight", 0, &out), 1);
    assert_float_equal(out, 1, 0);
    /* matched value evaluated recursively */
    assert_int_equal(param_eval(&v, "layers.0.mlp.up_proj.weight", 0.25, &out), 1);
    assert_float_equal(out, 0.25, EPS);
    /* fallback */
    assert_int_equal(param_eval(&v, "lm_head.weight", 0, &out), 1);
    assert_float_equal(out, 3, 0);
    assert_int_equal(param_eval(&v, NULL, 0, &out), 1);
    assert_float_equal(out, 3, 0);

    /* no match: no value, out untouched */
    v.n = 3;
    out = -1;
    assert_int_equal(param_eval(&v, "lm_head.weight", 0, &out), 0);
    assert_float_equal(out, -1, 0);
    assert_int_equal(param_eval(&v, NULL, 0, &out), 0);

    /* "*" matches everything, including no tensor name */
    param_filter star[] = {{"mlp", {.kind = PV_NUMBER, .num = 1}}, {"*", {.kind = PV_NUMBER, .num = 9}}};
    v = (param_value){.kind = PV_FILTERS, .n = 2, .filters = star};
    assert_int_equal(param_eval(&v, NULL, 0, &out), 1);
    assert_float_equal(out, 9, 0);
}

/* ---- precedence ---- */

static void test_precedence(void **state) {
    (void)state;
    const char *y = "merge_method: ties\n"
                    "base_model: base\n"
                    "slices:\n"
                    "  - sources:\n"
                    "      - model: a\n"
                    "        layer_range: [0, 4]\n"
                    "        parameters:\n"
                    "          weight: 0.9\n"
                    "          density: [{filter: mlp, value: 0.1}]\n"
                    "      - model: b\n"
                    "        layer_range: [0, 4]\n"
                    "    parameters:\n"
                    "      weight: 0.5\n"
                    "      density: {filter: self_attn, value: 0.6}\n"
                    "  - sources:\n"
                    "      - model: a\n"
                    "        layer_range: [4, 8]\n"
                    "parameters:\n"
                    "  weight: 0.2\n"
                    "  density: 0.3\n"
                    "  lambda: 1.5\n";
    recipe r;
    alloy_err err = {{0}};
    if (parse(&r, y, &err)) fail_msg("%s", err.msg);
    assert_int_equal(r.nslices, 2);
    /* source > slice > top */
    assert_float_equal(param(&r, 0, 0, "weight", "m.mlp.w", 0), 0.9, EPS);
    assert_float_equal(param(&r, 0, 1, "weight", "m.mlp.w", 0), 0.5, EPS);
    assert_float_equal(param(&r, 0, -1, "weight", "m.mlp.w", 0), 0.5, EPS);
    assert_float_equal(param(&r, 1, 0, "weight", "m.mlp.w", 0), 0.2, EPS);
    assert_float_equal(param(&r, 0, 0, "lambda", "m.mlp.w", 0), 1.5, EPS);
    /* fall-through: source filter misses → slice filter; both miss → top */
    assert_float_equal(param(&r, 0, 0, "density", "m.mlp.w", 0), 0.1, EPS);
    assert_float_equal(param(&r, 0, 0, "density", "m.self_attn.w", 0), 0.6, EPS);
    assert_float_equal(param(&r, 0, 0, "density", "m.norm.w", 0), 0.3, EPS);
    assert_float_equal(param(&r, 0, 1, "density", "m.mlp.w", 0), 0.3, EPS);
    assert_float_equal(param(&r, 0, 0, "density", NULL, 0), 0.3, EPS);
    /* slices form: slice < 0 reads top level only */
    assert_float_equal(param(&r, -1, -1, "weight", "x", 0), 0.2, EPS);
    double v;
    assert_int_equal(recipe_param(&r, 0, 0, "missing", "x", 0, &v), 0);
    recipe_free(&r);

    /* models form: model's filter misses → top level */
    const char *m = "merge_method: linear\n"
                    "models:\n"
                    "  - model: a\n"
                    "    parameters:\n"
                    "      weight:\n"
                    "        - filter: embed\n"
                    "          value: 0.8\n"
                    "  - model: b\n"
                    "parameters:\n"
                    "  weight: 0.4\n";
    if (parse(&r, m, &err)) fail_msg("%s", err.msg);
    assert_float_equal(param(&r, -1, 0, "weight", "model.embed_tokens.weight", 0), 0.8, EPS);
    assert_float_equal(param(&r, -1, 0, "weight", "lm_head.weight", 0), 0.4, EPS);
    assert_float_equal(param(&r, -1, 1, "weight", "model.embed_tokens.weight", 0), 0.4, EPS);
    recipe_free(&r);
}

/* ---- bad input ---- */

static void test_bad_syntax(void **state) {
    (void)state;
    expect_fail("merge_method: ties\nbase_model: a\ndtype: float16: x\nmodels:\n  - model: a\n", "r.yml:3:",
                "YAML", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: [a, b\n", "r.yml:", "YAML", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\n---\nmerge_method: linear\n", "r.yml:5:",
                "more than one YAML document", NULL);
}

static void test_bad_structure(void **state) {
    (void)state;
    expect_fail("", "r.yml", "empty", NULL);
    expect_fail("# only a comment\n", "r.yml", "empty", NULL);
    expect_fail("- merge_method: ties\n- models: []\n", "r.yml:1:", "map", NULL);
    expect_fail("just a string\n", "r.yml:1:", "map", NULL);
    expect_fail("models:\n  - model: a\ndtype: float16\n", "r.yml:1:", "missing merge_method", NULL);
    expect_fail("merge_method: linear\nmodels:\n  - model: a\nslices:\n  - sources:\n      - model: a\n",
                "r.yml:4:", "not both", NULL);
    expect_fail("merge_method: linear\ndtype: float16\n", "r.yml:1:", "models:", "slices:", NULL);
    expect_fail("merge_method: linear\nmodels:\n", "models:", NULL);
    expect_fail("merge_method: linear\nmodels: []\n", "r.yml:2:", "models: empty", NULL);
    expect_fail("merge_method: linear\nmodels:\n  - a\n  - b\n", "r.yml:3:", "plain string 'a'", NULL);
    expect_fail("merge_method: linear\nmodels:\n  - parameters: {weight: 1}\n", "r.yml:3:", "no 'model'", NULL);
    expect_fail("merge_method:\nmodels:\n  - model: a\n", "r.yml:1:", "merge_method", NULL);
    expect_fail("merge_method: [a]\nmodels:\n  - model: a\n", "r.yml:1:", "merge_method", NULL);
    expect_fail("merge_method: linear\nslices:\n  - sources: []\n", "r.yml:3:", "sources: empty", NULL);
    expect_fail("merge_method: linear\nmodels:\n  - model: a\nmerge_method: ties\n", "r.yml:4:",
                "duplicate key 'merge_method'", NULL);
}

static void test_unknown_keys(void **state) {
    (void)state;
    expect_fail("merge_methd: ties\nmodels:\n  - model: a\n", "r.yml:1:", "'merge_methd'",
                "did you mean 'merge_method'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nbase_modle: a\n", "r.yml:4:",
                "did you mean 'base_model'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nfrobnicate: 1\n", "r.yml:4:", "'frobnicate'", NULL);
    {
        alloy_err err = {{0}};
        recipe r;
        assert_int_equal(parse(&r, "merge_method: ties\nmodels:\n  - model: a\nfrobnicate: 1\n", &err), -1);
        assert_null(strstr(err.msg, "did you mean"));
    }
    expect_fail("merge_method: ties\nmodels:\n  - model: a\ntokenizer:\n  source: base\n", "r.yml:4:",
                "tokenizer: not supported (use tokenizer_source)", NULL);
    expect_fail("merge_method: ties\nmodules:\n  text: {}\n", "r.yml:2:", "modules: not supported", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\n    paramters: {weight: 1}\n", "r.yml:4:",
                "'paramters'", "did you mean 'parameters'", NULL);
    expect_fail("merge_method: ties\nslices:\n  - sources:\n      - model: a\n        layer_rang: [0, 2]\n",
                "r.yml:5:", "did you mean 'layer_range'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\n    layer_range: [0, 2]\n", "r.yml:4:",
                "'layer_range'", NULL);
    expect_fail("merge_method: ties\nslices:\n  - source:\n      - model: a\n", "r.yml:3:",
                "did you mean 'sources'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [{filter: mlp, valeu: 1}]\n",
                "r.yml:5:", "did you mean 'value'", NULL);
}

static void test_bad_layer_range(void **state) {
    (void)state;
    const char *fmt = "merge_method: passthrough\n"
                      "slices:\n"
                      "  - sources:\n"
                      "      - model: a\n"
                      "        layer_range: %s\n";
    const char *bad[] = {"[4, 2]", "[3, 3]", "[-1, 3]", "[0]", "[0, 1, 2]", "[0, 1.5]", "[0, x]", "3",
                         "[0, 99999999999]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char y[512];
        snprintf(y, sizeof y, fmt, bad[i]);
        expect_fail(y, "r.yml:5:", "layer_range", NULL);
    }
}

static void test_bad_param_values(void **state) {
    (void)state;
    expect_fail("merge_method: ties\nmodels:\n  - model: a\n    parameters:\n      weight: abc\n", "r.yml:5:",
                "'weight'", "abc", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  density: \"0.5\"\n", "r.yml:5:",
                "'density'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  density: []\n", "r.yml:5:",
                "'density'", "empty", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  density:\n", "r.yml:5:", "'density'",
                NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [0, 0.5,\n     x]\n", "r.yml:6:",
                "'t'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [0, {filter: mlp, value: 1}]\n",
                "r.yml:5:", "'t'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [{filter: mlp, value: 1}, 2]\n",
                "r.yml:5:", "'t'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [{filter: mlp}]\n", "r.yml:5:",
                "'t'", "value", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [{filter: mlp, value: fast}]\n",
                "r.yml:5:", "'t'", "fast", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: [{filter: mlp, value: []}]\n",
                "r.yml:5:", "'t'", "empty", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  t: .inf\n", "r.yml:5:", "'t'", NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters: [weight, 1]\n", "r.yml:4:", "parameters",
                NULL);
    expect_fail("merge_method: ties\nmodels:\n  - model: a\nparameters:\n  w: 1\n  w: 2\n", "r.yml:6:",
                "duplicate key 'w'", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ties_models_form),
        cmocka_unit_test(test_slerp_slices_form),
        cmocka_unit_test(test_slerp_flow_style),
        cmocka_unit_test(test_passthrough_lora_model),
        cmocka_unit_test(test_load_example_ties_and_text),
        cmocka_unit_test(test_chat_template_and_nulls),
        cmocka_unit_test(test_eval_scalar_and_gradient),
        cmocka_unit_test(test_eval_filters),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_bad_syntax),
        cmocka_unit_test(test_bad_structure),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_bad_layer_range),
        cmocka_unit_test(test_bad_param_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
