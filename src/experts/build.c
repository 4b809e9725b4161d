/* build.c — building a TTMM expert library (Local Mixtures of Experts,
 * arXiv 2505.14136, train time): read the corpus, embed every document,
 * cluster with bisecting k-means, write the centroids and manifest, then
 * train one LoRA adapter per cluster with the training engine (tr_train) on
 * that cluster's documents. Resumable: the clustering is deterministic and
 * recomputed; experts whose adapter directory is complete are kept (tr_train
 * writes each atomically and resumes its own interrupted state).
 * Not here: the library format (library.c), training itself (src/train). */
#include <cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/experts.h"
#include "train/trainer.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/rng.h"

void ex_build_defaults(ex_build_opts *o) {
    memset(o, 0, sizeof *o);
    o->clusters = 8;
    o->lora_rank = 8;
    o->doc_tokens = EX_DOC_TOKENS;
}

void ex_corpus_free(char **docs, int n) {
    for (int i = 0; docs && i < n; i++) free(docs[i]);
    free(docs);
}

static int push_doc(char ***docs, int *n, int *cap, char *d, alloy_err *err) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        char **nd = realloc(*docs, (size_t)nc * sizeof *nd);
        if (!nd) {
            free(d);
            return alloy_fail(err, "corpus: out of memory");
        }
        *docs = nd, *cap = nc;
    }
    (*docs)[(*n)++] = d;
    return 0;
}

static bool blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\n' && *s != '\t' && *s != '\r') return false;
    return true;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int ex_corpus_read(const char *path, char ***docs, int *n, alloy_err *err) {
    *docs = NULL, *n = 0;
    int cap = 0;
    size_t pl = strlen(path);
    if (fs_is_dir(path)) {
        DIR *dir = opendir(path);
        if (!dir) return alloy_fail(err, "corpus %s: cannot open directory", path);
        char **names = NULL;
        int nn = 0, ncap = 0;
        struct dirent *de;
        while ((de = readdir(dir))) {
            if (de->d_name[0] == '.') continue;
            char *full = fs_join(path, de->d_name);
            if (!full || !fs_is_file(full)) {
                free(full);
                continue;
            }
            if (push_doc(&names, &nn, &ncap, full, err)) {
                closedir(dir);
                ex_corpus_free(names, nn);
                return -1;
            }
        }
        closedir(dir);
        if (nn) qsort(names, (size_t)nn, sizeof *names, cmp_str);
        for (int i = 0; i < nn; i++) {
            char *txt = fs_read_file(names[i], NULL, err);
            if (!txt) {
                ex_corpus_free(names, nn);
                ex_corpus_free(*docs, *n);
                *docs = NULL, *n = 0;
                return -1;
            }
            if (blank(txt)) {
                free(txt);
                continue;
            }
            if (push_doc(docs, n, &cap, txt, err)) {
                ex_corpus_free(names, nn);
                return -1;
            }
        }
        ex_corpus_free(names, nn);
    } else if (pl > 6 && strcmp(path + pl - 6, ".jsonl") == 0) {
        char *txt = fs_read_file(path, NULL, err);
        if (!txt) return -1;
        int line = 0;
        for (char *p = txt; *p;) {
            char *e = strchr(p, '\n');
            if (e) *e = 0;
            line++;
            if (!blank(p)) {
                cJSON *j = cJSON_Parse(p);
                const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
                if (!cJSON_IsString(t)) {
                    cJSON_Delete(j);
                    free(txt);
                    ex_corpus_free(*docs, *n);
                    *docs = NULL, *n = 0;
                    return alloy_fail(err, "%s:%d: expected a JSON object with a string \"text\"", path, line);
                }
                char *d = NULL;
                if (!blank(t->valuestring)) {
                    d = malloc(strlen(t->valuestring) + 1);
                    if (d) strcpy(d, t->valuestring);
                }
                cJSON_Delete(j);
                if (d && push_doc(docs, n, &cap, d, err)) {
                    free(txt);
                    return -1;
                }
            }
            if (!e) break;
            p = e + 1;
        }
        free(txt);
    } else {
        return alloy_fail(err, "corpus %s: expected a directory of text files or a .jsonl file", path);
    }
    if (*n == 0) return alloy_fail(err, "corpus %s: no non-empty documents", path);
    return 0;
}

#define logf_(o, ...) ex_logf((o)->on_log, (o)->user, __VA_ARGS__)

