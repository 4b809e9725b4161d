/* peft.h — PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors).
 *
 * Reading: the adapter's target modules, rank and scaling, and for a base
 * weight name ("model.layers.0.self_attn.q_proj.weight") its A [r, in] and
 * B [out, r] tensors, stored by PEFT as
 * "base_model.model.<module>.lora_A.weight" / "...lora_B.weight".
 * Scaling: alpha / r, or alpha / sqrt(r) with use_rslora (rsLoRA).
 *
 * Applying: W' = W + scale · B · A, in f32 (cblas_sgemm).
 *
 * Not here: training adapters (src/train), extracting them (src/merge). */
#ifndef ALLOY_IO_PEFT_H
#define ALLOY_IO_PEFT_H

#include <stdbool.h>

#include "alloy.h"
#include "io/safetensors.h"

typedef struct peft_module {
    char *weight_name;     /* base tensor it modifies: "<module>.weight" */
    const st_tensor *A;    /* [r, in] */
    const st_tensor *B;    /* [out, r] */
    int rank;
    double scale;          /* alpha / r  or  alpha / sqrt(r) */
} peft_module;

typedef struct peft_adapter {
    char *dir;
    st_model st;
    int rank;          /* r from adapter_config.json */
    double alpha;      /* lora_alpha */
    bool rslora;       /* use_rslora */
    int nmodules;
    peft_module *modules;
} peft_adapter;

/* Load an adapter directory. Every lora_A has its lora_B with matching rank;
 * tensors that are not LoRA A/B pairs of linear modules are an error naming
 * the file and tensor. */
int peft_load(peft_adapter *a, const char *dir, alloy_err *err);
void peft_free(peft_adapter *a);

/* The module modifying base weight `weight_name`, or NULL. */
const peft_module *peft_find(const peft_adapter *a, const char *weight_name);

/* W (rows x cols, f32, row-major) += scale · B · A. Shapes must agree with
 * rows x cols (checked; the error names the adapter and module). */
int peft_apply(const peft_adapter *a, const peft_module *m, float *W, int64_t rows, int64_t cols,
               alloy_err *err);

#endif
