/* test_safetensors.c — the safetensors reader and writer (src/io/safetensors.c):
 * write -> read round trips (single file and sharded with an index), a
 * hand-built file in the real format, and every validation failure the
 * reader promises, each checked for a message naming the file (and tensor). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "util/dtype.h"
#include "util/fs.h"

static char root[64];

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-st-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

/* A fresh directory root/name; the caller frees it. */
static char *subdir(const char *name) {
    char *d = fs_join(root, name);
    assert_int_equal(fs_mkdirs(d, NULL), 0);
    return d;
}

/* Write dir/name as: 8-byte little-endian hlen, header text, data. */
static char *write_st_len(const char *dir, const char *name, uint64_t hlen, const char *header, const void *data,
                          size_t dlen) {
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + dlen + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, n);
    if (dlen) memcpy(buf + 8 + n, data, dlen);
    char *path = fs_join(dir, name);
    assert_int_equal(fs_write_file(path, buf, 8 + n + dlen, NULL), 0);
    free(buf);
    return path;
}

static char *write_st(const char *dir, const char *name, const char *header, const void *data, size_t dlen) {
    return write_st_len(dir, name, strlen(header), header, data, dlen);
}

/* Opening path (a file, or a directory when is_dir) fails, leaves the model
 * zeroed, and the message contains each of the given strings. */
static void expect_open_fail(const char *path, bool is_dir, const char *want1, const char *want2) {
    st_model m;
    alloy_err err = {{0}};
    memset(&m, 0x5a, sizeof m);
    int rc = is_dir ? st_open_dir(&m, path, &err) : st_open_file(&m, path, &err);
    if (getenv("ST_TEST_VERBOSE")) printf("  %s\n", err.msg);
    if (rc != -1 || !strstr(err.msg, path) || (want1 && !strstr(err.msg, want1)) || (want2 && !strstr(err.msg, want2)))
        print_error("path %s\nmessage: %s\nwanted: '%s' and '%s'\n", path, err.msg, want1 ? want1 : "",
                    want2 ? want2 : "");
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err.msg, path));
    if (want1) assert_non_null(strstr(err.msg, want1));
    if (want2) assert_non_null(strstr(err.msg, want2));
    assert_null(strchr(err.msg, '\n'));
    assert_int_equal(m.ntensors, 0);
    assert_int_equal(m.nfiles, 0);
    assert_null(m.files);
    assert_null(m.tensors);
    assert_null(m.slots);
    assert_null(m.source);
    st_close(&m); /* zeroed: harmless */
}

/* ---- round trips ---- */

enum { NSPEC = 7 };

static void make_specs(st_spec *s) {
    memset(s, 0, sizeof *s * NSPEC);
    s[0] = (st_spec){.name = "model.embed_tokens.weight", .dtype = ALLOY_F32, .ndim = 2, .shape = {3, 4}};
    s[1] = (st_spec){.name = "bf", .dtype = ALLOY_BF16, .ndim = 1, .shape = {5}};
    s[2] = (st_spec){.name = "half", .dtype = ALLOY_F16, .ndim = 3, .shape = {1, 2, 3}};
    s[3] = (st_spec){.name = "ids", .dtype = ALLOY_I64, .ndim = 1, .shape = {4}};
    s[4] = (st_spec){.name = "bytes", .dtype = ALLOY_U8, .ndim = 1, .shape = {7}};
    s[5] = (st_spec){.name = "scalar", .dtype = ALLOY_F32, .ndim = 0};
    s[6] = (st_spec){.name = "empty", .dtype = ALLOY_F32, .ndim = 2, .shape = {0, 4}};
}

static const size_t SPEC_BYTES[NSPEC] = {48, 10, 12, 32, 7, 4, 0};

static void fill(unsigned char *p, size_t n, int seed) {
    for (size_t k = 0; k < n; k++) p[k] = (unsigned char)(seed * 37 + k * 11 + 1);
}

/* Write the specs into dir with the budget, putting tensors in reverse
 * order from several threads; returns the shard count. */
