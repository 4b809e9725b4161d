/* conformance.c — compares alloy's tokenizer with the Hugging Face reference
 * written by reference.js: every document's ids must be identical, and
 * decoding them must give the text HF decodes. Loads each tokenizer once.
 * Prints the counts compared, the first mismatch in detail, and the encode
 * speed. Exit status 0 only when everything matches.
 *
 * usage: conformance REFERENCE.jsonl */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"
#include "util/fs.h"

typedef struct { char *dir; tokenizer *t; } loaded;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void show_ids(const tokenizer *t, const char *label, const int32_t *v, size_t n, size_t at) {
    size_t lo = at > 4 ? at - 4 : 0, hi = at + 6 < n ? at + 6 : n;
    fprintf(stderr, "  %-9s", label);
    for (size_t i = lo; i < hi; i++) {
        const char *s = tok_token_str(t, v[i]);
        fprintf(stderr, " %s%d(%s)", i == at ? ">" : "", v[i], s ? s : "?");
    }
    fprintf(stderr, "%s\n", hi < n ? " ..." : "");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s REFERENCE.jsonl\n", argv[0]);
        return 2;
    }
    alloy_err err;
    size_t len;
    char *all = fs_read_file(argv[1], &len, &err);
    if (!all) {
        fprintf(stderr, "conformance: %s\n", err.msg);
        return 2;
    }
    loaded tk[8];
    int ntk = 0;
    long docs = 0, tokens = 0, bad = 0, bad_decode = 0;
    double secs = 0, bytes = 0;
    for (char *line = all, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        cJSON *o = cJSON_Parse(line);
        const char *dir = cJSON_GetStringValue(cJSON_GetObjectItem(o, "dir"));
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(o, "tok"));
        const char *doc = cJSON_GetStringValue(cJSON_GetObjectItem(o, "doc"));
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(o, "text"));
        const char *want_text = cJSON_GetStringValue(cJSON_GetObjectItem(o, "decoded"));
        cJSON *want = cJSON_GetObjectItem(o, "ids");
        if (!dir || !doc || !text || !want_text || !cJSON_IsArray(want)) {
            fprintf(stderr, "conformance: malformed reference line\n");
            return 2;
        }
        bool special = cJSON_IsTrue(cJSON_GetObjectItem(o, "special"));
        tokenizer *t = NULL;
        for (int k = 0; k < ntk; k++)
            if (!strcmp(tk[k].dir, dir)) t = tk[k].t;
        if (!t) {
            if (ntk == 8 || tok_load(&t, dir, &err)) {
                fprintf(stderr, "conformance: %s\n", ntk == 8 ? "too many tokenizers" : err.msg);
                return 1;
            }
            tk[ntk++] = (loaded){strdup(dir), t};
        }
        tok_ids got = {0};
        size_t tlen = strlen(text);
        double t0 = now();
        int rc = tok_encode(t, text, tlen, special, &got, &err);
        secs += now() - t0;
        bytes += (double)tlen;
        docs++;
        size_t nwant = (size_t)cJSON_GetArraySize(want), at = 0;
        int32_t *w = malloc((nwant + 1) * sizeof *w);
        for (size_t i = 0; i < nwant; i++) w[i] = (int32_t)cJSON_GetArrayItem(want, (int)i)->valuedouble;
        tokens += (long)nwant;
        if (rc) {
            fprintf(stderr, "FAIL %s %s: encode error: %s\n", name, doc, err.msg);
            bad++;
        } else {
            while (at < nwant && at < got.n && w[at] == got.v[at]) at++;
            if (at < nwant || at < got.n) {
                if (!bad)
                    fprintf(stderr, "FIRST MISMATCH %s %s (special=%d): %zu ids expected, %zu got, first "
                            "difference at id %zu\n  text: %.300s\n", name, doc, special, nwant, got.n, at, text);
                if (!bad) show_ids(t, "expected", w, nwant, at);
                if (!bad) show_ids(t, "got", got.v, got.n, at);
                bad++;
            } else {
                char *dec;
                size_t dlen;
                if (tok_decode(t, got.v, got.n, false, &dec, &dlen, &err)) {
                    fprintf(stderr, "FAIL %s %s: decode error: %s\n", name, doc, err.msg);
                    bad_decode++;
                } else {
                    if (strcmp(dec, want_text)) {
                        if (!bad_decode)
                            fprintf(stderr, "FIRST DECODE MISMATCH %s %s\n  want: %.300s\n  got:  %.300s\n",
                                    name, doc, want_text, dec);
                        bad_decode++;
                    }
                    free(dec);
                }
            }
        }
        free(w);
        tok_ids_free(&got);
        cJSON_Delete(o);
    }
    for (int k = 0; k < ntk; k++) {
        tok_free(tk[k].t);
        free(tk[k].dir);
    }
    free(all);
    printf("tokenizer conformance: %ld documents, %ld tokens compared over %d tokenizers: "
           "%ld id mismatches, %ld decode mismatches; encode %.1f MB/s\n",
           docs, tokens, ntk, bad, bad_decode, secs > 0 ? bytes / secs / 1e6 : 0.0);
    return bad || bad_decode ? 1 : 0;
}
