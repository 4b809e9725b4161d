/* test_prefetch.c — merge/prefetch.c on two files' mappings (a base and a
 * model, 12 tensors of 4 MiB each): every tensor's input pages are mapped
 * when merge_prefetch_ready returns; the done ones stay mapped until 64 MiB
 * of inputs are done (eight tensors: seven are not dropped), are then
 * dropped as one batch, and whatever is left goes at the stop; the tensors
 * after the one asked for are mapped ahead up to 64 MiB of inputs, and no
 * further; a drop longer than a slice (two tensors of 48 MiB) goes whole;
 * tensors done out of order (the executor's two lanes) are dropped as
 * they are done, not when those before them are; tensors the caller maps
 * itself (merge_prefetch_start_from) are never mapped by the helper; a
 * drop ends on a multiple of 2 MiB, the rest kept for the next.
 * Mapped means present in /proc/self/pagemap. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
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

#define HUGE ((size_t)2 << 20)

/* A file of nt tensors of tbytes each, mapped at a multiple of 2 MiB, as
 * the kernel places a large file's mapping (its pages not yet touched). */
static char *map_file_of(char *path, int nt, size_t tbytes) {
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = (size_t)nt * tbytes;
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    char *room = mmap(NULL, len + HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(room != MAP_FAILED);
    char *at = (char *)(((uintptr_t)room + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    char *m = mmap(at, len, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    close(fd);
    assert_true(m == at);
    if (at > room) munmap(room, (size_t)(at - room));
    size_t tail = (size_t)(room + len + HUGE - (at + len));
    if (tail) munmap(at + len, tail);
    return m;
}

static char *map_file(char *path) { return map_file_of(path, NT, TBYTES); }

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

/* Waits up to 5 s for want (true: all, false: none) of [p, p + len) to be
 * present; returns what is. */
static size_t wait_present(const void *p, size_t len, bool want) {
    size_t pages = len / (size_t)sysconf(_SC_PAGESIZE), got = present(p, len);
    for (int w = 0; w < 500 && (want ? got < pages : got > 0); w++) {
        sleep_ms(10);
        got = present(p, len);
    }
    return got;
}

/* One base + one model, nt tensors of tbytes each, over files pb, px. */
typedef struct two_files {
    char pb[40], px[40];
    char *mb, *mx;
    st_tensor tb[NT], tx[NT];
    plan_input in[NT];
    plan_tensor pt[NT];
    merge_plan p;
    int nt;
    size_t tbytes;
} two_files;

static void two_files_open(two_files *f, int nt, size_t tbytes) {
    snprintf(f->pb, sizeof f->pb, "/tmp/alloy-prefetch-b-XXXXXX");
    snprintf(f->px, sizeof f->px, "/tmp/alloy-prefetch-x-XXXXXX");
    f->mb = map_file_of(f->pb, nt, tbytes), f->mx = map_file_of(f->px, nt, tbytes);
    f->nt = nt, f->tbytes = tbytes;
    for (int j = 0; j < nt; j++) {
        f->tb[j] = (st_tensor){.nbytes = tbytes, .data = f->mb + (size_t)j * tbytes};
        f->tx[j] = (st_tensor){.nbytes = tbytes, .data = f->mx + (size_t)j * tbytes};
        f->in[j] = (plan_input){.t = &f->tx[j]};
        f->pt[j] = (plan_tensor){
            .merge = true, .has_base = true, .base = {.t = &f->tb[j]}, .k = 1, .inputs = &f->in[j]};
    }
    f->p = (merge_plan){.ntensors = nt, .tensors = f->pt};
}

static void two_files_close(two_files *f) {
    munmap(f->mb, (size_t)f->nt * f->tbytes);
    munmap(f->mx, (size_t)f->nt * f->tbytes);
    unlink(f->pb);
    unlink(f->px);
}

/* Two files of NT tensors of TBYTES, and a prefetcher on them. */
static merge_prefetch *start_on(two_files *f) {
    two_files_open(f, NT, TBYTES);
    merge_prefetch *pf = merge_prefetch_start(&f->p, NULL, NT);
    assert_non_null(pf);
    return pf;
}

static void test_ahead(void **state) {
    (void)state;
    two_files f;
    merge_prefetch *pf = start_on(&f);
    size_t pages = TBYTES / (size_t)sysconf(_SC_PAGESIZE);
    for (int j = 0; j < 2; j++) {
        merge_prefetch_ready(pf, &f.p, NULL, j);
        /* the eight after j: 64 MiB of inputs */
        assert_int_equal(wait_present(f.tx[j + 8].data, TBYTES, true), pages);
        assert_int_equal(wait_present(f.tb[j + 8].data, TBYTES, true), pages);
        for (int a = j + 1; a <= j + 8; a++) {
            assert_int_equal(present(f.tb[a].data, TBYTES), pages);
            assert_int_equal(present(f.tx[a].data, TBYTES), pages);
        }
        sleep_ms(100); /* and not the ninth */
        assert_int_equal(present(f.tb[j + 9].data, TBYTES), 0);
        assert_int_equal(present(f.tx[j + 9].data, TBYTES), 0);
        merge_prefetch_done(pf, &f.p, NULL, j);
    }
    merge_prefetch_stop(pf);
    /* the two done ones went at the stop; those mapped ahead stay mapped */
    assert_int_equal(present(f.mb, 2 * TBYTES) + present(f.mx, 2 * TBYTES), 0);
    assert_int_equal(present(f.tx[2].data, TBYTES), pages);
    two_files_close(&f);
}

static void test_long_drop(void **state) {
    (void)state;
    const size_t big = (size_t)48 << 20; /* 96 MiB of inputs each: a batch, in slices */
    two_files f;
    two_files_open(&f, 2, big);
    merge_prefetch *pf = merge_prefetch_start(&f.p, NULL, 2);
    assert_non_null(pf);
    size_t pages = big / (size_t)sysconf(_SC_PAGESIZE);
    merge_prefetch_ready(pf, &f.p, NULL, 0);
    assert_int_equal(present(f.tb[0].data, big), pages);
    assert_int_equal(present(f.tx[0].data, big), pages);
    merge_prefetch_done(pf, &f.p, NULL, 0);
    assert_int_equal(wait_present(f.tb[0].data, big, false), 0);
    assert_int_equal(wait_present(f.tx[0].data, big, false), 0);
    merge_prefetch_ready(pf, &f.p, NULL, 1);
    assert_int_equal(present(f.tb[1].data, big), pages);
    assert_int_equal(present(f.tx[1].data, big), pages);
    merge_prefetch_done(pf, &f.p, NULL, 1);
    merge_prefetch_stop(pf);
    assert_int_equal(present(f.mb, 2 * big) + present(f.mx, 2 * big), 0);
    two_files_close(&f);
}

static void test_huge_ends(void **state) {
    (void)state;
    const size_t tb = (size_t)3 << 20; /* 3 MiB tensors: every other one ends inside a 2 MiB page */
    two_files f;
    two_files_open(&f, NT, tb);
    merge_prefetch *pf = merge_prefetch_start(&f.p, NULL, NT);
    assert_non_null(pf);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int j = 0; j <= 10; j++) {
        merge_prefetch_ready(pf, &f.p, NULL, j);
        merge_prefetch_done(pf, &f.p, NULL, j);
    }
    /* 11 done, 66 MiB: a batch, dropped up to 32 MiB; the last 1 MiB of
     * tensor 10 waits, and the 2 MiB page that holds it stays whole */
    assert_int_equal(wait_present(f.mb, (size_t)32 << 20, false), 0);
    assert_int_equal(wait_present(f.mx, (size_t)32 << 20, false), 0);
    sleep_ms(100);
    assert_int_equal(present(f.mb + ((size_t)32 << 20), (size_t)1 << 20), ((size_t)1 << 20) / page);
    assert_int_equal(present(f.mx + ((size_t)32 << 20), (size_t)1 << 20), ((size_t)1 << 20) / page);
    merge_prefetch_ready(pf, &f.p, NULL, 11);
    merge_prefetch_done(pf, &f.p, NULL, 11);
    merge_prefetch_stop(pf); /* the rest, the part left included */
    assert_int_equal(present(f.mb, NT * tb) + present(f.mx, NT * tb), 0);
    two_files_close(&f);
}

static void test_out_of_order(void **state) {
    (void)state;
    two_files f;
    merge_prefetch *pf = start_on(&f);
    size_t pages = TBYTES / (size_t)sysconf(_SC_PAGESIZE);
    merge_prefetch_ready(pf, &f.p, NULL, 0); /* 0 stays in work (the other lane) */
    for (int j = 1; j <= 8; j++) {
        merge_prefetch_ready(pf, &f.p, NULL, j);
        assert_int_equal(present(f.tx[j].data, TBYTES), pages);
        merge_prefetch_done(pf, &f.p, NULL, j);
        if (j == 7) { /* 56 MiB done: kept */
            sleep_ms(100);
            assert_int_equal(present(f.tb[1].data, TBYTES), pages);
        }
    }
    /* 1-8 done (64 MiB): dropped while 0 is not done, and 0 kept */
    assert_int_equal(wait_present(f.tb[1].data, 8 * TBYTES, false), 0);
    assert_int_equal(wait_present(f.tx[1].data, 8 * TBYTES, false), 0);
    assert_int_equal(present(f.tb[0].data, TBYTES), pages);
    assert_int_equal(present(f.tx[0].data, TBYTES), pages);
    merge_prefetch_done(pf, &f.p, NULL, 0);
    merge_prefetch_stop(pf); /* 0 at the stop */
    assert_int_equal(present(f.tb[0].data, TBYTES) + present(f.tx[0].data, TBYTES), 0);
    two_files_close(&f);
}

static void test_own(void **state) {
    (void)state;
    two_files f;
    two_files_open(&f, NT, TBYTES);
    merge_prefetch *pf = merge_prefetch_start_from(&f.p, NULL, NT, 1);
    assert_non_null(pf);
    size_t pages = TBYTES / (size_t)sysconf(_SC_PAGESIZE);
    merge_prefetch_ready(pf, &f.p, NULL, 1); /* the other lane's: mapped by the helper */
    assert_int_equal(present(f.tb[1].data, TBYTES), pages);
    assert_int_equal(present(f.tx[1].data, TBYTES), pages);
    merge_prefetch_ready(pf, &f.p, NULL, 0); /* the caller's: at once, and not by the helper */
    sleep_ms(100);
    assert_int_equal(present(f.tb[0].data, TBYTES) + present(f.tx[0].data, TBYTES), 0);
    merge_advise_tensor(&f.pt[0], MADV_POPULATE_READ);
    assert_int_equal(present(f.tx[0].data, TBYTES), pages);
    merge_prefetch_done(pf, &f.p, NULL, 1);
    merge_prefetch_done(pf, &f.p, NULL, 0);
    merge_prefetch_stop(pf); /* both done: both dropped */
    assert_int_equal(present(f.mb, 2 * TBYTES) + present(f.mx, 2 * TBYTES), 0);
    two_files_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_ahead),
        cmocka_unit_test(test_long_drop),
        cmocka_unit_test(test_huge_ends),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_own),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
