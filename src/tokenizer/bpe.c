/* bpe.c — the BPE model: the string->id maps, the (left,right)->rank merge
 * table, and the merge loop that turns one pre-tokenized word (raw bytes)
 * into ids, with a small word cache. Loading the tables from JSON is
 * tokenizer.c's job; splitting text into words is pretokenize.c's. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"

static uint32_t hash_bytes(const char *k, size_t len) {
    uint64_t h = 1469598103934665603ull;  /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)k[i]) * 1099511628211ull;
    return (uint32_t)(h ^ h >> 32);
}

static int strmap_grow(tok_strmap *m, alloy_err *err) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    struct tok_strent *ent = realloc(m->ent, cap * sizeof *ent);
    if (!ent) return alloy_fail(err, "tokenizer: out of memory");
    m->ent = ent;
    m->cap = cap;
    size_t slots = cap * 2;
    uint32_t *slot = calloc(slots, sizeof *slot);
    if (!slot) return alloy_fail(err, "tokenizer: out of memory");
    free(m->slot);
    m->slot = slot;
    m->mask = slots - 1;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = m->ent[e].hash & m->mask;
        while (slot[i]) i = (i + 1) & m->mask;
        slot[i] = (uint32_t)e + 1;
    }
    return 0;
}

static uint32_t *strmap_find(const tok_strmap *m, const char *k, size_t len, uint32_t h) {
    if (!m->slot) return NULL;
    size_t i = h & m->mask;
    for (;;) {
        uint32_t *s = &m->slot[i];
        if (!*s) return s;
        const struct tok_strent *e = &m->ent[*s - 1];
        if (e->hash == h && e->len == len && !memcmp(m->keys.p + e->off, k, len)) return s;
        i = (i + 1) & m->mask;
    }
}

int strmap_put(tok_strmap *m, const char *k, size_t len, int32_t id, alloy_err *err) {
    if (m->n + 1 > m->cap && strmap_grow(m, err)) return -1;
    uint32_t h = hash_bytes(k, len);
    uint32_t *s = strmap_find(m, k, len, h);
    if (*s) {
        m->ent[*s - 1].id = id;
        return 0;
    }
    uint32_t off = (uint32_t)m->keys.n;
    if (tok_buf_put(&m->keys, k, len, err)) return -1;
    m->ent[m->n] = (struct tok_strent){off, (uint32_t)len, id, h};
    *s = (uint32_t)++m->n;
    return 0;
}

int32_t strmap_get(const tok_strmap *m, const char *k, size_t len) {
    uint32_t *s = strmap_find(m, k, len, hash_bytes(k, len));
    return s && *s ? m->ent[*s - 1].id : -1;
}

void strmap_free(tok_strmap *m) {
    free(m->slot);
    free(m->ent);
    free(m->keys.p);
    memset(m, 0, sizeof *m);
}

static size_t merge_slot(uint64_t key, size_t mask) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ h >> 29) & mask;
}

const tok_merge *merge_get(const tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = merge_slot(key, t->merge_mask);
    for (;;) {
        const tok_merge *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

void merge_put(tok_merge *tab, size_t mask, int32_t a, int32_t b, uint32_t rank, int32_t id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = merge_slot(key, mask);
    while (tab[i].key != UINT64_MAX && tab[i].key != key) i = (i + 1) & mask;
    tab[i] = (tok_merge){key, rank, id};
}

/* ---- the merge loop ---- */

static void heap_push(struct tok_heap *h, size_t *n, uint32_t rank, uint32_t pos) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < rank || (h[p].rank == rank && h[p].pos < pos)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = (struct tok_heap){rank, pos};
}

