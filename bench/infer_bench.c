/* infer_bench.c — alloy's side of bench_infer.py: the same measurement as
 * tests/peer/llama_logits.c --bench (prefill N pseudo-random tokens, then M
 * greedy decode steps, best of --reps), through model/lm.h; and a STREAM-like
 * copy bandwidth measured in the same process.
 * usage: infer_bench -m DIR --prompt N --gen M [--reps R] [--threads T]
 *        infer_bench --stream [--threads T]
 * prints "RESULT prefill_tok_s=X decode_tok_s=Y" or "RESULT copy_gb_s=X". */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/lm.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Copy 512 MiB between two buffers split over the threads; bytes moved =
 * read + write. Best of 5. */
static double stream_copy(void) {
    size_t n = (size_t)64 << 20; /* doubles */
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    if (!a || !b) return 0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (double)i, b[i] = 0;
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b[i] = a[i];
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    double gbs = 2.0 * n * sizeof(double) / best / 1e9;
    fprintf(stderr, "copy check %g\n", b[n - 1]);
    free(a);
    free(b);
    return gbs;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int n_prompt = 32, n_gen = 128, reps = 3, threads = 2;
    bool stream = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--stream")) stream = true;
        else if (i + 1 < argc && !strcmp(argv[i], "-m")) dir = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--prompt")) n_prompt = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--gen")) n_gen = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: infer_bench -m DIR --prompt N --gen M [--reps R] [--threads T] | --stream\n");
            return 1;
        }
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    if (stream) {
        printf("RESULT copy_gb_s=%.3f\n", stream_copy());
        return 0;
    }
    if (!dir || n_prompt < 1 || n_gen < 0) return 1;
    lm_options opt = {.threads = threads, .n_ctx = n_prompt + n_gen + 1, .max_batch = 512};
    alloy_err err;
    lm *m;
    if (lm_open(&m, (const char *const *)&dir, 1, &opt, &err)) {
        fprintf(stderr, "infer_bench: %s\n", err.msg);
        return 1;
    }
    int vocab = lm_vocab_size(m);
    int32_t *ids = malloc((size_t)n_prompt * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n_prompt; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % 100000u) + 100;
    }
    double best_pp = 1e30, best_tg = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (lm_begin(m, ids, n_prompt, &err) || lm_forward(m, ids, n_prompt, 0, logits, false, &err)) {
            fprintf(stderr, "infer_bench: %s\n", err.msg);
            return 1;
        }
        double t1 = now_s();
        for (int g = 0; g < n_gen; g++) {
            int32_t next = 0;
            for (int v = 1; v < vocab; v++)
                if (logits[v] > logits[next]) next = v;
            if (lm_forward(m, &next, 1, n_prompt + g, logits, false, &err)) {
                fprintf(stderr, "infer_bench: %s\n", err.msg);
                return 1;
            }
        }
        double t2 = now_s();
        if (t1 - t0 < best_pp) best_pp = t1 - t0;
        if (t2 - t1 < best_tg) best_tg = t2 - t1;
    }
    printf("alloy prefill: %d tokens in %.3f s = %.1f tok/s\n", n_prompt, best_pp, n_prompt / best_pp);
    if (n_gen) printf("alloy decode:  %d tokens in %.3f s = %.1f tok/s\n", n_gen, best_tg, n_gen / best_tg);
    printf("RESULT prefill_tok_s=%.2f decode_tok_s=%.2f\n", n_prompt / best_pp, n_gen ? n_gen / best_tg : 0.0);
    free(ids);
    free(logits);
    lm_free(m);
    return 0;
}
