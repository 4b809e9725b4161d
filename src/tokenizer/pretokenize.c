/* pretokenize.c — the pre-tokenizer: a sequence of Split(regex) and
 * ByteLevel steps that cut normalized text into words, with HF's split
 * behaviors (Isolated, Removed, MergedWithPrevious, MergedWithNext). Regexes
 * are PCRE2 (UTF + UCP, JIT when available) standing in for HF's Oniguruma;
 * the byte->character mapping of ByteLevel needs no work here (bpe.c works
 * on raw bytes). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"

pcre2_code *regex_compile(const char *pattern, bool literal, const char *path, alloy_err *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opt = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        alloy_fail(err, "%s: pre_tokenizer regex /%s/ at offset %zu: %s", path, pattern, (size_t)eo,
                   (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  /* falls back to the interpreter on failure */
    return re;
}

/* Matches of re in s[0..n) as alternating (start, len, is_match) runs that
 * cover s, like HF's Pattern::find_matches; empty matches are skipped. */
typedef struct { uint32_t start, len; bool match; } run;

static int split_piece(const tok_pretok *st, pcre2_match_data *md, const char *base, tok_span p,
                       tok_spans *out, run **runs, size_t *runs_cap, alloy_err *err) {
    const char *s = base + p.start;
    size_t n = p.len, nr = 0, prev = 0, off = 0;
    while (off < n) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return alloy_fail(err, "tokenizer: regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {  /* empty: step over one character */
            off = ms + 1;
            while (off < n && ((uint8_t)s[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (nr + 2 > *runs_cap) {
            size_t cap = *runs_cap ? *runs_cap * 2 : 64;
            void *q = realloc(*runs, cap * sizeof **runs);
            if (!q) return alloy_fail(err, "tokenizer: out of memory");
            *runs = q;
            *runs_cap = cap;
        }
        if (ms > prev) (*runs)[nr++] = (run){(uint32_t)prev, (uint32_t)(ms - prev), false};
        (*runs)[nr++] = (run){(uint32_t)ms, (uint32_t)(me - ms), true};
        prev = off = me;
    }
    if (prev < n) {
        if (nr + 1 > *runs_cap) {
            size_t cap = *runs_cap ? *runs_cap * 2 : 64;
            void *q = realloc(*runs, cap * sizeof **runs);
            if (!q) return alloy_fail(err, "tokenizer: out of memory");
            *runs = q;
            *runs_cap = cap;
        }
        (*runs)[nr++] = (run){(uint32_t)prev, (uint32_t)(n - prev), false};
    }
    run *r = *runs;
    switch (st->behavior) {
    case SPLIT_ISOLATED:
    case SPLIT_REMOVED:
        for (size_t k = 0; k < nr; k++) {
            if (st->behavior == SPLIT_REMOVED && r[k].match) continue;
            if (tok_spans_push(out, p.start + r[k].start, r[k].len, err)) return -1;
        }
        break;
    case SPLIT_MERGED_PREV: {  /* a match joins the piece before it */
        size_t first = out->n;
        bool prev_match = false;
        for (size_t k = 0; k < nr; k++) {
            if (r[k].match && !prev_match && out->n > first) out->v[out->n - 1].len += r[k].len;
            else if (tok_spans_push(out, p.start + r[k].start, r[k].len, err)) return -1;
            prev_match = r[k].match;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: {  /* a match joins the piece after it (walk backwards) */
        size_t first = out->n;
        bool prev_match = false;
        for (size_t k = nr; k-- > 0;) {
            if (r[k].match && !prev_match && out->n > first) {
                tok_span *l = &out->v[out->n - 1];
                l->len += r[k].len;
                l->start -= r[k].len;
            } else if (tok_spans_push(out, p.start + r[k].start, r[k].len, err)) {
                return -1;
            }
            prev_match = r[k].match;
        }
        for (size_t a = first, b = out->n - 1; a < b && b != (size_t)-1; a++, b--) {
            tok_span tmp = out->v[a];
            out->v[a] = out->v[b];
            out->v[b] = tmp;
        }
        break;
    }
    }
    return 0;
}

/* ByteLevel(add_prefix_space): every piece not starting with a space gets
 * one. Rebuilds the text into w->scratch. */
static int add_prefix_spaces(tok_work *w, const char **s, tok_spans *pieces, alloy_err *err) {
    tok_buf nb = {0};
    for (size_t k = 0; k < pieces->n; k++) {
        tok_span *p = &pieces->v[k];
        uint32_t start = (uint32_t)nb.n;
        if ((p->len == 0 || (*s)[p->start] != ' ') && tok_buf_put(&nb, " ", 1, err)) goto fail;
        if (tok_buf_put(&nb, *s + p->start, p->len, err)) goto fail;
        p->start = start;
        p->len = (uint32_t)nb.n - start;
    }
    free(w->scratch.p);
    w->scratch = nb;
    *s = nb.p;
    return 0;
fail:
    free(nb.p);
    return -1;
}

int pretokenize(const tokenizer *t, tok_work *w, const char **s, size_t *n, tok_spans *out,
                alloy_err *err) {
    tok_spans *cur = &w->a, *next = &w->b;
    cur->n = 0;
    if (tok_spans_push(cur, 0, (uint32_t)*n, err)) return -1;
    run *runs = NULL;
    size_t runs_cap = 0;
    for (int k = 0; k < t->n_pre; k++) {
        const tok_pretok *st = &t->pre[k];
        if (st->bytelevel && st->add_prefix_space && add_prefix_spaces(w, s, cur, err)) goto fail;
        if (!st->re) continue;
        next->n = 0;
        for (size_t i = 0; i < cur->n; i++)
            if (split_piece(st, w->md, *s, cur->v[i], next, &runs, &runs_cap, err)) goto fail;
        tok_spans *tmp = cur;
        cur = next;
        next = tmp;
    }
    free(runs);
    out->n = 0;
    for (size_t i = 0; i < cur->n; i++)
        if (cur->v[i].len && tok_spans_push(out, cur->v[i].start, cur->v[i].len, err)) return -1;
    return 0;
fail:
    free(runs);
    return -1;
}
