/* safetensors.c — reading (mmap + validation) and streaming writing of
 * safetensors checkpoints (see safetensors.h).
 *
 * Owns: the file format (8-byte little-endian header length, JSON header,
 * data region), shard discovery through model.safetensors.index.json, the
 * name hash behind st_find, and the writer's shard plan, headers and index.
 * Not here: what the tensors mean (model/, merge/), config.json and side files
 * (checkpoint.c). */
#include "io/safetensors.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/dio.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u) /* 100 MB, as the reference implementation */
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define JSON_MAX_INT 9007199254740992.0 /* 2^53: larger doubles are not exact integers */

/* ---- name hash (open addressing, linear probing, power-of-two size) ---- */

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Slot of name in m's hash: holds its index, or -1 where it would go. */
static int *hash_slot(const st_model *m, const char *name) {
    size_t mask = (size_t)m->nslots - 1, i = (size_t)hash_name(name) & mask;
    while (m->slots[i] >= 0 && strcmp(m->tensors[m->slots[i]].name, name) != 0) i = (i + 1) & mask;
    return &m->slots[i];
}

/* Make room for one more name (load factor <= 1/2). */
static int hash_reserve(st_model *m) {
    if (2 * (size_t)(m->ntensors + 1) <= (size_t)m->nslots) return 0;
    int n = m->nslots ? 2 * m->nslots : 64;
    int *slots = malloc(sizeof *slots * (size_t)n);
    if (!slots) return -1;
    for (int i = 0; i < n; i++) slots[i] = -1;
    free(m->slots);
    m->slots = slots;
    m->nslots = n;
    for (int t = 0; t < m->ntensors; t++) *hash_slot(m, m->tensors[t].name) = t;
    return 0;
}

const st_tensor *st_find(const st_model *m, const char *name) {
    if (!m || m->nslots == 0) return NULL;
    int k = *hash_slot(m, name);
    return k >= 0 ? &m->tensors[k] : NULL;
}

/* ---- reader ---- */

void st_close(st_model *m) {
    if (!m) return;
    for (int i = 0; i < m->nfiles; i++) {
        if (m->files[i].map) munmap(m->files[i].map, m->files[i].size);
        free(m->files[i].path);
    }
    for (int i = 0; i < m->ntensors; i++) free(m->tensors[i].name);
    free(m->files);
    free(m->tensors);
    free(m->slots);
    free(m->source);
    memset(m, 0, sizeof *m);
}

/* A JSON number that is an exact non-negative integer. */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= JSON_MAX_INT)) return -1;
    uint64_t u = (uint64_t)d;
    if ((double)u != d) return -1;
    *out = u;
    return 0;
}

