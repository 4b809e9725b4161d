/* tok_internal.h — the tokenizer's internal state and the helpers its files
 * share (UTF-8, the ByteLevel alphabet, hash maps, added-token matching,
 * pre-tokenization, NFC, BPE). Not part of the interface: only
 * src/tokenizer/ includes it. */
#ifndef ALLOY_TOK_INTERNAL_H
#define ALLOY_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* ---- growable byte buffer and span list ---- */
typedef struct tok_buf {
    char *p;
    size_t n, cap;
} tok_buf;
int tok_buf_put(tok_buf *b, const void *data, size_t n, alloy_err *err);

typedef struct tok_span {  /* a piece of text: [start, start+len) of some buffer */
    uint32_t start, len;
} tok_span;
typedef struct tok_spans {
    tok_span *v;
    size_t n, cap;
} tok_spans;
int tok_spans_push(tok_spans *s, uint32_t start, uint32_t len, alloy_err *err);

/* ---- UTF-8 (utf8.c) ---- */
/* Decode the character at s[*i] (n bytes in all), advance *i; -1 if the
 * bytes there are not valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int32_t utf8_next(const uint8_t *s, size_t n, size_t *i);
/* Index of the first invalid byte, or n when s is valid UTF-8. */
size_t utf8_check(const uint8_t *s, size_t n);
/* Write cp as UTF-8 into out (4 bytes room); returns the length. */
int utf8_put(uint32_t cp, char *out);
/* Append s to b, replacing invalid sequences by U+FFFD the way Rust's
 * String::from_utf8_lossy does (one per maximal invalid subpart). */
int utf8_lossy(tok_buf *b, const uint8_t *s, size_t n, alloy_err *err);
/* char::is_whitespace / char::is_alphanumeric (used by added-token flags). */
bool uc_is_space(uint32_t cp);
bool uc_is_alnum(uint32_t cp);

/* ---- ByteLevel alphabet (bytelevel.c) ---- */
/* Code point that stands for byte b in vocabulary strings. */
uint32_t bytelevel_char(uint8_t b);
/* Decode a vocabulary string to the bytes it stands for. Returns the byte
 * count (<= len), or -1 if some character is not in the alphabet. */
long bytelevel_decode(const char *s, size_t len, uint8_t *out);

/* ---- hash maps (bpe.c) ---- */
typedef struct tok_strmap {  /* byte string -> id; keys live in an arena */
    uint32_t *slot;          /* index+1 into ent, 0 = empty */
    struct tok_strent { uint32_t off, len; int32_t id; uint32_t hash; } *ent;
    size_t n, cap, mask;
    tok_buf keys;
} tok_strmap;
int strmap_put(tok_strmap *m, const char *k, size_t len, int32_t id, alloy_err *err);
int32_t strmap_get(const tok_strmap *m, const char *k, size_t len);
void strmap_free(tok_strmap *m);

typedef struct tok_merge {   /* (left, right) -> rank and merged id */
    uint64_t key;            /* left << 32 | right, UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
} tok_merge;

/* ---- pre-tokenizer steps ---- */
typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT } split_behavior;
typedef struct tok_pretok {
    pcre2_code *re;          /* Split regex, or the GPT-2 regex of ByteLevel(use_regex) */
    split_behavior behavior;
    bool bytelevel;          /* a ByteLevel step (re NULL when use_regex is false) */
    bool add_prefix_space;
} tok_pretok;