static int write_model(const char *dir, uint64_t budget) {
    st_spec s[NSPEC];
    make_specs(s);
    alloy_err err = {{0}};
    st_writer *w = st_writer_open(dir, s, NSPEC, budget, &err);
    if (!w) print_error("%s\n", err.msg);
    assert_non_null(w);
    int nshards = st_writer_nshards(w), fails = 0;
#pragma omp parallel for num_threads(3) reduction(+ : fails)
    for (int i = NSPEC - 1; i >= 0; i--) {
        unsigned char buf[64];
        alloy_err e;
        fill(buf, SPEC_BYTES[i], i);
        fails += st_writer_put(w, i, SPEC_BYTES[i] ? buf : NULL, &e) != 0;
    }
    assert_int_equal(fails, 0);
    if (st_writer_finish(w, &err)) print_error("%s\n", err.msg);
    return nshards;
}

static void check_model(const st_model *m) {
    st_spec s[NSPEC];
    make_specs(s);
    assert_int_equal(m->ntensors, NSPEC);
    for (int i = 0; i < NSPEC; i++) {
        const st_tensor *t = st_find(m, s[i].name);
        assert_non_null(t);
        assert_string_equal(t->name, s[i].name);
        assert_int_equal(t->dtype, s[i].dtype);
        assert_int_equal(t->ndim, s[i].ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], s[i].shape[d]);
        assert_int_equal(t->nbytes, SPEC_BYTES[i]);
        assert_true(t->file >= 0 && t->file < m->nfiles);
        unsigned char want[64];
        fill(want, SPEC_BYTES[i], i);
        if (t->nbytes) assert_memory_equal(t->data, want, t->nbytes);
        const unsigned char *base = m->files[t->file].map;
        assert_true((const unsigned char *)t->data >= base &&
                    (const unsigned char *)t->data + t->nbytes <= base + m->files[t->file].size);
    }
    assert_int_equal(st_find(m, "scalar")->numel, 1);
    assert_int_equal(st_find(m, "empty")->numel, 0);
    assert_int_equal(st_find(m, "model.embed_tokens.weight")->numel, 12);
    assert_null(st_find(m, "nope"));
    assert_null(st_find(m, "bf "));
    assert_null(st_find(m, ""));
}

/* The header length of a file, checking 8 + N is a multiple of
 * ST_DATA_ALIGN (so of the format's 8). */
static uint64_t header_len(const char *path) {
    size_t len;
    char *buf = fs_read_file(path, &len, NULL);
    assert_non_null(buf);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)buf[i];
    assert_true(8 + n <= len);
    assert_int_equal((8 + n) % ST_DATA_ALIGN, 0);
    assert_int_equal(buf[8], '{');
    free(buf);
    return n;
}

static void test_round_trip_single(void **state) {
    (void)state;
    char *dir = subdir("single");
    assert_int_equal(write_model(dir, 0), 1);
    char *file = fs_join(dir, "model.safetensors"), *index = fs_join(dir, "model.safetensors.index.json");
    assert_true(fs_is_file(file));
    assert_false(fs_exists(index));
    header_len(file);

    st_model m;
    alloy_err err = {{0}};
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    assert_int_equal(m.nfiles, 1);
    assert_string_equal(m.source, dir);
    check_model(&m);
    /* tensors are in file order, which for our writer is spec order */
    st_spec s[NSPEC];
    make_specs(s);
    for (int i = 0; i < NSPEC; i++) assert_string_equal(m.tensors[i].name, s[i].name);
    st_close(&m);
    assert_int_equal(m.ntensors, 0);
    assert_null(m.files);
    st_close(&m); /* twice is fine */

    assert_int_equal(st_open_file(&m, file, &err), 0);
    assert_string_equal(m.source, file);
    check_model(&m);
    st_close(&m);

    /* a big enough budget also gives one shard */
    char *dir2 = subdir("single-budget");
    assert_int_equal(write_model(dir2, 113), 1);
    free(dir2);
    free(file);
    free(index);
    free(dir);
}