/* "4 x 5 x 4 (F32)": the shape and element size a span should match. */
static void describe_span(char *buf, size_t cap, const st_tensor *t) {
    size_t k = 0;
    for (int d = 0; d < t->ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%lld x ", (long long)t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "%zu (%s)", dtype_size(t->dtype), dtype_name(t->dtype));
}

typedef struct span {
    uint64_t begin, end;
    int tensor;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parse one header entry into t (name already set). begin/end are relative
 * to the data region. */
static int parse_entry(const char *path, const cJSON *e, st_tensor *t, uint64_t *begin, uint64_t *end,
                       alloy_err *err) {
    const char *name = t->name;
    if (!cJSON_IsObject(e)) return alloy_fail(err, "%s: tensor '%s': header entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return alloy_fail(err, "%s: tensor '%s': missing \"dtype\" string", path, name);
    if (dtype_parse(dt->valuestring, &t->dtype))
        return alloy_fail(err, "%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
    if (!cJSON_IsArray(shape)) return alloy_fail(err, "%s: tensor '%s': missing \"shape\" list", path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        return alloy_fail(err, "%s: tensor '%s': %d dimensions (at most %d supported)", path, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0, d = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, shape) {
        uint64_t dim;
        if (json_u64(v, &dim))
            return alloy_fail(err, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, d);
        t->shape[d++] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    for (d = 0; d < nd; d++)
        if (t->shape[d] == 0) { /* an empty tensor, however large its other dims */
            numel = 0;
            overflow = 0;
        }
    uint64_t nbytes = 0;
    if (overflow || numel > INT64_MAX || __builtin_mul_overflow(numel, (uint64_t)dtype_size(t->dtype), &nbytes) ||
        nbytes > SIZE_MAX)
        return alloy_fail(err, "%s: tensor '%s': shape is too large", path, name);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nbytes;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || json_u64(cJSON_GetArrayItem(offs, 0), begin) ||
        json_u64(cJSON_GetArrayItem(offs, 1), end))
        return alloy_fail(err, "%s: tensor '%s': \"data_offsets\" must be two non-negative integers", path, name);
    if (*begin > *end)
        return alloy_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", path, name,
                          (unsigned long long)*begin, (unsigned long long)*end);
    if (*end - *begin != nbytes) {
        char want[256];
        describe_span(want, sizeof want, t);
        return alloy_fail(err, "%s: tensor '%s': byte span %llu != %s", path, name,
                          (unsigned long long)(*end - *begin), want);
    }
    return 0;
}

/* Check that the spans of one file tile its data region exactly. */
static int check_spans(const char *path, const st_model *m, span *s, int n, uint64_t data_size, alloy_err *err) {
    qsort(s, (size_t)n, sizeof *s, span_cmp);
    uint64_t pos = 0;
    int last = -1; /* the tensor that reaches pos */
    for (int i = 0; i < n; i++) {
        const char *name = m->tensors[s[i].tensor].name;
        if (s[i].begin < pos)
            return alloy_fail(err, "%s: tensor '%s' (bytes [%llu, %llu)) overlaps tensor '%s' (bytes [%llu, %llu))",
                              path, name, (unsigned long long)s[i].begin, (unsigned long long)s[i].end,
                              m->tensors[s[last].tensor].name, (unsigned long long)s[last].begin,
                              (unsigned long long)s[last].end);
        if (s[i].begin > pos)
            return alloy_fail(err, "%s: bytes [%llu, %llu) of the data region belong to no tensor (hole before "
                              "tensor '%s')", path, (unsigned long long)pos, (unsigned long long)s[i].begin, name);
        if (s[i].end >= pos) {
            pos = s[i].end;
            last = i;
        }
    }
    if (pos != data_size) {
        if (last >= 0)
            return alloy_fail(err, "%s: bytes [%llu, %llu) at the end of the data region belong to no tensor "
                              "(hole after tensor '%s')", path, (unsigned long long)pos,
                              (unsigned long long)data_size, m->tensors[s[last].tensor].name);
        return alloy_fail(err, "%s: %llu bytes of data but no tensors", path, (unsigned long long)data_size);
    }
    return 0;
}

/* Map path, validate it, and append its tensors to m. On failure the file
 * stays in m (for st_close) and err names it. */
static int load_file(st_model *m, const char *path, alloy_err *err) {
    st_file *files = realloc(m->files, sizeof *files * (size_t)(m->nfiles + 1));
    if (!files) return alloy_fail(err, "%s: out of memory", path);
    m->files = files;
    int fi = m->nfiles;
    st_file *f = &files[fi];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return alloy_fail(err, "%s: out of memory", path);
    m->nfiles++;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return alloy_fail(err, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return alloy_fail(err, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return alloy_fail(err, "%s: file is %lld bytes, too short for a safetensors header", path,
                          (long long)sb.st_size);
    }
    void *map = MAP_FAILED;
    int map_errno = 0;
    if (m->flags & ST_OPEN_PRELOAD) {
        long free_pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        if (free_pages > 0 && psz > 0 && (size_t)sb.st_size <= (size_t)free_pages * (size_t)psz / 2) {
            map = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (map != MAP_FAILED) {
                (void)madvise(map, (size_t)sb.st_size, MADV_HUGEPAGE);
                size_t got = 0;
                while (got < (size_t)sb.st_size) {
                    ssize_t r = pread(fd, (char *)map + got, (size_t)sb.st_size - got, (off_t)got);
                    if (r < 0 && errno == EINTR) continue;
                    if (r <= 0) {
                        int e = r < 0 ? errno : EIO;
                        munmap(map, (size_t)sb.st_size);
                        close(fd);
                        return alloy_fail(err, "%s: read failed at byte %zu: %s", path, got, strerror(e));
                    }
                    got += (size_t)r;
                }
                (void)mprotect(map, (size_t)sb.st_size, PROT_READ);
            }
        }
    }
    if (map == MAP_FAILED) {
        map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        map_errno = errno;
        /* what faults in from the disk comes in 2 MiB folios, mapped by one
         * entry each: a 1 GB input read cold maps in a few ms where 4 KiB
         * pages took 0.07-0.1 s (and as many TLB entries). Without it the
         * kernel mostly does so for sequential reads already, but a page
         * reclaimed and faulted back by a random read (a rank cut's
         * sample) comes back small, and stays so. */
        if (map != MAP_FAILED && (size_t)sb.st_size >= ((size_t)2 << 20))
            (void)madvise(map, (size_t)sb.st_size, MADV_HUGEPAGE);
    }
    close(fd);
    if (map == MAP_FAILED) return alloy_fail(err, "%s: mmap failed: %s", path, strerror(map_errno));
    f->map = map;
    f->size = (size_t)sb.st_size;

    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER)
        return alloy_fail(err, "%s: header length %llu exceeds the 100 MB limit", path, (unsigned long long)hlen);
    if (8 + hlen > f->size)
        return alloy_fail(err, "%s: header length %llu runs past the end of the file (%zu bytes); truncated?", path,
                          (unsigned long long)hlen, f->size);
    const char *text = (const char *)p + 8, *end_at = NULL;
    cJSON *hdr = cJSON_ParseWithLengthOpts(text, (size_t)hlen, &end_at, 0);
    if (!hdr) {
        long at = end_at ? (long)(end_at - text) : -1;
        return alloy_fail(err, "%s: header is not valid JSON (error near byte %ld of %llu)", path, at,
                          (unsigned long long)hlen);
    }
    /* Only whitespace may follow the JSON value (the writer pads with spaces). */
    for (const char *q = end_at; q && q < text + hlen; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != 0) {
            cJSON_Delete(hdr);
            return alloy_fail(err, "%s: header is not valid JSON (trailing bytes after byte %ld)", path,
                              (long)(end_at - text));
        }
    if (!cJSON_IsObject(hdr)) {
        cJSON_Delete(hdr);
        return alloy_fail(err, "%s: header is not a JSON object", path);
    }

    uint64_t data_size = f->size - 8 - hlen;
    const unsigned char *data = p + 8 + hlen;
    int n = 0, rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, hdr) n++;
    st_tensor *tensors = realloc(m->tensors, sizeof *tensors * (size_t)(m->ntensors + n + 1));
    span *spans = malloc(sizeof *spans * (size_t)(n + 1));
    if (tensors) m->tensors = tensors;
    if (!tensors || !spans) {
        free(spans);
        cJSON_Delete(hdr);
        return alloy_fail(err, "%s: out of memory", path);
    }
    int ns = 0;
    cJSON_ArrayForEach(e, hdr) {
        if (!e->string) continue;
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e) && !cJSON_IsNull(e)) {
                rc = alloy_fail(err, "%s: \"__metadata__\" is not an object", path);
                break;
            }
            continue;
        }
        if (hash_reserve(m)) {
            rc = alloy_fail(err, "%s: out of memory", path);
            break;
        }
        int *slot = hash_slot(m, e->string);
        if (*slot >= 0) {
            int prev = m->tensors[*slot].file;
            if (prev == fi)
                rc = alloy_fail(err, "%s: tensor '%s' is defined twice in the header", path, e->string);
            else
                rc = alloy_fail(err, "%s: tensor '%s' is also defined in %s", path, e->string, m->files[prev].path);
            break;
        }
        st_tensor *t = &m->tensors[m->ntensors];
        memset(t, 0, sizeof *t);
        if (!(t->name = strdup(e->string))) {
            rc = alloy_fail(err, "%s: out of memory", path);
            break;
        }
        t->file = fi;
        m->ntensors++; /* owned by m from here, even if invalid */
        uint64_t b = 0, en = 0;
        if ((rc = parse_entry(path, e, t, &b, &en, err))) break;
        if (en > data_size) {
            rc = alloy_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data region "
                            "(%llu bytes); truncated?", path, t->name, (unsigned long long)b,
                            (unsigned long long)en, (unsigned long long)data_size);
            break;
        }
        t->data = data + b;
        *slot = m->ntensors - 1;
        spans[ns++] = (span){b, en, m->ntensors - 1};
    }
    if (!rc) rc = check_spans(path, m, spans, ns, data_size, err);
    free(spans);
    cJSON_Delete(hdr);
    return rc;
}

