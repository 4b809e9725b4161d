/* gta_kernel.h — the task-arithmetic family's merge pass as one vector loop,
 * DARE's first pass, linear's merge and slerp's two passes likewise.
 *
 * task_arithmetic.c computes a block in straight passes over f32 scratch:
 * the base widened, each model's masked weighted delta, then the consensus
 * and the sum, then the store converts to the output dtype. Where the CPU
 * has AVX-512 and every input is bf16 (or f16: see gk_takes), this file does the same arithmetic
 * on 16 elements at a time with everything in registers: the inputs are
 * widened, masked, weighted, combined, rounded to the output dtype and
 * stored in one go. The float operations and their order are exactly those
 * of task_arithmetic.c (no fused multiply-add, no reassociation), so the
 * results are identical bit for bit; only the scratch traffic is gone. */
#ifndef ALLOY_MERGE_GTA_KERNEL_H
#define ALLOY_MERGE_GTA_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "merge/rankcut.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define GTA_KERNEL 1
#define GK_LANES 16 /* f32 lanes of a vector: gk_dare_survey's sums */
#else
#define GTA_KERNEL 0
#define GK_LANES 1
#endif

/* The most models the kernel takes (more: task_arithmetic.c's passes). */
#define GK_MAX_MODELS 4

/* Which elements of a model's delta are kept (task_arithmetic.c's keep_kind). */
typedef enum {
    GK_WHOLE,
    GK_TOP,    /* TIES's one-sided rule: a > L, or a == L with e <= thi */
    GK_RULE,
    GK_RANDOM,
    GK_BITS
} gk_keep;

typedef struct gk_model {
    const uint16_t *x;  /* the model's bf16 tensor (2-byte aligned) */
    float w, s;         /* weight, rescale factor: d = ((x - base) * s) * w where kept */
    gk_keep keep;
    keep_rule rule;     /* GK_TOP, GK_RULE */
    uint64_t rng_key;   /* GK_RANDOM: rng_keep32(rng_key, e, thr) */
    uint32_t thr;
    const uint8_t *bits; /* GK_BITS: bit e of the mask (LSB first) */
    bool check;         /* test the inputs for NaN and infinity */
} gk_model;

typedef struct gk_args {
    int k;
    bool consensus, normalize;
    float lambda, div_all;
    const uint16_t *base; /* bf16, 2-byte aligned */
    bool check_base;
    bool in_f16;        /* the base and every x in IEEE half rather than bf16 (see gk_takes) */
    bool out_bf16;      /* the output in bf16, with in_f16 in f16 (else f32) */
    bool nt_store;      /* dst is memory the device reads, not the CPU (a ring slot of
                           direct writes, merge_sink_direct): whole cache lines of bf16
                           results go there with non-temporal stores */
    gk_model m[GK_MAX_MODELS];
} gk_args;

/* Merge elements [b0, b0 + m) into dst (element b0's place, in the output
 * dtype). Returns true when a checked input was not finite; *obad is the
 * index in the block of the first non-finite result, or m. */
typedef bool (*gk_block_fn)(const gk_args *a, size_t b0, size_t m, void *dst, size_t *obad);

/* The kernel for these arguments, or NULL (no AVX-512, more than
 * GK_MAX_MODELS models). */
gk_block_fn gk_select(const gk_args *a);

/* Whether the kernel takes the block [b0, b0 + m): always for bf16; for
 * f16 only in its lean loop, f16 out: whole vectors, inputs tested for NaN
 * by the first pass, the rescale in every model or in none as the keep
 * kind says (DARE's masks rescale), each rule one threshold over the block.
 * Other blocks are the caller's (task_arithmetic.c's generic block, whose
 * results are the same bit for bit). */
bool gk_takes(const gk_args *a, size_t b0, size_t m);

/* DARE's first pass over elements [b0, b0 + m) of k (1..GK_MAX_MODELS)
 * bf16 models xs[i] (the tensors from element 0; b0 a multiple of 8): for
 * each model the L1 sums of the magnitudes |x - base| before and after its
 * random mask (rng_keep32(rng_key[i], e, thr[i])) into before[i] and
 * after[i]. Each sum runs in 16 f32 lanes, the elements taken as the merge
 * loops take them: lane l adds elements 2 l, 2 l + 1, 2 l + 32, 2 l + 33,
 * ... of the block in that order (with f16, whose values are IEEE half,
 * elements l, l + 16, l + 32, ...), and the lanes are added up in a fixed
 * tree. Unless bits or bits[i] is NULL, model i's mask itself as bits (bit
 * e of bits[i], LSB first), which the merge pass then reads instead of
 * drawing it again. Returns true when an x is NaN or infinite. Only where
 * GTA_KERNEL is 1. */
bool gk_dare_survey(const uint16_t *const *xs, int k, const uint16_t *base, size_t b0, size_t m,
                    const uint64_t *rng_key, const uint32_t *thr, uint8_t *const *bits, bool f16, float *before,
                    float *after);

/* linear.c's merge of elements [b0, b0 + m) of k (1..GK_MAX_MODELS) bf16
 * inputs x[i] (the tensors from element 0, 2-byte aligned): 0 + w_0 x_0 +
 * w_1 x_1 + ... in that order, divided by wsum with normalize, into dst
 * (element b0's place) in bf16 or f32, the same float operations as
 * linear.c's generic block. With f16: the inputs and the output in IEEE
 * half (out_bf16 ignored). Returns true when an input is NaN or infinite;
 * *obad as gk_block_fn's. Only where GTA_KERNEL is 1. */
bool gk_linear(const uint16_t *const *x, const float *w, int k, bool normalize, float wsum, bool f16, bool out_bf16,
               size_t b0, size_t m, void *dst, size_t *obad);

/* slerp.c's first pass over elements [b0, b0 + m) of two bf16 tensors x0,
 * x1 (f16 with f16; from element 0, 2-byte aligned): p = x0, q = x1
 * widened to double,
 * p p, q q and p q added to lane (e - b0) % 8 of sums[0..8), sums[8..16) and
 * sums[16..24), in element order, each product rounded before it is added
 * (calls on consecutive blocks continue the lanes while m is a multiple of
 * 8). Returns true when an input is NaN or infinite. Only where GTA_KERNEL
 * is 1. */
bool gk_slerp_sums(const uint16_t *x0, const uint16_t *x1, size_t b0, size_t m, bool f16, double *sums);

/* slerp.c's second pass over elements [b0, b0 + m): s0 x0 + s1 x1 (each
 * product rounded, then added) into dst (element b0's place) in bf16 or
 * f32; with f16, inputs and output in IEEE half (out_bf16 ignored); *obad
 * as gk_block_fn's. The inputs are not checked (the first pass was). Only
 * where GTA_KERNEL is 1. */
void gk_lerp(const uint16_t *x0, const uint16_t *x1, float s0, float s1, bool f16, bool out_bf16, size_t b0, size_t m,
             void *dst, size_t *obad);

#endif
