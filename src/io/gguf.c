/* gguf.c — GGUF v3 writer and the HF checkpoint -> GGUF converter (see gguf.h).
 *
 * File layout written here (all integers little-endian):
 *   "GGUF" u32 version=3 u64 n_tensors u64 n_kv
 *   n_kv x { string key, u32 value_type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   zero padding to GGUF_ALIGNMENT, then the data section: each tensor at its
 *   offset (relative to the section, a multiple of GGUF_ALIGNMENT).
 * A string is u64 length + bytes (no NUL); an array is u32 element type +
 * u64 count + elements.
 *
 * Not here: GGUF reading, quantization, architectures other than qwen2/llama. */
#include "io/gguf.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

/* GGUF metadata value types. */
enum {
    GV_UINT32 = 4,
    GV_INT32 = 5,
    GV_FLOAT32 = 6,
    GV_BOOL = 7,
    GV_STRING = 8,
    GV_ARRAY = 9,
};

#define GGUF_VERSION 3
#define GGUF_NAME_MAX 64

/* ---- growable byte buffer ---- */

typedef struct buf {
    unsigned char *p;
    size_t len, cap;
    bool oom;
} buf;

static void buf_put(buf *b, const void *data, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

/* x86-64 and aarch64 are little-endian, which GGUF is: raw copies suffice. */
static void buf_u32(buf *b, uint32_t v) { buf_put(b, &v, 4); }
static void buf_u64(buf *b, uint64_t v) { buf_put(b, &v, 8); }
static void buf_str(buf *b, const char *s) {
    size_t n = strlen(s);
    buf_u64(b, n);
    buf_put(b, s, n);
}

/* ---- writer ---- */

typedef struct gtensor {
    char name[GGUF_NAME_MAX];
    gguf_type type;
    int ndim;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset, written;
} gtensor;

struct gguf_writer {
    buf kv;           /* serialized key/value pairs */
    uint64_t n_kv;
    gtensor *tensors;
    int ntensors, cap;
    int fd;           /* -1 until begin */
    char *tmp_path, *path;
    uint64_t data_start;
};

gguf_writer *gguf_writer_new(alloy_err *err) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) {
        alloy_fail(err, "out of memory");
        return NULL;
    }
    w->fd = -1;
    return w;
}

static int kv_head(gguf_writer *w, const char *key, uint32_t type, alloy_err *err) {
    if (w->fd >= 0) return alloy_fail(err, "gguf: metadata key %s added after the header was written", key);
    buf_str(&w->kv, key);
    buf_u32(&w->kv, type);
    w->n_kv++;
    return 0;
}

static int kv_done(gguf_writer *w, const char *key, alloy_err *err) {
    return w->kv.oom ? alloy_fail(err, "gguf: out of memory at metadata key %s", key) : 0;
}

int gguf_kv_u32(gguf_writer *w, const char *key, uint32_t v, alloy_err *err) {
    if (kv_head(w, key, GV_UINT32, err)) return -1;
    buf_u32(&w->kv, v);
    return kv_done(w, key, err);
}

int gguf_kv_i32(gguf_writer *w, const char *key, int32_t v, alloy_err *err) {
    if (kv_head(w, key, GV_INT32, err)) return -1;
    buf_put(&w->kv, &v, 4);
    return kv_done(w, key, err);
}

int gguf_kv_f32(gguf_writer *w, const char *key, float v, alloy_err *err) {
    if (kv_head(w, key, GV_FLOAT32, err)) return -1;
    buf_put(&w->kv, &v, 4);
    return kv_done(w, key, err);
}

int gguf_kv_bool(gguf_writer *w, const char *key, bool v, alloy_err *err) {
    if (kv_head(w, key, GV_BOOL, err)) return -1;
    uint8_t b = v ? 1 : 0;
    buf_put(&w->kv, &b, 1);
    return kv_done(w, key, err);
}

int gguf_kv_str(gguf_writer *w, const char *key, const char *v, alloy_err *err) {
    if (kv_head(w, key, GV_STRING, err)) return -1;
    buf_str(&w->kv, v);
    return kv_done(w, key, err);
}

int gguf_kv_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n,
                    alloy_err *err) {
    if (n == 0) return alloy_fail(err, "gguf: empty array for metadata key %s", key);
    if (kv_head(w, key, GV_ARRAY, err)) return -1;
    buf_u32(&w->kv, GV_STRING);
    buf_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) buf_str(&w->kv, v[i]);
    return kv_done(w, key, err);
}

int gguf_kv_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                    alloy_err *err) {
    if (n == 0) return alloy_fail(err, "gguf: empty array for metadata key %s", key);
    if (kv_head(w, key, GV_ARRAY, err)) return -1;
    buf_u32(&w->kv, GV_INT32);
    buf_u64(&w->kv, n);
    buf_put(&w->kv, v, n * 4);
    return kv_done(w, key, err);
}

static size_t type_size(gguf_type t) { return t == GGUF_TYPE_F32 ? 4 : 2; }