int st_open_file(st_model *m, const char *path, alloy_err *err) {
    memset(m, 0, sizeof *m);
    if (!(m->source = strdup(path))) return alloy_fail(err, "%s: out of memory", path);
    if (load_file(m, path, err)) {
        st_close(m);
        return -1;
    }
    return 0;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Open the shards named by an index file and check its weight_map. */
static int open_index(st_model *m, const char *dir, const char *index, alloy_err *err) {
    char *text = fs_read_file(index, NULL, err);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return alloy_fail(err, "%s: not valid JSON", index);
    int rc = 0, nshards = 0;
    const char **shards = NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map"), *e;
    if (!cJSON_IsObject(wm) || !wm->child) {
        rc = alloy_fail(err, "%s: missing or empty \"weight_map\" object", index);
        goto done;
    }
    int n = cJSON_GetArraySize(wm);
    if (!(shards = malloc(sizeof *shards * (size_t)n))) {
        rc = alloy_fail(err, "%s: out of memory", index);
        goto done;
    }
    /* distinct shards in first-seen order, each opened once */
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !e->valuestring[0]) {
            rc = alloy_fail(err, "%s: weight_map entry for tensor '%s' is not a file name", index, e->string);
            goto done;
        }
        int k = 0;
        while (k < nshards && strcmp(shards[k], e->valuestring) != 0) k++;
        if (k < nshards) continue;
        shards[nshards++] = e->valuestring;
        char *path = fs_join(dir, e->valuestring);
        if (!path) {
            rc = alloy_fail(err, "%s: out of memory", index);
            goto done;
        }
        rc = load_file(m, path, err);
        free(path);
        if (rc) {
            alloy_wrap(err, "%s: shard '%s' (of tensor '%s'): ", index, e->valuestring, e->string);
            goto done;
        }
    }
    cJSON_ArrayForEach(e, wm) {
        const st_tensor *t = st_find(m, e->string);
        int k = 0;
        while (strcmp(shards[k], e->valuestring) != 0) k++;
        if (!t) {
            rc = alloy_fail(err, "%s: tensor '%s' is not in its shard %s", index, e->string, m->files[k].path);
            goto done;
        }
        if (t->file != k) {
            rc = alloy_fail(err, "%s: tensor '%s' is listed in shard '%s' but found in %s", index, e->string,
                            e->valuestring, m->files[t->file].path);
            goto done;
        }
    }
