/* pset.c — contiguous parameter/gradient blocks (see pset.h). */
#include "train/pset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

size_t tr_pset_add(tr_pset *ps, const char *name, int64_t rows, int64_t cols, bool decay) {
    if (ps->ntensors == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 64;
        tr_tensor *t = realloc(ps->t, (size_t)cap * sizeof *t);
        if (!t) return (size_t)-1;
        ps->t = t;
        ps->cap = cap;
    }
    tr_tensor *t = &ps->t[ps->ntensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->off = ps->n;
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    t->decay = decay;
    ps->n += t->numel;
    return t->off;
}

int tr_pset_alloc(tr_pset *ps, bool with_grad, alloy_err *err) {
    size_t n = ps->n ? ps->n : 1;
    ps->data = calloc(n, sizeof(float));
    ps->grad = with_grad ? calloc(n, sizeof(float)) : NULL;
    if (!ps->data || (with_grad && !ps->grad))
        return alloy_fail(err, "out of memory for %zu parameters", ps->n);
    return 0;
}

void tr_pset_free(tr_pset *ps) {
    free(ps->data);
    free(ps->grad);
    free(ps->t);
    memset(ps, 0, sizeof *ps);
}

const tr_tensor *tr_pset_find(const tr_pset *ps, const char *name) {
    for (int i = 0; i < ps->ntensors; i++)
        if (!strcmp(ps->t[i].name, name)) return &ps->t[i];
    return NULL;
}

void tr_pset_zero_grad(tr_pset *ps) {
    if (ps->grad) memset(ps->grad, 0, ps->n * sizeof(float));
}

double tr_pset_grad_norm(const tr_pset *ps) {
    double s = 0.0;
    const float *g = ps->grad;
    long n = (long)ps->n;
#pragma omp parallel for reduction(+ : s) if (n > 32768)
    for (long i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

void tr_pset_scale_grad(tr_pset *ps, float s) {
    float *g = ps->grad;
    long n = (long)ps->n;
#pragma omp parallel for simd if (n > 32768)
    for (long i = 0; i < n; i++) g[i] *= s;
}
