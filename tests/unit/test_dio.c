/* test_dio.c — io/dio.c: files written with O_DIRECT from pieces at any
 * offset read back byte for byte: pieces in shuffled order from two
 * threads, forwards and backwards, one write larger than many slots,
 * files shorter than a block and of no bytes; several files whose open
 * runs hold every slot of the ring (the writes that find none go out on
 * their own); a stream of pieces going out in whole slots; two threads
 * completing one partial block at once; streams made in the ring itself
 * beside copied pieces; a byte written twice and a write past the end are
 * errors naming the file. */
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "io/dio.h"
#include "util/fs.h"
#include "util/rng.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-dio-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

static unsigned char byte_at(uint64_t seed, uint64_t i) { return (unsigned char)(rng_mix64(seed ^ (i * 0x9e37u)) >> 56); }

/* The file at path holds exactly size bytes, byte_at(seed, i) each. */
static void expect_file(const char *path, uint64_t size, uint64_t seed) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, size);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char buf[65536];
    uint64_t at = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, fp)) > 0) {
        for (size_t j = 0; j < got; j++)
            if (buf[j] != byte_at(seed, at + j)) fail_msg("%s: byte %llu differs", path, (unsigned long long)(at + j));
        at += got;
    }
    fclose(fp);
    assert_int_equal(at, size);
}

typedef struct piece {
    uint64_t off;
    size_t len;
} piece;

/* size bytes in pieces of 1..maxlen bytes, written in `order` (0 forwards,
 * 1 backwards, 2 shuffled) by `threads` threads. */
static void write_pieces(dio_pool *p, const char *name, uint64_t size, size_t maxlen, int order, int threads,
                         uint64_t seed) {
    char *path = fs_join(root, name);
    alloy_err err = {{0}};
    dio_file *f = dio_open(p, path, size, &err);
    assert_non_null(f);
    unsigned char *data = malloc(size + 1);
    for (uint64_t i = 0; i < size; i++) data[i] = byte_at(seed, i);
    size_t np = 0, cap = 16;
    piece *ps = malloc(cap * sizeof *ps);
    for (uint64_t at = 0, t = 0; at < size; t++) {
        size_t len = 1 + (size_t)(rng_mix64(seed + t) % maxlen);
        if (len > size - at) len = (size_t)(size - at);
        if (np == cap) ps = realloc(ps, (cap *= 2) * sizeof *ps);
        ps[np++] = (piece){at, len};
        at += len;
    }
    if (order == 1)
        for (size_t i = 0; i < np / 2; i++) {
            piece t = ps[i];
            ps[i] = ps[np - 1 - i], ps[np - 1 - i] = t;
        }
    if (order == 2)
        for (size_t i = np; i > 1; i--) {
            size_t j = (size_t)(rng_mix64(seed * 31 + i) % i);
            piece t = ps[i - 1];
            ps[i - 1] = ps[j], ps[j] = t;
        }
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : bad)
    for (size_t i = 0; i < np; i++) {
        alloy_err e = {{0}};
        bad |= dio_write(f, data + ps[i].off, ps[i].len, ps[i].off, &e) != 0;
    }
    assert_int_equal(bad, 0);
    assert_int_equal(dio_close(f, &err), 0);
    expect_file(path, size, seed);
    free(ps), free(data), free(path);
}

static void test_pieces(void **state) {
    (void)state;
    alloy_err err = {{0}};
    dio_pool *p = dio_pool_new(&err);
    assert_non_null(p);
    uint64_t big = 3 * DIO_SLOT + 12345;
    write_pieces(p, "fwd", big, 300000, 0, 1, 1);
    write_pieces(p, "back", big, 300000, 1, 1, 2);
    write_pieces(p, "shuf2", big, 300000, 2, 2, 3);
    write_pieces(p, "tiny-pieces", 200000, 700, 2, 2, 4);
    write_pieces(p, "one-write", 5 * DIO_SLOT + 77, 5 * DIO_SLOT + 77, 0, 1, 5);
    write_pieces(p, "short", 100, 40, 2, 2, 6);
    write_pieces(p, "block", DIO_BLOCK, 1000, 1, 1, 7);
    /* no bytes at all */
    char *path = fs_join(root, "empty");
    dio_file *f = dio_open(p, path, 0, &err);
    assert_non_null(f);
    assert_int_equal(dio_close(f, &err), 0);
    expect_file(path, 0, 0);
    free(path);
    dio_pool_free(p);
}

/* A stream of pieces of a bit under half a slot, at unaligned offsets (a
 * merge's stages),
 * forwards and then backwards: the runs fill whole slots, so the file goes
 * out in about one write per slot of bytes (a run opened in the middle of
 * its slot every time took one write per piece). */