static void test_round_trip_sharded(void **state) {
    (void)state;
    char *dir = subdir("sharded");
    /* budget 40: [emb 48 alone, over budget] [bf 10 + half 12] [ids 32 + bytes 7] [scalar 4 + empty 0] */
    assert_int_equal(write_model(dir, 40), 4);
    static const char *files[4] = {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                   "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
    static const int shard_of[NSPEC] = {0, 1, 1, 2, 2, 3, 3};
    for (int k = 0; k < 4; k++) {
        char *p = fs_join(dir, files[k]);
        assert_true(fs_is_file(p));
        header_len(p);
        free(p);
    }
    char *single = fs_join(dir, "model.safetensors");
    assert_false(fs_exists(single));
    free(single);

    char *index = fs_join(dir, "model.safetensors.index.json");
    char *text = fs_read_file(index, NULL, NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    const cJSON *total = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size");
    assert_true(cJSON_IsNumber(total));
    assert_true(total->valuedouble == 113.0);
    const cJSON *wm = cJSON_GetObjectItem(j, "weight_map"), *e;
    assert_int_equal(cJSON_GetArraySize(wm), NSPEC);
    st_spec s[NSPEC];
    make_specs(s);
    const char *prev = "";
    cJSON_ArrayForEach(e, wm) {
        assert_true(strcmp(prev, e->string) < 0); /* keys sorted */
        prev = e->string;
        int i = 0;
        while (i < NSPEC && strcmp(s[i].name, e->string) != 0) i++;
        assert_true(i < NSPEC);
        assert_string_equal(e->valuestring, files[shard_of[i]]);
    }
    cJSON_Delete(j);
    free(text);

    st_model m;
    alloy_err err = {{0}};
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    assert_int_equal(m.nfiles, 4);
    check_model(&m);
    for (int i = 0; i < NSPEC; i++) {
        const st_tensor *t = st_find(&m, s[i].name);
        assert_non_null(strstr(m.files[t->file].path, files[shard_of[i]]));
    }
    st_close(&m);

    /* preloaded (read into anonymous memory) opens the same tensors, byte for byte */
    st_model mp;
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    assert_int_equal(st_open_dir_ex(&mp, dir, ST_OPEN_PRELOAD, &err), 0);
    assert_int_equal(mp.flags, ST_OPEN_PRELOAD);
    check_model(&mp);
    assert_int_equal(mp.ntensors, m.ntensors);
    for (int i = 0; i < m.ntensors; i++) {
        const st_tensor *a = &m.tensors[i], *b = st_find(&mp, a->name);
        assert_non_null(b);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_true(a->data != b->data);
        if (a->nbytes) assert_memory_equal(a->data, b->data, a->nbytes);
    }
    st_close(&mp);
    st_close(&m);

    /* a shard on its own opens as a plain file */
    char *p = fs_join(dir, files[1]);
    assert_int_equal(st_open_file(&m, p, &err), 0);
    assert_int_equal(m.ntensors, 2);
    assert_non_null(st_find(&m, "bf"));
    assert_null(st_find(&m, "ids"));
    st_close(&m);
    free(p);
    free(index);
    free(dir);
}

/* Many tensors: the name hash grows and every name is still found. */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 1000 };
    char *dir = subdir("many");
    st_spec *s = calloc(N, sizeof *s);
    char(*names)[32] = calloc(N, sizeof *names);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.weight", i);
        s[i] = (st_spec){.name = names[i], .dtype = ALLOY_BF16, .ndim = 1, .shape = {i % 3}};
    }
    alloy_err err = {{0}};
    st_writer *w = st_writer_open(dir, s, N, 0, &err);
    assert_non_null(w);
    for (int i = 0; i < N; i++) {
        uint16_t v[2] = {(uint16_t)i, (uint16_t)(i + 1)};
        assert_int_equal(st_writer_put(w, i, v, &err), 0);
    }
    assert_int_equal(st_writer_finish(w, &err), 0);
    st_model m;
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    assert_int_equal(m.ntensors, N);
    assert_true(m.nslots >= 2 * N);
    for (int i = 0; i < N; i++) {
        const st_tensor *t = st_find(&m, names[i]);
        assert_non_null(t);
        assert_int_equal(t - m.tensors, i);
        assert_int_equal(t->numel, i % 3);
        if (t->numel) {
            uint16_t v;
            memcpy(&v, t->data, 2);
            assert_int_equal(v, (uint16_t)i);
        }
    }
    st_close(&m);
    free(names);
    free(s);
    free(dir);
}

/* ---- the real format, written by hand ---- */

