/* test_spin.c — the merge's restart with short OpenMP and OpenBLAS spins
 * (src/util/spin.c): what the restarted program sees in its environment,
 * and that the user's own settings win.
 *
 * alloy_short_spin re-executes /proc/self/exe, which is this test: started
 * with ALLOY_SPIN_PROBE=PATH it writes the two variables there and exits
 * before cmocka runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/spin.h"

/* The restarted test: GOMP_SPINCOUNT and OPENBLAS_THREAD_TIMEOUT ("-" when
 * unset), a line each, into path. */
static int probe(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return 2;
    const char *g = getenv("GOMP_SPINCOUNT"), *b = getenv("OPENBLAS_THREAD_TIMEOUT");
    fprintf(f, "%s\n%s\n", g ? g : "-", b ? b : "-");
    return fclose(f) ? 2 : 0;
}

/* Runs alloy_short_spin in a child with the given settings (NULL: unset)
 * and returns its exit status; what a restart saw is in out (empty when
 * there was none). */
static int run_child(const char *gomp, const char *blas, char *out, size_t cap) {
    char path[] = "/tmp/alloy-spin-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        unsetenv("OMP_WAIT_POLICY");
        if (gomp) setenv("GOMP_SPINCOUNT", gomp, 1);
        else unsetenv("GOMP_SPINCOUNT");
        if (blas) setenv("OPENBLAS_THREAD_TIMEOUT", blas, 1);
        else unsetenv("OPENBLAS_THREAD_TIMEOUT");
        setenv("ALLOY_SPIN_PROBE", path, 1);
        char *argv[] = {"test_spin", NULL};
        alloy_short_spin(argv);
        _exit(5); /* returned: no restart */
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(out, 1, cap - 1, f);
        out[n] = 0;
        fclose(f);
        unlink(path);
    }
    return WEXITSTATUS(st);
}

static void test_restart_sets_both(void **state) {
    (void)state;
    char seen[64];
    assert_int_equal(run_child(NULL, NULL, seen, sizeof seen), 0);
    assert_string_equal(seen, "10000\n18\n");
}

static void test_user_blas_timeout_kept(void **state) {
    (void)state;
    char seen[64];
    assert_int_equal(run_child(NULL, "7", seen, sizeof seen), 0);
    assert_string_equal(seen, "10000\n7\n");
}

static void test_user_spin_no_restart(void **state) {
    (void)state;
    char seen[64];
    assert_int_equal(run_child("500", NULL, seen, sizeof seen), 5);
    assert_string_equal(seen, "");
}

int main(void) {
    const char *p = getenv("ALLOY_SPIN_PROBE");
    if (p) return probe(p);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_sets_both),
        cmocka_unit_test(test_user_blas_timeout_kept),
        cmocka_unit_test(test_user_spin_no_restart),
    };
    return cmocka_run_group_tests_name("spin", tests, NULL, NULL);
}