/* ---- added tokens (added_tokens.c) ---- */
typedef struct tok_added {
    uint32_t off, len;       /* content in t->arena */
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

typedef struct tok_trie {    /* byte trie; node 0 is the root */
    struct tok_trie_node { int32_t child, sibling, added; uint8_t byte; } *node;
    size_t n, cap;
    bool first[256];         /* bytes that can start a match */
} tok_trie;

/* ---- word cache (bpe.c) ---- */
#define TOK_CACHE_SLOTS 8192
#define TOK_CACHE_KEY 24     /* longest word cached, bytes */
#define TOK_CACHE_IDS 8      /* most ids cached per word */
typedef struct tok_cache_ent {
    uint8_t klen, nids;
    char key[TOK_CACHE_KEY];
    int32_t ids[TOK_CACHE_IDS];
} tok_cache_ent;

struct tokenizer {
    char *json_path;
    tok_buf arena;           /* vocabulary strings, decoded bytes, added contents */
    int32_t n_ids;           /* one more than the largest id */
    uint32_t *str_off, *str_len;      /* [n_ids] vocab string; len UINT32_MAX = no token */
    uint32_t *bytes_off, *bytes_len;  /* [n_ids] decoded bytes */
    uint8_t *special;        /* [n_ids] */
    tok_strmap by_str;       /* vocab and added-token strings -> id */
    tok_strmap by_bytes;     /* decoded bytes -> model vocab id (ignore_merges) */
    tok_merge *merges;       /* open addressing, merge_mask + 1 slots */
    size_t merge_mask;
    int32_t byte_id[256];    /* id of the one-byte token of each byte */
    bool ignore_merges;

    bool nfc;                /* normalizer */
    tok_pretok *pre;
    int n_pre;
    tok_added *added;
    int n_added;
    tok_trie trie_raw, trie_norm;  /* added tokens matched before / after normalization */

    tok_ids post_prefix, post_suffix;  /* post-processor, single sequence */
    int32_t bos, eos;
    int32_t stop[8];
    int n_stop;
    tok_chat_kind chat;

    pthread_mutex_t cache_lock;
    tok_cache_ent *cache;    /* TOK_CACHE_SLOTS entries */
};

/* merges */
const tok_merge *merge_get(const tokenizer *t, int32_t a, int32_t b);
/* Insert into a table of mask+1 slots (pre-filled with 0xFF bytes); a later
 * rank of the same pair replaces an earlier one, as in HF. */
void merge_put(tok_merge *tab, size_t mask, int32_t a, int32_t b, uint32_t rank, int32_t id);

/* bpe.c: encode one pre-tokenized word (raw bytes) and append its ids. */
typedef struct tok_work tok_work;
int bpe_word(const tokenizer *t, tok_work *w, const uint8_t *s, size_t n, tok_ids *out,
             alloy_err *err);

/* added_tokens.c */
int trie_add(tok_trie *tr, const char *s, size_t len, int32_t added_index, alloy_err *err);
void trie_free(tok_trie *tr);
/* Split s into segments: spans of text (added = -1) and matched added tokens
 * (index into t->added), with lstrip/rstrip/single_word applied as HF does. */
typedef struct tok_seg { uint32_t start, len; int32_t added; } tok_seg;
typedef struct tok_segs { tok_seg *v; size_t n, cap; } tok_segs;
int added_split(const tokenizer *t, const tok_trie *tr, const char *s, size_t n, tok_segs *out,
                alloy_err *err);

/* pretokenize.c: run the pre-tokenizer steps over s[0..n) and return the
 * final pieces in *out; pieces may point into *scratch (prefix spaces). */
int pretokenize(const tokenizer *t, tok_work *w, const char **s, size_t *n, tok_spans *out,
                alloy_err *err);
pcre2_code *regex_compile(const char *pattern, bool literal, const char *path, alloy_err *err);

/* normalize.c: NFC of s into b (replacing its contents). */
int nfc_normalize(const char *s, size_t n, tok_buf *b, alloy_err *err);
/* True when s is certainly NFC already (quick check). */
bool nfc_quick_yes(const char *s, size_t n);

/* per-call scratch (tokenizer.c) */
struct tok_work {
    pcre2_match_data *md;
    tok_spans a, b;          /* piece lists */
    tok_segs segs, segs2;
    tok_buf norm, scratch;
    struct tok_sym { int32_t id, prev, next; } *sym;
    size_t sym_cap;
    struct tok_heap { uint32_t rank, pos; } *heap;
    size_t heap_cap;
};

#endif