int gguf_add_tensor(gguf_writer *w, const char *name, gguf_type type, int ndim,
                    const int64_t *ne, alloy_err *err) {
    if (w->fd >= 0) return alloy_fail(err, "gguf: tensor %s added after the header was written", name);
    if (strlen(name) >= GGUF_NAME_MAX) return alloy_fail(err, "gguf: tensor name too long: %s", name);
    if (ndim < 1 || ndim > GGUF_MAX_DIMS)
        return alloy_fail(err, "gguf: tensor %s has %d dimensions (1..%d allowed)", name, ndim,
                          GGUF_MAX_DIMS);
    if (type != GGUF_TYPE_F32 && type != GGUF_TYPE_F16 && type != GGUF_TYPE_BF16)
        return alloy_fail(err, "gguf: tensor %s has unsupported type %d", name, (int)type);
    for (int i = 0; i < w->ntensors; i++)
        if (!strcmp(w->tensors[i].name, name)) return alloy_fail(err, "gguf: duplicate tensor %s", name);
    if (w->ntensors == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        gtensor *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return alloy_fail(err, "out of memory");
        w->tensors = t;
        w->cap = cap;
    }
    gtensor *t = &w->tensors[w->ntensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ndim = ndim;
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (ne[i] < 1) return alloy_fail(err, "gguf: tensor %s has dimension %d = %lld", name, i, (long long)ne[i]);
        t->ne[i] = ne[i];
        n *= (uint64_t)ne[i];
    }
    t->nbytes = n * type_size(type);
    return w->ntensors++;
}

uint64_t gguf_tensor_nbytes(const gguf_writer *w, int i) {
    return i >= 0 && i < w->ntensors ? w->tensors[i].nbytes : 0;
}

