/* lm_args.h — the model options that generate, ppl and logits share:
 * -m DIR (repeatable), --lora DIR, --mix-weights a,b, --mix RULE,
 * --experts-top-k/-temperature/-mode, --threads N; and opening the model they name (model/lm.h). */
#ifndef ALLOY_CLI_LM_ARGS_H
#define ALLOY_CLI_LM_ARGS_H

#include "model/lm.h"

#define LM_ARGS_MAX_PATHS 16

typedef struct lm_args {
    const char *paths[LM_ARGS_MAX_PATHS];
    int npaths;
    double weights[LM_ARGS_MAX_PATHS];
    lm_options opt;
} lm_args;

/* The usage lines of these options. */
#define LM_ARGS_USAGE                                                                          \
    "  -m DIR            model: checkpoint, mixture or expert library directory; repeat -m\n"  \
    "                    for an ad-hoc mixture of several checkpoints\n"                       \
    "  --lora DIR        apply a PEFT LoRA adapter to a dense checkpoint\n"                    \
    "  --mix-weights L   comma-separated mixture weights, one per -m (default uniform)\n"      \
    "  --mix RULE        arithmetic | geometric: how a mixture combines distributions\n"      \
    "  --experts-top-k K       expert library: merge exactly the K nearest experts\n"           \
    "                          (default: the paper's sparse rule, weights > tau)\n"           \
    "  --experts-temperature T expert library: kernel temperature beta^2 (default 0.04)\n"     \
    "  --experts-mode M        auto | merge | unmerged | ensemble (default auto: the cheaper\n"\
    "                          of merging the weights and run-time adapters)\n"               \
    "  --threads N       worker threads (default: all cores)\n"

/* If argv[*i] is one of these options, consume it (and its value, advancing
 * *i) and return 1; return 0 if it is not; print an error naming cmd and
 * return -1 for a bad value. */
int lm_args_parse(lm_args *a, const char *cmd, int argc, char **argv, int *i);

/* Open the model (at least one -m is required). Prints the error and returns
 * 1 on failure, 0 on success. */
int lm_args_open(lm_args *a, const char *cmd, lm **out);

#endif