done:
    free(shards);
    cJSON_Delete(j);
    return rc;
}

int st_open_dir(st_model *m, const char *dir, alloy_err *err) { return st_open_dir_ex(m, dir, 0, err); }

int st_open_dir_ex(st_model *m, const char *dir, unsigned flags, alloy_err *err) {
    memset(m, 0, sizeof *m);
    m->flags = flags;
    if (!fs_is_dir(dir)) return alloy_fail(err, "%s: not a directory", dir);
    if (!(m->source = strdup(dir))) return alloy_fail(err, "%s: out of memory", dir);
    char *path = fs_join(dir, ST_INDEX_NAME);
    int rc = 0;
    if (fs_exists(path)) {
        rc = open_index(m, dir, path, err);
        goto done;
    }
    free(path);
    path = fs_join(dir, ST_SINGLE_NAME);
    if (fs_exists(path)) {
        rc = load_file(m, path, err);
        goto done;
    }
    free(path);
    path = NULL;
    DIR *d = opendir(dir);
    if (!d) {
        rc = alloy_fail(err, "%s: %s", dir, strerror(errno));
        goto done;
    }
    int count = 0;
    bool bin = false;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] != '.' && ends_with(de->d_name, ".safetensors")) {
            if (count++ == 0) path = fs_join(dir, de->d_name);
        }
        if (strcmp(de->d_name, "pytorch_model.bin") == 0 || strcmp(de->d_name, "pytorch_model.bin.index.json") == 0)
            bin = true;
    }
    closedir(d);
    if (count == 1)
        rc = load_file(m, path, err);
    else if (count > 1)
        rc = alloy_fail(err, "%s: %d .safetensors files and no %s; cannot tell which to load", dir, count,
                        ST_INDEX_NAME);
    else if (bin)
        rc = alloy_fail(err, "%s: only pytorch_model.bin found; convert to safetensors first", dir);
    else
        rc = alloy_fail(err, "%s: no .safetensors file", dir);
