/* ttt.c — `alloy ttt`: the test-time training baseline of TTMM. Per prompt,
 * a fresh LoRA is fine-tuned on the prompt's nearest corpus documents, then
 * the prompt is continued (-p) or scored (-f, perplexity as `alloy ppl`).
 * Argument parsing, the generation / scoring loops and messages only; the
 * retrieval and training are src/experts/ttt.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "eval/perplexity.h"
#include "experts/experts.h"
#include "model/lm.h"
#include "model/sampler.h"
#include "util/fs.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy ttt -m BASE_DIR --corpus CORPUS -p TEXT [-n 128] [--temp 0] [--top-k 40] [--top-p 0.95]\n"
            "                 [--min-p 0] [options]\n"
            "       alloy ttt -m BASE_DIR --corpus CORPUS -f FILE [--ctx 512] [options]\n\n"
            "Test-time training (TTT on nearest neighbours, Hardt & Sun 2024; the baseline of TTMM,\n"
            "arXiv 2505.14136): for each prompt, retrieve the K corpus documents nearest to its first %d\n"
            "tokens (cosine similarity of mean-pooled final hidden states), train a fresh LoRA on them\n"
            "(B = 0 at the start, so it starts at the base; one AdamW step of batch 1 per neighbour,\n"
            "nearest first), then run the prompt through base + adapter.\n\n"
            "  -m DIR                  base checkpoint (dense)\n"
            "  --corpus CORPUS, -d     a directory of text files (one document each) or a .jsonl of\n"
            "                          {\"text\": ...}; keep held-out text out of it\n"
            "  -p TEXT                 prompt: train on its neighbours, then generate\n"
            "  -n N                    tokens to generate (default 128)\n"
            "  --temp T                temperature (default 0: greedy); --top-k, --top-p, --min-p as generate\n"
            "  -f FILE                 perplexity: every window of --ctx tokens is one prompt (its first\n"
            "                          %d tokens retrieve), trained for and then scored; prints\n"
            "                          `perplexity: X` and `tokens: N` like `alloy ppl`\n"
            "  --ctx N                 -f window in tokens (default 512, or the model's context)\n"
            "  --neighbors K           neighbours per prompt (default 50, Hardt & Sun's largest setting);\n"
            "                          more than the corpus holds: all documents, with a note\n"
            "  --steps-per-neighbor S  gradient steps per neighbour (default 1, as Hardt & Sun; step s\n"
            "                          trains window s of the document); 0: no training (the base)\n"
            "  --lora-rank R           adapter rank (default 8, as `alloy experts build`), on all seven\n"
            "                          projections; --lora-alpha A (default 2R)\n"
            "  --lr LR                 constant AdamW learning rate (default 2e-4, the trainer's LoRA\n"
            "                          default); gradients clipped to norm 1\n"
            "  --nearest-last          train farthest neighbour first, nearest last (default: nearest\n"
            "                          first, Hardt & Sun's order)\n"
            "  --train-ctx N           tokens of a neighbour per step (default 512)\n"
            "  --embed DIR             embedding model (default: the base)\n"
            "  --threads N             worker threads (default: all cores)\n"
            "  --seed S                adapter initialisation and sampling seed (default 0)\n"
            "  -v, --verbose           list each prompt's neighbours (corpus index, similarity)\n\n"
            "stderr, per prompt: `ttt: prompt I: K neighbours (retrieval X s), S steps (training Y s)`;\n"
            "at the end: `ttt: mean per-prompt time Z s (retrieval + training)`.\n",
            EX_QUERY_TOKENS, EX_QUERY_TOKENS);
}

static void on_log(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "ttt: %s\n", line);
}

/* The per-prompt line (and the neighbours with -v). */
static void report_prompt(lm *m, bool verbose) {
    ex_ttt_stats s;
    ex_ttt_stats_get(m, &s);
    fprintf(stderr, "ttt: prompt %lld: %d neighbours (retrieval %.3f s), %lld steps (training %.3f s)\n",
            (long long)s.prompts, s.neighbors, s.retrieval_s, (long long)s.steps, s.training_s);
    if (verbose) {
        if (s.steps > 0) fprintf(stderr, "ttt:   mean training loss %.4f\n", s.mean_loss);
        fputs("ttt:   neighbours:", stderr);
        for (int i = 0; i < s.neighbors; i++) fprintf(stderr, " %d (%.4f)", s.idx[i], (double)s.sim[i]);
        fputc('\n', stderr);
    }
}