static uint64_t align_up(uint64_t x) { return (x + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT; }

static int pwrite_all(int fd, const void *data, uint64_t n, uint64_t off) {
    const char *p = data;
    while (n > 0) {
        ssize_t k = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (uint64_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int gguf_writer_begin(gguf_writer *w, const char *path, alloy_err *err) {
    if (w->fd >= 0) return alloy_fail(err, "gguf: %s: header already written", path);
    /* The temp file lives next to the destination so rename() is atomic. */
    char *dir = fs_dirname(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(dir) + strlen(base) + 16;
    w->tmp_path = malloc(n);
    w->path = strdup(path);
    if (!dir || !w->tmp_path || !w->path) {
        free(dir);
        return alloy_fail(err, "out of memory");
    }
    snprintf(w->tmp_path, n, "%s/.%s.tmp-XXXXXX", dir, base);
    free(dir);
    w->fd = mkstemp(w->tmp_path);
    if (w->fd < 0) {
        int rc = alloy_fail(err, "%s: cannot create a temporary file next to it: %s", path, strerror(errno));
        free(w->tmp_path);
        w->tmp_path = NULL;
        return rc;
    }
    fchmod(w->fd, 0644);

    buf h = {0};
    buf_put(&h, "GGUF", 4);
    buf_u32(&h, GGUF_VERSION);
    buf_u64(&h, (uint64_t)w->ntensors);
    buf_u64(&h, w->n_kv);
    buf_put(&h, w->kv.p, w->kv.len);
    uint64_t off = 0;
    for (int i = 0; i < w->ntensors; i++) {
        gtensor *t = &w->tensors[i];
        t->offset = off;
        buf_str(&h, t->name);
        buf_u32(&h, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) buf_u64(&h, (uint64_t)t->ne[d]);
        buf_u32(&h, (uint32_t)t->type);
        buf_u64(&h, t->offset);
        off = align_up(off + t->nbytes);
    }
    static const unsigned char zeros[GGUF_ALIGNMENT];
    buf_put(&h, zeros, align_up(h.len) - h.len);
    if (h.oom) {
        free(h.p);
        return alloy_fail(err, "%s: out of memory building the header", path);
    }
    w->data_start = h.len;
    int rc = 0;
    if (pwrite_all(w->fd, h.p, h.len, 0) || ftruncate(w->fd, (off_t)(w->data_start + off)))
        rc = alloy_fail(err, "%s: write failed: %s", w->tmp_path, strerror(errno));
    free(h.p);
    return rc;
}

int gguf_writer_write(gguf_writer *w, int i, uint64_t off, const void *data, uint64_t n,
                      alloy_err *err) {
    if (w->fd < 0) return alloy_fail(err, "gguf: tensor data written before the header");
    if (i < 0 || i >= w->ntensors) return alloy_fail(err, "gguf: no tensor #%d", i);
    gtensor *t = &w->tensors[i];
    if (off + n > t->nbytes) return alloy_fail(err, "gguf: %s: write past the end of the tensor", t->name);
    if (pwrite_all(w->fd, data, n, w->data_start + t->offset + off))
        return alloy_fail(err, "%s: write of tensor %s failed: %s", w->tmp_path, t->name, strerror(errno));
    t->written += n;
    return 0;
}

int gguf_writer_put(gguf_writer *w, int i, const void *data, alloy_err *err) {
    return gguf_writer_write(w, i, 0, data, gguf_tensor_nbytes(w, i), err);
}

static void writer_free(gguf_writer *w) {
    if (w->fd >= 0) close(w->fd);
    free(w->kv.p);
    free(w->tensors);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

void gguf_writer_abort(gguf_writer *w) {
    if (!w) return;
    if (w->tmp_path && w->fd >= 0) unlink(w->tmp_path);
    writer_free(w);
}

int gguf_writer_finish(gguf_writer *w, alloy_err *err) {
    int rc = 0;
    if (w->fd < 0) rc = alloy_fail(err, "gguf: finish without a header");
    for (int i = 0; !rc && i < w->ntensors; i++)
        if (w->tensors[i].written != w->tensors[i].nbytes)
            rc = alloy_fail(err, "%s: tensor %s: %llu of %llu bytes written", w->path, w->tensors[i].name,
                            (unsigned long long)w->tensors[i].written,
                            (unsigned long long)w->tensors[i].nbytes);
    if (!rc && fsync(w->fd)) rc = alloy_fail(err, "%s: fsync failed: %s", w->tmp_path, strerror(errno));
    if (!rc && rename(w->tmp_path, w->path))
        rc = alloy_fail(err, "%s: cannot rename %s into place: %s", w->path, w->tmp_path, strerror(errno));
    if (rc) {
        gguf_writer_abort(w);
        return -1;
    }
    writer_free(w);
    return 0;
}

/* ==== converter ==== */

typedef enum rope_kind { ROPE_NONE, ROPE_LINEAR, ROPE_LLAMA3 } rope_kind;

typedef struct hparams {
    const char *arch;  /* "qwen2" or "llama" */
    int n_embd, n_ff, n_layer, n_head, n_head_kv, head_dim, n_ctx, n_vocab;
    float eps, theta;
    bool tied;
    rope_kind rope;
    double rope_factor, low_freq_factor, high_freq_factor, orig_ctx;
} hparams;

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* Integer member; def when absent (-1 def: required). */
static int cfg_int(const cJSON *cfg, const char *key, int def, int *out, const char *path, alloy_err *err) {
    const cJSON *v = jget(cfg, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0) return alloy_fail(err, "%s: missing %s", path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
        v->valuedouble > 1e9)
        return alloy_fail(err, "%s: %s must be a positive integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

static double cfg_num(const cJSON *o, const char *key, double def) {
    const cJSON *v = jget(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int read_hparams(const cJSON *cfg, const char *path, hparams *hp, alloy_err *err) {
    memset(hp, 0, sizeof *hp);
    const cJSON *mt = jget(cfg, "model_type");
    const char *model_type = cJSON_IsString(mt) ? mt->valuestring : "";
    if (!strcmp(model_type, "qwen2")) {
        hp->arch = "qwen2";
    } else if (!strcmp(model_type, "llama") || !strcmp(model_type, "mistral")) {
        const cJSON *sw = jget(cfg, "sliding_window");
        if (!strcmp(model_type, "mistral") && cJSON_IsNumber(sw))
            return alloy_fail(err, "%s: mistral with sliding_window is not supported by the GGUF converter", path);
        hp->arch = "llama";
    } else {
        return alloy_fail(err, "%s: model_type '%s' is not supported by the GGUF converter (qwen2, llama)", path,
                          model_type);
    }
    if (cfg_int(cfg, "hidden_size", -1, &hp->n_embd, path, err) ||
        cfg_int(cfg, "intermediate_size", -1, &hp->n_ff, path, err) ||
        cfg_int(cfg, "num_hidden_layers", -1, &hp->n_layer, path, err) ||
        cfg_int(cfg, "num_attention_heads", -1, &hp->n_head, path, err) ||
        cfg_int(cfg, "num_key_value_heads", hp->n_head, &hp->n_head_kv, path, err) ||
        cfg_int(cfg, "max_position_embeddings", 4096, &hp->n_ctx, path, err) ||
        cfg_int(cfg, "vocab_size", -1, &hp->n_vocab, path, err))
        return -1;
    if (hp->n_head % hp->n_head_kv)
        return alloy_fail(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                          hp->n_head, hp->n_head_kv);
    if (cfg_int(cfg, "head_dim", hp->n_embd / hp->n_head, &hp->head_dim, path, err)) return -1;
    if (hp->head_dim % 2) return alloy_fail(err, "%s: head_dim %d must be even for RoPE", path, hp->head_dim);
    hp->eps = (float)cfg_num(cfg, "rms_norm_eps", 1e-6);
    const cJSON *tie = jget(cfg, "tie_word_embeddings");
    hp->tied = cJSON_IsBool(tie) ? cJSON_IsTrue(tie) : false;

    /* RoPE: transformers < 4.56 uses rope_theta + rope_scaling, newer ones
     * a rope_parameters object holding both. */
    const cJSON *rp = jget(cfg, "rope_parameters");
    const cJSON *rs = jget(cfg, "rope_scaling");
    if (!cJSON_IsObject(rs)) rs = cJSON_IsObject(rp) ? rp : NULL;
    hp->theta = (float)cfg_num(cfg, "rope_theta", cJSON_IsObject(rp) ? cfg_num(rp, "rope_theta", 10000) : 10000);
    hp->rope = ROPE_NONE;
    if (rs) {
        const cJSON *t = jget(rs, "rope_type");
        if (!cJSON_IsString(t)) t = jget(rs, "type");
        const char *type = cJSON_IsString(t) ? t->valuestring : "default";
        hp->rope_factor = cfg_num(rs, "factor", 8.0);
        if (!strcmp(type, "default")) {
            hp->rope = ROPE_NONE;
        } else if (!strcmp(type, "linear")) {
            hp->rope = ROPE_LINEAR;
        } else if (!strcasecmp(type, "llama3")) {
            hp->rope = ROPE_LLAMA3;
            hp->low_freq_factor = cfg_num(rs, "low_freq_factor", 1.0);
            hp->high_freq_factor = cfg_num(rs, "high_freq_factor", 4.0);
            hp->orig_ctx = cfg_num(rs, "original_max_position_embeddings", 8192);
        } else {
            return alloy_fail(err, "%s: rope scaling type '%s' is not supported by the GGUF converter", path, type);
        }
    }
    return 0;
}

/* ---- tokenizer ---- */

typedef struct vocab {
    int n;
    const char **tokens; /* n; point into the cJSON tree or pad[] */
    int32_t *types;      /* n */
    char **pad;          /* owned "[PADi]" strings, NULL where unused */
    int nmerges;
    const char **merges; /* nmerges; point into tree or own[] */
    char **own;          /* owned merge strings (array form), nmerges */
    const char *pre;
} vocab;

static void vocab_free(vocab *v) {
    if (v->pad)
        for (int i = 0; i < v->n; i++) free(v->pad[i]);
    if (v->own)
        for (int i = 0; i < v->nmerges; i++) free(v->own[i]);
    free(v->pad);
    free(v->own);
    free(v->tokens);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

/* llama.cpp's converter also marks these added tokens as control tokens
 * when the tokenizer does not flag them special. */
static bool looks_special(const char *s) {
    size_t n = strlen(s);
    if (!strcmp(s, "<pad>") || !strcmp(s, "<mask>")) return true;
    if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) return true;
    return false;
}

/* Known Split regexes of byte-level BPE pre-tokenizers -> llama.cpp's name. */
static const struct {
    const char *regex, *pre;
} PRE_REGEX[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "llama-bpe"},
};

/* First "Regex" string found under a pre_tokenizer object (depth-first). */
static const char *find_regex(const cJSON *o) {
    if (!o) return NULL;
    if (cJSON_IsObject(o)) {
        const cJSON *p = jget(o, "pattern");
        const cJSON *r = p ? jget(p, "Regex") : NULL;
        if (cJSON_IsString(r)) return r->valuestring;
    }
    for (const cJSON *c = o->child; c; c = c->next) {
        const char *r = find_regex(c);
        if (r) return r;
    }
    return NULL;
}

static int read_vocab(const cJSON *tok, const char *path, int n_vocab, vocab *v, alloy_err *err) {
    memset(v, 0, sizeof *v);
    const cJSON *model = jget(tok, "model");
    const cJSON *type = jget(model, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE"))
        return alloy_fail(err, "%s: model.type must be \"BPE\" (byte-level BPE) for GGUF conversion", path);
    const char *regex = find_regex(jget(tok, "pre_tokenizer"));
    for (size_t i = 0; regex && i < sizeof PRE_REGEX / sizeof PRE_REGEX[0]; i++)
        if (!strcmp(regex, PRE_REGEX[i].regex)) v->pre = PRE_REGEX[i].pre;
    if (!v->pre)
        return alloy_fail(err, "%s: pre_tokenizer regex is not one alloy knows how to name for llama.cpp "
                          "(Qwen2 or Llama-3)", path);

    v->n = n_vocab;
    v->tokens = calloc((size_t)n_vocab, sizeof *v->tokens);
    v->types = calloc((size_t)n_vocab, sizeof *v->types);
    v->pad = calloc((size_t)n_vocab, sizeof *v->pad);
    if (!v->tokens || !v->types || !v->pad) return alloy_fail(err, "out of memory");
    const cJSON *vmap = jget(model, "vocab");
    if (!cJSON_IsObject(vmap)) return alloy_fail(err, "%s: model.vocab must be an object", path);
    for (const cJSON *e = vmap->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= n_vocab)
            return alloy_fail(err, "%s: token %s has id outside [0, vocab_size=%d)", path, e->string, n_vocab);
        v->tokens[e->valueint] = e->string;
        v->types[e->valueint] = 1; /* normal */
    }
    const cJSON *added = jget(tok, "added_tokens");
    for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a; a = a->next) {
        const cJSON *id = jget(a, "id"), *content = jget(a, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content))
            return alloy_fail(err, "%s: added_tokens entry without id/content", path);
        if (id->valuedouble < 0 || id->valuedouble >= n_vocab)
            return alloy_fail(err, "%s: added token %s has id outside [0, vocab_size=%d)", path,
                              content->valuestring, n_vocab);
        v->tokens[id->valueint] = content->valuestring;
        bool special = cJSON_IsTrue(jget(a, "special")) || looks_special(content->valuestring);
        v->types[id->valueint] = special ? 3 : 4; /* control : user-defined */
    }
    for (int i = 0; i < n_vocab; i++) {
        if (v->tokens[i]) continue;
        char tmp[32];
        snprintf(tmp, sizeof tmp, "[PAD%d]", i);
        if (!(v->pad[i] = strdup(tmp))) return alloy_fail(err, "out of memory");
        v->tokens[i] = v->pad[i];
        v->types[i] = 5; /* unused */
    }

    const cJSON *merges = jget(model, "merges");
    int nm = cJSON_GetArraySize(merges);
    if (!cJSON_IsArray(merges) || nm == 0) return alloy_fail(err, "%s: model.merges is missing or empty", path);
    v->nmerges = nm;
    v->merges = calloc((size_t)nm, sizeof *v->merges);
    v->own = calloc((size_t)nm, sizeof *v->own);
    if (!v->merges || !v->own) return alloy_fail(err, "out of memory");
    int i = 0;
    for (const cJSON *m = merges->child; m; m = m->next, i++) {
        if (cJSON_IsString(m)) {
            v->merges[i] = m->valuestring;
            continue;
        }
        const cJSON *a = cJSON_GetArrayItem(m, 0), *b = cJSON_GetArrayItem(m, 1);
        if (cJSON_GetArraySize(m) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b))
            return alloy_fail(err, "%s: merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        /* llama.cpp splits merges at the space, so a space inside a part is
         * written as U+0120 (what byte-level BPE maps the space byte to). */
        size_t la = strlen(a->valuestring), lb = strlen(b->valuestring);
        char *s = malloc(2 * (la + lb) + 2), *p = s;
        if (!s) return alloy_fail(err, "out of memory");
        for (int part = 0; part < 2; part++) {
            for (const char *q = part ? b->valuestring : a->valuestring; *q; q++) {
                if (*q == ' ') {
                    *p++ = (char)0xC4;
                    *p++ = (char)0xA0;
                } else {
                    *p++ = *q;
                }
            }
            if (!part) *p++ = ' ';
        }
        *p = 0;
        v->own[i] = s;
        v->merges[i] = s;
    }
    return 0;
}

/* Id of the added token whose content is the tokenizer_config entry
 * "<typ>_token" (a string or {"content": ...}); -1 when none. */
static int special_from_tokcfg(const cJSON *tokcfg, const cJSON *tok, const char *typ) {
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    const cJSON *e = jget(tokcfg, key);
    if (cJSON_IsObject(e)) e = jget(e, "content");
    if (!cJSON_IsString(e)) return -1;
    const cJSON *added = jget(tok, "added_tokens");
    for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a; a = a->next) {
        const cJSON *c = jget(a, "content"), *id = jget(a, "id");
        if (cJSON_IsString(c) && cJSON_IsNumber(id) && !strcmp(c->valuestring, e->valuestring)) return id->valueint;
    }
    return -1;
}

/* True when tokenizer.json's post-processor prepends the bos token. */
static bool template_adds_bos(const cJSON *tok, const char *bos_content) {
    const cJSON *pp = jget(tok, "post_processor");
    if (!pp || !bos_content) return false;
    const cJSON *list = jget(pp, "processors");
    const cJSON *first = cJSON_IsArray(list) ? list->child : pp;
    for (const cJSON *p = first; p; p = cJSON_IsArray(list) ? p->next : NULL) {
        const cJSON *t = jget(p, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "TemplateProcessing")) continue;
        const cJSON *single = jget(p, "single");
        const cJSON *s0 = cJSON_GetArrayItem(single, 0);
        const cJSON *id = jget(jget(s0, "SpecialToken"), "id");
        if (cJSON_GetArraySize(single) > 1 && cJSON_IsString(id) && !strcmp(id->valuestring, bos_content))
            return true;
    }
    return false;
}

static cJSON *read_json(const char *dir, const char *name, bool required, alloy_err *err) {
    char *path = fs_join(dir, name);
    if (!path) {
        alloy_fail(err, "out of memory");
        return NULL;
    }
    cJSON *j = NULL;
    if (!fs_exists(path)) {
        if (required) alloy_fail(err, "%s: not found (GGUF conversion needs the tokenizer)", path);
    } else {
        char *text = fs_read_file(path, NULL, err);
        if (text) {
            j = cJSON_Parse(text);
            if (!cJSON_IsObject(j)) {
                alloy_fail(err, "%s: malformed JSON", path);
                cJSON_Delete(j);
                j = NULL;
            }
        }
        free(text);
    }
    free(path);
    return j;
}

static int write_tokenizer(gguf_writer *w, const char *dir, const cJSON *cfg, int n_vocab, FILE *log,
                           alloy_err *err) {
    cJSON *tok = read_json(dir, "tokenizer.json", true, err);
    if (!tok) return -1;
    alloy_err e2 = {{0}};
    cJSON *tokcfg = read_json(dir, "tokenizer_config.json", false, &e2);
    int rc = -1;
    vocab v;
    char *tpath = fs_join(dir, "tokenizer.json");
    if (e2.msg[0]) {
        *err = e2;
        goto done;
    }
    if (read_vocab(tok, tpath, n_vocab, &v, err)) goto done_vocab;
    if (gguf_kv_str(w, "tokenizer.ggml.model", "gpt2", err) ||
        gguf_kv_str(w, "tokenizer.ggml.pre", v.pre, err) ||
        gguf_kv_arr_str(w, "tokenizer.ggml.tokens", v.tokens, (uint64_t)v.n, err) ||
        gguf_kv_arr_i32(w, "tokenizer.ggml.token_type", v.types, (uint64_t)v.n, err) ||
        gguf_kv_arr_str(w, "tokenizer.ggml.merges", v.merges, (uint64_t)v.nmerges, err))
        goto done_vocab;

    /* Special ids: tokenizer_config.json names first, then config.json ids. */
    static const struct {
        const char *typ, *key;
    } SPECIAL[] = {
        {"bos", "tokenizer.ggml.bos_token_id"},       {"eos", "tokenizer.ggml.eos_token_id"},
        {"unk", "tokenizer.ggml.unknown_token_id"},   {"sep", "tokenizer.ggml.seperator_token_id"},
        {"pad", "tokenizer.ggml.padding_token_id"},
    };
    for (size_t i = 0; i < sizeof SPECIAL / sizeof SPECIAL[0]; i++) {
        int id = tokcfg ? special_from_tokcfg(tokcfg, tok, SPECIAL[i].typ) : -1;
        if (id < 0) {
            char key[32];
            snprintf(key, sizeof key, "%s_token_id", SPECIAL[i].typ);
            const cJSON *c = jget(cfg, key);
            if (cJSON_IsNumber(c) && c->valuedouble >= 0) id = c->valueint;
        }
        if (id >= n_vocab) {
            alloy_fail(err, "%s: %s token id %d is outside the vocabulary (%d)", tpath, SPECIAL[i].typ, id, n_vocab);
            goto done_vocab;
        }
        if (id >= 0 && gguf_kv_u32(w, SPECIAL[i].key, (uint32_t)id, err)) goto done_vocab;
    }
    const cJSON *add_bos = jget(tokcfg, "add_bos_token"), *add_eos = jget(tokcfg, "add_eos_token");
    if (cJSON_IsBool(add_bos)) {
        if (gguf_kv_bool(w, "tokenizer.ggml.add_bos_token", cJSON_IsTrue(add_bos), err)) goto done_vocab;
    } else {
        const cJSON *b = jget(tokcfg, "bos_token");
        if (cJSON_IsObject(b)) b = jget(b, "content");
        if (template_adds_bos(tok, cJSON_IsString(b) ? b->valuestring : NULL) &&
            gguf_kv_bool(w, "tokenizer.ggml.add_bos_token", true, err))
            goto done_vocab;
    }
    if (cJSON_IsBool(add_eos) && gguf_kv_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(add_eos), err))
        goto done_vocab;
    const cJSON *tmpl = jget(tokcfg, "chat_template");
    if (cJSON_IsString(tmpl) && gguf_kv_str(w, "tokenizer.chat_template", tmpl->valuestring, err)) goto done_vocab;
    if (log) fprintf(log, "tokenizer: %d tokens, %d merges, pre-tokenizer %s\n", v.n, v.nmerges, v.pre);
    rc = 0;
done_vocab:
    vocab_free(&v);
done:
    free(tpath);
    cJSON_Delete(tokcfg);
    cJSON_Delete(tok);
    return rc;
}

/* ---- tensors ---- */

/* One output tensor: where it comes from and how it is transformed. */
typedef struct plan_item {
    char name[GGUF_NAME_MAX];
    const st_tensor *src;  /* NULL: generated (rope_freqs) */
    int permute_heads;     /* > 0: llama q/k row permutation with that many heads */
    gguf_type type;
    int idx;               /* writer index */
} plan_item;

static int check_shape(const st_tensor *t, int ndim, int64_t d0, int64_t d1, const char *dir, alloy_err *err) {
    bool ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (ok) return 0;
    char got[64] = "", want[48];
    for (int i = 0, n = 0; i < t->ndim && n < (int)sizeof got - 24; i++)
        n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (ndim == 1) snprintf(want, sizeof want, "%lld", (long long)d0);
    else snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)d1);
    return alloy_fail(err, "%s: tensor %s has shape [%s], expected [%s]", dir, t->name, got, want);
}

/* Row permutation of llama.cpp's "llama" conversion: within each head of
 * hd rows, output row 2*i + j is input row j*hd/2 + i (i < hd/2, j < 2). */
static void permute_rows(const float *src, float *dst, int64_t rows, int64_t cols, int n_head) {
    int64_t hd = rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + (h * hd + 2 * i + j) * cols, src + (h * hd + j * half + i) * cols,
                       (size_t)cols * sizeof *src);
}

/* llama3 rope frequency factors, one per rotated pair (as llama.cpp's
 * converter computes them). */
static void llama3_rope_factors(const hparams *hp, float *out) {
    int dim = hp->head_dim;
    double lo_wavelen = hp->orig_ctx / hp->low_freq_factor, hi_wavelen = hp->orig_ctx / hp->high_freq_factor;
    for (int i = 0; i < dim / 2; i++) {
        float freq = 1.0f / powf(hp->theta, (float)(2 * i) / (float)dim);
        double wavelen = 2 * M_PI / freq;
        if (wavelen < hi_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > lo_wavelen) {
            out[i] = (float)hp->rope_factor;
        } else {
            double smooth = (hp->orig_ctx / wavelen - hp->low_freq_factor) / (hp->high_freq_factor - hp->low_freq_factor);
            out[i] = (float)(1.0 / ((1 - smooth) / hp->rope_factor + smooth));
        }
    }
}

/* Convert one tensor, in chunks of rows, and write it. */
static int put_tensor(gguf_writer *w, const plan_item *it, float *f32, float *perm, void *out, int64_t chunk_elems,
                      const char *dir, alloy_err *err) {
    const st_tensor *t = it->src;
    int64_t cols = t->ndim == 2 ? t->shape[1] : 1, rows = t->ndim == 2 ? t->shape[0] : t->shape[0];
    int64_t step = chunk_elems / cols;
    if (it->permute_heads) {
        int64_t hd = rows / it->permute_heads;
        step = step / hd * hd;
        if (step < hd) step = hd;
    }
    if (step < 1) step = 1;
    size_t in_es = dtype_size(t->dtype), out_es = type_size(it->type);
    alloy_dtype out_dt = it->type == GGUF_TYPE_F32 ? ALLOY_F32 : it->type == GGUF_TYPE_F16 ? ALLOY_F16 : ALLOY_BF16;
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
        int64_t nr = rows - r0 < step ? rows - r0 : step;
        size_t n = (size_t)(nr * cols);
        int64_t bad = dtype_to_f32((const char *)t->data + (size_t)(r0 * cols) * in_es, t->dtype, f32, n);
        if (bad >= 0)
            return alloy_fail(err, "%s: tensor %s has a non-finite value at element %lld", dir, t->name,
                              (long long)(r0 * cols + bad));
        const float *src = f32;
        if (it->permute_heads) {
            permute_rows(f32, perm, nr, cols, (int)(nr / (rows / it->permute_heads)));
            src = perm;
        }
        dtype_from_f32(src, out_dt, out, n);
        if (gguf_writer_write(w, it->idx, (uint64_t)(r0 * cols) * out_es, out, n * out_es, err)) return -1;
    }
    return 0;
}