static void test_golden_file(void **state) {
    (void)state;
    char *dir = subdir("golden");
    /* As the Hugging Face library lays it out: header keys in data order,
     * offsets relative to the end of the header, little-endian data. */
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                      "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[22,30]},"
                      "\"d\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[30,34]}}   ";
    static const unsigned char data[34] = {
        0x00, 0x00, 0x80, 0x3f, /* 1.0f */
        0x00, 0x00, 0x20, 0xc0, /* -2.5f */
        0x00, 0x00, 0x00, 0x3f, /* 0.5f */
        0x00, 0xff, 0x7f, 0x47, /* 65535.0f */
        0x80, 0x3f,             /* bf16 1.0 */
        0x20, 0xc0,             /* bf16 -2.5 */
        0x80, 0x7f,             /* bf16 +inf */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x81, /* i64 */
        0xff, 0x7b,             /* f16 65504 */
        0x01, 0x00,             /* f16 2^-24 */
    };
    char *path = write_st(dir, "model.safetensors", hdr, data, sizeof data);
    st_model m;
    alloy_err err = {{0}};
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    assert_int_equal(m.ntensors, 4);
    const st_tensor *a = st_find(&m, "a"), *b = st_find(&m, "b"), *c = st_find(&m, "c"), *d = st_find(&m, "d");
    assert_true(a && b && c && d);
    assert_int_equal(a->dtype, ALLOY_F32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 2);
    assert_int_equal(a->numel, 4);
    assert_int_equal(a->nbytes, 16);
    float f[4];
    memcpy(f, a->data, 16);
    assert_true(f[0] == 1.0f && f[1] == -2.5f && f[2] == 0.5f && f[3] == 65535.0f);
    assert_ptr_equal(a->data, (const char *)m.files[0].map + 8 + strlen(hdr));

    assert_int_equal(b->dtype, ALLOY_BF16);
    assert_int_equal(b->ndim, 1);
    assert_int_equal(b->shape[0], 3);
    float g[3];
    assert_int_equal(dtype_to_f32(b->data, b->dtype, g, 3), 2); /* the inf */
    assert_true(g[0] == 1.0f && g[1] == -2.5f);

    assert_int_equal(c->dtype, ALLOY_I64);
    assert_int_equal(c->ndim, 0);
    assert_int_equal(c->numel, 1);
    assert_int_equal(c->nbytes, 8);
    int64_t v;
    memcpy(&v, c->data, 8);
    assert_true(v == (int64_t)0x8102030405060708ull);

    assert_int_equal(d->dtype, ALLOY_F16);
    assert_int_equal(d->shape[1], 2);
    float h[2];
    assert_int_equal(dtype_to_f32(d->data, d->dtype, h, 2), -1);
    assert_true(h[0] == 65504.0f && h[1] == 0x1p-24f);
    st_close(&m);
    free(path);
    free(dir);
}

/* Our writer emits exactly the bytes the format prescribes. */
static void test_writer_bytes(void **state) {
    (void)state;
    char *dir = subdir("writer-bytes");
    st_spec s[2] = {{.name = "w", .dtype = ALLOY_F16, .ndim = 1, .shape = {2}},
                    {.name = "s", .dtype = ALLOY_I64, .ndim = 0}};
    alloy_err err = {{0}};
    st_writer *w = st_writer_open(dir, s, 2, 1000, &err);
    assert_non_null(w);
    uint16_t wv[2] = {0x3c00, 0xc100};
    int64_t sv = -3;
    assert_int_equal(st_writer_put(w, 1, &sv, &err), 0);
    assert_int_equal(st_writer_put(w, 0, wv, &err), 0);
    assert_int_equal(st_writer_finish(w, &err), 0);

    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                       "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[4,12]}}";
    size_t n = strlen(json), pad = (ST_DATA_ALIGN - (8 + n) % ST_DATA_ALIGN) % ST_DATA_ALIGN; /* data on a line */
    size_t len;
    char *path = fs_join(dir, "model.safetensors");
    unsigned char *buf = (unsigned char *)fs_read_file(path, &len, NULL);
    assert_non_null(buf);
    assert_int_equal(len, 8 + n + pad + 12);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | buf[i];
    assert_int_equal(hl, n + pad);
    assert_memory_equal(buf + 8, json, n);
    for (size_t i = 0; i < pad; i++) assert_int_equal(buf[8 + n + i], ' ');
    assert_memory_equal(buf + 8 + n + pad, wv, 4);
    assert_memory_equal(buf + 8 + n + pad + 4, &sv, 8);
    free(buf);
    free(path);
    free(dir);
}