/* Continue the prompt ids with n_gen tokens; the text goes to stdout. */
static int run_generate(lm *m, tok_ids *ids, long n_gen, const sampler_params *sp, bool verbose) {
    const tokenizer *tok = lm_tokenizer(m);
    alloy_err err;
    int vocab = lm_vocab_size(m), n_ctx = lm_n_ctx(m), np = (int)ids->n, status = 0;
    if (np >= n_ctx)
        return cli_error("ttt: the prompt has %d tokens but the context holds %d positions", np, n_ctx);
    sampler smp = {0};
    tok_ids gen = {0};
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!logits) return cli_error("ttt: out of memory for %d logits", vocab);
    if (sampler_init(&smp, vocab, sp, &err) || lm_begin(m, ids->v, np, &err)) status = cli_fail(&err);
    if (!status) report_prompt(m, verbose);
    if (!status && n_gen > 0 && lm_forward(m, ids->v, np, 0, logits, false, &err)) status = cli_fail(&err);
    for (int pos = np; !status && gen.n < (size_t)n_gen; pos++) {
        int32_t next = sampler_sample(&smp, logits);
        if (tok_is_stop(tok, next)) break;
        if (tok_ids_push(&gen, next, &err)) {
            status = cli_fail(&err);
            break;
        }
        if (gen.n == (size_t)n_gen || pos + 1 >= n_ctx) break;
        if (lm_forward(m, &next, 1, pos, logits, false, &err)) status = cli_fail(&err);
    }
    if (!status) {
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(tok, gen.v, gen.n, false, &text, &len, &err)) status = cli_fail(&err);
        else {
            fwrite(text, 1, len, stdout);
            if (len) fputc('\n', stdout);
            free(text);
        }
    }
    free(logits);
    sampler_free(&smp);
    tok_ids_free(&gen);
    return status;
}

static void on_window(void *user, lm *m) { report_prompt(m, *(const bool *)user); }

/* Perplexity over windows of ctx tokens, each one TTT prompt. */
static int run_ppl(lm *m, const tok_ids *ids, long ctx, bool verbose) {
    alloy_err err;
    eval_ppl r;
    if (eval_perplexity(m, ids->v, ids->n, (int)ctx, on_window, &verbose, &r, &err)) return cli_fail(&err);
    printf("perplexity: %.6f\ntokens: %ld\n", exp(r.nll_sum / (double)r.scored), r.scored);
    return 0;
}

