/* merge.c — `alloy merge RECIPE.yml OUT_DIR`: argument parsing, progress bar. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

static const char USAGE[] =
    "usage: alloy merge RECIPE.yml OUT_DIR [--threads N] [--seed S] [--out-shard-size 5B]\n"
    "                   [--no-copy-tokenizer] [--dry-run]\n";

typedef struct progress_state {
    struct timespec start;
} progress_state;

static void progress_bar(void *user, int done, int total, uint64_t bytes, uint64_t bytes_total) {
    progress_state *st = user;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double el = (double)(now.tv_sec - st->start.tv_sec) + 1e-9 * (double)(now.tv_nsec - st->start.tv_nsec);
    double frac = bytes_total ? (double)bytes / (double)bytes_total : 1.0;
    double eta = frac > 0 ? el * (1 - frac) / frac : 0;
    int width = 30, fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r[%s] %d/%d tensors  %.1f/%.1f MB  ETA %.0fs ", bar, done, total, bytes / 1e6,
            bytes_total / 1e6, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

int cmd_merge(int argc, char **argv) {
    alloy_merge_options opt;
    alloy_merge_options_default(&opt);
    opt.warn_out = stderr;
    opt.plan_out = stdout;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--threads")) {
            if (!v || cli_parse_int(v, 1, 4096, &n)) return cli_error("--threads needs a positive integer");
            opt.threads = (int)n;
            i++;
        } else if (!strcmp(a, "--seed")) {
            if (!v || cli_parse_int(v, 0, __LONG_MAX__, &n)) return cli_error("--seed needs a non-negative integer");
            opt.seed = (uint64_t)n;
            i++;
        } else if (!strcmp(a, "--out-shard-size")) {
            if (!v || cli_parse_kmb(v, &opt.out_shard_bytes))
                return cli_error("--out-shard-size needs a size like 5B, 500M or 1000000");
            i++;
        } else if (!strcmp(a, "--no-copy-tokenizer")) {
            opt.copy_tokenizer = 0;
        } else if (!strcmp(a, "--dry-run")) {
            opt.dry_run = 1;
        } else if (a[0] == '-' && a[1]) {
            return cli_error("merge: unknown option '%s'\n%s", a, USAGE);
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            return cli_error("merge: unexpected argument '%s'\n%s", a, USAGE);
        }
    }
    if (npos < 1 || (npos < 2 && !opt.dry_run)) return cli_error("merge: missing arguments\n%s", USAGE);
    progress_state st;
    clock_gettime(CLOCK_MONOTONIC, &st.start);
    if (isatty(2)) {
        opt.progress = progress_bar;
        opt.progress_user = &st;
    }
    alloy_err err;
    if (alloy_merge(pos[0], pos[1] ? pos[1] : "", &opt, &err)) return cli_fail(&err);
    if (!opt.dry_run) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        fprintf(stderr, "alloy: merged into %s in %.2fs\n", pos[1],
                (double)(now.tv_sec - st.start.tv_sec) + 1e-9 * (double)(now.tv_nsec - st.start.tv_nsec));
    }
    return 0;
}
