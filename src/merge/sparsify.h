/* sparsify.h — mergekit's sparsification of task vectors (mergekit/sparsify.py).
 *
 * Each function decides which elements of one task vector delta = x - base
 * survive (magnitude, random/bernoulli, magnitude_outliers, della_magprune);
 * the L1 rescale of the survivors is task_arithmetic.c's, summed while it
 * streams. The mask is written as bytes (1 keep, 0 drop) so callers combine
 * it with their own arithmetic. DARE's random mask keeps element e of model
 * `stream` iff rng_keep32(rng_stream_key(seed, stream), e, rng_thr32(density)),
 * della draws rng_uniform(seed, stream, e): masks do not depend on the thread
 * count. Consensus and mixing are task_arithmetic.c's; this file only selects. */
#ifndef ALLOY_MERGE_SPARSIFY_H
#define ALLOY_MERGE_SPARSIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

typedef enum sparsify_kind {
    SPARSIFY_NONE,
    SPARSIFY_MAGNITUDE, /* keep the int(density*n) largest |delta| */
    SPARSIFY_RANDOM,    /* keep each element with probability density (DARE) */
    SPARSIFY_OUTLIERS,  /* drop the top gamma fraction and the smallest (breadcrumbs) */
    SPARSIFY_DELLA,     /* keep with a probability rising with the rank of |delta| in its row (DELLA) */
} sparsify_kind;

typedef struct sparsify_args {
    sparsify_kind kind;
    double density, gamma, epsilon;
    uint64_t seed, stream; /* random kinds: call seed and model index */
} sparsify_args;

/* Mask of delta = x - base (n elements, shape for della's rows) into mask[n].
 * key and scratch are caller buffers of n floats. Returns 1 when the task
 * vector is kept whole (density >= 1: mask untouched, no rescale, as
 * mergekit), 0 when mask is filled, -1 on a recipe error (magnitude with
 * int(density*n) == 0, della's density +- epsilon outside (0, 1)), with a
 * message naming `name`. */
int sparsify_mask(const sparsify_args *a, const float *x, const float *base, int ndim, const int64_t *shape,
                  size_t n, float *key, float *scratch, uint8_t *mask, int threads, const char *name,
                  alloy_err *err);

/* |delta| of elements [lo, lo + m) into a; true when an input is not finite. */
typedef bool (*sparsify_mag_fn)(const void *ctx, size_t lo, size_t m, float *a);

/* della's mask as bits (element e at bit e % 8 of bits[e / 8], zeroed by the
 * caller), the magnitudes streamed through f row by row. Returns 1 when
 * kept whole (density >= 1), 0 when bits are filled, 2 when f met a
 * non-finite input, -1 on a recipe error (err, naming `name`). */
int sparsify_della_bits(const sparsify_args *a, sparsify_mag_fn f, const void *ctx, int ndim, const int64_t *shape,
                        size_t n, uint8_t *bits, int threads, const char *name, alloy_err *err);

/* The kept ranks [lo, hi) of magnitude (key -|delta|, *neg_key) or
 * breadcrumbs (key |delta|) sparsification of n elements, ascending order
 * of the key with ties by index; -1 on a recipe error naming `name`
 * (magnitude keeping no element). */
int sparsify_rank_bounds(const sparsify_args *a, size_t n, size_t *lo, size_t *hi, bool *neg_key, const char *name,
                         alloy_err *err);

/* mask[e] = 1 iff the rank of key[e] in ascending order (ties broken by
 * index, lower index first) lies in [lo, hi). O(n) expected (quickselect on
 * scratch, n floats), no sort. Used by magnitude (key -|delta|), breadcrumbs
 * (key |delta|) and sce (key -var). */
void sparsify_rank_mask(const float *key, size_t n, size_t lo, size_t hi, float *scratch, uint8_t *mask,
                        int threads);

#endif
