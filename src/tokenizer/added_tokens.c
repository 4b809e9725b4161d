/* added_tokens.c — splitting text on added/special tokens before anything
 * else sees it, as HF's AddedVocabulary does: leftmost-longest matching over
 * a byte trie, then the single_word, lstrip and rstrip rules. Which tokens go
 * in which trie (raw or normalized text) is decided at load (tokenizer.c). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"

static int trie_node(tok_trie *tr, uint8_t byte, alloy_err *err) {
    if (tr->n == tr->cap) {
        size_t cap = tr->cap ? tr->cap * 2 : 64;
        void *p = realloc(tr->node, cap * sizeof *tr->node);
        if (!p) return alloy_fail(err, "tokenizer: out of memory");
        tr->node = p;
        tr->cap = cap;
    }
    tr->node[tr->n] = (struct tok_trie_node){-1, -1, -1, byte};
    return (int)tr->n++;
}

int trie_add(tok_trie *tr, const char *s, size_t len, int32_t added_index, alloy_err *err) {
    if (len == 0) return 0;  /* HF never matches an empty token */
    if (tr->n == 0 && trie_node(tr, 0, err) < 0) return -1;
    int32_t cur = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->node[cur].child;
        while (c >= 0 && tr->node[c].byte != b) c = tr->node[c].sibling;
        if (c < 0) {
            int nc = trie_node(tr, b, err);
            if (nc < 0) return -1;
            c = nc;
            tr->node[c].sibling = tr->node[cur].child;
            tr->node[cur].child = c;
        }
        cur = c;
    }
    /* the first token with this content wins, as in HF's map */
    if (tr->node[cur].added < 0) tr->node[cur].added = added_index;
    tr->first[(uint8_t)s[0]] = true;
    return 0;
}

void trie_free(tok_trie *tr) {
    free(tr->node);
    memset(tr, 0, sizeof *tr);
}

/* Longest token starting at s[i]: its added index and end, or -1. */
static int32_t trie_longest(const tok_trie *tr, const char *s, size_t n, size_t i, size_t *end) {
    int32_t cur = 0, best = -1;
    for (size_t p = i; p < n; p++) {
        int32_t c = tr->node[cur].child;
        while (c >= 0 && tr->node[c].byte != (uint8_t)s[p]) c = tr->node[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->node[c].added >= 0) best = tr->node[c].added, *end = p + 1;
    }
    return best;
}

/* Last character before s[i] / first at s[i] (s is valid UTF-8). */
static uint32_t char_before(const char *s, size_t i) {
    size_t p = i - 1;
    while (p > 0 && ((uint8_t)s[p] & 0xC0) == 0x80) p--;
    return (uint32_t)utf8_next((const uint8_t *)s, i, &p);
}

static uint32_t char_at(const char *s, size_t n, size_t i) {
    return (uint32_t)utf8_next((const uint8_t *)s, n, &i);
}

static int seg_push(tok_segs *o, size_t start, size_t len, int32_t added, alloy_err *err) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        void *p = realloc(o->v, cap * sizeof *o->v);
        if (!p) return alloy_fail(err, "tokenizer: out of memory");
        o->v = p;
        o->cap = cap;
    }
    o->v[o->n++] = (tok_seg){(uint32_t)start, (uint32_t)len, added};
    return 0;
}

int added_split(const tokenizer *t, const tok_trie *tr, const char *s, size_t n, tok_segs *out,
                alloy_err *err) {
    out->n = 0;
    size_t done = 0;  /* end of the last emitted segment */
    size_t i = 0;     /* where the matcher resumes (end of the raw match) */
    while (tr->n && i < n) {
        if (!tr->first[(uint8_t)s[i]]) {
            i++;
            continue;
        }
        size_t stop;
        int32_t a = trie_longest(tr, s, n, i, &stop);
        if (a < 0) {
            i++;
            continue;
        }
        size_t start = i;
        i = stop;
        const tok_added *ad = &t->added[a];
        if (ad->single_word) {
            bool word_before = start > 0 && uc_is_alnum(char_before(s, start));
            bool word_after = stop < n && uc_is_alnum(char_at(s, n, stop));
            if (word_before || word_after) continue;
        }
        if (ad->lstrip) {
            size_t ns = start;
            while (ns > 0 && uc_is_space(char_before(s, ns))) {
                ns--;
                while (ns > 0 && ((uint8_t)s[ns] & 0xC0) == 0x80) ns--;
            }
            start = ns > done ? ns : done;
        }
        if (ad->rstrip) {
            while (stop < n) {
                size_t q = stop;
                if (!uc_is_space((uint32_t)utf8_next((const uint8_t *)s, n, &q))) break;
                stop = q;
            }
        }
        if (start > done && seg_push(out, done, start - done, -1, err)) return -1;
        if (seg_push(out, start, stop - start, a, err)) return -1;
        done = stop;
        if (i < done) i = done;
    }
    if (done < n && seg_push(out, done, n - done, -1, err)) return -1;
    return 0;
}
