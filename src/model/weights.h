/* weights.h — the tensors of a Qwen2 / Llama / Mistral checkpoint as
 * pointers into its memory-mapped safetensors files (llama2.c's
 * TransformerWeights), and the Model that bundles config, mapping and
 * weights.
 *
 * Matrices are not copied: a Mat is (pointer, dtype, rows, cols) over the
 * mapping, in bf16, f16 or f32. Only the small vectors (norm weights and
 * biases) are converted to f32 once, into one block owned by Weights.
 * Not here: the forward pass (forward.h), the kernels (kernels.h). */
#ifndef ALLOY_MODEL_WEIGHTS_H
#define ALLOY_MODEL_WEIGHTS_H

#include "alloy.h"
#include "io/safetensors.h"
#include "model/config.h"

/* A row-major matrix (rows, cols) in the checkpoint's dtype. */
typedef struct Mat {
    const void *w;
    alloy_dtype dtype; /* ALLOY_F32, ALLOY_BF16 or ALLOY_F16 */
    int rows, cols;
} Mat;

/* Run-time low-rank additions to one Mat: y = W x + Σ_j c_j B_j (A_j x), with
 * A_j (rank, cols) and B_j (rows, rank) in f32. A LoRA is one term with
 * c = α/r; a weighted set of LoRAs (TTMM's un-merged mode) is one term per
 * adapter. The base weights are never touched. n = 0: none. */
typedef struct LowRankTerm {
    const float *A, *B;
    int rank;
    float scale;
} LowRankTerm;

typedef struct LowRank {
    const LowRankTerm *terms;
    int n;
} LowRank;

/* The seven projections of a layer, in the order of LayerWeights.delta. */
enum { LW_Q, LW_K, LW_V, LW_O, LW_GATE, LW_UP, LW_DOWN, LW_NMAT };

typedef struct LayerWeights {
    const float *ln1;   /* (dim) input_layernorm */
    Mat wq;             /* (n_heads * head_dim, dim) */
    Mat wk;             /* (n_kv_heads * head_dim, dim) */
    Mat wv;             /* (n_kv_heads * head_dim, dim) */
    Mat wo;             /* (dim, n_heads * head_dim) */
    const float *bq;    /* (n_heads * head_dim) or NULL */
    const float *bk;    /* (n_kv_heads * head_dim) or NULL */
    const float *bv;    /* (n_kv_heads * head_dim) or NULL */
    const float *bo;    /* (dim) or NULL */
    const float *ln2;   /* (dim) post_attention_layernorm */
    Mat w_gate;         /* (hidden_dim, dim) */
    Mat w_up;           /* (hidden_dim, dim) */
    Mat w_down;         /* (dim, hidden_dim) */
    LowRank delta[LW_NMAT]; /* run-time low-rank additions (rank 0 when none) */
} LayerWeights;

typedef struct Weights {
    Mat embed;            /* (vocab_size, dim) model.embed_tokens */
    LayerWeights *layers; /* (n_layers) */
    const float *ln_f;    /* (dim) model.norm */
    Mat lm_head;          /* (vocab_size, dim); the embedding when tied */
    float *vectors;       /* owned f32 block behind every ln and bias pointer */
} Weights;

typedef struct Model {
    Config config;
    Weights weights;
    st_model st;
    float *rope_inv_freq; /* (head_dim / 2) */
} Model;

/* Lay w over the tensors of st for config c. Every expected tensor must be
 * present with the expected shape and a float dtype; otherwise the error names
 * the checkpoint and the tensor. On failure nothing is left allocated. */
int model_weights_load(Weights *w, const Config *c, const st_model *st, alloy_err *err);
void model_weights_free(Weights *w);

/* Open the checkpoint directory dir: config.json and the safetensors files
 * (mapped, not read). *m owns everything until model_close. On failure *m is
 * zeroed. */
int model_open(Model *m, const char *dir, alloy_err *err);
void model_close(Model *m);

/* The tensors a checkpoint holds, as transformers names them. */
typedef enum tensor_kind {
    T_EMBED, T_WQ, T_BQ, T_WK, T_BK, T_WV, T_BV, T_WO, T_BO, T_GATE, T_UP, T_DOWN, T_LN1, T_LN2, T_NORM,
    T_LM_HEAD
} tensor_kind;

typedef struct TensorSpec {
    char name[96]; /* e.g. "model.layers.3.self_attn.q_proj.weight" */
    tensor_kind kind;
    int layer;     /* -1 for global tensors */
    int ndim;      /* 1 or 2 */
    int64_t shape[2];
} TensorSpec;

/* Every tensor a checkpoint of config c must hold, in transformers'
 * state-dict order (lm_head only when untied). Writes them to specs when it
 * is not NULL; returns the count. */
int model_tensor_specs(const Config *c, TensorSpec *specs);

#endif
