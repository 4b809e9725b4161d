/* lora.h — LoRA adapters on the linear modules of the trainable model:
 * y = x W^T + b + (alpha/r) · (x A^T) B^T, with A (r, in) initialised
 * kaiming-uniform as PEFT does (U(-1/sqrt(in), 1/sqrt(in))) and B (out, r)
 * zero; only A and B are trained. The A/B tensors of every (layer, module)
 * live in one tr_pset under their PEFT names
 * ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"), so the
 * optimizer, checkpoints and the adapter writer are loops over it.
 *
 * Also here: writing the PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors). Not here: applying adapters to a checkpoint
 * (src/io/peft.c), the model wiring (train_model.c). */
#ifndef ALLOY_TRAIN_LORA_H
#define ALLOY_TRAIN_LORA_H

#include <stdint.h>

#include "alloy.h"
#include "train/pset.h"

/* The linear modules of a decoder layer, in the order of a forward pass. */
enum { TM_Q, TM_K, TM_V, TM_O, TM_GATE, TM_UP, TM_DOWN, TM_NLIN };

/* "q_proj", ...; and the HF parent ("self_attn" or "mlp"). */
extern const char *const TR_LIN_NAMES[TM_NLIN];
extern const char *const TR_LIN_PARENT[TM_NLIN];

typedef struct tr_lora {
    int rank;
    float alpha, scale;      /* scale = alpha / rank */
    unsigned targets;        /* bit m set: module m adapted */
    int n_layers;
    int in[TM_NLIN], out[TM_NLIN];
    int ntargets;
    int pos[TM_NLIN];        /* rank of module m among the targets, -1 if none */
    tr_pset ps;              /* per layer, per target: A (r, in) then B (out, r) */
} tr_lora;

/* Parse a comma-separated target list ("q_proj,v_proj"; "all-linear" = all
 * seven) into a bitmask. An entry that names no module is an error naming it. */
int tr_lora_parse_targets(const char *list, unsigned *mask, alloy_err *err);

/* Build the adapter for a model of n_layers with module shapes in[]/out[],
 * with its gradient block, A initialised from seed, B = 0. */
int tr_lora_init(tr_lora *lo, int n_layers, const int in[TM_NLIN], const int out[TM_NLIN],
                 unsigned targets, int rank, float alpha, uint64_t seed, alloy_err *err);
void tr_lora_free(tr_lora *lo);

/* A/B (and their gradients) of module m in layer l; NULL when m is not a target. */
float *tr_lora_A(const tr_lora *lo, int l, int m);
float *tr_lora_B(const tr_lora *lo, int l, int m);
float *tr_lora_dA(const tr_lora *lo, int l, int m);
float *tr_lora_dB(const tr_lora *lo, int l, int m);

/* out (N, OC) += scale · ax B^T, where ax (N, r) = inp (N, C) A^T is kept for
 * the backward pass. */
void tr_lora_forward(float *out, float *ax, const float *inp, const float *A, const float *B,
                     float scale, int N, int C, int OC, int r);
/* dinp (N, C) += scale · (dout B) A;  dA += scale · (dout B)^T inp;
 * dB += scale · dout^T ax. scratch holds N*r floats. dinp may be NULL. */
void tr_lora_backward(float *dinp, float *dA, float *dB, const float *dout, float *scratch,
                      const float *inp, const float *ax, const float *A, const float *B,
                      float scale, int N, int C, int OC, int r);

/* Write the PEFT adapter directory dir (created by the caller, empty):
 * adapter_config.json naming base_model (may be NULL) and
 * adapter_model.safetensors with every A/B in f32. */
int tr_lora_save(const tr_lora *lo, const char *dir, const char *base_model, alloy_err *err);

#endif