done:
    free(path);
    if (rc) st_close(m);
    return rc;
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    alloy_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    uint64_t begin; /* relative to the shard's data region */
    int shard;
} wtensor;

typedef struct wshard {
    char *file; /* base name */
    char *path;
    int fd;              /* buffered writes, or -1 */
    dio_file *dio;       /* direct writes (io/dio.h), or NULL */
    uint64_t data_start; /* 8 + padded header length */
    uint64_t data_bytes;
    int first, count; /* tensors [first, first + count) */
    int next;         /* tensors [first, next) are written */
    int ndone;        /* tensors marked done (atomic) */
    uint64_t kicked;  /* data bytes [0, kicked) handed to writeback */
} wshard;

struct st_writer {
    char *dir;
    int n;
    wtensor *t;
    unsigned char *done; /* one flag per tensor; distinct i touch distinct bytes */
    int nshards;
    wshard *shards;
    uint64_t total;
    dio_pool *pool; /* direct writes: outputs of 2 x KICK_BYTES or more (see st_writer_open) */
    /* the flusher (started for buffered outputs of 2 x KICK_BYTES or more) */
    bool flushing, stop;
    pthread_t flusher;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

int st_writer_nshards(const st_writer *w) { return w ? w->nshards : 0; }

static void flusher_stop(st_writer *w);

void st_writer_abort(st_writer *w) {
    if (!w) return;
    flusher_stop(w);
    for (int s = 0; s < w->nshards; s++) {
        if (w->shards[s].fd >= 0) close(w->shards[s].fd);
        dio_abort(w->shards[s].dio);
        free(w->shards[s].file);
        free(w->shards[s].path);
    }
    dio_pool_free(w->pool);
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->shards);
    free(w->t);
    free(w->done);
    free(w->dir);
    free(w);
}

static cJSON *json_uint(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf); /* exact, never in exponent form */
}

static int cmp_wtensor_name(const void *a, const void *b) {
    return strcmp((*(const wtensor *const *)a)->name, (*(const wtensor *const *)b)->name);
}

/* Write all of buf at off, retrying short writes. */
static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
    const char *p = buf;
    while (len) {
        ssize_t k = pwrite(fd, p, len, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        len -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Header of shard sh: JSON padded with spaces so that 8 + N is a multiple of
 * ST_DATA_ALIGN. */
static char *shard_header(const st_writer *w, const wshard *sh, size_t *len) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    bool ok = meta && cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = sh->first; ok && i < sh->first + sh->count; i++) {
        const wtensor *t = &w->t[i];
        cJSON *e = cJSON_AddObjectToObject(h, t->name);
        cJSON *shape = NULL, *offs = NULL;
        ok = e && cJSON_AddStringToObject(e, "dtype", dtype_name(t->dtype)) &&
             (shape = cJSON_AddArrayToObject(e, "shape")) && (offs = cJSON_AddArrayToObject(e, "data_offsets"));
        for (int d = 0; ok && d < t->ndim; d++) ok = cJSON_AddItemToArray(shape, json_uint((uint64_t)t->shape[d]));
        ok = ok && cJSON_AddItemToArray(offs, json_uint(t->begin)) &&
             cJSON_AddItemToArray(offs, json_uint(t->begin + t->nbytes));
    }
    char *text = ok ? cJSON_PrintUnformatted(h) : NULL;
    cJSON_Delete(h);
    if (!text) return NULL;
    size_t n = strlen(text), pad = (ST_DATA_ALIGN - (8 + n) % ST_DATA_ALIGN) % ST_DATA_ALIGN;
    char *buf = malloc(8 + n + pad);
    if (buf) {
        uint64_t hl = n + pad;
        for (int i = 0; i < 8; i++) buf[i] = (char)(hl >> (8 * i) & 0xff);
        memcpy(buf + 8, text, n);
        memset(buf + 8 + n, ' ', pad);
        *len = 8 + n + pad;
    }
    free(text);
    return buf;
}

