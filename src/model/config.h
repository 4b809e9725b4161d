/* config.h — the hyper-parameters of a Qwen2 / Llama / Mistral checkpoint,
 * read from its config.json into a flat struct (llama2.c's Config).
 *
 * Owns: which architectures alloy runs, the defaults of optional keys, the
 * RoPE inverse frequencies (incl. the llama3 and linear rope_scaling types),
 * and which layers use sliding-window attention. Not here: tensors
 * (weights.h), the forward pass (forward.h). */
#ifndef ALLOY_MODEL_CONFIG_H
#define ALLOY_MODEL_CONFIG_H

#include <cJSON.h>
#include <stdbool.h>

#include "alloy.h"

typedef enum model_arch { ARCH_QWEN2 = 0, ARCH_LLAMA, ARCH_MISTRAL } model_arch;

typedef enum rope_kind { ROPE_DEFAULT = 0, ROPE_LINEAR, ROPE_LLAMA3 } rope_kind;

typedef struct Config {
    model_arch arch;
    int dim;         /* hidden_size */
    int hidden_dim;  /* intermediate_size (SwiGLU width) */
    int n_layers;    /* num_hidden_layers */
    int n_heads;     /* num_attention_heads */
    int n_kv_heads;  /* num_key_value_heads (GQA); defaults to n_heads */
    int head_dim;    /* head_dim when given, else dim / n_heads */
    int vocab_size;
    int max_pos;     /* max_position_embeddings */
    float norm_eps;  /* rms_norm_eps */
    double rope_theta;
    rope_kind rope;  /* rope_scaling type */
    double rope_factor, rope_low_freq, rope_high_freq, rope_orig_max;
    bool tied;       /* tie_word_embeddings: lm_head is embed_tokens */
    bool qkv_bias;   /* Qwen2 always; Llama when attention_bias */
    bool o_bias;     /* Llama when attention_bias */
    int sliding_window;    /* keys within this many positions (itself included); 0 = off */
    int window_from_layer; /* first layer that uses the window (Qwen2 max_window_layers) */
    int bos_id, eos_id;    /* -1 when not given */
    bool has_dtype;
    alloy_dtype dtype;     /* torch_dtype when given */
} Config;

/* Fill c from a parsed config.json. `where` names the file in messages.
 * Unknown architectures, missing required keys, inconsistent shapes and
 * unsupported options (rope_scaling types other than default/linear/llama3,
 * MLP biases, non-silu activations) are errors naming the key. */
int model_config_parse(Config *c, const cJSON *json, const char *where, alloy_err *err);

/* model_config_parse on DIR/config.json. */
int model_config_load(Config *c, const char *dir, alloy_err *err);

/* Inverse RoPE frequencies, head_dim / 2 values, computed as transformers
 * does in float32 (including rope_scaling). */
void model_rope_inv_freq(const Config *c, float *inv_freq);

/* Sliding window of layer l (0 = full causal attention). */
int model_layer_window(const Config *c, int l);

const char *model_arch_name(model_arch a);

#endif
