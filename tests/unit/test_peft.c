/* test_peft.c — PEFT LoRA adapters: loading, validation, W += scale·B·A. */
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

#include "io/peft.h"
#include "io/safetensors.h"
#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-peft-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

/* Write an adapter with one module "m.q_proj": A [r, in], B [out, r]. */
static void write_adapter(const char *dir, int r, int in, int out, const char *config, bool drop_b,
                          const float *A, const float *B) {
    alloy_err err;
    assert_int_equal(fs_mkdirs(dir, &err), 0);
    char *cfg = fs_join(dir, "adapter_config.json");
    assert_int_equal(fs_write_file(cfg, config, strlen(config), &err), 0);
    free(cfg);
    st_spec specs[2] = {
        {.name = "base_model.model.m.q_proj.lora_A.weight", .dtype = ALLOY_F32, .ndim = 2, .shape = {r, in}},
        {.name = "base_model.model.m.q_proj.lora_B.weight", .dtype = ALLOY_F32, .ndim = 2, .shape = {out, r}},
    };
    char *tmp = fs_join(dir, "st");
    assert_int_equal(fs_mkdirs(tmp, &err), 0);
    st_writer *w = st_writer_open(tmp, specs, drop_b ? 1 : 2, 1u << 30, &err);
    assert_non_null(w);
    assert_int_equal(st_writer_put(w, 0, A, &err), 0);
    if (!drop_b) assert_int_equal(st_writer_put(w, 1, B, &err), 0);
    assert_int_equal(st_writer_finish(w, &err), 0);
    char *src = fs_join(tmp, "model.safetensors"), *dst = fs_join(dir, "adapter_model.safetensors");
    assert_int_equal(rename(src, dst), 0);
    free(src);
    free(dst);
    fs_remove_tree(tmp, NULL);
    free(tmp);
}

static void test_apply(void **state) {
    (void)state;
    enum { R = 2, IN = 3, OUT = 4 };
    float A[R * IN] = {1, 2, 3, -1, 0, 1};
    float B[OUT * R] = {1, 0, 0, 1, 2, -1, 0.5f, 0.5f};
    char *dir = fs_join(root, "ad");
    write_adapter(dir, R, IN, OUT, "{\"r\": 2, \"lora_alpha\": 8}", false, A, B);
    peft_adapter a;
    alloy_err err;
    assert_int_equal(peft_load(&a, dir, &err), 0);
    assert_int_equal(a.nmodules, 1);
    const peft_module *m = peft_find(&a, "m.q_proj.weight");
    assert_non_null(m);
    assert_null(peft_find(&a, "m.k_proj.weight"));
    assert_true(fabs(m->scale - 4.0) < 1e-12); /* alpha / r */
    float W[OUT * IN] = {0};
    W[0] = 1.0f;
    assert_int_equal(peft_apply(&a, m, W, OUT, IN, &err), 0);
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < IN; j++) {
            double e = (i == 0 && j == 0) ? 1.0 : 0.0;
            for (int k = 0; k < R; k++) e += 4.0 * B[i * R + k] * A[k * IN + j];
            assert_true(fabs(W[i * IN + j] - e) < 1e-5);
        }
    /* Wrong shape is an error naming the module. */
    assert_int_equal(peft_apply(&a, m, W, IN, OUT, &err), -1);
    assert_non_null(strstr(err.msg, "m.q_proj.weight"));
    peft_free(&a);
    free(dir);
}

static void test_rslora(void **state) {
    (void)state;
    float A[4 * 2] = {0}, B[2 * 4] = {0};
    char *dir = fs_join(root, "rs");
    write_adapter(dir, 4, 2, 2, "{\"r\": 4, \"lora_alpha\": 16, \"use_rslora\": true}", false, A, B);
    peft_adapter a;
    alloy_err err;
    assert_int_equal(peft_load(&a, dir, &err), 0);
    assert_true(fabs(a.modules[0].scale - 8.0) < 1e-12); /* 16 / sqrt(4) */
    peft_free(&a);
    free(dir);
}

static void test_bad(void **state) {
    (void)state;
    float A[2 * 3] = {0}, B[4 * 2] = {0};
    peft_adapter a;
    alloy_err err;
    char *dir = fs_join(root, "nob");
    write_adapter(dir, 2, 3, 4, "{\"r\": 2, \"lora_alpha\": 8}", true, A, B);
    assert_int_equal(peft_load(&a, dir, &err), -1);
    assert_non_null(strstr(err.msg, "lora_B"));
    free(dir);
    dir = fs_join(root, "rank");
    write_adapter(dir, 2, 3, 4, "{\"r\": 8, \"lora_alpha\": 8}", false, A, B);
    assert_int_equal(peft_load(&a, dir, &err), -1);
    assert_non_null(strstr(err.msg, "rank"));
    free(dir);
    dir = fs_join(root, "cfg");
    write_adapter(dir, 2, 3, 4, "{\"lora_alpha\": 8}", false, A, B);
    assert_int_equal(peft_load(&a, dir, &err), -1);
    assert_non_null(strstr(err.msg, "adapter_config.json"));
    free(dir);
    assert_int_equal(peft_load(&a, "/nonexistent/adapter", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/adapter"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rslora, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad, setup, teardown),
    };
    return cmocka_run_group_tests_name("peft", tests, NULL, NULL);
}
