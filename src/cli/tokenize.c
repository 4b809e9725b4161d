/* tokenize.c — `alloy tokenize`: print the token ids of a text (optionally in
 * the model's chat format) or the text of a list of ids. Argument parsing and
 * output only; the tokenizer is src/tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tokenizer/tokenizer.h"
#include "util/fs.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy tokenize -m DIR (-p TEXT | -f FILE) [--chat] [--no-special]\n"
            "       alloy tokenize -m DIR --decode ID,ID,... [--skip-special]\n\n"
            "  -m DIR          model directory with tokenizer.json (and tokenizer_config.json)\n"
            "  -p TEXT         text to encode; ids are printed on one line\n"
            "  -f FILE         encode the contents of FILE instead\n"
            "  --chat          wrap the text in the model's chat format (ChatML, Llama-3)\n"
            "  --no-special    do not add the post-processor's special tokens (e.g. bos)\n"
            "  --decode IDS    print the text of comma-separated ids\n"
            "  --skip-special  with --decode, drop special tokens\n");
}

static int decode_list(const tokenizer *t, const char *list, bool skip) {
    tok_ids ids = {0};
    alloy_err err;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ", ");
        char num[24];
        long v;
        if (n == 0 || n >= sizeof num) {
            p += n ? n : 1;
            if (n) goto bad;
            continue;
        }
        memcpy(num, p, n);
        num[n] = 0;
        if (cli_parse_int(num, 0, INT32_MAX, &v)) goto bad;
        if (tok_ids_push(&ids, (int32_t)v, &err)) {
            tok_ids_free(&ids);
            return cli_fail(&err);
        }
        p += n;
    }
    char *text;
    if (tok_decode(t, ids.v, ids.n, skip, &text, NULL, &err)) {
        tok_ids_free(&ids);
        return cli_fail(&err);
    }
    printf("%s\n", text);
    free(text);
    tok_ids_free(&ids);
    return 0;
bad:
    tok_ids_free(&ids);
    return cli_error("--decode: '%s' is not a comma-separated list of token ids", list);
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *text = NULL, *file = NULL, *decode = NULL;
    bool chat = false, special = true, skip = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") && has) dir = argv[++i];
        else if (!strcmp(a, "-p") && has) text = argv[++i];
        else if (!strcmp(a, "-f") && has) file = argv[++i];
        else if (!strcmp(a, "--decode") && has) decode = argv[++i];
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--no-special")) special = false;
        else if (!strcmp(a, "--skip-special")) skip = true;
        else {
            usage(stderr);
            return cli_error("tokenize: unknown or incomplete option '%s'", a);
        }
    }
    if (!dir) {
        usage(stderr);
        return cli_error("tokenize: -m DIR is required");
    }
    if (!!text + !!file + !!decode != 1) {
        usage(stderr);
        return cli_error("tokenize: give exactly one of -p TEXT, -f FILE, --decode IDS");
    }
    if (chat && decode) return cli_error("tokenize: --chat does not apply to --decode");
    alloy_err err;
    tokenizer *t;
    if (tok_load(&t, dir, &err)) return cli_fail(&err);
    if (decode) {
        int rc = decode_list(t, decode, skip);
        tok_free(t);
        return rc;
    }
    char *buf = NULL;
    size_t len = text ? strlen(text) : 0;
    if (file && !(buf = fs_read_file(file, &len, &err))) {
        tok_free(t);
        return cli_fail(&err);
    }
    const char *src = buf ? buf : text;
    tok_ids ids = {0};
    int rc;
    if (chat) {
        if (memchr(src, 0, len)) rc = cli_error("tokenize: --chat text contains a NUL byte");
        else rc = tok_encode_chat(t, src, &ids, &err) ? cli_fail(&err) : 0;
    } else {
        rc = tok_encode(t, src, len, special, &ids, &err) ? cli_fail(&err) : 0;
    }
    if (!rc) {
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.v[i]);
        putchar('\n');
    }
    tok_ids_free(&ids);
    free(buf);
    tok_free(t);
    return rc;
}
