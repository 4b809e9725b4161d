/* adamw.c — AdamW, the learning-rate schedule, gradient clipping (see adamw.h). */
#include "train/adamw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

int tr_adamw_init(tr_adamw *opt, size_t n, float weight_decay, alloy_err *err) {
    memset(opt, 0, sizeof *opt);
    opt->beta1 = 0.9;
    opt->beta2 = 0.999;
    opt->eps = 1e-8f;
    opt->weight_decay = weight_decay;
    opt->n = n;
    opt->m = calloc(n ? n : 1, sizeof(float));
    opt->v = calloc(n ? n : 1, sizeof(float));
    if (!opt->m || !opt->v) {
        tr_adamw_free(opt);
        return alloy_fail(err, "out of memory for optimizer state (%zu parameters)", n);
    }
    return 0;
}

void tr_adamw_free(tr_adamw *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
}

void tr_adamw_step(tr_adamw *opt, tr_pset *ps, float lr) {
    opt->t++;
    const float b1 = (float)opt->beta1, b2 = (float)opt->beta2, eps = opt->eps;
    const float c1 = (float)(1.0 - opt->beta1), c2 = (float)(1.0 - opt->beta2);
    const double bc1 = 1.0 - pow(opt->beta1, (double)opt->t);
    const double bc2 = 1.0 - pow(opt->beta2, (double)opt->t);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    for (int k = 0; k < ps->ntensors; k++) {
        const tr_tensor *t = &ps->t[k];
        float *p = ps->data + t->off, *g = ps->grad + t->off;
        float *m = opt->m + t->off, *v = opt->v + t->off;
        const float decay = t->decay ? 1.0f - lr * opt->weight_decay : 1.0f;
        long n = (long)t->numel;
#pragma omp parallel for simd if (n > 32768)
        for (long i = 0; i < n; i++) {
            p[i] *= decay;
            m[i] = b1 * m[i] + c1 * g[i];
            v[i] = b2 * v[i] + c2 * g[i] * g[i];
            float denom = sqrtf(v[i]) / bc2_sqrt + eps;
            p[i] -= step_size * (m[i] / denom);
        }
    }
}

float tr_lr_at(float lr, int64_t step, int64_t warmup, int64_t total) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (total <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    return (float)(lr * 0.5 * (1.0 + cos(M_PI * progress)));
}

double tr_clip_grad_norm(tr_pset *ps, double max_norm) {
    double norm = tr_pset_grad_norm(ps);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) tr_pset_scale_grad(ps, (float)coef);
    }
    return norm;
}
