/* trainer.h — the training loop behind `alloy train`: load the base model,
 * tokenizer and data, attach LoRA adapters (or train every weight), run
 * AdamW steps with warmup + cosine schedule and gradient clipping, evaluate,
 * save resumable state, and write the result atomically (temp dir + rename):
 * a PEFT adapter directory (LoRA) or a Hugging Face checkpoint (--full).
 *
 * Resume: the state lives in "<out_dir>.state/state.bin" (see state.h),
 * written every save_every steps. A run finding that file resumes from it
 * automatically when its fingerprint (model, data, mode, shapes, schedule,
 * seed) matches, and refuses with an error otherwise. It is removed when the
 * output has been written.
 *
 * The library never prints: progress goes through the on_log callback. */
#ifndef ALLOY_TRAIN_TRAINER_H
#define ALLOY_TRAIN_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"

typedef enum tr_log_kind { TR_LOG_INFO, TR_LOG_STEP, TR_LOG_EVAL, TR_LOG_RESUME } tr_log_kind;

typedef struct tr_log {
    tr_log_kind kind;
    int64_t step, total;     /* steps done, total steps */
    float loss, lr;          /* step: training loss, learning rate used */
    double grad_norm;        /* before clipping */
    double tok_per_s;        /* since the start of this run */
    double eval_loss;        /* eval: mean loss over the eval set */
    const char *msg;         /* info */
} tr_log;

typedef struct tr_options {
    const char *base_dir, *data_path, *out_dir;
    bool full;                   /* full fine-tuning instead of LoRA */
    int lora_rank;               /* 16 */
    float lora_alpha;            /* 32 */
    const char *lora_targets;    /* all seven projections */
    int64_t steps;               /* 0: from epochs */
    double epochs;               /* 1 when steps is 0 */
    float lr;                    /* 2e-4 */
    int batch, ctx;              /* 8, 512 */
    int64_t warmup;              /* 0 */
    float weight_decay;          /* 0 */
    float grad_clip;             /* 1.0; <= 0 disables */
    uint64_t seed;               /* 0 */
    int threads;                 /* 0: OpenMP default */
    const char *eval_path;       /* NULL: none */
    int64_t eval_every;          /* 0: only at the end when eval_path is set */
    int64_t save_every;          /* 0: never */
    int64_t log_every;           /* 10 */
    bool out_dtype_set;          /* --full: else the base's torch_dtype */
    alloy_dtype out_dtype;
    int64_t stop_after;          /* testing: stop (as if interrupted) after this many steps; 0 = off */
    const char *dump_dir;        /* testing: write per-step batches, losses, gradients, params */
    void (*on_log)(void *user, const tr_log *log);
    void *user;
} tr_options;

void tr_options_default(tr_options *o);

/* Run the training described by o. Returns 0 on success (also when stopped
 * by stop_after, with the state saved and no output), -1 with err set. On
 * error no output directory is created. */
int tr_train(const tr_options *o, alloy_err *err);

#endif
