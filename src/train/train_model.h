/* train_model.h — the trainable Qwen2/Llama decoder: config from
 * config.json, f32 master parameters in one block (tr_pset) with a struct of
 * pointers into it, activations kept for the backward pass, the forward pass
 * with loss, and the backward pass into the parameter gradients (full
 * fine-tuning) or the LoRA gradients (base frozen).
 *
 * Architecture: token embedding; per layer RMSNorm -> q/k/v (optional biases)
 * -> RoPE (HF rotate_half, optional llama3 rope_scaling) -> causal GQA
 * attention -> o_proj -> residual -> RMSNorm -> SwiGLU MLP -> residual; final
 * RMSNorm; lm_head (tied to the embedding or not); mean cross-entropy over
 * target tokens (target -1 = ignored).
 *
 * Not here: inference (src/model), data, optimizer, the training loop. */
#ifndef ALLOY_TRAIN_MODEL_H
#define ALLOY_TRAIN_MODEL_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"
#include "train/lora.h"
#include "train/pset.h"

typedef struct tm_config {
    int vocab, dim, hidden, n_layers, n_heads, n_kv_heads, head_dim, max_pos;
    float norm_eps;
    double rope_theta;
    bool tied, qkv_bias, o_bias;
    /* llama3 rope scaling (rope_scaling.rope_type == "llama3") */
    bool rope_llama3;
    double rope_factor, rope_low, rope_high, rope_orig_max;
    alloy_dtype dtype;   /* torch_dtype of the checkpoint (output dtype of --full) */
} tm_config;

/* Read a Qwen2/Llama config.json. Unsupported settings (another
 * architecture's keys, rope_scaling types other than llama3, MLP biases,
 * non-silu activations) are errors naming the key. */
int tm_config_parse(tm_config *c, const cJSON *json, const char *where, alloy_err *err);

/* Pointers into the parameter (or gradient) block; shapes in comments. */
typedef struct tm_params {
    float *embed;   /* (V, D) */
    float *ln1;     /* (L, D) */
    float *wq;      /* (L, Hq*hd, D) */
    float *bq;      /* (L, Hq*hd) or NULL */
    float *wk;      /* (L, Hkv*hd, D) */
    float *bk;      /* (L, Hkv*hd) or NULL */
    float *wv;      /* (L, Hkv*hd, D) */
    float *bv;      /* (L, Hkv*hd) or NULL */
    float *wo;      /* (L, D, Hq*hd) */
    float *bo;      /* (L, D) or NULL */
    float *ln2;     /* (L, D) */
    float *wgate;   /* (L, F, D) */
    float *wup;     /* (L, F, D) */
    float *wdown;   /* (L, D, F) */
    float *lnf;     /* (D) */
    float *lm_head; /* (V, D); == embed when tied */
} tm_params;

/* Activations for one (B, T) batch, allocated once (N = B*T). */
typedef struct tm_acts {
    int B, T;
    float *res;            /* (L+1, N, D) residual stream entering each layer, then the last */
    float *ln1, *rstd1;    /* (L, N, D), (L, N) */
    float *q, *k, *v;      /* (L, N, QD) after RoPE, (L, N, KD) after RoPE, (L, N, KD) */
    float *att;            /* (L, B, Hq, T, T) softmax probabilities */
    float *atty;           /* (L, N, QD) attention output */
    float *res_mid;        /* (L, N, D) residual after attention */
    float *ln2, *rstd2;    /* (L, N, D), (L, N) */
    float *gate, *up, *h;  /* (L, N, F) each */
    float *lnf, *rstdf;    /* (N, D), (N) */
    float *logits;         /* (N, V); holds dlogits after backward */
    float *lora_ax;        /* (L, 7, N, r) when LoRA */
    float *cos_t, *sin_t;  /* (T, hd/2) */
    /* backward scratch */
    float *dres, *dtmp, *dq, *dk, *dv, *datty, *dgate, *dup, *dh, *dlora; /* dlora (N, r) */
    float *tmp;            /* (N, max(D, F)) forward scratch */
} tm_acts;

typedef struct tm_model {
    tm_config cfg;
    tr_pset params;      /* every base tensor (f32); grad only when train_base */
    tm_params p, g;      /* g valid only when train_base */
    bool train_base;     /* full fine-tuning */
    tr_lora *lora;       /* adapters (not owned), or NULL */
    tm_acts a;
    int32_t *targets;    /* (N) targets of the last forward */
    int32_t *tokens;     /* (N) inputs of the last forward */
    int64_t n_targets;   /* counted targets of the last forward */
} tm_model;

/* Load config.json and the safetensors weights of dir (bf16/f16/f32 are
 * converted to the f32 master copy). train_base allocates gradients for
 * full fine-tuning. Missing or misshapen tensors are errors naming them. */
int tm_load(tm_model *m, const char *dir, bool train_base, alloy_err *err);
void tm_free(tm_model *m);

/* Module input/output sizes (for tr_lora_init). */
void tm_linear_dims(const tm_config *c, int in[TM_NLIN], int out[TM_NLIN]);

/* Attach (not owned) adapters; NULL detaches. Call before tm_alloc_acts. */
void tm_set_lora(tm_model *m, tr_lora *lora);
/* Allocate activations for batches of B sequences of T tokens. */
int tm_alloc_acts(tm_model *m, int B, int T, alloy_err *err);

/* Forward over tokens (B*T) with targets (B*T, -1 = ignored); returns the
 * mean loss over counted targets (NaN when none). */
float tm_forward(tm_model *m, const int32_t *tokens, const int32_t *targets);
/* Backward of the last forward: ACCUMULATES into the gradient blocks
 * (m->params.grad when train_base, m->lora->ps.grad when LoRA). */
void tm_backward(tm_model *m);

/* Write a Hugging Face checkpoint of the current parameters into dir
 * (existing, empty): model.safetensors (shards of 5 GB) in dtype,
 * config.json from src_dir with torch_dtype set, tokenizer/side files copied. */
int tm_save_hf(const tm_model *m, const char *src_dir, const char *dir, alloy_dtype dtype,
               alloy_err *err);

#endif
