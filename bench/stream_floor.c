/* stream_floor.c — the I/O floor of a merge, for `make bench`.
 *
 * Plans the same recipe as `alloy merge`, then does only the unavoidable
 * work with the same I/O path: reads every input byte of every output tensor
 * once (through the same mmaps, mapped and dropped by the same prefetch
 * thread, merge/prefetch.h) and writes an
 * output of the same size with the same safetensors writer (its direct
 * writes, io/dio.h, or for small outputs its flusher) the way the
 * streaming executor does (merge/sink.c): every thread writes its share of
 * each tensor in 1 MiB pieces from its own buffer (real memory, not the zero
 * page), or, where the writer writes directly and as a lane of the merge does,
 * made in the ring itself (io/dio.h, dio_stream); copied tensors straight
 * from the input mapping. The merge's wall
 * time divided by this one is the overhead of merging itself.
 * usage: stream_floor RECIPE.yml OUT_DIR */
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "merge/plan.h"
#include "merge/prefetch.h"
#include "util/dtype.h"
#include "util/fs.h"
#include "util/spin.h"

/* The 8-byte words of elements [lo, hi) of t folded into one (a few bytes
 * at the edges may be skipped: only the pages matter); with AVX-512 a
 * cache line per load, as wide as the merge kernels read, so that the
 * floor's reading costs no more than their own loads do. */
static uint64_t touch(const st_tensor *t, size_t lo, size_t hi) {
    size_t es = dtype_size(t->dtype);
    const char *base = t->data;
    size_t b = (lo * es + 7) / 8, e = hi * es / 8, i = b;
    uint64_t acc = 0;
#if defined(__AVX512F__)
    __m512i v = _mm512_setzero_si512();
    for (; i + 8 <= e; i += 8) v = _mm512_xor_si512(v, _mm512_loadu_si512((const void *)(base + 8 * i)));
    acc = (uint64_t)_mm512_reduce_or_epi64(v);
#endif
    for (; i < e; i++) {
        uint64_t w;
        memcpy(&w, base + 8 * i, 8);
        acc ^= w;
    }
    return acc;
}

#define PIECE ((size_t)1 << 20)

/* n bytes of src into dst as the merge kernels store into the ring: whole
 * 64-byte lines non-temporally where dst is on a line, the rest plainly. */
static void fill(char *dst, const char *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 64 <= n; i += 64) _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
#endif
    memcpy(dst + i, src + i, n - i);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: stream_floor RECIPE.yml OUT_DIR\n");
        return 1;
    }
    alloy_short_spin(argv); /* the OpenMP runtime as `alloy merge` runs it */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    alloy_err err;
    merge_plan p;
    if (plan_build(&p, argv[1], &err)) {
        fprintf(stderr, "stream_floor: %s\n", err.msg);
        return 1;
    }
    st_spec *specs = calloc((size_t)p.ntensors, sizeof *specs);
    size_t maxb = 0;
    for (int i = 0; i < p.ntensors; i++) {
        specs[i].name = p.tensors[i].name;
        specs[i].dtype = p.tensors[i].out_dtype;
        specs[i].ndim = p.tensors[i].ndim;
        memcpy(specs[i].shape, p.tensors[i].shape, sizeof specs[i].shape);
        size_t b = (size_t)p.tensors[i].numel * dtype_size(p.tensors[i].out_dtype);
        if (b > maxb) maxb = b;
    }
    fs_mkdirs(argv[2], &err);
    st_writer *w = st_writer_open(argv[2], specs, p.ntensors, 5000000000ull, &err);
    int nt = omp_get_max_threads();
    char *buf = malloc(PIECE * (size_t)nt);
    uint64_t acc = 0;
    int rc = w && buf ? 0 : 1;
    if (!rc) memset(buf, 0x3c, PIECE * (size_t)nt);
    /* a merge on two lanes (merge/exec.c: a streaming method with a first
     * pass, on two threads or more) makes its results in the ring; the
     * others stage them and copy */
    bool lanes = p.method->streams && p.method->first_pass && nt >= 2 && p.ntensors > 1;
    merge_prefetch *pf = merge_prefetch_start(&p, NULL, p.ntensors);
    for (int i = 0; i < p.ntensors && !rc; i++) {
        const plan_tensor *pt = &p.tensors[i];
        merge_prefetch_ready(pf, &p, NULL, i);
        if (pt->merge) {
            /* per piece of output, as the streaming merge: read its inputs, write it */
            size_t es = dtype_size(pt->out_dtype), nb = (size_t)pt->numel * es, pieces = (nb + PIECE - 1) / PIECE;
            int bad = 0;
            uint64_t fbase = 0;
            dio_file *df = lanes ? st_writer_dio(w, i, &fbase) : NULL;
#pragma omp parallel reduction(| : bad) reduction(^ : acc)
            {
                /* a thread's pieces are one stretch: where the writer writes
                 * directly, made in its ring like a lane's results
                 * (merge/sink.c), with whole-line stores that skip the cache */
                dio_stream ds;
                if (df) dio_stream_init(&ds, df);
                bool direct = df != NULL;
                alloy_err e;
#pragma omp for schedule(static)
                for (size_t c = 0; c < pieces; c++) {
                    size_t off = c * PIECE, len = nb - off < PIECE ? nb - off : PIECE;
                    size_t lo = off / es, hi = (off + len) / es;
                    char *mine = buf + PIECE * (size_t)omp_get_thread_num();
                    if (pt->has_base) acc ^= touch(pt->base.t, lo, hi);
                    for (int j = 0; j < pt->k; j++) acc ^= touch(pt->inputs[j].t, lo, hi);
                    mine[0] = (char)acc;
                    char *room = direct ? dio_stream_room(&ds, fbase + off, len, &e) : NULL;
                    if (direct && !room) {
                        direct = false;
                        if (!ds.refused) bad = 1;
                    }
                    if (room)
                        fill(room, mine, len);
                    else
                        bad |= st_writer_put_part(w, i, off, mine, len, &e) != 0;
                }
                if (df && dio_stream_end(&ds, &e)) bad = 1;
            }
            if (bad) rc = 1;
            st_writer_mark_done(w, i);
        } else {
            rc = st_writer_put(w, i, pt->copy.t->data, &err);
        }
        merge_prefetch_done(pf, &p, NULL, i);
    }
    merge_prefetch_stop(pf);
    if (!rc) rc = st_writer_finish(w, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) fprintf(stderr, "stream_floor: %s\n", err.msg);
    printf("%.3f\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free(buf);
    free(specs);
    plan_free(&p);
    return rc ? 1 : 0;
}
