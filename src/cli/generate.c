/* generate.c — `alloy generate`: text from a prompt, streamed to stdout as
 * it is sampled, with prompt and generation speed on stderr. Argument
 * parsing, the token loop and UTF-8-safe output only; the model is
 * model/lm.h, the sampling model/sampler.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/lm_args.h"
#include "model/sampler.h"

static void usage(FILE *f) {
    fprintf(f, "usage: alloy generate -m DIR -p TEXT [-n 128] [--temp 0.8] [--top-k 40] [--top-p 0.95]\n"
               "                      [--min-p 0] [--seed S] [--threads N] [--chat] [--ctx N] [--show-ids]\n"
               "                      [--lora DIR] [-m DIR2 ... --mix-weights a,b --mix arithmetic|geometric]\n"
               "                      [--experts-top-k K --experts-temperature T --experts-mode M]\n\n"
               "  -p TEXT           the prompt (special tokens added as the tokenizer does)\n"
               "  -n N              tokens to generate at most (default 128); stops earlier at an\n"
               "                    end-of-text / end-of-turn token or when the context is full\n"
               "  --temp T          temperature (default 0.8); 0 is greedy\n"
               "  --top-k K         keep the K most probable tokens (default 40; 0 off)\n"
               "  --top-p P         nucleus: the smallest set with probability >= P (default 0.95)\n"
               "  --min-p P         drop tokens below P x the top probability (default 0, off)\n"
               "  --seed S          random seed (default 0); same seed, same text\n"
               "  --chat            wrap the prompt in the model's chat template\n"
               "  --ctx N           context length (default min(max_position_embeddings, 4096))\n"
               "  --show-ids        print the generated token ids on stderr (\"ids: 1,2,3\")\n" LM_ARGS_USAGE);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Streamed output: token bytes are buffered until they form whole UTF-8
 * characters; invalid sequences are written as U+FFFD, one per maximal
 * invalid subpart, as Rust's from_utf8_lossy (and so tok_decode / HF) does,
 * so the stream equals the decoded text. */
typedef struct out_buf {
    unsigned char *b;
    size_t n, cap;
} out_buf;

/* Bytes a sequence starting with c needs (0: c cannot start one), and the
 * range of its second byte. */
static int utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Write the whole characters of o (all of it when flush) and keep the rest. */
static void out_drain(out_buf *o, bool flush) {
    static const char REPL[] = "\xEF\xBF\xBD";
    if (o->n == 0) return;
    size_t i = 0;
    while (i < o->n) {
        unsigned char lo, hi;
        int need = utf8_lead(o->b[i], &lo, &hi), j = 1;
        if (need == 0) {
            fwrite(REPL, 1, 3, stdout);
            i++;
            continue;
        }
        for (; j < need && i + j < o->n; j++) {
            unsigned char c = o->b[i + j];
            if (c < (j == 1 ? lo : 0x80) || c > (j == 1 ? hi : 0xBF)) break;
        }
        if (j == need) {
            fwrite(o->b + i, 1, (size_t)need, stdout);
        } else if (i + j == o->n && !flush) {
            break; /* the rest of the character has not arrived yet */
        } else {
            fwrite(REPL, 1, 3, stdout);
        }
        i += (size_t)j;
    }
    fflush(stdout);
    memmove(o->b, o->b + i, o->n - i);
    o->n -= i;
}

