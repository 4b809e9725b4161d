/* plan.h — from a recipe to a validated, per-tensor merge plan.
 *
 * The planner opens every input checkpoint (and LoRA adapter), works out the
 * output tensors (models form: the reference model's tensors; slices form:
 * layers renumbered slice by slice, as mergekit does), pairs each output
 * tensor with its input tensors, resolves every parameter for every tensor
 * and model (source > slice > top level; gradients over the slice's layers;
 * filters on tensor names) and checks everything before any byte is written:
 * models exist and load, names/shapes/layer counts agree, the method is
 * known (with a suggestion when misspelled), required parameters are given,
 * values are in range. Executing the plan is exec.h's job.
 *
 * Output as a LoRA adapter (`out: lora` in the recipe): the models form only,
 * with a plain base_model, and every other model base_model + an adapter
 * ("BASE+ADAPTER" on the same base checkpoint). All adapters must target the
 * same modules (else a clear error): a model without a delta on a module
 * would enter DRM/KnOTS as an all-zero block, whose renormalisation is
 * ill-posed. Their ranks and alphas may differ: the methods see the dense
 * ΔW = scale·B·A. Only the targeted tensors are merged. The output rank is
 * the recipe's top-level `rank:`; by default the sum of the input adapters'
 * ranks (what a weighted sum of the deltas can need), capped at the largest
 * min(out, in) of the targeted modules. */
#ifndef ALLOY_MERGE_PLAN_H
#define ALLOY_MERGE_PLAN_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdio.h>

#include "alloy.h"
#include "io/peft.h"
#include "io/recipe.h"
#include "io/safetensors.h"
#include "merge/method.h"

typedef struct plan_model {
    char *ref;        /* as written in the recipe: "path" or "path+lora" */
    char *path;       /* resolved checkpoint directory */
    char *lora_path;  /* resolved adapter directory, or NULL */
    st_model st;
    peft_adapter lora; /* loaded when lora_path */
    bool has_lora;
    cJSON *config;    /* its config.json (NULL when absent) */
    int num_layers;   /* from config.json, else from tensor names */
} plan_model;

typedef struct plan_input {
    int model;              /* index into merge_plan.models */
    const st_tensor *t;     /* its tensor (in that model's checkpoint) */
    const peft_module *lora; /* LoRA module applied to it, or NULL */
} plan_input;

typedef struct plan_tensor {
    char *name;              /* output name */
    alloy_dtype out_dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    bool merge;              /* float tensor merged by the method; else copied from `copy` */
    plan_input copy;         /* source of a copied (non-float or single-input) tensor */
    bool has_base;
    plan_input base;
    int k;                   /* merged model inputs (base excluded when the method uses it) */
    plan_input *inputs;      /* [k] */
    double *gparam;          /* [method->nparams] */
    double *mparam;          /* [k * method->nparams] */
    bool lora_target;        /* out: lora: some input adapter targets it */
    plan_input delta_base;   /* out: lora: the base tensor the delta is taken against */
} plan_tensor;

typedef struct merge_plan {
    recipe rc;
    char *recipe_dir;        /* relative model paths fall back to this directory */
    const merge_method *method;
    int nmodels;
    plan_model *models;
    int base;                /* index of the base model, -1 when none */
    int ntensors;
    plan_tensor *tensors;
    int out_layers;          /* layers of the output model */
    char *tokenizer_dir;     /* where tokenizer and side files come from */
    cJSON *out_config;       /* config.json of the output */
    int nwarnings;
    char **warnings;
    bool out_lora;           /* write a PEFT adapter of the merged delta (see above) */
    int out_rank;            /* its rank */
    int nlora_targets;       /* tensors with lora_target */
} merge_plan;

/* Parse, resolve and validate the recipe at path. On failure *p is freed and
 * err says what is wrong (file, tensor, both shapes, ...). */
int plan_build(merge_plan *p, const char *recipe_path, alloy_err *err);

/* Human-readable description (for --dry-run). */
void plan_describe(const merge_plan *p, FILE *out);

void plan_free(merge_plan *p);

#endif