static void test_runs_fill_slots(void **state) {
    (void)state;
    const uint64_t size = 12 * DIO_SLOT + 5000;
    const size_t len = DIO_SLOT / 2 - 3333;
    unsigned char *data = malloc(size);
    assert_non_null(data);
    for (uint64_t i = 0; i < size; i++) data[i] = byte_at(8, i);
    for (int back = 0; back < 2; back++) {
        alloy_err err = {{0}};
        dio_pool *p = dio_pool_new(&err);
        assert_non_null(p);
        char *path = fs_join(root, back ? "stream-back" : "stream-fwd");
        dio_file *f = dio_open(p, path, size, &err);
        assert_non_null(f);
        uint64_t npieces = (size + len - 1) / len;
        for (uint64_t k = 0; k < npieces; k++) {
            uint64_t i = back ? npieces - 1 - k : k;
            uint64_t off = i * len;
            size_t n = size - off < len ? (size_t)(size - off) : len;
            assert_int_equal(dio_write(f, data + off, n, off, &err), 0);
        }
        assert_int_equal(dio_close(f, &err), 0);
        uint64_t writes, bytes;
        dio_pool_stats(p, &writes, &bytes);
        dio_pool_free(p);
        expect_file(path, size, 8);
        free(path);
        /* every block once: the file rounded up to whole blocks */
        assert_int_equal(bytes, (size + DIO_BLOCK - 1) / DIO_BLOCK * DIO_BLOCK);
        /* 13 slots of bytes, two pieces to a slot; the stream's first run
         * starts in the middle of its slot */
        if (writes > 16) fail_msg("%s: %llu writes for %llu pieces", back ? "backwards" : "forwards",
                                  (unsigned long long)writes, (unsigned long long)npieces);
    }
    free(data);
}

/* Two threads that complete the same partial block at the same moment,
 * many times: the one that adds the last bytes writes and frees the block's
 * edge, and the other must not look at it again (under ASan a read after
 * that free fails the test; it once freed the edge twice). */
static void test_edge_race(void **state) {
    (void)state;
    alloy_err err = {{0}};
    dio_pool *p = dio_pool_new(&err);
    assert_non_null(p);
    uint64_t size = 3 * DIO_BLOCK;
    unsigned char *data = malloc(size);
    for (uint64_t i = 0; i < size; i++) data[i] = byte_at(8, i);
    char *path = fs_join(root, "race");
    for (int it = 0; it < 400; it++) {
        uint64_t cut = 1 + (uint64_t)it * 37 % (DIO_BLOCK - 1); /* inside the first block */
        dio_file *f = dio_open(p, path, size, &err);
        assert_non_null(f);
        int bad = 0;
#pragma omp parallel num_threads(2) reduction(| : bad)
        {
            alloy_err e = {{0}};
            int t = omp_get_thread_num();
#pragma omp barrier
            if (t == 0) bad |= dio_write(f, data, (size_t)cut, 0, &e) != 0;
            else bad |= dio_write(f, data + cut, (size_t)(size - cut), cut, &e) != 0;
        }
        assert_int_equal(bad, 0);
        assert_int_equal(dio_close(f, &err), 0);
    }
    expect_file(path, size, 8);
    free(path);
    free(data);
    dio_pool_free(p);
}

/* Eight files, each with separate stretches written (every stretch an open
 * run): 32 runs want the 16 slots, and the files only close at the end. */
static void test_starved(void **state) {
    (void)state;
    alloy_err err = {{0}};
    dio_pool *p = dio_pool_new(&err);
    assert_non_null(p);
    enum { NF = 8, NS = 4 };
    uint64_t size = NS * 2 * DIO_BLOCK * 64;
    size_t stretch = (size_t)(size / (2 * NS));
    dio_file *f[NF];
    char *path[NF];
    unsigned char *data = malloc(size);
    for (int i = 0; i < NF; i++) {
        char name[32];
        snprintf(name, sizeof name, "starve%d", i);
        path[i] = fs_join(root, name);
        assert_non_null(f[i] = dio_open(p, path[i], size, &err));
    }
    /* the even stretches of every file, then the odd ones */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NF; i++)
            for (int s = pass; s < 2 * NS; s += 2) {
                for (size_t j = 0; j < stretch; j++) data[j] = byte_at(100 + (uint64_t)i, s * stretch + j);
                assert_int_equal(dio_write(f[i], data, stretch, (uint64_t)s * stretch, &err), 0);
            }
    for (int i = 0; i < NF; i++) {
        assert_int_equal(dio_close(f[i], &err), 0);
        expect_file(path[i], size, 100 + (uint64_t)i);
        free(path[i]);
    }
    free(data);
    dio_pool_free(p);
}

