/* method.h — the interface every merge method implements, and the registry.
 *
 * A method is a pure function over one output tensor: it sees the base tensor
 * (when the method uses one), the k model tensors, all in f32 and of equal
 * shape, and the parameters already resolved for this tensor (per model and
 * global), and writes the merged tensor. It owns no I/O and no state; random
 * methods derive every random number from call->seed with a counter-based
 * generator (util/rng.h), so results do not depend on thread count.
 *
 * Parameter names and defaults are mergekit's (docs/merge_methods.md). Each
 * method lists its parameters in a table; the planner validates recipes
 * against the table (required, range) before any tensor is touched, and
 * passes values in table order, so a method reads call->gparam[P_LAMBDA] or
 * MPARAM(call, i, P_WEIGHT). */
#ifndef ALLOY_MERGE_METHOD_H
#define ALLOY_MERGE_METHOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

typedef struct merge_param_def {
    const char *name;
    bool per_model; /* tensor parameter (per model) vs global */
    bool required;  /* must be given (for non-base models, when per_model) */
    double dflt;    /* default when not required */
    double lo, hi;  /* accepted range, inclusive */
} merge_param_def;

typedef enum {
    BASE_NONE,     /* base_model ignored; if given it is merged like any model */
    BASE_OPTIONAL, /* used when given (e.g. nuslerp, multislerp) */
    BASE_REQUIRED, /* task-vector methods, slerp, model_stock, ... */
} merge_base_use;

typedef struct merge_call {
    const char *tensor_name;
    int ndim;
    const int64_t *shape;
    size_t n;                  /* number of elements */
    const float *base;         /* NULL unless the method uses a base and one is given */
    int k;                     /* number of model tensors (base excluded when used) */
    const float *const *x;     /* k tensors of n floats */
    const double *gparam;      /* [nparams], global parameters, table order */
    const double *mparam;      /* [k * nparams], per-model parameters */
    int nparams;
    uint64_t seed;             /* per-tensor seed (run seed mixed with the name) */
    int threads;               /* OpenMP threads the method may use */
    void *work;                /* scratch the caller keeps across calls (may be NULL), */
    size_t work_bytes;         /* 2 MiB aligned; methods needing more allocate their own */
} merge_call;

#define MPARAM(call, i, p) ((call)->mparam[(size_t)(i) * (size_t)(call)->nparams + (size_t)(p)])

typedef struct merge_method {
    const char *name;
    merge_base_use base;
    int min_models; /* counted without the base when the base is used */
    int max_models; /* 0 = no limit */
    const merge_param_def *params;
    int nparams;
    /* Write the merged tensor (n floats) into out, which never aliases an
     * input. Return 0, or -1 with a message naming call->tensor_name. */
    int (*merge)(const merge_call *call, float *out, alloy_err *err);
} merge_method;

/* NULL when unknown. */
const merge_method *merge_method_find(const char *name);
/* The closest known name to a misspelled one (edit distance), or NULL. */
const char *merge_method_suggest(const char *name);
/* All registered methods, NULL-terminated. */
const merge_method *const *merge_method_all(void);

#endif
