/* init.h — randomly initialised checkpoints of a given config (alloy init),
 * for tests and benchmarks that need a model of a known shape.
 *
 * Not here: training-style initialisation schemes; every matrix and bias is
 * normal(0, 0.02), every norm weight 1. */
#ifndef ALLOY_MODEL_INIT_H
#define ALLOY_MODEL_INIT_H

#include <stdint.h>

#include "alloy.h"

typedef struct model_init_options {
    uint64_t seed;
    alloy_dtype dtype;         /* F32, BF16 or F16 */
    const char *tokenizer_dir; /* copy tokenizer/side files from here; NULL: none */
} model_init_options;

/* Write a checkpoint directory out_dir for the config.json at config_path:
 * model.safetensors with transformers' tensor names, config.json (a copy with
 * torch_dtype set), and the tokenizer files of opt->tokenizer_dir. Values are
 * a pure function of (seed, tensor name, element index), so the same seed
 * gives the same bytes whatever the thread count. The output is built in a
 * temporary sibling directory and renamed into place; an existing out_dir is
 * replaced only if it is empty or holds a config.json. */
int model_init_random(const char *config_path, const char *out_dir, const model_init_options *opt,
                      alloy_err *err);

/* The value model_init_random writes at element i of a matrix or bias whose
 * name hashes to stream (rng_hash_str). */
float model_init_normal(uint64_t seed, uint64_t stream, uint64_t i);

#endif
