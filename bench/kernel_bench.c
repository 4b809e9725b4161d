/* kernel_bench.c — the merge kernels alone, without the checkpoint I/O.
 *
 * Runs each streaming method's merge() on one MLP-shaped bf16 tensor (4864 x
 * 896, base + 3 models, in anonymous memory: 35 MB of inputs, more than the
 * last-level cache) and prints the best of R runs in ns per element, with
 * the ratio to a single read of the same bytes (task_arithmetic: one pass,
 * no masks) measured in the same run. TIES needs its rank cuts before it can
 * merge, DARE its L1 rescale: both read the inputs twice, so 2x that floor
 * is what a two-pass kernel costs in memory traffic alone.
 * Each method runs warm (the same tensor again and again: what the last
 * run's second pass read is still in the last-level cache when the next
 * run's first pass starts) and cold (each run after reading a buffer
 * larger than that cache, as a merge meets each new tensor of a
 * checkpoint). Warm is the kernel's own speed; cold is the one a merge
 * gets (on the bench VM, ties 1.24-1.27 warm against 1.28-1.33 ns cold,
 * task_arithmetic 0.42 against 0.50).
 * usage: kernel_bench [THREADS] [ROUNDS] [METHOD,...] (task_arithmetic always runs) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "merge/method.h"
#include "util/rng.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* f32 to bf16, round to nearest even (inputs are finite) */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Bytes read before each cold run: more than a last-level cache (32 MiB
 * on the bench VM) holds, so that none of the tensor is left there. */
#define EVICT_BYTES ((size_t)96 << 20)

/* Reads every line of evict (clean lines: nothing is written back while
 * the kernel runs); the sum keeps the reads. */
static uint64_t evict_caches(const uint64_t *evict) {
    uint64_t s = 0;
    for (size_t i = 0; i < EVICT_BYTES / sizeof *evict; i += 8) s += evict[i];
    return s;
}

/* best seconds of `rounds` runs of method `name` (each after evict_caches
 * when evict is not NULL), -1 on error */
static double run(const char *name, merge_call *c, float *out, int rounds, const uint64_t *evict) {
    const merge_method *m = merge_method_find(name);
    if (!m) return -1;
    int np = m->nparams;
    double *gp = calloc((size_t)np, sizeof *gp), *mp = calloc((size_t)np * 3, sizeof *mp);
    static const double weight[3] = {0.5, 0.3, 0.2}, density[3] = {0.5, 0.6, 0.4};
    for (int q = 0; q < np; q++) {
        gp[q] = m->params[q].dflt;
        for (int i = 0; i < 3; i++) {
            double v = m->params[q].dflt;
            if (!strcmp(m->params[q].name, "weight")) v = weight[i];
            if (!strcmp(m->params[q].name, "density")) v = density[i];
            mp[(size_t)i * (size_t)np + (size_t)q] = v;
        }
    }
    c->gparam = gp, c->mparam = mp, c->nparams = np;
    double best = INFINITY;
    volatile uint64_t sink = 0;
    for (int r = 0; r < rounds; r++) {
        alloy_err err;
        if (evict) sink += evict_caches(evict);
        double t0 = now();
        int rc = m->merge(c, out, &err);
        double t = now() - t0;
        if (rc) {
            fprintf(stderr, "kernel_bench: %s: %s\n", name, err.msg);
            best = -1;
            break;
        }
        if (t < best) best = t;
    }
    free(gp);
    free(mp);
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, rounds = argc > 2 ? atoi(argv[2]) : 20;
    const int64_t rows = 4864, cols = 896;
    size_t n = (size_t)(rows * cols);
    uint16_t *h[4];
    for (int i = 0; i < 4; i++)
        if (!(h[i] = malloc(n * sizeof *h[i]))) return 1;
    /* fine-tune deltas ~1/20 of the weights, as in the bench checkpoints */
    for (size_t e = 0; e < n; e++) {
        float b = (float)(rng_uniform(1, 0, e) - 0.5) * 0.04f;
        h[0][e] = to_bf16(b);
        for (int i = 1; i < 4; i++) h[i][e] = to_bf16(b + (float)(rng_uniform(1, (uint64_t)i, e) - 0.5) * 0.002f);
    }
    merge_src src[3] = {{h[1], ALLOY_BF16}, {h[2], ALLOY_BF16}, {h[3], ALLOY_BF16}};
    int64_t shape[2] = {rows, cols};
    /* the methods' scratch, kept across calls as the executor keeps it
     * across tensors (merge/exec.c): no fresh pages to fault in per call */
    size_t scratch_bytes = (2 * sizeof(float) + 3) * n + 1;
    void *scratch = malloc(scratch_bytes);
    merge_call c = {.tensor_name = "mlp", .ndim = 2, .shape = shape, .n = n, .k = 3, .src = src,
                    .base_src = {h[0], ALLOY_BF16}, .seed = 5, .threads = threads, .work = scratch,
                    .work_bytes = scratch_bytes};
    float *out = malloc(n * sizeof *out);
    uint64_t *evict = malloc(EVICT_BYTES);
    if (!out || !scratch || !evict) return 1;
    for (size_t i = 0; i < EVICT_BYTES / sizeof *evict; i++) evict[i] = i;
    printf("\nmerge kernels: one %lld x %lld bf16 tensor, base + 3, %d threads, best of %d (no checkpoint I/O)\n",
           (long long)rows, (long long)cols, threads, rounds);
    printf("%-17s %10s %14s %14s %14s\n", "method", "ns/elem", "x one read", "cold ns/elem", "x cold read");
    double floor = run("task_arithmetic", &c, out, rounds, NULL);
    double cold_floor = run("task_arithmetic", &c, out, rounds, evict);
    if (floor <= 0 || cold_floor <= 0) return 1;
    static const char *methods[] = {"task_arithmetic", "linear", "ties", "dare_ties", "breadcrumbs_ties", "della"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (i && argc > 3 && !strstr(argv[3], methods[i])) continue;
        double t = i ? run(methods[i], &c, out, rounds, NULL) : floor;
        double tc = i ? run(methods[i], &c, out, rounds, evict) : cold_floor;
        if (t < 0 || tc < 0) return 1;
        printf("%-17s %10.3f %14.2f %14.3f %14.2f\n", methods[i], t * 1e9 / (double)n, t / floor,
               tc * 1e9 / (double)n, tc / cold_floor);
    }
    for (int i = 0; i < 4; i++) free(h[i]);
    free(out);
    free(scratch);
    free(evict);
    return 0;
}
