/* stream_floor.c — the I/O floor of a merge, for `make bench`.
 *
 * Plans the same recipe as `alloy merge`, then does only the unavoidable
 * work with the same I/O path: reads every input byte of every output tensor
 * once (through the same mmaps, the same madvise pattern) and writes an
 * output of the same size with the same safetensors writer and background
 * writer thread, from two buffers of real (not zero-page) memory, as the
 * executor does. The merge's wall time divided by this one is the overhead
 * of merging itself.
 * usage: stream_floor RECIPE.yml OUT_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "io/st_async.h"
#include "merge/plan.h"
#include "util/dtype.h"
#include "util/fs.h"

static uint64_t touch(const st_tensor *t) {
    const uint64_t *p = t->data;
    size_t n = t->nbytes / 8;
    uint64_t acc = 0;
#pragma omp parallel for reduction(^ : acc)
    for (size_t i = 0; i < n; i++) acc ^= p[i];
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    madvise((void *)a, (uintptr_t)t->data + t->nbytes - a, MADV_DONTNEED);
    return acc;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: stream_floor RECIPE.yml OUT_DIR\n");
        return 1;
    }
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
    st_async *aw = w ? st_async_start(w, &err) : NULL;
    char *buf[2] = {malloc(maxb ? maxb : 1), malloc(maxb ? maxb : 1)};
    uint64_t acc = 0;
    int rc = aw && buf[0] && buf[1] ? 0 : 1;
    for (int b = 0; b < 2 && !rc; b++) memset(buf[b], 0x3c, maxb ? maxb : 1);
    for (int i = 0, cur = 0; i < p.ntensors && !rc; i++) {
        const plan_tensor *pt = &p.tensors[i];
        if (pt->merge) {
            if (pt->has_base) acc ^= touch(pt->base.t);
            for (int j = 0; j < pt->k; j++) acc ^= touch(pt->inputs[j].t);
        } else {
            acc ^= touch(pt->copy.t);
        }
        buf[cur][0] = (char)acc;
        rc = st_async_put(aw, i, buf[cur], &err);
        cur ^= 1;
    }
    if (aw && st_async_stop(aw, &err)) rc = 1;
    if (!rc) rc = st_writer_finish(w, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) fprintf(stderr, "stream_floor: %s\n", err.msg);
    printf("%.3f\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free(buf[0]);
    free(buf[1]);
    free(specs);
    plan_free(&p);
    return rc ? 1 : 0;
}