static struct tok_heap heap_pop(struct tok_heap *h, size_t *n) {
    struct tok_heap top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && (h[c + 1].rank < h[c].rank ||
                           (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Merge the lowest-ranked adjacent pair first (leftmost on ties), one
 * occurrence at a time, until no pair has a merge: HF's Word::merge_all.
 * A heap keeps it O(n log n) for long words. */
static int merge_word(const tokenizer *t, tok_work *w, const uint8_t *s, size_t n, tok_ids *out,
                      alloy_err *err) {
    if (n > w->sym_cap) {
        size_t cap = n < 64 ? 64 : n;
        void *sym = realloc(w->sym, cap * sizeof *w->sym);
        void *heap = sym ? realloc(w->heap, 2 * cap * sizeof *w->heap) : NULL;
        if (sym) w->sym = sym;
        if (heap) w->heap = heap;
        if (!sym || !heap) return alloy_fail(err, "tokenizer: out of memory");
        w->sym_cap = cap;
    }
    struct tok_sym *sym = w->sym;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0)
            return alloy_fail(err, "%s: byte 0x%02x has no token in model.vocab", t->json_path, s[i]);
        sym[i] = (struct tok_sym){id, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const tok_merge *m = merge_get(t, sym[i].id, sym[i + 1].id);
        if (m) heap_push(w->heap, &hn, m->rank, (uint32_t)i);
    }
    while (hn) {
        struct tok_heap top = heap_pop(w->heap, &hn);
        int32_t pos = (int32_t)top.pos, nx = sym[pos].next;
        if (sym[pos].id < 0 || nx < 0) continue;
        const tok_merge *m = merge_get(t, sym[pos].id, sym[nx].id);
        if (!m || m->rank != top.rank) continue;  /* stale entry */
        int32_t nn = sym[nx].next;
        sym[pos].id = m->id;
        sym[pos].next = nn;
        sym[nx].id = -1;
        if (nn >= 0) sym[nn].prev = pos;
        /* the heap never holds more than one entry per live pair plus stale
         * ones; 2n slots suffice because each merge adds at most two */
        int32_t pv = sym[pos].prev;
        if (pv >= 0 && (m = merge_get(t, sym[pv].id, sym[pos].id)))
            heap_push(w->heap, &hn, m->rank, (uint32_t)pv);
        if (nn >= 0 && (m = merge_get(t, sym[pos].id, sym[nn].id)))
            heap_push(w->heap, &hn, m->rank, (uint32_t)pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (tok_ids_push(out, sym[i].id, err)) return -1;
    return 0;
}

int bpe_word(const tokenizer *t, tok_work *w, const uint8_t *s, size_t n, tok_ids *out,
             alloy_err *err) {
    if (n == 0) return 0;
    if (n == 1) {
        if (t->byte_id[s[0]] < 0)
            return alloy_fail(err, "%s: byte 0x%02x has no token in model.vocab", t->json_path, s[0]);
        return tok_ids_push(out, t->byte_id[s[0]], err);
    }
    tok_cache_ent *ce = NULL;
    if (n <= TOK_CACHE_KEY) {
        ce = &t->cache[hash_bytes((const char *)s, n) % TOK_CACHE_SLOTS];
        pthread_mutex_lock((pthread_mutex_t *)&t->cache_lock);
        if (ce->klen == n && !memcmp(ce->key, s, n)) {
            int32_t ids[TOK_CACHE_IDS];
            int k = ce->nids;
            memcpy(ids, ce->ids, (size_t)k * sizeof *ids);
            pthread_mutex_unlock((pthread_mutex_t *)&t->cache_lock);
            for (int i = 0; i < k; i++)
                if (tok_ids_push(out, ids[i], err)) return -1;
            return 0;
        }
        pthread_mutex_unlock((pthread_mutex_t *)&t->cache_lock);
    }
    size_t first = out->n;
    int32_t whole = t->ignore_merges ? strmap_get(&t->by_bytes, (const char *)s, n) : -1;
    if (whole >= 0) {
        if (tok_ids_push(out, whole, err)) return -1;
    } else if (merge_word(t, w, s, n, out, err)) {
        return -1;
    }
    size_t k = out->n - first;
    if (ce && k <= TOK_CACHE_IDS) {
        pthread_mutex_lock((pthread_mutex_t *)&t->cache_lock);
        ce->klen = (uint8_t)n;
        ce->nids = (uint8_t)k;
        memcpy(ce->key, s, n);
        memcpy(ce->ids, out->v + first, k * sizeof *out->v);
        pthread_mutex_unlock((pthread_mutex_t *)&t->cache_lock);
    }
    return 0;
}
