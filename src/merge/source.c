/* source.c — reading merge inputs where they lie (merge_src in method.h),
 * blocks converted to f32 on the fly, and storing results straight in the
 * output dtype: streaming methods hold no whole f32 copy of any tensor. */
#include "merge/method.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/sink.h"
#include "merge/vec.h"
#include "util/dtype.h"
#include "util/err.h"

/* Streams are read in blocks; the hardware prefetchers stop at every 4 KiB
 * page of the mapping, so each block also asks for the lines of the block
 * PREFETCH_BYTES ahead (prefetches never fault past the end). 4 KiB rather
 * than 8: with one thread per lane (exec.c), medians of alternating runs on
 * the bench, ties 0.934 -> 0.882 s wall and 1.65 -> 1.52 s CPU, dare_ties
 * 0.781 -> 0.753 s, linear unchanged (the kernel's own distance, GK_AHEAD,
 * at 4 KiB too changed nothing). */
#define PREFETCH_BYTES 4096

void merge_prefetch_block(const void *p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + PREFETCH_BYTES + off, 0, 3);
}

bool merge_load(merge_src s, size_t lo, size_t m, float *dst) {
    if (!m) return false;
    size_t es = dtype_size(s.dtype);
    const char *p = (const char *)s.data + lo * es;
    merge_prefetch_block(p, m * es);
    return dtype_to_f32(p, s.dtype, dst, m) >= 0;
}

bool merge_nonfinite(merge_src s, size_t lo, size_t m) {
    if ((s.dtype != ALLOY_BF16 && s.dtype != ALLOY_F16) || ((uintptr_t)s.data & 1)) {
        float buf[1024];
        bool bad = false;
        for (size_t j = 0; j < m; j += 1024) bad |= merge_load(s, lo + j, m - j < 1024 ? m - j : 1024, buf);
        return bad;
    }
    /* a 16-bit float is NaN or infinite where its exponent bits are all ones */
    const uint16_t *restrict h = (const uint16_t *)s.data + lo;
    const uint16_t ex = s.dtype == ALLOY_F16 ? 0x7c00u : 0x7f80u;
    merge_prefetch_block(h, m * 2);
    unsigned bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t j = 0; j < m; j++) bad |= (h[j] & ex) == ex;
    return bad != 0;
}

bool merge_load_absdiff(merge_src s, size_t lo, size_t m, const float *restrict base, float *xbuf,
                        float *restrict a) {
    if (!m) return false;
    if (s.dtype != ALLOY_BF16 || ((uintptr_t)s.data & 1)) {
        bool bad = merge_load(s, lo, m, xbuf);
#pragma omp simd
        for (size_t j = 0; j < m; j++) a[j] = fabsf(xbuf[j] - base[j]);
        return bad;
    }
    const uint16_t *restrict h = (const uint16_t *)s.data + lo;
    merge_prefetch_block(h, m * 2);
    unsigned bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t j = 0; j < m; j++) {
        uint32_t w = (uint32_t)h[j] << 16;
        float x;
        memcpy(&x, &w, 4);
        a[j] = fabsf(x - base[j]);
        bad |= (h[j] & 0x7f80u) == 0x7f80u;
    }
    return bad != 0;
}

size_t merge_store(const merge_call *call, float *out, size_t lo, const float *v, size_t m) {
    if (call->sink) return merge_sink_put(call->sink, lo, v, m);
    memcpy(out + lo, v, m * sizeof *v);
    return m;
}

int merge_stream_elementwise(const merge_call *call, float *out, const char *method, int nin, const int *which,
                             merge_block_fn fn, const void *ctx, alloy_err *err) {
    size_t n = call->n, nb = (n + MERGE_EW_BLOCK - 1) / MERGE_EW_BLOCK, obad = n;
    int bad = 0, oom = 0;
#pragma omp parallel num_threads(vec_threads(call->threads)) reduction(| : bad, oom) reduction(min : obad)
    {
        /* nin input blocks and the result block */
        float *buf = malloc((size_t)(nin + 1) * MERGE_EW_BLOCK * sizeof *buf);
        const float **in = malloc((size_t)(nin + 1) * sizeof *in);
        oom = !buf || !in;
        for (int i = 0; !oom && i < nin; i++) in[i] = buf + (size_t)i * MERGE_EW_BLOCK;
        float *o = buf ? buf + (size_t)nin * MERGE_EW_BLOCK : NULL;
#pragma omp for schedule(static)
        for (size_t bi = 0; bi < nb; bi++) {
            if (oom) continue;
            size_t b0 = bi * MERGE_EW_BLOCK, m = n - b0 < MERGE_EW_BLOCK ? n - b0 : MERGE_EW_BLOCK;
            for (int i = 0; i < nin; i++) bad |= merge_load(merge_input(call, which[i]), b0, m, (float *)in[i]);
            fn(ctx, b0, in, m, o);
            size_t at = merge_store(call, out, b0, o, m);
            if (at < m && b0 + at < obad) obad = b0 + at;
        }
        free(in);
        free(buf);
    }
    if (oom) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    return merge_stream_result(call, method, bad, obad, err);
}

int merge_stream_reduce(const merge_call *call, int nacc, merge_chunk_fn f, const void *ctx, double *acc,
                        alloy_err *err) {
    if (vec_reduce(call->n, call->threads, nacc + 2, f, ctx, acc, err)) return -1;
    if (acc[nacc + 1] > 0) return alloy_fail(err, "out of memory (tensor '%s')", call->tensor_name);
    return acc[nacc] > 0 ? MERGE_NONFINITE_INPUT : 0;
}

int merge_stream_blocks(const merge_call *call, float *out, const char *method, merge_kernel_fn fn, const void *ctx,
                        alloy_err *err) {
    size_t n = call->n, nb = (n + MERGE_EW_BLOCK - 1) / MERGE_EW_BLOCK, obad = n;
    int bad = 0;
    /* static: each thread's blocks are one run, as the sink's stages want */
#pragma omp parallel for num_threads(vec_threads(call->threads)) schedule(static) reduction(| : bad) \
    reduction(min : obad)
    for (size_t bi = 0; bi < nb; bi++) {
        size_t b0 = bi * MERGE_EW_BLOCK, m = n - b0 < MERGE_EW_BLOCK ? n - b0 : MERGE_EW_BLOCK, ob = m;
        void *dst = call->sink ? merge_sink_slot(call->sink, b0, m) : (void *)(out + b0);
        bad |= fn(ctx, b0, m, dst, &ob);
        /* as merge_store: results are checked on their way to the sink */
        if (call->sink && ob < m && b0 + ob < obad) obad = b0 + ob;
    }
    return merge_stream_result(call, method, bad, obad, err);
}

int merge_stream_result(const merge_call *call, const char *method, bool bad_input, size_t first_bad,
                        alloy_err *err) {
    if (bad_input) return MERGE_NONFINITE_INPUT;
    if (first_bad < call->n)
        return alloy_fail(err, "tensor '%s': the %s merge produced a non-finite value at element %zu",
                          call->tensor_name, method, first_bad);
    return 0;
}