/* Validate specs and copy them into w->t. */
static int plan_tensors(st_writer *w, const char *dir, const st_spec *specs, int n, alloy_err *err) {
    for (int i = 0; i < n; i++) {
        const st_spec *s = &specs[i];
        wtensor *t = &w->t[i];
        if (!s->name || !s->name[0] || strcmp(s->name, "__metadata__") == 0)
            return alloy_fail(err, "%s: tensor %d has an invalid name '%s'", dir, i, s->name ? s->name : "(null)");
        if (!(t->name = strdup(s->name))) return alloy_fail(err, "%s: out of memory", dir);
        if ((unsigned)s->dtype >= ALLOY_DTYPE_COUNT)
            return alloy_fail(err, "%s: tensor '%s': invalid dtype %d", dir, s->name, (int)s->dtype);
        if (s->ndim < 0 || s->ndim > ST_MAX_DIMS)
            return alloy_fail(err, "%s: tensor '%s': %d dimensions (at most %d)", dir, s->name, s->ndim, ST_MAX_DIMS);
        t->dtype = s->dtype;
        t->ndim = s->ndim;
        uint64_t numel = 1;
        int overflow = 0, zero = 0;
        for (int d = 0; d < s->ndim; d++) {
            if (s->shape[d] < 0)
                return alloy_fail(err, "%s: tensor '%s': negative dimension %lld", dir, s->name,
                                  (long long)s->shape[d]);
            t->shape[d] = s->shape[d];
            zero |= s->shape[d] == 0;
            overflow |= __builtin_mul_overflow(numel, (uint64_t)s->shape[d], &numel);
        }
        if (zero) {
            numel = 0;
            overflow = 0;
        }
        if (overflow || numel > INT64_MAX || __builtin_mul_overflow(numel, dtype_size(s->dtype), &t->nbytes) ||
            t->nbytes > SIZE_MAX || __builtin_add_overflow(w->total, t->nbytes, &w->total))
            return alloy_fail(err, "%s: tensor '%s': shape is too large", dir, s->name);
    }
    /* duplicate names would make an unreadable header */
    const wtensor **by_name = malloc(sizeof *by_name * (size_t)(n + 1));
    if (!by_name) return alloy_fail(err, "%s: out of memory", dir);
    for (int i = 0; i < n; i++) by_name[i] = &w->t[i];
    qsort(by_name, (size_t)n, sizeof *by_name, cmp_wtensor_name);
    for (int i = 1; i < n; i++)
        if (strcmp(by_name[i - 1]->name, by_name[i]->name) == 0) {
            int rc = alloy_fail(err, "%s: tensor '%s' is declared twice", dir, by_name[i]->name);
            free(by_name);
            return rc;
        }
    free(by_name);
    return 0;
}

/* Written data is handed to the kernel's writeback KICK_BYTES at a time by
 * a flusher thread (sync_file_range, which may block while the device
 * queue is full, so never on the caller's thread): the disk writes while the
 * caller computes, instead of all of it in the final fsync. */
#define KICK_BYTES ((uint64_t)32 << 20)

/* The range of shard sh ready for writeback, [sh->kicked, *upto); false when
 * less than KICK_BYTES and the shard is not complete. Under w->mu. */
static bool kick_due(st_writer *w, wshard *sh, uint64_t *upto) {
    while (sh->next < sh->first + sh->count && w->done[sh->next]) sh->next++;
    *upto = sh->next < sh->first + sh->count ? w->t[sh->next].begin : sh->data_bytes;
    return *upto > sh->kicked && (*upto - sh->kicked >= KICK_BYTES || *upto == sh->data_bytes);
}