static int emit(out_buf *o, const char *bytes, size_t len) {
    if (len == 0) return 0;
    if (o->n + len > o->cap) {
        size_t cap = (o->n + len) * 2 + 16;
        unsigned char *nb = realloc(o->b, cap);
        if (!nb) return -1;
        o->b = nb;
        o->cap = cap;
    }
    memcpy(o->b + o->n, bytes, len);
    o->n += len;
    out_drain(o, false);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    lm_args la = {0};
    const char *prompt = NULL;
    long n_gen = 128, top_k = 40, ctx = 0;
    double temp = 0.8, top_p = 0.95, min_p = 0;
    uint64_t seed = 0;
    bool chat = false, show_ids = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int r = lm_args_parse(&la, "generate", argc, argv, &i);
        if (r < 0) return 1;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--show-ids")) show_ids = true;
        else if (!strcmp(a, "-p") && has) prompt = argv[++i];
        else if (!strcmp(a, "-n") && has) {
            if (cli_parse_int(argv[++i], 0, 1 << 30, &n_gen))
                return cli_error("generate: -n '%s' is not a non-negative integer", argv[i]);
        } else if (!strcmp(a, "--top-k") && has) {
            if (cli_parse_int(argv[++i], 0, 1 << 30, &top_k))
                return cli_error("generate: --top-k '%s' is not a non-negative integer", argv[i]);
        } else if (!strcmp(a, "--ctx") && has) {
            if (cli_parse_int(argv[++i], 1, 1 << 30, &ctx))
                return cli_error("generate: --ctx '%s' is not a positive integer", argv[i]);
        } else if (!strcmp(a, "--seed") && has) {
            long v;
            if (cli_parse_int(argv[++i], 0, 0x7fffffffffffffffL, &v))
                return cli_error("generate: --seed '%s' is not a non-negative integer", argv[i]);
            seed = (uint64_t)v;
        } else if (!strcmp(a, "--temp") && has) {
            if (cli_parse_double(argv[++i], &temp) || !(temp >= 0) || temp > 1e6)
                return cli_error("generate: --temp '%s' is not a number >= 0", argv[i]);
        } else if (!strcmp(a, "--top-p") && has) {
            if (cli_parse_double(argv[++i], &top_p) || !(top_p > 0 && top_p <= 1))
                return cli_error("generate: --top-p '%s' is not in (0, 1]", argv[i]);
        } else if (!strcmp(a, "--min-p") && has) {
            if (cli_parse_double(argv[++i], &min_p) || !(min_p >= 0 && min_p <= 1))
                return cli_error("generate: --min-p '%s' is not in [0, 1]", argv[i]);
        } else {
            usage(stderr);
            return cli_error("generate: unknown or incomplete option '%s'", a);
        }
    }
    if (!prompt) {
        usage(stderr);
        return cli_error("generate: need -p TEXT");
    }
    if (la.npaths == 0) {
        usage(stderr);
        return cli_error("generate: need -m DIR (a model directory)");
    }
    la.opt.n_ctx = (int)ctx;
    lm *m;
    if (lm_args_open(&la, "generate", &m)) return 1;
    const tokenizer *tok = lm_tokenizer(m);
    alloy_err err;
    int status = 0;
    tok_ids ids = {0};
    float *logits = NULL;
    sampler smp = {0};
    out_buf ob = {0};
    tok_ids gen = {0};
    if (!tok) status = cli_error("generate: %s has no tokenizer.json", la.paths[0]);
    if (!status && (chat ? tok_encode_chat(tok, prompt, &ids, &err)
                         : tok_encode(tok, prompt, strlen(prompt), true, &ids, &err)))
        status = cli_fail(&err);
    if (!status && ids.n == 0) {
        /* an empty prompt starts from bos when the model has one */
        if (tok_bos(tok) < 0) status = cli_error("generate: the prompt encodes to no tokens and %s has no bos token",
                                                 la.paths[0]);
        else if (tok_ids_push(&ids, tok_bos(tok), &err)) status = cli_fail(&err);
    }
    int n_ctx = lm_n_ctx(m), vocab = lm_vocab_size(m);
    if (!status && (int64_t)ids.n >= n_ctx)
        status = cli_error("generate: the prompt has %zu tokens but the context holds %d positions (the prompt and "
                           "at least one generated token must fit); shorten the prompt or raise --ctx",
                           ids.n, n_ctx);
    sampler_params sp = {(float)temp, (int)top_k, (float)top_p, (float)min_p, seed};
    if (!status && sampler_init(&smp, vocab, &sp, &err)) status = cli_fail(&err);
    if (!status && !(logits = malloc((size_t)vocab * sizeof(float))))
        status = cli_error("generate: out of memory for %d logits", vocab);
    double t0 = now_s(), t1 = t0, t2 = t0;
    int np = (int)ids.n, ngen = 0, nfwd = 0;
    if (!status && (lm_begin(m, ids.v, np, &err) || lm_forward(m, ids.v, np, 0, logits, false, &err)))
        status = cli_fail(&err);
    t1 = now_s();
    for (int pos = np; !status && ngen < n_gen; pos++) {
        int32_t next = sampler_sample(&smp, logits);
        if (tok_is_stop(tok, next)) break;
        if (tok_ids_push(&gen, next, &err)) {
            status = cli_fail(&err);
            break;
        }
        ngen++;
        size_t len;
        const char *bytes = tok_token_bytes(tok, next, &len);
        if (bytes && emit(&ob, bytes, len)) status = cli_error("generate: out of memory");
        if (ngen == n_gen || pos + 1 >= n_ctx) break; /* no logits needed after the last token */
        if (lm_forward(m, &next, 1, pos, logits, false, &err)) status = cli_fail(&err);
        nfwd++;
    }
    t2 = now_s();
    out_drain(&ob, true);
    if (!status && ngen > 0) fputc('\n', stdout);
    fflush(stdout);
    if (!status) {
        if (np + ngen >= n_ctx && ngen < n_gen) fprintf(stderr, "generate: stopped at the context length (%d)\n", n_ctx);
        fprintf(stderr, "prompt: %d tokens, %.2f tokens/s; generation: %d tokens, %.2f tokens/s (%s)\n", np,
                np / (t1 - t0 > 0 ? t1 - t0 : 1e-9), ngen, nfwd > 0 ? nfwd / (t2 - t1 > 0 ? t2 - t1 : 1e-9) : 0.0,
                lm_describe(m));
        if (show_ids) {
            fputs("ids:", stderr);
            for (int i = 0; i < ngen; i++) fprintf(stderr, "%s%d", i ? "," : " ", (int)gen.v[i]);
            fputc('\n', stderr);
        }
    }
    free(ob.b);
    tok_ids_free(&gen);
    tok_ids_free(&ids);
    free(logits);
    sampler_free(&smp);
    lm_free(m);
    return status;
}