static const char *ftype_name(gguf_type t) { return t == GGUF_TYPE_F32 ? "f32" : t == GGUF_TYPE_F16 ? "f16" : "bf16"; }

int gguf_convert_dir(const char *dir, const char *out_path, gguf_type type, FILE *log, alloy_err *err) {
    if (type != GGUF_TYPE_F32 && type != GGUF_TYPE_F16 && type != GGUF_TYPE_BF16)
        return alloy_fail(err, "gguf: unsupported output type %d", (int)type);
    cJSON *cfg = ckpt_read_config(dir, err);
    if (!cfg) return -1;
    char *cfg_path = fs_join(dir, "config.json");
    st_model m = {0};
    gguf_writer *w = NULL;
    plan_item *plan = NULL;
    bool *used = NULL;
    float *f32 = NULL, *perm = NULL;
    void *outbuf = NULL;
    int rc = -1, np = 0;
    hparams hp;
    if (read_hparams(cfg, cfg_path, &hp, err)) goto done;
    if (st_open_dir(&m, dir, err)) goto done;
    const char *arch = hp.arch;
    bool is_llama = !strcmp(arch, "llama");

    /* ---- plan the tensors ---- */
    int cap = 16 * hp.n_layer + 8;
    plan = calloc((size_t)cap, sizeof *plan);
    used = calloc((size_t)m.ntensors, sizeof *used);
    if (!plan || !used) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    int64_t E = hp.n_embd, F = hp.n_ff, Q = (int64_t)hp.n_head * hp.head_dim, KV = (int64_t)hp.n_head_kv * hp.head_dim;
    /* hf name, gguf name, required, rows, cols (0: 1-D), permute heads */
    struct want {
        char hf[128];
        char gg[GGUF_NAME_MAX];
        bool required;
        int64_t rows, cols;
        int heads;
    };
    int nwant = 0, wcap = 16 * hp.n_layer + 4;
    struct want *wants = calloc((size_t)wcap, sizeof *wants);
    if (!wants) {
        alloy_fail(err, "out of memory");
        goto done;
    }
#define WANT(req, r, c, h, ggfmt, hffmt, ...)                                                    \
    do {                                                                                         \
        struct want *x = &wants[nwant++];                                                        \
        snprintf(x->hf, sizeof x->hf, hffmt, __VA_ARGS__);                                       \
        snprintf(x->gg, sizeof x->gg, ggfmt, __VA_ARGS__);                                       \
        x->required = (req), x->rows = (r), x->cols = (c), x->heads = (h);                       \
    } while (0)
    WANT(true, hp.n_vocab, E, 0, "token_embd.weight%.0d", "model.embed_tokens.weight%.0d", 0);
    for (int l = 0; l < hp.n_layer; l++) {
        int hq = is_llama ? hp.n_head : 0, hk = is_llama ? hp.n_head_kv : 0;
        bool qwen = !is_llama;
        WANT(true, E, 0, 0, "blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight", l);
        WANT(true, Q, E, hq, "blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight", l);
        WANT(qwen, Q, 0, hq, "blk.%d.attn_q.bias", "model.layers.%d.self_attn.q_proj.bias", l);
        WANT(true, KV, E, hk, "blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight", l);
        WANT(qwen, KV, 0, hk, "blk.%d.attn_k.bias", "model.layers.%d.self_attn.k_proj.bias", l);
        WANT(true, KV, E, 0, "blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight", l);
        WANT(qwen, KV, 0, 0, "blk.%d.attn_v.bias", "model.layers.%d.self_attn.v_proj.bias", l);
        WANT(true, E, Q, 0, "blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight", l);
        WANT(false, E, 0, 0, "blk.%d.attn_output.bias", "model.layers.%d.self_attn.o_proj.bias", l);
        WANT(true, E, 0, 0, "blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight", l);
        WANT(true, F, E, 0, "blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight", l);
        WANT(false, F, 0, 0, "blk.%d.ffn_gate.bias", "model.layers.%d.mlp.gate_proj.bias", l);
        WANT(true, F, E, 0, "blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight", l);
        WANT(false, F, 0, 0, "blk.%d.ffn_up.bias", "model.layers.%d.mlp.up_proj.bias", l);
        WANT(true, E, F, 0, "blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight", l);
        WANT(false, E, 0, 0, "blk.%d.ffn_down.bias", "model.layers.%d.mlp.down_proj.bias", l);
    }
    WANT(true, E, 0, 0, "output_norm.weight%.0d", "model.norm.weight%.0d", 0);
    WANT(!hp.tied, hp.n_vocab, E, 0, "output.weight%.0d", "lm_head.weight%.0d", 0);
#undef WANT
    /* (The "%.0d" of a 0 argument prints nothing: it lets non-layer names go through WANT.) */

    int64_t max_elems = 0;
    for (int i = 0; i < nwant; i++) {
        const st_tensor *t = st_find(&m, wants[i].hf);
        if (!t) {
            if (wants[i].required) {
                alloy_fail(err, "%s: missing tensor %s", dir, wants[i].hf);
                free(wants);
                goto done;
            }
            continue;
        }
        used[t - m.tensors] = true;
        if (hp.tied && !strcmp(wants[i].hf, "lm_head.weight")) continue; /* tied: output = token_embd */
        if (check_shape(t, wants[i].cols ? 2 : 1, wants[i].rows, wants[i].cols, dir, err) ||
            !dtype_is_mergeable(t->dtype)) {
            if (!dtype_is_mergeable(t->dtype))
                alloy_fail(err, "%s: tensor %s has dtype %s (F32, F16 or BF16 expected)", dir, t->name,
                           dtype_name(t->dtype));
            free(wants);
            goto done;
        }
        plan_item *it = &plan[np++];
        snprintf(it->name, sizeof it->name, "%s", wants[i].gg);
        it->src = t;
        it->permute_heads = wants[i].heads;
        bool keep_f32 = wants[i].cols == 0; /* norms and biases */
        it->type = keep_f32 ? GGUF_TYPE_F32 : type;
        if (t->numel > max_elems) max_elems = t->numel;
    }
    free(wants);
    for (int i = 0; i < m.ntensors; i++) {
        if (used[i] || strstr(m.tensors[i].name, "rotary_emb.inv_freq")) continue;
        alloy_fail(err, "%s: tensor %s has no GGUF counterpart for architecture %s", dir, m.tensors[i].name, arch);
        goto done;
    }
    if (hp.rope == ROPE_LLAMA3) {
        plan_item *it = &plan[np++];
        snprintf(it->name, sizeof it->name, "rope_freqs.weight");
        it->type = GGUF_TYPE_F32;
    }

    /* ---- metadata ---- */
    if (!(w = gguf_writer_new(err))) goto done;
    char key[96];
    const char *base = strrchr(dir, '/');
    char name[256];
    snprintf(name, sizeof name, "%s", base && base[1] ? base + 1 : dir);
    size_t nl = strlen(name);
    while (nl > 1 && name[nl - 1] == '/') name[--nl] = 0;
    uint32_t ftype = type == GGUF_TYPE_F32 ? GGUF_FTYPE_ALL_F32 : type == GGUF_TYPE_F16 ? GGUF_FTYPE_MOSTLY_F16
                                                                                          : GGUF_FTYPE_MOSTLY_BF16;
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    if (gguf_kv_str(w, "general.architecture", arch, err) || gguf_kv_str(w, "general.name", name, err) ||
        gguf_kv_u32(w, "general.alignment", GGUF_ALIGNMENT, err) ||
        gguf_kv_u32(w, KEY("context_length"), (uint32_t)hp.n_ctx, err) ||
        gguf_kv_u32(w, KEY("embedding_length"), (uint32_t)hp.n_embd, err) ||
        gguf_kv_u32(w, KEY("block_count"), (uint32_t)hp.n_layer, err) ||
        gguf_kv_u32(w, KEY("feed_forward_length"), (uint32_t)hp.n_ff, err) ||
        gguf_kv_u32(w, KEY("attention.head_count"), (uint32_t)hp.n_head, err) ||
        gguf_kv_u32(w, KEY("attention.head_count_kv"), (uint32_t)hp.n_head_kv, err) ||
        gguf_kv_f32(w, KEY("rope.freq_base"), hp.theta, err) ||
        gguf_kv_f32(w, KEY("attention.layer_norm_rms_epsilon"), hp.eps, err) ||
        gguf_kv_u32(w, "general.file_type", ftype, err))
        goto done;
    if (hp.head_dim != hp.n_embd / hp.n_head &&
        (gguf_kv_u32(w, KEY("attention.key_length"), (uint32_t)hp.head_dim, err) ||
         gguf_kv_u32(w, KEY("attention.value_length"), (uint32_t)hp.head_dim, err)))
        goto done;
    if (is_llama && (gguf_kv_u32(w, KEY("vocab_size"), (uint32_t)hp.n_vocab, err) ||
                     gguf_kv_u32(w, KEY("rope.dimension_count"), (uint32_t)hp.head_dim, err)))
        goto done;
    if (hp.rope == ROPE_LINEAR && (gguf_kv_str(w, KEY("rope.scaling.type"), "linear", err) ||
                                   gguf_kv_f32(w, KEY("rope.scaling.factor"), (float)hp.rope_factor, err)))
        goto done;
#undef KEY
    if (gguf_kv_u32(w, "general.quantization_version", 2, err)) goto done;
    if (write_tokenizer(w, dir, cfg, hp.n_vocab, log, err)) goto done;

    for (int i = 0; i < np; i++) {
        plan_item *it = &plan[i];
        int64_t ne[2];
        int nd;
        if (!it->src) {
            ne[0] = hp.head_dim / 2;
            nd = 1;
        } else if (it->src->ndim == 2) {
            ne[0] = it->src->shape[1];
            ne[1] = it->src->shape[0];
            nd = 2;
        } else {
            ne[0] = it->src->shape[0];
            nd = 1;
        }
        if ((it->idx = gguf_add_tensor(w, it->name, it->type, nd, ne, err)) < 0) goto done;
    }
    if (gguf_writer_begin(w, out_path, err)) goto done;

    /* ---- data, one tensor at a time, in chunks of about 16M elements ---- */
    int64_t chunk = (int64_t)1 << 24;
    int64_t bufn = max_elems < chunk ? max_elems : chunk;
    /* a chunk holds at least one row (or one head of rows when permuting) */
    for (int i = 0; i < np; i++)
        if (plan[i].src) {
            const st_tensor *t = plan[i].src;
            int64_t rowlen = t->ndim == 2 ? t->shape[1] : 1;
            int64_t minrows = plan[i].permute_heads ? t->shape[0] / plan[i].permute_heads : 1;
            if (rowlen * minrows > bufn) bufn = rowlen * minrows;
        }
    if (bufn < hp.head_dim) bufn = hp.head_dim;
    f32 = malloc((size_t)bufn * sizeof *f32);
    perm = malloc((size_t)bufn * sizeof *perm);
    outbuf = malloc((size_t)bufn * sizeof(float));
    if (!f32 || !perm || !outbuf) {
        alloy_fail(err, "out of memory (%lld-element conversion buffers)", (long long)bufn);
        goto done;
    }
    for (int i = 0; i < np; i++) {
        if (plan[i].src) {
            if (put_tensor(w, &plan[i], f32, perm, outbuf, bufn, dir, err)) goto done;
        } else {
            llama3_rope_factors(&hp, f32);
            if (gguf_writer_put(w, plan[i].idx, f32, err)) goto done;
        }
    }
    if (log)
        fprintf(log, "gguf: %s, %d tensors, %s, %d layers, vocab %d%s\n", arch, np, ftype_name(type), hp.n_layer,
                hp.n_vocab, hp.tied ? ", tied embeddings" : "");
    rc = gguf_writer_finish(w, err);
    w = NULL;
done:
    gguf_writer_abort(w);
    free(f32);
    free(perm);
    free(outbuf);
    free(plan);
    free(used);
    st_close(&m);
    free(cfg_path);
    cJSON_Delete(cfg);
    return rc;
}