static void test_writer_errors(void **state) {
    (void)state;
    char *dir = subdir("writer-errors");
    alloy_err err = {{0}};
    /* a tensor never put is named at finish */
    st_spec s[2] = {{.name = "x", .dtype = ALLOY_F32, .ndim = 1, .shape = {2}},
                    {.name = "missing.tensor", .dtype = ALLOY_F32, .ndim = 1, .shape = {1}}};
    st_writer *w = st_writer_open(dir, s, 2, 0, &err);
    assert_non_null(w);
    float v[2] = {1, 2};
    assert_int_equal(st_writer_put(w, 0, v, &err), 0);
    assert_int_equal(st_writer_put(w, 2, v, &err), -1);
    assert_int_equal(st_writer_finish(w, &err), -1);
    assert_non_null(strstr(err.msg, "'missing.tensor'"));
    assert_non_null(strstr(err.msg, "model.safetensors"));

    /* duplicate names, negative dims, bad dtype are refused up front */
    s[1].name = "x";
    assert_null(st_writer_open(dir, s, 2, 0, &err));
    assert_non_null(strstr(err.msg, "'x'"));
    s[1].name = "y";
    s[1].shape[0] = -1;
    assert_null(st_writer_open(dir, s, 2, 0, &err));
    assert_non_null(strstr(err.msg, "'y'"));
    s[1].shape[0] = 1;
    s[1].dtype = ALLOY_DTYPE_COUNT;
    assert_null(st_writer_open(dir, s, 2, 0, &err));
    assert_non_null(strstr(err.msg, "'y'"));
    /* abort leaves files behind but frees everything (ASan checks) */
    s[1].dtype = ALLOY_F32;
    w = st_writer_open(dir, s, 2, 0, &err);
    assert_non_null(w);
    st_writer_abort(w);
    st_writer_abort(NULL);
    /* a directory that does not exist */
    char *nodir = fs_join(dir, "no/such");
    assert_null(st_writer_open(nodir, s, 2, 0, &err));
    assert_non_null(strstr(err.msg, nodir));
    free(nodir);
    free(dir);
}

/* Parts of a tensor written out of order (as the streaming merge's threads
 * do) give the same file; a part past the end is refused, and a tensor is
 * only complete once marked done. */
static void test_writer_parts(void **state) {
    (void)state;
    char *dir = subdir("writer-parts");
    st_spec s[1] = {{.name = "t", .dtype = ALLOY_F32, .ndim = 1, .shape = {1000}}};
    alloy_err err = {{0}};
    st_writer *w = st_writer_open(dir, s, 1, 0, &err);
    assert_non_null(w);
    float v[1000];
    for (int i = 0; i < 1000; i++) v[i] = (float)i * 0.5f;
    assert_int_equal(st_writer_put_part(w, 0, 2400, v + 600, 1600, &err), 0);
    assert_int_equal(st_writer_put_part(w, 0, 0, v, 1200, &err), 0);
    assert_int_equal(st_writer_put_part(w, 0, 1200, v + 300, 1200, &err), 0);
    assert_int_equal(st_writer_put_part(w, 0, 3900, v, 200, &err), -1);
    assert_non_null(strstr(err.msg, "'t'"));
    assert_int_equal(st_writer_put_part(w, 1, 0, v, 4, &err), -1);
    st_writer_mark_done(w, 0);
    assert_int_equal(st_writer_finish(w, &err), 0);
    st_model m;
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    const st_tensor *t = st_find(&m, "t");
    assert_non_null(t);
    assert_memory_equal(t->data, v, sizeof v);
    st_close(&m);

    w = st_writer_open(dir, s, 1, 0, &err); /* parts without mark_done: incomplete */
    assert_non_null(w);
    assert_int_equal(st_writer_put_part(w, 0, 0, v, 4000, &err), 0);
    assert_int_equal(st_writer_finish(w, &err), -1);
    assert_non_null(strstr(err.msg, "'t'"));
    free(dir);
}

