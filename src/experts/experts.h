/* experts.h — TTMM: test-time model merging over a library of local LoRA
 * experts (Bertolissi, Hübotter, Hakimi, Krause, "Local Mixtures of Experts:
 * Essentially Free Test-Time Training via Model Merging", arXiv 2505.14136,
 * COLM 2025).
 *
 * Train time (ex_build): embed every document, cluster the corpus with
 * bisecting k-means, train one LoRA adapter per cluster (src/train), store
 * the normalised cluster centroids. Test time (lm_open_experts, lm_experts.c):
 * per prompt, embed its first 50 tokens, weight the experts with the paper's
 * sparse kernel (ex_select), and run base + Σ w_k (α_k/r_k) B_k A_k — merged
 * into f32 copies of the adapted weights, or applied un-merged as run-time
 * low-rank terms, whichever is cheaper — or, as the paper's baseline, mix the
 * selected experts' output distributions (ensemble).
 *
 * Files: embed.c (embeddings), kmeans.c (clustering), library.c (the
 * directory format), build.c (the build pipeline), select.c (coefficients),
 * lm_experts.c (the runnable model). Not here: training (src/train), the
 * forward pass (src/model), the mixing math (src/mix). */
#ifndef ALLOY_EXPERTS_H
#define ALLOY_EXPERTS_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"
#include "model/forward.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

/* ---- embed.c ---- */

/* Default embedding: the hidden state after the model's final RMSNorm,
 * mean-pooled over the first max_tokens tokens of a text (encoded without
 * special tokens) and L2-normalised. The paper embeds with a sentence encoder
 * (all-mpnet-base-v2); alloy uses a model it can run instead. */
typedef struct ex_embedder {
    Model model;
    RunState st;
    tokenizer *tok;
    float *logits;   /* (vocab) scratch for the forward pass */
    int max_tokens;
    int dim;
    LayerWeights *layers; /* own layer table when the weights are borrowed, else NULL */
} ex_embedder;

#define EX_DOC_TOKENS 256  /* tokens of a document that its embedding sees */
#define EX_QUERY_TOKENS 50 /* tokens of a prompt that its query sees (the paper's prefix) */

/* Open the model and tokenizer of dir for embeddings of up to max_tokens
 * tokens. On failure nothing stays allocated. */
int ex_embedder_open(ex_embedder *e, const char *dir, int max_tokens, alloy_err *err);
/* The same over the weights of an open model (the base of dir, which the
 * caller keeps open longer than e) instead of loading them a second time. The
 * embedder keeps its own layer table without run-time low-rank terms, so
 * adapters the caller wires into `shared` never reach the embeddings. */
int ex_embedder_open_shared(ex_embedder *e, const Model *shared, const char *dir, int max_tokens, alloy_err *err);
void ex_embedder_close(ex_embedder *e);
/* Embed ids[0..n) (n is clipped to max_tokens) into out (dim), unit norm.
 * n == 0 writes zeros. */
int ex_embed_ids(ex_embedder *e, const int32_t *ids, int n, float *out, alloy_err *err);
/* Encode text (no special tokens) and embed its first max_tokens tokens. */
int ex_embed_text(ex_embedder *e, const char *text, size_t len, float *out, alloy_err *err);

/* ---- kmeans.c ---- */

/* Bisecting k-means of the n points X (n, d) into k clusters: starting from
 * one cluster, repeatedly split the largest one (lowest index on ties) with
 * 2-means (Lloyd, squared euclidean distance — on unit vectors the same
 * ordering as cosine distance), best of n_init seeded starts. assign[i] gets
 * the cluster of point i, in 0..k-1; every cluster is non-empty. A 2-means
 * split that leaves a side empty (identical points) falls back to halving
 * the cluster by index. Deterministic for a seed. Errors: k < 1, k > n. */
int ex_kmeans_bisect(const float *X, int n, int d, int k, uint64_t seed, int *assign, alloy_err *err);

/* Normalised means: C[c] = normalize(mean_{assign[i]==c} X[i]); sizes[c]
 * (may be NULL) gets the cluster sizes. A cluster with no points is an error. */
int ex_centroids(const float *X, int n, int d, const int *assign, int k, float *C, int *sizes,
                 alloy_err *err);

/* ---- select.c ---- */

typedef struct ex_select_opts {
    double beta;      /* kernel bandwidth β (0.2); κ = exp(−(1 − s)/β²) */
    double tau;       /* sparsity threshold τ on normalised weights (0.01) */
    int max_experts;  /* cap on kept experts, the largest κ (50) */
    int top_k;        /* > 0: keep exactly the top_k largest κ instead of the τ rule */
} ex_select_opts;