static void *flusher_main(void *p) {
    st_writer *w = p;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        bool any = false;
        for (int s = 0; s < w->nshards; s++) {
            wshard *sh = &w->shards[s];
            uint64_t upto;
            if (sh->fd < 0 || !kick_due(w, sh, &upto)) continue;
            uint64_t from = sh->kicked;
            sh->kicked = upto;
            any = true;
            pthread_mutex_unlock(&w->mu);
            sync_file_range(sh->fd, (off_t)(sh->data_start + from), (off_t)(upto - from), SYNC_FILE_RANGE_WRITE);
            pthread_mutex_lock(&w->mu);
        }
        if (w->stop) break;
        if (!any) pthread_cond_wait(&w->cv, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void flusher_stop(st_writer *w) {
    if (!w->flushing) return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->flusher, NULL);
    w->flushing = false;
}

st_writer *st_writer_open(const char *dir, const st_spec *specs, int n, uint64_t max_shard_bytes,
                          alloy_err *err) {
    if (n < 0) {
        alloy_fail(err, "%s: negative tensor count", dir);
        return NULL;
    }
    st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->dir = strdup(dir)) || !(w->t = calloc((size_t)n + 1, sizeof *w->t)) ||
        !(w->done = calloc((size_t)n + 1, 1)) || !(w->shards = calloc((size_t)n + 1, sizeof *w->shards))) {
        alloy_fail(err, "%s: out of memory", dir);
        st_writer_abort(w);
        return NULL;
    }
    w->n = n;
    if (plan_tensors(w, dir, specs, n, err)) {
        st_writer_abort(w);
        return NULL;
    }
    /* shard plan: a new shard when the next tensor would pass the budget
     * (max_shard_bytes 0: no limit, one shard) */
    wshard *cur = &w->shards[0];
    w->nshards = 1;
    for (int i = 0; i < w->n; i++) {
        wtensor *t = &w->t[i];
        if (cur->count > 0 && max_shard_bytes > 0 && cur->data_bytes + t->nbytes > max_shard_bytes) {
            cur = &w->shards[w->nshards++];
            cur->first = i;
        }
        t->shard = (int)(cur - w->shards);
        t->begin = cur->data_bytes;
        cur->data_bytes += t->nbytes;
        cur->count++;
    }
    for (int s = 0; s < w->nshards; s++) w->shards[s].fd = -1;
    /* direct writes for large outputs (ALLOY_DIRECT_IO=1: always, =0: never) */
    const char *dio_env = getenv("ALLOY_DIRECT_IO");
    bool direct = dio_env && *dio_env ? strcmp(dio_env, "0") != 0 : w->total >= 2 * KICK_BYTES;
    if (direct && !(w->pool = dio_pool_new(err))) {
        st_writer_abort(w);
        return NULL;
    }
    if (w->nshards > 99999) {
        alloy_fail(err, "%s: %d shards planned (at most 99999); raise the shard size", dir, w->nshards);
        st_writer_abort(w);
        return NULL;
    }
    for (int s = 0; s < w->nshards; s++) {
        wshard *sh = &w->shards[s];
        char name[64];
        if (w->nshards == 1)
            snprintf(name, sizeof name, "%s", ST_SINGLE_NAME);
        else
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, w->nshards);
        sh->file = strdup(name);
        sh->path = fs_join(dir, name);
        size_t hlen = 0;
        char *hdr = sh->file && sh->path ? shard_header(w, sh, &hlen) : NULL;
        if (!hdr) {
            alloy_fail(err, "%s: out of memory", dir);
            st_writer_abort(w);
            return NULL;
        }
        sh->data_start = hlen;
        if (w->pool) {
            sh->dio = dio_open(w->pool, sh->path, sh->data_start + sh->data_bytes, err);
            if (!sh->dio && errno != EINVAL) {
                free(hdr);
                st_writer_abort(w);
                return NULL;
            }
            if (sh->dio && dio_write(sh->dio, hdr, hlen, 0, err)) {
                free(hdr);
                st_writer_abort(w);
                return NULL;
            }
        }
        if (!sh->dio) { /* buffered: small outputs, or O_DIRECT refused here */
            sh->fd = open(sh->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            int bad = sh->fd < 0 || pwrite_all(sh->fd, hdr, hlen, 0) ||
                      ftruncate(sh->fd, (off_t)(sh->data_start + sh->data_bytes));
            if (bad) {
                int e = errno;
                free(hdr);
                alloy_fail(err, "%s: cannot create: %s", sh->path, strerror(e));
                st_writer_abort(w);
                return NULL;
            }
        }
        free(hdr);
    }
    bool buffered = false;
    for (int s = 0; s < w->nshards; s++) buffered |= !w->shards[s].dio;
    if (buffered && w->total >= 2 * KICK_BYTES) { /* without the thread, the final fsync writes it all */
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->flushing = pthread_create(&w->flusher, NULL, flusher_main, w) == 0;
    }
    return w;
}

int st_writer_put(st_writer *w, int i, const void *data, alloy_err *err) {
    if (i < 0 || i >= w->n) return alloy_fail(err, "%s: tensor index %d out of range (0..%d)", w->dir, i, w->n - 1);
    if (st_writer_put_part(w, i, 0, data, (size_t)w->t[i].nbytes, err)) return -1;
    st_writer_mark_done(w, i);
    return 0;
}

