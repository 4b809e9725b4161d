/* adamw.h — the AdamW optimizer over a parameter set, the learning-rate
 * schedule, and global gradient-norm clipping.
 *
 * AdamW follows torch.optim.AdamW (amsgrad off) step for step, so the C
 * engine can be checked against PyTorch:
 *   p *= 1 - lr*wd                      (decoupled decay, only tensors with decay set)
 *   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * Schedule: linear warmup from lr/warmup to lr over `warmup` steps, then
 * cosine decay to 0 at `total` steps.
 *
 * Not here: which tensors are trainable (the caller builds the tr_pset). */
#ifndef ALLOY_TRAIN_ADAMW_H
#define ALLOY_TRAIN_ADAMW_H

#include <stdint.h>

#include "alloy.h"
#include "train/pset.h"

typedef struct tr_adamw {
    double beta1, beta2;  /* 0.9, 0.999 */
    float eps, weight_decay;
    int64_t t;      /* steps taken */
    size_t n;
    float *m, *v;   /* first and second moments, n each, owned */
} tr_adamw;

/* Allocate zeroed moments for a set of n parameters. */
int tr_adamw_init(tr_adamw *opt, size_t n, float weight_decay, alloy_err *err);
void tr_adamw_free(tr_adamw *opt);
/* One step at learning rate lr over ps (ps->grad must be set). */
void tr_adamw_step(tr_adamw *opt, tr_pset *ps, float lr);

/* Learning rate of (0-based) step: warmup then cosine to 0 at total. */
float tr_lr_at(float lr, int64_t step, int64_t warmup, int64_t total);

/* Clip the global gradient L2 norm of ps to max_norm as
 * torch.nn.utils.clip_grad_norm_ does (coefficient max/(norm+1e-6), capped
 * at 1). max_norm <= 0 disables clipping. Returns the norm before clipping. */
double tr_clip_grad_norm(tr_pset *ps, double max_norm);

#endif