void ex_select_defaults(ex_select_opts *o);

/* Coefficients of the k experts with centroids C (k, d) for the unit query q
 * (d). Writes the kept experts' indices (ascending) to idx and their weights
 * (summing to 1) to w, both of capacity k, and returns their count: 0 means
 * the plain base model. A NaN anywhere selects the single most similar
 * expert (weight 1) when one has a finite similarity, else none. */
int ex_select(const float *q, const float *C, int k, int d, const ex_select_opts *o, int *idx, double *w);

/* ---- library.c ---- */

/* Format a progress line and hand it to on_log (nothing when on_log is NULL):
 * how build and ttt report to their caller without printing themselves. */
void ex_logf(void (*on_log)(void *user, const char *line), void *user, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define EX_MANIFEST "alloy_experts.json"
#define EX_CENTROIDS "centroids.safetensors"

typedef struct ex_library {
    char *dir;
    char *base;             /* base checkpoint directory */
    char *base_checksum;    /* hex, see ex_base_checksum */
    char *embed_model;      /* embedding model directory (the base unless --embed) */
    int doc_tokens, query_tokens;
    ex_select_opts sel;
    int k, dim;             /* experts, embedding size */
    int *sizes;             /* (k) documents per cluster */
    float *centroids;       /* (k, dim) unit rows */
    int lora_rank;
    double lora_alpha;
    bool complete;          /* every expert trained */
    char *fingerprint;      /* hex hash of the build's inputs and settings (build.c) */
} ex_library;

/* A 64-bit FNV-1a checksum (16 hex digits into hex[17]) of the base
 * checkpoint dir: config.json, the safetensors index when present, each
 * safetensors file's size and header, and 16 evenly spaced 4 KiB samples of
 * its data — enough to notice a replaced or retrained base. */
int ex_base_checksum(const char *dir, char hex[17], alloy_err *err);

/* "expert-00003" */
void ex_expert_name(int k, char out[32]);

/* Write lib's manifest (atomically: temp file + rename) into lib->dir. */
int ex_library_write_manifest(const ex_library *lib, alloy_err *err);
/* Write lib->centroids as centroids.safetensors ("centroids" [k, dim] f32). */
int ex_library_write_centroids(const ex_library *lib, alloy_err *err);

/* Load the manifest and centroids of dir. With check_base, the base's
 * current checksum must match the recorded one (else an error naming both
 * directories). Errors name the file and key at fault. */
int ex_library_load(ex_library *lib, const char *dir, bool check_base, alloy_err *err);
void ex_library_free(ex_library *lib);

/* ---- build.c ---- */

typedef struct ex_build_opts {
    const char *base_dir, *corpus, *out_dir;
    const char *embed_dir;  /* NULL: the base */
    int clusters;           /* 8 */
    int lora_rank;          /* 8 */
    float lora_alpha;       /* 2 * rank */
    int64_t steps;          /* 0: one epoch of the cluster's data */
    float lr;               /* 0: the trainer's default */
    int batch, ctx;         /* 0: the trainer's defaults */
    uint64_t seed;          /* 0 */
    int threads;            /* 0: all */
    int doc_tokens;         /* EX_DOC_TOKENS */
    void (*on_log)(void *user, const char *line);
    void *user;
} ex_build_opts;

void ex_build_defaults(ex_build_opts *o);

/* Read a corpus: a directory of text files (each file one document, sorted
 * by name, hidden files skipped) or a .jsonl with {"text": ...} per line.
 * Empty documents are skipped. *docs (n strings) is malloc'd; free with
 * ex_corpus_free. */
int ex_corpus_read(const char *path, char ***docs, int *n, alloy_err *err);
void ex_corpus_free(char **docs, int n);

/* Build (or resume) the library o->out_dir. Clustering is recomputed
 * (deterministic); experts whose adapter directory is complete are kept.
 * A directory holding a library built with other settings (base, corpus,
 * clusters, seed, rank, steps) is an error. */
int ex_build(const ex_build_opts *o, alloy_err *err);

/* ---- lm_experts.c ---- */

struct lm;
/* The selection the last lm_begin made on an expert-library lm (opened by
 * lm_open_experts): count, indices and weights (owned by m). */
int ex_lm_selection(const struct lm *m, const int **idx, const double **w);
/* The mode the last lm_begin ran in: "merge", "unmerged" or "ensemble". */
const char *ex_lm_mode(const struct lm *m);
/* Seconds the last lm_begin spent embedding the prompt, computing the
 * coefficients, and merging (or preparing run-time adapters / members). */
void ex_lm_timings(const struct lm *m, double *embed_s, double *select_s, double *merge_s);

/* ---- ttt.c ---- */

/* The test-time training baseline (TTT on nearest neighbours, Hardt & Sun
 * 2024, as the TTMM paper compares against it): per prompt, a fresh LoRA is
 * fine-tuned on the prompt's K nearest corpus documents, then the prompt runs
 * through base + adapter. Defaults (ex_ttt_defaults) and why: */
typedef struct ex_ttt_opts {
    const char *base_dir, *corpus;
    const char *embed_dir;   /* NULL: the base */
    int neighbors;           /* 50: Hardt & Sun's largest (and best) neighbour count; clamped to the corpus */
    int steps_per_neighbor;  /* 1: one gradient step per neighbour (Hardt & Sun); 0: no training (the base) */
    bool nearest_last;       /* false: train nearest first (Hardt & Sun's order); true: farthest first */
    int lora_rank;           /* 8: the rank of ex_build's experts, so TTT and TTMM adapters match */
    float lora_alpha;        /* 0: 2 * rank (as ex_build) */
    float lr;                /* 2e-4: the trainer's LoRA default (the experts' rate); constant, AdamW */
    int train_ctx;           /* 512 (clipped to max_position_embeddings): tokens of a neighbour per step */
    int doc_tokens;          /* EX_DOC_TOKENS: tokens of a document its embedding sees */
    int query_tokens;        /* EX_QUERY_TOKENS: tokens of a prompt its query sees */
    uint64_t seed;           /* 0: the adapter's A initialisation (the same for every prompt) */
    int threads;             /* 0: all */
    int n_ctx, max_batch;    /* inference, as lm_options (0: defaults) */
    void (*on_log)(void *user, const char *line);
    void *user;
} ex_ttt_opts;

void ex_ttt_defaults(ex_ttt_opts *o);

/* Timings and the last prompt's run, for messages and benchmarks. */
typedef struct ex_ttt_stats {
    int ndocs;                  /* corpus documents */
    int train_ctx;              /* inputs per training step (after clipping to the longest document) */
    double embed_s, tokenize_s; /* one-time corpus embedding and tokenization */
    int64_t prompts;            /* TTT runs so far (lm_begin calls) */
    int neighbors;              /* last prompt: neighbours retrieved */
    int64_t steps;              /* last prompt: gradient steps taken */
    double mean_loss;           /* last prompt: mean training loss (NaN without steps) */
    double retrieval_s, training_s;             /* last prompt */
    double total_retrieval_s, total_training_s; /* every prompt */
    const int *idx;             /* last prompt: neighbours (corpus order indices), nearest first */
    const float *sim;           /* their cosine similarities */
} ex_ttt_stats;

struct lm;
/* Open the TTT model of o as a runnable lm (free with lm_free): reads, embeds
 * and tokenizes the corpus once. Each lm_begin(prompt) retrieves the
 * min(neighbors, documents) nearest documents of the prompt's first
 * query_tokens tokens, resets the adapter (B = 0) and AdamW, trains
 * steps_per_neighbor steps of batch 1 per neighbour (nearest first unless
 * nearest_last; step s on
 * a neighbour uses its window s mod windows of train_ctx tokens), and makes
 * lm_forward run base + adapter. Errors: corpus (unreadable, empty, a bad
 * .jsonl line), neighbors < 1, steps < 0, rank < 1, lr <= 0, the model; at
 * lm_begin: an empty prompt (no text in its first query_tokens tokens), a
 * diverged step. Deterministic for a seed and thread count. */
int ex_ttt_open(struct lm **out, const ex_ttt_opts *o, alloy_err *err);
/* The statistics of a TTT lm (pointers owned by m, valid until the next
 * lm_begin). */
void ex_ttt_stats_get(const struct lm *m, ex_ttt_stats *s);

/* The k nearest of the n unit rows X (n, d) to the unit query q by cosine
 * similarity (the dot product): writes up to k indices to idx and their
 * similarities to sim (capacity k each), most similar first, the lower index
 * first on ties; NaN similarities rank last. Returns min(k, n) (0 when k < 1).
 * Pure: no allocation. */
int ex_nearest(const float *X, int n, int d, const float *q, int k, int *idx, float *sim);

#endif
