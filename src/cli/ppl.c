/* ppl.c — `alloy ppl`: perplexity of a model on a text file.
 *
 * The file is tokenised as one text (special tokens added as the tokenizer
 * does, e.g. Llama-3's <|begin_of_text|> in front), then cut into
 * non-overlapping windows of --ctx tokens (the last may be shorter). Each
 * window is a fresh sequence (lm_begin with the window's tokens, which is
 * where expert libraries pick their experts) and every token of it but the
 * first is scored: -log p(token | the window's tokens before it). Printed:
 *   perplexity: exp(mean of those negative log-likelihoods)
 *   tokens: the number of scored tokens (file tokens minus one per window)
 * Argument parsing and printing only; the scoring is eval/perplexity.h, the
 * model model/lm.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/lm_args.h"
#include "eval/perplexity.h"
#include "util/fs.h"

static void usage(FILE *f) {
    fprintf(f, "usage: alloy ppl -m DIR -f FILE [--ctx 512] [--threads N] [--lora DIR]\n"
               "                 [-m DIR2 ... --mix-weights a,b --mix arithmetic|geometric]\n\n"
               "  -f FILE           UTF-8 text to score\n"
               "  --ctx N           window length in tokens (default 512, or the model's context when\n"
               "                    shorter); windows do not overlap\n"
               "                    and the first token of each is not scored\n" LM_ARGS_USAGE
               "\nprints `perplexity: X` and `tokens: N` (N = scored tokens) on stdout\n");
}

int cmd_ppl(int argc, char **argv) {
    lm_args la = {0};
    const char *file = NULL;
    long ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = lm_args_parse(&la, "ppl", argc, argv, &i);
        if (r < 0) return 1;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-f") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(a, "--ctx") && i + 1 < argc) {
            if (cli_parse_int(argv[++i], 2, 1 << 24, &ctx))
                return cli_error("ppl: --ctx '%s' is not an integer >= 2", argv[i]);
        } else {
            usage(stderr);
            return cli_error("ppl: unknown or incomplete option '%s'", a);
        }
    }
    if (!file || la.npaths == 0) {
        usage(stderr);
        return cli_error("ppl: need -m DIR and -f FILE");
    }
    alloy_err err;
    size_t len;
    char *text = fs_read_file(file, &len, &err);
    if (!text) return cli_fail(&err);
    if (len == 0) {
        free(text);
        return cli_error("ppl: %s is empty", file);
    }
    /* without --ctx: 512, or the model's whole context when shorter */
    la.opt.n_ctx = (int)ctx;
    la.opt.max_batch = EVAL_PPL_CHUNK;
    lm *m;
    if (lm_args_open(&la, "ppl", &m)) {
        free(text);
        return 1;
    }
    if (ctx == 0) ctx = lm_n_ctx(m) < 512 ? lm_n_ctx(m) : 512;
    if (ctx > lm_n_ctx(m)) {
        int have = lm_n_ctx(m);
        lm_free(m);
        free(text);
        return cli_error("ppl: --ctx %ld exceeds the model's context of %d positions", ctx, have);
    }
    const tokenizer *tok = lm_tokenizer(m);
    int status = 0;
    tok_ids ids = {0};
    if (!tok) status = cli_error("ppl: %s has no tokenizer.json", la.paths[0]);
    if (!status && tok_encode(tok, text, len, true, &ids, &err)) status = cli_fail(&err);
    free(text);
    if (!status && ids.n < 2)
        status = cli_error("ppl: %s has %zu token(s); at least 2 are needed to score one", file, ids.n);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eval_ppl r;
    if (!status && eval_perplexity(m, ids.v, ids.n, (int)ctx, NULL, NULL, &r, &err)) status = cli_fail(&err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!status) {
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("perplexity: %.6f\ntokens: %ld\n", exp(r.nll_sum / (double)r.scored), r.scored);
        fprintf(stderr, "ppl: %zu tokens in windows of %ld, %.1f tokens/s (%s)\n", ids.n, ctx,
                (double)ids.n / (secs > 0 ? secs : 1e-9), lm_describe(m));
    }
    tok_ids_free(&ids);
    lm_free(m);
    return status;
}
