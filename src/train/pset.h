/* pset.h — a set of f32 parameter tensors living in one contiguous block,
 * with a parallel gradient block (llm.c's ParameterTensors idea): the
 * optimizer, gradient clipping, checkpoints and debug dumps are single loops
 * over the block, and the tensor table gives names and shapes for I/O.
 *
 * Not here: what the tensors mean (train_model.c, lora.c). */
#ifndef ALLOY_TRAIN_PSET_H
#define ALLOY_TRAIN_PSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

typedef struct tr_tensor {
    char name[128];   /* Hugging Face / PEFT tensor name */
    size_t off;       /* element offset into the block */
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    size_t numel;
    bool decay;       /* weight decay applies (matrices, not norms/biases) */
} tr_tensor;

typedef struct tr_pset {
    size_t n;         /* total elements */
    float *data;      /* n values, owned */
    float *grad;      /* n gradients, owned; NULL for a frozen set */
    int ntensors, cap;
    tr_tensor *t;
} tr_pset;

/* Declare a tensor (before tr_pset_alloc); returns its element offset.
 * shape[1] = 0 for 1-D. Returns (size_t)-1 on allocation failure. */
size_t tr_pset_add(tr_pset *ps, const char *name, int64_t rows, int64_t cols, bool decay);
/* Allocate data (zeroed) and, when with_grad, grad (zeroed). */
int tr_pset_alloc(tr_pset *ps, bool with_grad, alloy_err *err);
void tr_pset_free(tr_pset *ps);
/* The tensor named name, or NULL. */
const tr_tensor *tr_pset_find(const tr_pset *ps, const char *name);
void tr_pset_zero_grad(tr_pset *ps);
/* Global L2 norm of the gradient block (double accumulation). */
double tr_pset_grad_norm(const tr_pset *ps);
void tr_pset_scale_grad(tr_pset *ps, float s);

#endif
