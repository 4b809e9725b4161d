/* sampler.h — choosing the next token from a row of logits: greedy, or
 * temperature + top-k + top-p + min-p sampling with a seeded, reproducible
 * random stream.
 *
 * The filters apply in Hugging Face generate()'s order: temperature, top-k,
 * top-p (nucleus, over the probabilities renormalised after top-k), min-p
 * (keep tokens whose probability is at least min_p times the largest), then
 * one draw from the renormalised survivors. Draw i of a sampler is
 * rng_uniform(seed, 0, i) (util/rng.h): the same seed and the same logits
 * give the same tokens on every machine and thread count.
 * Not here: logits (model/lm.h), text output (src/cli/generate.c). */
#ifndef ALLOY_MODEL_SAMPLER_H
#define ALLOY_MODEL_SAMPLER_H

#include <stdint.h>

#include "alloy.h"

typedef struct sampler_params {
    float temp;   /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;    /* <= 0 or >= vocab: off */
    float top_p;  /* >= 1: off */
    float min_p;  /* <= 0: off */
    uint64_t seed;
} sampler_params;

typedef struct sampler {
    sampler_params p;
    int vocab;
    uint64_t draws;     /* random numbers used so far */
    struct sampler_cand *cand; /* (vocab) scratch */
} sampler;

/* Prepare s for rows of vocab logits. Parameters out of range (temp NaN,
 * top_p <= 0, min_p > 1) are an error naming the parameter. */
int sampler_init(sampler *s, int vocab, const sampler_params *p, alloy_err *err);
void sampler_free(sampler *s);

/* The next token for logits[0..vocab) (not modified). */
int32_t sampler_sample(sampler *s, const float *logits);

#endif
