/* peft_write.h — writing a PEFT LoRA adapter directory (adapter_config.json +
 * adapter_model.safetensors), as produced by `alloy extract-lora`.
 *
 * Tensors are named base_model.model.<module>.lora_A.weight [r, in] and
 * ...lora_B.weight [out, r], stored in f32. The adapter is written into a
 * temporary sibling of the output directory and renamed into place by
 * peft_writer_finish, so an interrupted write never leaves a valid-looking
 * adapter. Reading adapters is peft.h's; computing them is the caller's. */
#ifndef ALLOY_IO_PEFT_WRITE_H
#define ALLOY_IO_PEFT_WRITE_H

#include <stdint.h>

#include "alloy.h"

typedef struct peft_write_module {
    const char *module;          /* "model.layers.0.self_attn.q_proj" (no ".weight") */
    int64_t out_features, in_features;
} peft_write_module;

typedef struct peft_writer peft_writer;

/* Plan an adapter of rank r (lora_alpha = alpha) for the n modules in mods
 * (copied). base_model is recorded as base_model_name_or_path. Returns NULL
 * with err set on failure (nothing is left behind). */
peft_writer *peft_writer_open(const char *out_dir, const char *base_model, int r, double alpha,
                              const peft_write_module *mods, int n, alloy_err *err);

/* Write module i's A (r x in) and B (out x r), row-major f32. Any order;
 * safe from several threads for distinct i. */
int peft_writer_put(peft_writer *w, int i, const float *A, const float *B, alloy_err *err);

/* Write adapter_config.json, check every module was written, rename the
 * directory into place (replacing an existing one), free w. On failure the
 * temporary directory is removed and w is freed. */
int peft_writer_finish(peft_writer *w, alloy_err *err);

/* Drop everything written so far and free w. */
void peft_writer_abort(peft_writer *w);

#endif