int st_writer_put_part(st_writer *w, int i, uint64_t offset, const void *data, size_t len, alloy_err *err) {
    if (i < 0 || i >= w->n) return alloy_fail(err, "%s: tensor index %d out of range (0..%d)", w->dir, i, w->n - 1);
    const wtensor *t = &w->t[i];
    const wshard *sh = &w->shards[t->shard];
    if (offset + len > t->nbytes)
        return alloy_fail(err, "%s: tensor '%s': bytes %llu..%llu past its %llu", sh->path, t->name,
                          (unsigned long long)offset, (unsigned long long)(offset + len), (unsigned long long)t->nbytes);
    if (sh->dio) return dio_write(sh->dio, data, len, sh->data_start + t->begin + offset, err);
    if (len && pwrite_all(sh->fd, data, len, sh->data_start + t->begin + offset))
        return alloy_fail(err, "%s: tensor '%s': write failed: %s", sh->path, t->name, strerror(errno));
    return 0;
}

dio_file *st_writer_dio(st_writer *w, int i, uint64_t *file_off) {
    if (i < 0 || i >= w->n) return NULL;
    const wtensor *t = &w->t[i];
    const wshard *sh = &w->shards[t->shard];
    if (!sh->dio) return NULL;
    *file_off = sh->data_start + t->begin;
    return sh->dio;
}

void st_writer_mark_done(st_writer *w, int i) {
    if (i < 0 || i >= w->n) return;
    wshard *sh = &w->shards[w->t[i].shard];
    /* a direct shard complete: its open runs go to the device now */
    if (sh->dio && __atomic_add_fetch(&sh->ndone, 1, __ATOMIC_ACQ_REL) == sh->count) dio_flush(sh->dio);
    if (!w->flushing) {
        w->done[i] = 1;
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->done[i] = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* model.safetensors.index.json: total_size and the sorted weight_map. */
static int write_index(const st_writer *w, alloy_err *err) {
    char *path = fs_join(w->dir, ST_INDEX_NAME);
    const wtensor **by_name = malloc(sizeof *by_name * (size_t)(w->n + 1));
    cJSON *j = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(j, "metadata");
    cJSON *map = cJSON_AddObjectToObject(j, "weight_map");
    char *text = NULL;
    bool ok = path && by_name && meta && map && cJSON_AddItemToObject(meta, "total_size", json_uint(w->total));
    if (ok) {
        for (int i = 0; i < w->n; i++) by_name[i] = &w->t[i];
        qsort(by_name, (size_t)w->n, sizeof *by_name, cmp_wtensor_name);
    }
    for (int i = 0; ok && i < w->n; i++)
        ok = cJSON_AddStringToObject(map, by_name[i]->name, w->shards[by_name[i]->shard].file) != NULL;
    if (ok) text = cJSON_Print(j);
    cJSON_Delete(j);
    free(by_name);
    int rc = 0;
    if (!text) {
        rc = alloy_fail(err, "%s: out of memory", w->dir);
    } else {
        size_t len = strlen(text);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int bad = fd < 0 || pwrite_all(fd, text, len, 0) || pwrite_all(fd, "\n", 1, len) || fsync(fd);
        int e = errno;
        if (fd >= 0 && close(fd) && !bad) {
            bad = 1;
            e = errno;
        }
        if (bad) rc = alloy_fail(err, "%s: write failed: %s", path, strerror(e));
    }
    free(text);
    free(path);
    return rc;
}

int st_writer_finish(st_writer *w, alloy_err *err) {
    int rc = 0;
    for (int i = 0; i < w->n && !rc; i++)
        if (!w->done[i])
            rc = alloy_fail(err, "%s: tensor '%s' was never written", w->shards[w->t[i].shard].path, w->t[i].name);
    flusher_stop(w);
    for (int s = 0; s < w->nshards && !rc; s++) {
        wshard *sh = &w->shards[s];
        if (sh->dio) {
            rc = dio_close(sh->dio, err);
            sh->dio = NULL;
            continue;
        }
        int bad = fsync(sh->fd);
        bad |= close(sh->fd);
        sh->fd = -1;
        if (bad) rc = alloy_fail(err, "%s: write failed: %s", sh->path, strerror(errno));
    }
    if (!rc && w->nshards > 1) rc = write_index(w, err);
    if (!rc) { /* make the new directory entries durable */
        int dfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    st_writer_abort(w);
    return rc;
}
