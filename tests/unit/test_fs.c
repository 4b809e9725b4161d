/* test_fs.c — atomic output directories and path helpers (src/util/fs.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-fs-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

static void test_join_dirname(void **state) {
    (void)state;
    char *j = fs_join("a/b", "c.txt");
    assert_string_equal(j, "a/b/c.txt");
    free(j);
    j = fs_join("a/b/", "c");
    assert_string_equal(j, "a/b/c");
    free(j);
    j = fs_join("a", "/abs");
    assert_string_equal(j, "/abs");
    free(j);
    char *d = fs_dirname("x/y/z");
    assert_string_equal(d, "x/y");
    free(d);
    d = fs_dirname("z");
    assert_string_equal(d, ".");
    free(d);
}

static void test_temp_and_commit(void **state) {
    (void)state;
    alloy_err err;
    char *out = fs_join(root, "out");
    char *tmp = fs_make_temp_sibling(out, &err);
    assert_non_null(tmp);
    assert_true(fs_is_dir(tmp));
    assert_non_null(strstr(tmp, "/.out.tmp-"));
    assert_false(fs_exists(out));
    char *f = fs_join(tmp, "a.txt");
    assert_int_equal(fs_write_file(f, "one", 3, &err), 0);
    assert_int_equal(fs_commit_dir(tmp, out, &err), 0);
    assert_false(fs_exists(tmp));
    char *g = fs_join(out, "a.txt");
    size_t len;
    char *text = fs_read_file(g, &len, &err);
    assert_non_null(text);
    assert_int_equal(len, 3);
    assert_string_equal(text, "one");
    free(text);

    /* A second commit replaces the first directory whole. */
    char *tmp2 = fs_make_temp_sibling(out, &err);
    char *f2 = fs_join(tmp2, "b.txt");
    assert_int_equal(fs_write_file(f2, "two", 3, &err), 0);
    assert_int_equal(fs_commit_dir(tmp2, out, &err), 0);
    assert_false(fs_exists(g));
    char *h = fs_join(out, "b.txt");
    assert_true(fs_is_file(h));
    free(h);
    free(f2);
    free(tmp2);
    free(g);
    free(f);
    free(tmp);
    free(out);
}

static void test_errors(void **state) {
    (void)state;
    alloy_err err;
    assert_null(fs_read_file("/nonexistent/file", NULL, &err));
    assert_non_null(strstr(err.msg, "/nonexistent/file"));
    assert_null(fs_make_temp_sibling("/nonexistent/dir/out", &err));
    assert_non_null(strstr(err.msg, "/nonexistent/dir/out"));
    assert_int_equal(fs_remove_tree("/nonexistent/x", &err), 0);
}

static void test_mkdirs(void **state) {
    (void)state;
    alloy_err err;
    char *deep = fs_join(root, "p/q/r");
    assert_int_equal(fs_mkdirs(deep, &err), 0);
    assert_true(fs_is_dir(deep));
    assert_int_equal(fs_mkdirs(deep, &err), 0); /* idempotent */
    free(deep);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_dirname),
        cmocka_unit_test_setup_teardown(test_temp_and_commit, setup, teardown),
        cmocka_unit_test(test_errors),
        cmocka_unit_test_setup_teardown(test_mkdirs, setup, teardown),
    };
    return cmocka_run_group_tests_name("fs", tests, NULL, NULL);
}