int cmd_ttt(int argc, char **argv) {
    ex_ttt_opts o;
    ex_ttt_defaults(&o);
    const char *prompt = NULL, *file = NULL;
    long n_gen = 128, top_k = 40, ctx = 0, v;
    double temp = 0, top_p = 0.95, min_p = 0, dv;
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
            continue;
        }
        if (!strcmp(a, "--nearest-last")) {
            o.nearest_last = true;
            continue;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return cli_error("ttt: unknown or incomplete option '%s'", a);
        }
        const char *s = argv[++i];
        if (!strcmp(a, "-m")) o.base_dir = s;
        else if (!strcmp(a, "--corpus") || !strcmp(a, "-d")) o.corpus = s;
        else if (!strcmp(a, "--embed")) o.embed_dir = s;
        else if (!strcmp(a, "-p")) prompt = s;
        else if (!strcmp(a, "-f")) file = s;
        else if (!strcmp(a, "-n") && !cli_parse_int(s, 0, 1 << 30, &v)) n_gen = v;
        else if (!strcmp(a, "--ctx") && !cli_parse_int(s, 2, 1 << 24, &v)) ctx = v;
        else if (!strcmp(a, "--neighbors") && !cli_parse_int(s, -(1L << 30), 1 << 30, &v)) o.neighbors = (int)v;
        else if (!strcmp(a, "--steps-per-neighbor") && !cli_parse_int(s, 0, 1 << 20, &v))
            o.steps_per_neighbor = (int)v;
        else if (!strcmp(a, "--lora-rank") && !cli_parse_int(s, 1, 4096, &v)) o.lora_rank = (int)v;
        else if (!strcmp(a, "--lora-alpha") && !cli_parse_double(s, &dv) && dv > 0 && dv < 1e6)
            o.lora_alpha = (float)dv;
        else if (!strcmp(a, "--lr") && !cli_parse_double(s, &dv) && dv > 0 && dv < 1e3) o.lr = (float)dv;
        else if (!strcmp(a, "--train-ctx") && !cli_parse_int(s, 1, 1 << 24, &v)) o.train_ctx = (int)v;
        else if (!strcmp(a, "--threads") && !cli_parse_int(s, 1, 4096, &v)) o.threads = (int)v;
        else if (!strcmp(a, "--seed") && !cli_parse_int(s, 0, 0x7fffffffffffffffL, &v)) o.seed = (uint64_t)v;
        else if (!strcmp(a, "--temp") && !cli_parse_double(s, &dv) && dv >= 0 && dv <= 1e6) temp = dv;
        else if (!strcmp(a, "--top-k") && !cli_parse_int(s, 0, 1 << 30, &v)) top_k = v;
        else if (!strcmp(a, "--top-p") && !cli_parse_double(s, &dv) && dv > 0 && dv <= 1) top_p = dv;
        else if (!strcmp(a, "--min-p") && !cli_parse_double(s, &dv) && dv >= 0 && dv <= 1) min_p = dv;
        else {
            usage(stderr);
            return cli_error("ttt: unknown option or bad value: %s %s", a, s);
        }
    }
    if (!o.base_dir || !o.corpus) {
        usage(stderr);
        return cli_error("ttt: need -m BASE_DIR and --corpus CORPUS");
    }
    if (!prompt == !file) {
        usage(stderr);
        return cli_error("ttt: need exactly one of -p TEXT (generate) or -f FILE (perplexity)");
    }
    if (o.neighbors < 1) return cli_error("ttt: --neighbors must be at least 1 (got %d)", o.neighbors);
    if (prompt && !*prompt) return cli_error("ttt: the prompt is empty; there is nothing to retrieve neighbours for");

    alloy_err err;
    char *text = NULL;
    size_t len = 0;
    if (file) {
        text = fs_read_file(file, &len, &err);
        if (!text) return cli_fail(&err);
        if (len == 0) {
            free(text);
            return cli_error("ttt: %s is empty", file);
        }
        o.n_ctx = (int)ctx;
        o.max_batch = EVAL_PPL_CHUNK;
    }
    o.on_log = on_log;
    lm *m;
    if (ex_ttt_open(&m, &o, &err)) {
        free(text);
        return cli_fail(&err);
    }
    ex_ttt_stats st;
    ex_ttt_stats_get(m, &st);
    fprintf(stderr, "ttt: corpus: %d documents, embedded in %.3f s, tokenized in %.3f s (one-time)\n", st.ndocs,
            st.embed_s, st.tokenize_s);
    if (o.neighbors > st.ndocs)
        fprintf(stderr, "ttt: note: --neighbors %d exceeds the corpus's %d documents; every document is a "
                        "neighbour\n", o.neighbors, st.ndocs);
    fprintf(stderr, "ttt: %s; lr %g, %d training tokens per step\n", lm_describe(m), (double)o.lr, st.train_ctx);

    const tokenizer *tok = lm_tokenizer(m);
    tok_ids ids = {0};
    int status = 0;
    if (file) {
        if (ctx == 0) ctx = lm_n_ctx(m) < 512 ? lm_n_ctx(m) : 512;
        if (tok_encode(tok, text, len, true, &ids, &err)) status = cli_fail(&err);
        else if (ids.n < 2)
            status = cli_error("ttt: %s has %zu token(s); at least 2 are needed to score one", file, ids.n);
        if (!status) status = run_ppl(m, &ids, ctx, verbose);
    } else {
        sampler_params sp = {(float)temp, (int)top_k, (float)top_p, (float)min_p, o.seed};
        if (tok_encode(tok, prompt, strlen(prompt), true, &ids, &err)) status = cli_fail(&err);
        if (!status) status = run_generate(m, &ids, n_gen, &sp, verbose);
    }
    if (!status) {
        ex_ttt_stats_get(m, &st);
        double per = st.prompts ? (st.total_retrieval_s + st.total_training_s) / (double)st.prompts : 0.0;
        fprintf(stderr, "ttt: mean per-prompt time %.3f s (retrieval + training)\n", per);
        fprintf(stderr, "ttt: %lld prompt(s), mean retrieval %.3f s, mean training %.3f s\n", (long long)st.prompts,
                st.prompts ? st.total_retrieval_s / (double)st.prompts : 0.0,
                st.prompts ? st.total_training_s / (double)st.prompts : 0.0);
    }
    free(text);
    tok_ids_free(&ids);
    lm_free(m);
    return status;
}
