/* experts.c — `alloy experts`: build a TTMM expert library (build), describe
 * one and the experts a text would select (info), and write the logits of a
 * prompt under a library (logits, for tests). Argument parsing and messages
 * only; the work is in src/experts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "experts/experts.h"
#include "model/lm.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy experts build -m BASE_DIR -d CORPUS -o LIB_DIR [--clusters K] [--embed MODEL_DIR]\n"
            "                           [--lora-rank R] [--lora-alpha A] [--steps N] [--lr LR] [--batch B]\n"
            "                           [--ctx T] [--seed S] [--threads N] [--doc-tokens N]\n"
            "       alloy experts info LIB_DIR [-p TEXT] [--top-k K]\n"
            "       alloy experts logits LIB_DIR -p TEXT -o OUT.npy [--top-k K] [--temperature T]\n"
            "                            [--mode auto|merge|unmerged|ensemble] [--threads N]\n\n"
            "  CORPUS          a directory of text files (one document each) or a .jsonl of {\"text\": ...}\n"
            "  --clusters K    experts to train (default 8); bisecting k-means on the embeddings\n"
            "  --embed DIR     embedding model (default: the base); mean-pooled final hidden state\n"
            "  --doc-tokens N  tokens of each document its embedding sees (default 256)\n"
            "  --lora-rank R   expert rank (default 8); --lora-alpha A (default 2R)\n"
            "  --steps N       training steps per expert (default: one epoch of its cluster)\n"
            "  --lr, --batch, --ctx   as `alloy train` (defaults 2e-4, 8, 512)\n"
            "  --seed S        clustering and initialisation seed (default 0)\n"
            "  --top-k K       fixed number of active experts instead of the beta/tau rule\n"
            "  --temperature T kernel temperature beta^2 (default 0.04, beta = 0.2)\n"
            "  --mode M        auto (default: the cheaper of merge and unmerged), merge (weights\n"
            "                  merged per prompt), unmerged (run-time adapters), ensemble (mixed\n"
            "                  output distributions of the selected experts)\n"
            "\nA build resumes: experts already trained are kept.\n");
}

static void on_log(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "experts: %s\n", line);
}

static int need_val(int i, int argc, const char *opt) {
    if (i + 1 >= argc) {
        cli_error("experts: %s needs a value", opt);
        return 0;
    }
    return 1;
}

static int ex_cmd_build(int argc, char **argv) {
    ex_build_opts o;
    ex_build_defaults(&o);
    long v;
    double dv;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!need_val(i, argc, a)) return 1;
        const char *s = argv[++i];
        if (!strcmp(a, "-m")) o.base_dir = s;
        else if (!strcmp(a, "-d")) o.corpus = s;
        else if (!strcmp(a, "-o")) o.out_dir = s;
        else if (!strcmp(a, "--embed")) o.embed_dir = s;
        else if (!strcmp(a, "--clusters") && !cli_parse_int(s, 1, 1000000, &v)) o.clusters = (int)v;
        else if (!strcmp(a, "--lora-rank") && !cli_parse_int(s, 1, 4096, &v)) o.lora_rank = (int)v;
        else if (!strcmp(a, "--lora-alpha") && !cli_parse_double(s, &dv) && dv > 0) o.lora_alpha = (float)dv;
        else if (!strcmp(a, "--steps") && !cli_parse_int(s, 1, 1000000000, &v)) o.steps = v;
        else if (!strcmp(a, "--lr") && !cli_parse_double(s, &dv) && dv > 0) o.lr = (float)dv;
        else if (!strcmp(a, "--batch") && !cli_parse_int(s, 1, 65536, &v)) o.batch = (int)v;
        else if (!strcmp(a, "--ctx") && !cli_parse_int(s, 1, 1 << 20, &v)) o.ctx = (int)v;
        else if (!strcmp(a, "--seed") && !cli_parse_int(s, 0, 2147483647, &v)) o.seed = (uint64_t)v;
        else if (!strcmp(a, "--threads") && !cli_parse_int(s, 0, 4096, &v)) o.threads = (int)v;
        else if (!strcmp(a, "--doc-tokens") && !cli_parse_int(s, 1, 1 << 20, &v)) o.doc_tokens = (int)v;
        else return cli_error("experts build: bad option or value: %s %s", a, s);
    }
    if (!o.base_dir || !o.corpus || !o.out_dir) {
        usage(stderr);
        return cli_error("experts build: -m, -d and -o are required");
    }
    o.on_log = on_log;
    alloy_err err = {{0}};
    if (ex_build(&o, &err)) return cli_fail(&err);
    return 0;
}

static int ex_cmd_info(int argc, char **argv) {
    const char *dir = NULL, *text = NULL;
    ex_select_opts sel;
    int top_k = 0;
    long v;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return usage(stdout), 0;
        if (!strcmp(argv[i], "-p") && need_val(i, argc, "-p")) text = argv[++i];
        else if (!strcmp(argv[i], "--top-k") && i + 1 < argc && !cli_parse_int(argv[i + 1], 1, 1000000, &v))
            top_k = (int)v, i++;
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else return cli_error("experts info: bad argument %s", argv[i]);
    }
    if (!dir) return cli_error("experts info: LIB_DIR is required");
    alloy_err err = {{0}};
    ex_library lib;
    if (ex_library_load(&lib, dir, true, &err)) return cli_fail(&err);
    printf("library %s\nbase %s (checksum %s)\nembedding %s, doc_tokens %d, query_tokens %d\n", dir, lib.base,
           lib.base_checksum, lib.embed_model, lib.doc_tokens, lib.query_tokens);
    printf("beta %g tau %g max_experts %d\nlora rank %d alpha %g\nclusters %d (dim %d)%s\n", lib.sel.beta,
           lib.sel.tau, lib.sel.max_experts, lib.lora_rank, lib.lora_alpha, lib.k, lib.dim,
           lib.complete ? "" : " INCOMPLETE");
    for (int k = 0; k < lib.k; k++) printf("  expert %d: %d documents\n", k, lib.sizes[k]);
    int rc = 0;
    if (text) {
        ex_embedder e;
        float *q = malloc((size_t)lib.dim * sizeof *q);
        int *idx = malloc((size_t)lib.k * sizeof *idx);
        double *w = malloc((size_t)lib.k * sizeof *w);
        if (!q || !idx || !w || ex_embedder_open(&e, lib.embed_model, lib.query_tokens, &err)) {
            rc = q && idx && w ? cli_fail(&err) : cli_error("out of memory");
        } else {
            if (ex_embed_text(&e, text, strlen(text), q, &err)) rc = cli_fail(&err);
            else if (e.dim != lib.dim) rc = cli_error("%s: embedding size %d, centroids %d", dir, e.dim, lib.dim);
            ex_embedder_close(&e);
        }
        if (!rc) {
            printf("query:");
            for (int j = 0; j < lib.dim; j++) printf(" %.9g", q[j]);
            printf("\nsimilarity:");
            for (int k = 0; k < lib.k; k++) {
                double s = 0;
                for (int j = 0; j < lib.dim; j++) s += (double)q[j] * lib.centroids[(size_t)k * lib.dim + j];
                printf(" %.9g", s);
            }
            sel = lib.sel;
            sel.top_k = top_k;
            int n = ex_select(q, lib.centroids, lib.k, lib.dim, &sel, idx, w);
            printf("\nselected %d%s\n", n, n == 0 ? " (base model)" : "");
            for (int j = 0; j < n; j++) printf("  expert %d weight %.9g\n", idx[j], w[j]);
        }
        free(q), free(idx), free(w);
    }
    ex_library_free(&lib);
    return rc;
}

static int write_npy(const char *path, const float *x, int rows, int cols) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f), fputc(hl >> 8, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(x, sizeof *x, (size_t)rows * cols, f);
    return fclose(f) ? -1 : 0;
}

static int ex_cmd_logits(int argc, char **argv) {
    const char *dir = NULL, *text = NULL, *out = NULL;
    lm_options opt = {0};
    long v;
    double dv;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' && !dir) {
            dir = a;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout), 0;
        if (!need_val(i, argc, a)) return 1;
        const char *s = argv[++i];
        if (!strcmp(a, "-p")) text = s;
        else if (!strcmp(a, "-o")) out = s;
        else if (!strcmp(a, "--mode")) opt.experts_mode = s;
        else if (!strcmp(a, "--top-k") && !cli_parse_int(s, 1, 1000000, &v)) opt.experts_top_k = (int)v;
        else if (!strcmp(a, "--temperature") && !cli_parse_double(s, &dv) && dv > 0) opt.experts_temperature = dv;
        else if (!strcmp(a, "--threads") && !cli_parse_int(s, 0, 4096, &v)) opt.threads = (int)v;
        else return cli_error("experts logits: bad option or value: %s %s", a, s);
    }
    if (!dir || !text || !out) return cli_error("experts logits: LIB_DIR, -p and -o are required");
    alloy_err err = {{0}};
    lm *m = NULL;
    const char *paths[1] = {dir};
    if (lm_open(&m, paths, 1, &opt, &err)) return cli_fail(&err);
    tok_ids ids = {0};
    float *logits = NULL;
    int rc = 0;
    if (tok_encode(lm_tokenizer(m), text, strlen(text), true, &ids, &err) || ids.n == 0 ||
        (int)ids.n > lm_n_ctx(m)) {
        rc = err.msg[0] ? cli_fail(&err)
                        : cli_error("experts logits: the prompt has %zu tokens (1..%d allowed)", ids.n, lm_n_ctx(m));
    } else if (!(logits = malloc(ids.n * (size_t)lm_vocab_size(m) * sizeof *logits))) {
        rc = cli_error("out of memory");
    } else if (lm_begin(m, ids.v, (int)ids.n, &err) ||
               lm_forward(m, ids.v, (int)ids.n, 0, logits, true, &err)) {
        rc = cli_fail(&err);
    } else {
        const int *idx;
        const double *w;
        int n = ex_lm_selection(m, &idx, &w);
        fprintf(stderr, "experts: %d selected (%s)", n, ex_lm_mode(m));
        for (int j = 0; j < n; j++) fprintf(stderr, " %d:%.6f", idx[j], w[j]);
        double te, ts, tm;
        ex_lm_timings(m, &te, &ts, &tm);
        fprintf(stderr, "\nexperts: embed %.6f s, select %.6f s, merge %.6f s\n", te, ts, tm);
        if (write_npy(out, logits, (int)ids.n, lm_vocab_size(m))) rc = cli_error("%s: cannot write", out);
    }
    free(logits);
    tok_ids_free(&ids);
    lm_free(m);
    return rc;
}

int cmd_experts(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2;
    }
    if (!strcmp(argv[1], "build")) return ex_cmd_build(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info")) return ex_cmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[1], "logits")) return ex_cmd_logits(argc - 1, argv + 1);
    usage(stderr);
    return cli_error("experts: unknown subcommand \"%s\" (build, info, logits)", argv[1]);
}