/* An output large enough for the writeback flusher (2 x 32 MiB), in two
 * shards, written out of order: every byte reads back; and a writer
 * abandoned while its flusher runs stops cleanly (ASan: no leak, no race on
 * a closed descriptor). */
static void test_writer_flusher(void **state) {
    (void)state;
    char *dir = subdir("writer-flusher");
    enum { N = 6 << 20 };
    st_spec s[3] = {{.name = "a", .dtype = ALLOY_F32, .ndim = 2, .shape = {N / 1024, 1024}},
                    {.name = "b", .dtype = ALLOY_F32, .ndim = 1, .shape = {N}},
                    {.name = "c", .dtype = ALLOY_F32, .ndim = 1, .shape = {N}}};
    float *v = malloc(3 * (size_t)N * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < 3 * (size_t)N; i++) v[i] = (float)(i % 100003) - 7.0f;
    alloy_err err = {{0}};
    st_writer *w = st_writer_open(dir, s, 3, 60000000, &err);
    assert_non_null(w);
    assert_int_equal(st_writer_nshards(w), 2);
    assert_int_equal(st_writer_put(w, 1, v + N, &err), 0);
    assert_int_equal(st_writer_put(w, 2, v + 2 * (size_t)N, &err), 0);
    for (size_t off = 0; off < (size_t)N * 4; off += (size_t)1 << 20) /* a in 1 MiB parts, the last first */
        assert_int_equal(st_writer_put_part(w, 0, (size_t)N * 4 - off - ((size_t)1 << 20),
                                            (char *)v + (size_t)N * 4 - off - ((size_t)1 << 20), (size_t)1 << 20, &err),
                         0);
    st_writer_mark_done(w, 0);
    assert_int_equal(st_writer_finish(w, &err), 0);
    st_model m;
    assert_int_equal(st_open_dir(&m, dir, &err), 0);
    for (int i = 0; i < 3; i++) {
        const st_tensor *t = st_find(&m, s[i].name);
        assert_non_null(t);
        assert_int_equal(t->nbytes, (size_t)N * 4);
        assert_memory_equal(t->data, v + (size_t)i * N, (size_t)N * 4);
    }
    st_close(&m);

    char *dir2 = subdir("writer-flusher-abort");
    w = st_writer_open(dir2, s, 3, 0, &err);
    assert_non_null(w);
    assert_int_equal(st_writer_put(w, 0, v, &err), 0);
    assert_int_equal(st_writer_put(w, 1, v + N, &err), 0);
    st_writer_abort(w);
    free(dir2);
    free(v);
    free(dir);
}

/* ---- validation failures ---- */