static const char *const TOK_FILES[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "vocab.json", "merges.txt", "generation_config.json"};

/* Write the documents of cluster c, separated by blank lines, to path. */
static int write_cluster(const char *path, char **docs, int n, const int *assign, int c, alloy_err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return alloy_fail(err, "%s: cannot create", path);
    for (int i = 0; i < n; i++)
        if (assign[i] == c) fprintf(f, "%s\n\n", docs[i]);
    if (fclose(f) != 0) return alloy_fail(err, "%s: write failed", path);
    return 0;
}

static bool expert_done(const char *dir) {
    char *a = fs_join(dir, "adapter_config.json"), *b = fs_join(dir, "adapter_model.safetensors");
    bool ok = a && b && fs_is_file(a) && fs_is_file(b);
    free(a), free(b);
    return ok;
}

int ex_build(const ex_build_opts *o, alloy_err *err) {
    char **docs = NULL;
    int n = 0, k = o->clusters, rc = -1;
    float *X = NULL;
    int *assign = NULL;
    ex_library lib = {0};
    ex_embedder emb = {0};
    char hex[17], fp[17];
    if (k < 1) return alloy_fail(err, "--clusters must be at least 1 (got %d)", k);
    if (ex_corpus_read(o->corpus, &docs, &n, err)) return -1;
    if (n < k) {
        ex_corpus_free(docs, n);
        return alloy_fail(err, "corpus %s has %d documents, fewer than the %d clusters requested", o->corpus, n,
                          k);
    }
    if (ex_base_checksum(o->base_dir, hex, err)) goto out;

    /* fingerprint of everything the experts depend on */
    {
        uint64_t h = rng_hash_str(hex);
        char set[512];
        snprintf(set, sizeof set, "%s|%d|%d|%g|%lld|%g|%d|%d|%llu|%d", o->embed_dir ? o->embed_dir : "", k,
                 o->lora_rank, (double)o->lora_alpha, (long long)o->steps, (double)o->lr, o->batch, o->ctx,
                 (unsigned long long)o->seed, o->doc_tokens);
        h = rng_mix64(h ^ rng_hash_str(set));
        for (int i = 0; i < n; i++) h = rng_mix64(h ^ rng_hash_str(docs[i]));
        snprintf(fp, sizeof fp, "%016llx", (unsigned long long)h);
    }

    const char *embed_dir = o->embed_dir ? o->embed_dir : o->base_dir;
    if (ex_embedder_open(&emb, embed_dir, o->doc_tokens, err)) goto out;
    int d = emb.dim;
    X = malloc((size_t)n * d * sizeof *X);
    assign = malloc((size_t)n * sizeof *assign);
    lib.sizes = malloc((size_t)k * sizeof *lib.sizes);
    lib.centroids = malloc((size_t)k * d * sizeof *lib.centroids);
    if (!X || !assign || !lib.sizes || !lib.centroids) {
        alloy_fail(err, "out of memory for %d document embeddings", n);
        goto out;
    }
    logf_(o, "embedding %d documents with %s (first %d tokens)", n, embed_dir, emb.max_tokens);
    for (int i = 0; i < n; i++)
        if (ex_embed_text(&emb, docs[i], strlen(docs[i]), X + (size_t)i * d, err)) {
            alloy_wrap(err, "corpus %s, document %d: ", o->corpus, i);
            goto out;
        }
    ex_embedder_close(&emb);
    if (ex_kmeans_bisect(X, n, d, k, o->seed, assign, err)) goto out;
    if (ex_centroids(X, n, d, assign, k, lib.centroids, lib.sizes, err)) goto out;

    /* manifest (complete: false) */
    lib.dir = (char *)o->out_dir;
    lib.base = realpath(o->base_dir, NULL);
    lib.embed_model = realpath(embed_dir, NULL);
    lib.base_checksum = hex;
    lib.fingerprint = fp;
    lib.doc_tokens = o->doc_tokens;
    lib.query_tokens = EX_QUERY_TOKENS;
    ex_select_defaults(&lib.sel);
    lib.k = k;
    lib.dim = d;
    lib.lora_rank = o->lora_rank;
    lib.lora_alpha = o->lora_alpha > 0 ? o->lora_alpha : 2.0 * o->lora_rank;
    if (!lib.base || !lib.embed_model) {
        alloy_fail(err, "cannot resolve the path of %s or %s", o->base_dir, embed_dir);
        goto out;
    }
    {
        char *mp = fs_join(o->out_dir, EX_MANIFEST);
        if (mp && fs_exists(mp)) {
            ex_library old;
            if (ex_library_load(&old, o->out_dir, false, err)) {
                free(mp);
                goto out;
            }
            int same = strcmp(old.fingerprint, fp) == 0, trained = 0;
            for (int c = 0; c < old.k && !same; c++) {
                char name[32];
                ex_expert_name(c, name);
                char *ed = fs_join(o->out_dir, name);
                trained += ed && expert_done(ed);
                free(ed);
            }
            ex_library_free(&old);
            if (!same && trained == 0) {
                /* a build that failed before its first expert: nothing to keep */
                logf_(o, "replacing the untrained library in %s (other settings)", o->out_dir);
            } else if (!same) {
                alloy_fail(err, "%s holds a library built from another base, corpus or settings; remove it or "
                           "choose another -o", o->out_dir);
                free(mp);
                goto out;
            } else {
                logf_(o, "resuming the library in %s", o->out_dir);
            }
        } else if (fs_is_dir(o->out_dir)) {
            DIR *dd = opendir(o->out_dir);
            struct dirent *de;
            int entries = 0;
            while (dd && (de = readdir(dd)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) entries++;
            if (dd) closedir(dd);
            if (entries) {
                alloy_fail(err, "%s exists, is not empty and holds no %s", o->out_dir, EX_MANIFEST);
                free(mp);
                goto out;
            }
        }
        free(mp);
    }
    if (fs_mkdirs(o->out_dir, err)) goto out;
    if (ex_library_write_centroids(&lib, err) || ex_library_write_manifest(&lib, err)) goto out;
    for (size_t i = 0; i < sizeof TOK_FILES / sizeof *TOK_FILES; i++) {
        char *src = fs_join(o->base_dir, TOK_FILES[i]), *dst = fs_join(o->out_dir, TOK_FILES[i]);
        int bad = src && fs_exists(src) && fs_copy_file(src, dst, err);
        free(src), free(dst);
        if (bad) goto out;
    }

    /* one LoRA expert per cluster */
    char *data_dir = fs_join(o->out_dir, ".data");
    if (!data_dir || fs_mkdirs(data_dir, err)) {
        free(data_dir);
        goto out;
    }
    for (int c = 0; c < k; c++) {
        char name[32], file[48];
        ex_expert_name(c, name);
        char *edir = fs_join(o->out_dir, name);
        if (!edir) {
            alloy_fail(err, "out of memory");
            free(data_dir);
            goto out;
        }
        if (expert_done(edir)) {
            logf_(o, "%s: kept (%d documents)", name, lib.sizes[c]);
            free(edir);
            continue;
        }
        snprintf(file, sizeof file, "cluster-%05d.txt", c);
        char *dpath = fs_join(data_dir, file);
        int bad = !dpath || write_cluster(dpath, docs, n, assign, c, err);
        if (!bad) {
            tr_options t;
            tr_options_default(&t);
            t.base_dir = o->base_dir;
            t.data_path = dpath;
            t.out_dir = edir;
            t.lora_rank = o->lora_rank;
            t.lora_alpha = (float)lib.lora_alpha;
            t.steps = o->steps;
            if (o->lr > 0) t.lr = o->lr;
            if (o->batch > 0) t.batch = o->batch;
            if (o->ctx > 0) t.ctx = o->ctx;
            t.seed = o->seed + (uint64_t)c;
            t.threads = o->threads;
            t.log_every = 1000000;
            logf_(o, "%s: training on %d documents", name, lib.sizes[c]);
            bad = tr_train(&t, err);
            if (bad) alloy_wrap(err, "%s: ", name);
        }
        free(dpath), free(edir);
        if (bad) {
            free(data_dir);
            goto out;
        }
    }
    fs_remove_tree(data_dir, NULL);
    free(data_dir);
    lib.complete = true;
    if (ex_library_write_manifest(&lib, err)) goto out;
    logf_(o, "library %s: %d experts", o->out_dir, k);
    rc = 0;
out:
    if (emb.tok || emb.logits) ex_embedder_close(&emb);
    ex_corpus_free(docs, n);
    free(X), free(assign);
    free(lib.sizes), free(lib.centroids), free(lib.base), free(lib.embed_model);
    return rc;
}
