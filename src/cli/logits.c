/* logits.c — `alloy logits`: one forward pass over a prompt, the logits of
 * every position written as a float32 .npy of shape [T, vocab]. Any runnable
 * model (model/lm.h): a checkpoint, with --lora, or a mixture, whose "logits"
 * are the mixed log-probabilities. Argument parsing, tokenising and the .npy
 * file only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/lm_args.h"
#include "tokenizer/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy logits -m DIR (--ids 1,2,3 | -p TEXT) -o OUT.npy [--threads N] [--batch N]\n"
            "                    [--lora DIR] [-m DIR2 ... --mix-weights a,b --mix arithmetic|geometric]\n\n"
            "  --ids LIST        comma-separated token ids\n"
            "  -p TEXT           text, tokenised with DIR's tokenizer (special tokens added)\n"
            "  -o OUT.npy        float32 array [T, vocab]: the logits at every position\n"
            "  --batch N         tokens per forward chunk (default 512); 1 runs the prompt token by\n"
            "                    token through the KV cache, as decoding does\n" LM_ARGS_USAGE);
}

/* Parse "1,2,3" into ids; returns the count or -1. */
static int parse_ids(const char *s, int32_t **out) {
    size_t cap = 16, n = 0;
    int32_t *v = malloc(cap * sizeof *v);
    while (v && *s) {
        size_t len = strcspn(s, ",");
        char num[24];
        long x;
        if (len == 0 || len >= sizeof num) break;
        memcpy(num, s, len);
        num[len] = 0;
        if (cli_parse_int(num, 0, INT32_MAX, &x)) break;
        if (n == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[n++] = (int32_t)x;
        s += len;
        if (*s == ',') {
            s++;
            if (!*s) n = 0; /* trailing comma: reject */
        }
    }
    if (!v || *s || n == 0) {
        free(v);
        return -1;
    }
    *out = v;
    return (int)n;
}

/* NPY v1.0: magic, version, header length, a dict padded with spaces to a
 * multiple of 64 bytes ending in '\n', then the C-order data. */
static int write_npy(const char *path, const float *data, int rows, int cols) {
    char header[128];
    int len = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }",
                       rows, cols);
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned short hlen = (unsigned short)(len + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(header, 1, (size_t)len, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t n = (size_t)rows * cols;
    size_t w = fwrite(data, sizeof(float), n, f);
    return fclose(f) != 0 || w != n ? -1 : 0;
}

int cmd_logits(int argc, char **argv) {
    lm_args la = {0};
    const char *ids_arg = NULL, *text = NULL, *out = NULL;
    long batch = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int r = lm_args_parse(&la, "logits", argc, argv, &i);
        if (r < 0) return 1;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--ids") && has) ids_arg = argv[++i];
        else if (!strcmp(a, "-p") && has) text = argv[++i];
        else if (!strcmp(a, "-o") && has) out = argv[++i];
        else if (!strcmp(a, "--batch") && has) {
            if (cli_parse_int(argv[++i], 1, 1 << 20, &batch))
                return cli_error("logits: --batch '%s' is not a positive integer", argv[i]);
        } else {
            usage(stderr);
            return cli_error("logits: unknown or incomplete option '%s'", a);
        }
    }
    if (la.npaths == 0 || !out || (!ids_arg == !text)) {
        usage(stderr);
        return cli_error("logits: need -m DIR, -o OUT.npy and exactly one of --ids / -p");
    }
    alloy_err err;
    int32_t *ids = NULL;
    int n = 0;
    if (ids_arg) {
        n = parse_ids(ids_arg, &ids);
        if (n < 0) return cli_error("logits: --ids '%s' is not a comma-separated list of token ids", ids_arg);
    } else {
        /* tokenised before the model opens, so that the KV cache is sized to
         * the prompt */
        tokenizer *tok;
        tok_ids tv = {0};
        if (tok_load(&tok, la.paths[0], &err)) return cli_fail(&err);
        int rc = tok_encode(tok, text, strlen(text), true, &tv, &err);
        tok_free(tok);
        if (rc) {
            tok_ids_free(&tv);
            return cli_fail(&err);
        }
        if (tv.n == 0) {
            tok_ids_free(&tv);
            return cli_error("logits: -p text encodes to no tokens");
        }
        ids = tv.v;
        n = (int)tv.n;
    }
    la.opt.n_ctx = n;
    la.opt.max_batch = (int)batch;
    lm *m;
    if (lm_args_open(&la, "logits", &m)) {
        free(ids);
        return 1;
    }
    int status = 0, vocab = lm_vocab_size(m);
    float *logits = NULL;
    for (int t = 0; t < n && !status; t++)
        if (ids[t] >= vocab)
            status = cli_error("logits: token id %d is outside the vocabulary of %s (size %d)", (int)ids[t],
                               la.paths[0], vocab);
    if (!status) {
        logits = malloc((size_t)n * vocab * sizeof(float));
        if (!logits) status = cli_error("logits: out of memory for %d x %d logits", n, vocab);
    }
    if (!status && (lm_begin(m, ids, n, &err) || lm_forward(m, ids, n, 0, logits, true, &err)))
        status = cli_fail(&err);
    if (!status && write_npy(out, logits, n, vocab)) status = cli_error("logits: cannot write %s", out);
    free(logits);
    lm_free(m);
    free(ids);
    return status;
}
