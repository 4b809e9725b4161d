/* test_prefetch.c — merge/prefetch.c on two files' mappings (a base and a
 * model, 12 tensors of 4 MiB each): every tensor's input pages are mapped
 * when merge_prefetch_ready returns; the done ones stay mapped until 64 MiB
 * of inputs are done (eight tensors: seven are not dropped), are then
 * dropped as one batch, and whatever is left goes at the stop. Mapped
 * means present in /proc/self/pagemap. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "merge/prefetch.h"

#define NT 12
#define TBYTES ((size_t)4 << 20)

/* Pages of [p, p + len) present in this process's page tables. */
static size_t present(const void *p, size_t len) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p / (uintptr_t)page, b = ((uintptr_t)p + len + (uintptr_t)page - 1) / (uintptr_t)page;
    uint64_t *e = malloc((b - a) * sizeof *e);
    assert_non_null(e);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, e, (b - a) * sizeof *e, (off_t)(a * sizeof *e)), (ssize_t)((b - a) * sizeof *e));
    close(fd);
    size_t n = 0;
    for (uintptr_t i = 0; i < b - a; i++) n += e[i] >> 63;
    free(e);
    return n;
}

/* A file of NT tensors, mapped (its pages not yet touched). */
static char *map_file(char *path) {
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)(NT * TBYTES)), 0);
    char *m = mmap(NULL, NT * TBYTES, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    assert_true(m != MAP_FAILED);
    return m;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_batches(void **state) {
    (void)state;
    char pb[] = "/tmp/alloy-prefetch-b-XXXXXX", px[] = "/tmp/alloy-prefetch-x-XXXXXX";
    char *mb = map_file(pb), *mx = map_file(px);
    st_tensor tb[NT], tx[NT];
    plan_input in[NT];
    plan_tensor pt[NT];
    for (int j = 0; j < NT; j++) {
        tb[j] = (st_tensor){.nbytes = TBYTES, .data = mb + (size_t)j * TBYTES};
        tx[j] = (st_tensor){.nbytes = TBYTES, .data = mx + (size_t)j * TBYTES};
        in[j] = (plan_input){.t = &tx[j]};
        pt[j] = (plan_tensor){.merge = true, .has_base = true, .base = {.t = &tb[j]}, .k = 1, .inputs = &in[j]};
    }
    merge_plan p = {.ntensors = NT, .tensors = pt};
    merge_prefetch *pf = merge_prefetch_start(&p, NULL, NT);
    assert_non_null(pf);
    size_t pages = TBYTES / (size_t)sysconf(_SC_PAGESIZE);
    for (int j = 0; j < NT; j++) {
        merge_prefetch_ready(pf, &p, NULL, j);
        assert_int_equal(present(tb[j].data, TBYTES), pages);
        assert_int_equal(present(tx[j].data, TBYTES), pages);
        merge_prefetch_done(pf, &p, NULL, j);
        if (j == 6) { /* 56 MiB done: below the batch, nothing goes */
            sleep_ms(100);
            assert_int_equal(present(tb[0].data, TBYTES), pages);
            assert_int_equal(present(tx[0].data, TBYTES), pages);
        }
        if (j == 7) { /* 64 MiB: the eight go, together */
            for (int w = 0; w < 500 && present(mb, 8 * TBYTES) + present(mx, 8 * TBYTES); w++) sleep_ms(10);
            assert_int_equal(present(mb, 8 * TBYTES), 0);
            assert_int_equal(present(mx, 8 * TBYTES), 0);
        }
    }
    merge_prefetch_stop(pf); /* the rest */
    assert_int_equal(present(mb, NT * TBYTES), 0);
    assert_int_equal(present(mx, NT * TBYTES), 0);
    munmap(mb, NT * TBYTES);
    munmap(mx, NT * TBYTES);
    unlink(pb);
    unlink(px);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