static const char F32x1_AT_0[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";

static void test_bad_files(void **state) {
    (void)state;
    char *dir = subdir("bad");
    unsigned char data[128] = {0};
    char *p;

    p = fs_join(dir, "short.safetensors"); /* shorter than the length prefix */
    assert_int_equal(fs_write_file(p, "\x04\0\0", 3, NULL), 0);
    expect_open_fail(p, false, "too short", NULL);
    free(p);

    p = fs_join(dir, "absent.safetensors");
    expect_open_fail(p, false, NULL, NULL);
    free(p);

    p = write_st_len(dir, "past-eof.safetensors", 1000, F32x1_AT_0, data, 4);
    expect_open_fail(p, false, "header length 1000", "past the end");
    free(p);

    p = write_st_len(dir, "huge.safetensors", 200000000, F32x1_AT_0, data, 4);
    expect_open_fail(p, false, "200000000", "100 MB");
    free(p);

    p = write_st(dir, "truncated.safetensors", F32x1_AT_0, data, 3); /* data cut */
    expect_open_fail(p, false, "tensor 'a'", "past the end of the data region");
    free(p);

    p = write_st(dir, "malformed.safetensors", "{\"a\":{\"dtype\":\"F32\",", data, 4);
    expect_open_fail(p, false, "not valid JSON", NULL);
    free(p);

    p = write_st(dir, "garbage-after.safetensors", "{}x", data, 0);
    expect_open_fail(p, false, "not valid JSON", NULL);
    free(p);

    p = write_st(dir, "array.safetensors", "[1,2]", data, 0);
    expect_open_fail(p, false, "not a JSON object", NULL);
    free(p);

    p = write_st(dir, "span.safetensors",
                 "{\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[4,5],\"data_offsets\":[0,100]}}",
                 data, 100);
    expect_open_fail(p, false, "tensor 'model.embed_tokens.weight': byte span 100 != 4 x 5 x 4 (F32)", NULL);
    free(p);

    p = write_st(dir, "span-scalar.safetensors",
                 "{\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", data, 4);
    expect_open_fail(p, false, "tensor 's': byte span 4 != 2 (BF16)", NULL);
    free(p);

    p = write_st(dir, "overlap.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 data, 12);
    expect_open_fail(p, false, "tensor 'b'", "overlaps tensor 'a'");
    free(p);

    p = write_st(dir, "overlap-empty.safetensors", /* an empty tensor inside another's bytes */
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                 data, 8);
    expect_open_fail(p, false, "tensor 'e'", "overlaps tensor 'a'");
    free(p);

    p = write_st(dir, "hole.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                 data, 12);
    expect_open_fail(p, false, "bytes [4, 8)", "tensor 'b'");
    free(p);

    p = write_st(dir, "hole-start.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data, 8);
    expect_open_fail(p, false, "bytes [0, 4)", "tensor 'a'");
    free(p);

    p = write_st(dir, "hole-end.safetensors", F32x1_AT_0, data, 8); /* 4 unused bytes at the end */
    expect_open_fail(p, false, "bytes [4, 8)", "tensor 'a'");
    free(p);

    p = write_st(dir, "unknown-dtype.safetensors",
                 "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "unknown dtype 'F33'");
    free(p);

    p = write_st(dir, "duplicate.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 data, 8);
    expect_open_fail(p, false, "tensor 'a'", "twice");
    free(p);

    p = write_st(dir, "neg-dim.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "shape");
    free(p);

    p = write_st(dir, "frac-dim.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "shape");
    free(p);

    p = write_st(dir, "too-many-dims.safetensors",
                 "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", data, 1);
    expect_open_fail(p, false, "tensor 'a'", "dimensions");
    free(p);

    p = write_st(dir, "overflow.safetensors",
                 "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", data, 8);
    expect_open_fail(p, false, "tensor 'a'", "too large");
    free(p);

    p = write_st(dir, "reversed.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "reversed");
    free(p);

    p = write_st(dir, "one-offset.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "data_offsets");
    free(p);

    p = write_st(dir, "no-dtype.safetensors", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4);
    expect_open_fail(p, false, "tensor 'a'", "dtype");
    free(p);

    /* still valid: metadata only and no data; several empty tensors sharing an offset */
    st_model m;
    alloy_err err = {{0}};
    p = write_st(dir, "meta-only.safetensors", "{\"__metadata__\":{\"format\":\"pt\"}}", data, 0);
    assert_int_equal(st_open_file(&m, p, &err), 0);
    assert_int_equal(m.ntensors, 0);
    assert_null(st_find(&m, "a"));
    st_close(&m);
    free(p);
    p = write_st(dir, "empties.safetensors",
                 "{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"e2\":{\"dtype\":\"I8\",\"shape\":[3,0],\"data_offsets\":[4,4]}}",
                 data, 4);
    assert_int_equal(st_open_file(&m, p, &err), 0);
    assert_int_equal(m.ntensors, 3);
    assert_string_equal(m.tensors[0].name, "e1"); /* header order kept */
    assert_int_equal(st_find(&m, "e2")->numel, 0);
    st_close(&m);
    free(p);
    free(dir);
}

static void test_bad_dirs(void **state) {
    (void)state;
    unsigned char data[16] = {0};
    const char *hdr_ab = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    const char *hdr_c = "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    char *p;

    /* index naming a tensor its shard lacks */
    char *d = subdir("idx-missing-tensor");
    free(write_st(d, "s1.safetensors", hdr_ab, data, 8));
    p = fs_join(d, "model.safetensors.index.json");
    const char *idx1 = "{\"metadata\":{},\"weight_map\":{\"a\":\"s1.safetensors\",\"zz\":\"s1.safetensors\"}}";
    assert_int_equal(fs_write_file(p, idx1, strlen(idx1), NULL), 0);
    expect_open_fail(d, true, "tensor 'zz'", "s1.safetensors");
    {
        st_model m;
        alloy_err err;
        st_open_dir(&m, d, &err);
        assert_non_null(strstr(err.msg, p)); /* names the index file */
    }
    free(p);
    free(d);

    /* index naming a shard that does not exist */
    d = subdir("idx-missing-shard");
    free(write_st(d, "s1.safetensors", hdr_ab, data, 8));
    p = fs_join(d, "model.safetensors.index.json");
    const char *idx2 = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"gone.safetensors\"}}";
    assert_int_equal(fs_write_file(p, idx2, strlen(idx2), NULL), 0);
    expect_open_fail(d, true, "gone.safetensors", "model.safetensors.index.json");
    free(p);
    free(d);

    /* tensor listed in one shard but found in another */
    d = subdir("idx-wrong-shard");
    free(write_st(d, "s1.safetensors", hdr_ab, data, 8));
    free(write_st(d, "s2.safetensors", hdr_c, data, 4));
    p = fs_join(d, "model.safetensors.index.json");
    const char *idx3 = "{\"weight_map\":{\"a\":\"s2.safetensors\",\"c\":\"s1.safetensors\"}}";
    assert_int_equal(fs_write_file(p, idx3, strlen(idx3), NULL), 0);
    expect_open_fail(d, true, "tensor 'a'", "s2.safetensors");
    free(p);
    free(d);

    /* two shards defining the same tensor */
    d = subdir("idx-dup");
    free(write_st(d, "s1.safetensors", hdr_ab, data, 8));
    free(write_st(d, "s2.safetensors",
                  "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  data, 8));
    p = fs_join(d, "model.safetensors.index.json");
    const char *idx4 = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}";
    assert_int_equal(fs_write_file(p, idx4, strlen(idx4), NULL), 0);
    expect_open_fail(d, true, "tensor 'b'", "s1.safetensors");
    free(p);
    free(d);

    /* a malformed index */
    d = subdir("idx-bad-json");
    p = fs_join(d, "model.safetensors.index.json");
    assert_int_equal(fs_write_file(p, "{\"weight_map\":", 14, NULL), 0);
    expect_open_fail(d, true, "model.safetensors.index.json", NULL);
    free(p);
    free(d);

    /* a shard with a bad file is reported with the shard's path */
    d = subdir("idx-bad-shard");
    free(write_st(d, "s1.safetensors", hdr_ab, data, 7));
    p = fs_join(d, "model.safetensors.index.json");
    const char *idx5 = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\"}}";
    assert_int_equal(fs_write_file(p, idx5, strlen(idx5), NULL), 0);
    char *shard = fs_join(d, "s1.safetensors");
    expect_open_fail(d, true, shard, "tensor 'b'");
    free(shard);
    free(p);
    free(d);

    /* only pytorch_model.bin */
    d = subdir("bin-only");
    p = fs_join(d, "pytorch_model.bin");
    assert_int_equal(fs_write_file(p, "PK", 2, NULL), 0);
    expect_open_fail(d, true, "only pytorch_model.bin found; convert to safetensors first", NULL);
    free(p);
    free(d);

    /* nothing at all */
    d = subdir("empty");
    expect_open_fail(d, true, "no .safetensors file", NULL);
    /* one arbitrarily named file is taken */
    free(write_st(d, "adapter.safetensors", hdr_c, data, 4));
    st_model m;
    alloy_err err = {{0}};
    assert_int_equal(st_open_dir(&m, d, &err), 0);
    assert_non_null(st_find(&m, "c"));
    st_close(&m);
    /* two are ambiguous */
    free(write_st(d, "other.safetensors", hdr_c, data, 4));
    expect_open_fail(d, true, "2 .safetensors files", NULL);
    free(d);

    /* not a directory */
    p = fs_join(root, "no-such-dir");
    expect_open_fail(p, true, "not a directory", NULL);
    free(p);
}

static void test_zeroed_model(void **state) {
    (void)state;
    st_model m;
    memset(&m, 0, sizeof m);
    assert_null(st_find(&m, "x"));
    st_close(&m);
    st_close(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_single),
        cmocka_unit_test(test_round_trip_sharded),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_golden_file),
        cmocka_unit_test(test_writer_bytes),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_writer_parts),
        cmocka_unit_test(test_writer_flusher),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_bad_dirs),
        cmocka_unit_test(test_zeroed_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