static void test_errors(void **state) {
    (void)state;
    alloy_err err = {{0}};
    dio_pool *p = dio_pool_new(&err);
    assert_non_null(p);
    char *path = fs_join(root, "bad");
    dio_file *f = dio_open(p, path, 10000, &err);
    assert_non_null(f);
    unsigned char buf[8192] = {0};
    assert_int_equal(dio_write(f, buf, 100, 9950, &err), -1);
    assert_non_null(strstr(err.msg, "bad"));
    assert_non_null(strstr(err.msg, "past its size"));
    assert_int_equal(dio_write(f, buf, 3000, 0, &err), 0);
    assert_int_equal(dio_write(f, buf, 2000, 2500, &err), -1); /* block 0 gets 5000 of its 4096 bytes */
    assert_non_null(strstr(err.msg, "written twice"));
    dio_abort(f);
    free(path);
    /* a directory that is not there */
    path = fs_join(root, "no/such/file");
    errno = 0;
    assert_null(dio_open(p, path, 10, &err));
    assert_non_null(strstr(err.msg, "cannot create"));
    free(path);
    dio_pool_free(p);
}

/* Streams (dio_stream): two threads, each making its half of a file of
 * several slots in pieces of every size up to DIO_STREAM_MAX, its
 * stretches unaligned and broken twice (a jump ahead, the skipped bytes
 * then made as a stretch of their own), and a third part written with
 * dio_write: the file reads back byte for byte, every block is written
 * once, and a stretch goes out in about one write per slot (a slot's last
 * block carried on, not written twice). */
static void test_streams(void **state) {
    (void)state;
    alloy_err err = {{0}};
    dio_pool *p = dio_pool_new(&err);
    assert_non_null(p);
    const uint64_t size = 9 * DIO_SLOT + 777, third = size / 3 + 123;
    unsigned char *data = malloc(size);
    for (uint64_t i = 0; i < size; i++) data[i] = byte_at(21, i);
    char *path = fs_join(root, "streams");
    dio_file *f = dio_open(p, path, size, &err);
    assert_non_null(f);
    int bad = 0;
#pragma omp parallel num_threads(3) reduction(| : bad)
    {
        int t = omp_get_thread_num();
        uint64_t lo = (uint64_t)t * third, hi = t == 2 ? size : lo + third;
        alloy_err e = {{0}};
        if (t == 2) { /* the last third the copying way, in pieces */
            for (uint64_t at = lo; at < hi && !bad;) {
                size_t n = hi - at < 300001 ? (size_t)(hi - at) : 300001;
                bad |= dio_write(f, data + at, n, at, &e) != 0;
                at += n;
            }
        } else {
            dio_stream ds;
            dio_stream_init(&ds, f);
            /* [lo, jump) and [jump2, hi) in order, then [jump, jump2) */
            uint64_t jump = lo + DIO_SLOT + 5001, jump2 = jump + 3 * DIO_BLOCK + 17;
            uint64_t parts[3][2] = {{lo, jump}, {jump2, hi}, {jump, jump2}};
            for (int q = 0; q < 3 && !bad; q++)
                for (uint64_t at = parts[q][0], k = 0; at < parts[q][1] && !bad; k++) {
                    size_t n = 1 + (size_t)(rng_mix64(77 + k + 1000 * (uint64_t)t) % DIO_STREAM_MAX);
                    if (n > parts[q][1] - at) n = (size_t)(parts[q][1] - at);
                    char *room = dio_stream_room(&ds, at, n, &e);
                    if (!room) {
                        bad = 1;
                        break;
                    }
                    memcpy(room, data + at, n);
                    at += n;
                }
            if (!bad) bad |= dio_stream_end(&ds, &e) != 0;
            if (bad) print_error("stream %d: %s\n", t, e.msg);
        }
    }
    assert_int_equal(bad, 0);
    assert_int_equal(dio_close(f, &err), 0);
    uint64_t writes, bytes;
    dio_pool_stats(p, &writes, &bytes);
    dio_pool_free(p);
    expect_file(path, size, 21);
    assert_int_equal(bytes, (size + DIO_BLOCK - 1) / DIO_BLOCK * DIO_BLOCK);
    /* 10 slots of bytes: per stream about 4 slots and the breaks' blocks,
     * the copied third in its runs */
    if (writes > 30) fail_msg("%llu writes", (unsigned long long)writes);
    /* past the end, and more than a stream takes at once */
    p = dio_pool_new(&err);
    f = dio_open(p, path, 10000, &err);
    dio_stream ds;
    dio_stream_init(&ds, f);
    assert_null(dio_stream_room(&ds, 9000, 2000, &err));
    assert_non_null(strstr(err.msg, "past its size"));
    dio_abort(f);
    dio_pool_free(p);
    free(path);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_starved),
        cmocka_unit_test(test_runs_fill_slots),
        cmocka_unit_test(test_edge_race),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
