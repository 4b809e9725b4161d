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
#include <string.h>

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

/* An input tensor as it lies in the checkpoint: n elements of a mergeable
 * dtype (F32, F16, BF16), possibly unaligned. Streaming methods read these
 * directly, block by block, instead of whole f32 copies. */
typedef struct merge_src {
    const void *data;
    alloy_dtype dtype;
} merge_src;

/* Returned by a streaming method that met a NaN or infinity in its inputs;
 * the executor then finds and names the file, tensor and element. */
#define MERGE_NONFINITE_INPUT (-2)

typedef struct merge_call {
    const char *tensor_name;
    int ndim;
    const int64_t *shape;
    size_t n;                  /* number of elements */
    const float *base;         /* NULL unless the method uses a base and one is given */
    int k;                     /* number of model tensors (base excluded when used) */
    const float *const *x;     /* k tensors of n floats (NULL for streaming methods) */
    const merge_src *src;      /* k sources of the same tensors, or NULL: then x */
    merge_src base_src;        /* the base as a source (data NULL: none, or use base) */
    const double *gparam;      /* [nparams], global parameters, table order */
    const double *mparam;      /* [k * nparams], per-model parameters */
    int nparams;
    uint64_t seed;             /* per-tensor seed (run seed mixed with the name) */
    int threads;               /* OpenMP threads the method may use */
    void *work;                /* scratch the caller keeps across calls (may be NULL), */
    size_t work_bytes;         /* 2 MiB aligned; methods needing more allocate their own */
    /* Streaming methods only: when sink is set, the result goes there
     * (merge/sink.h, the output file) instead of to out, and a non-finite
     * result is the method's error (merge_store tells). */
    struct merge_sink *sink;
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
    /* Streaming: the method reads call->src / call->base_src itself (x and
     * base are NULL), checks them for non-finite values and returns
     * MERGE_NONFINITE_INPUT when it meets one. Otherwise the executor
     * converts every input to f32 first. */
    bool streams;
    /* The method reads its inputs once before any result comes (rank
     * cuts, norms, rescale sums): a streaming merge then runs a large
     * tensor beside the next ones (exec.c), so that the disk is not idle
     * in that pass and the bottleneck in the next. */
    bool first_pass;
} merge_method;

/* Input i (or the base, i = -1) of a call as a source, whether the caller
 * gave sources or f32 arrays. */
static inline merge_src merge_input(const merge_call *call, int i) {
    if (i < 0) return call->base_src.data ? call->base_src : (merge_src){call->base, ALLOY_F32};
    return call->src ? call->src[i] : (merge_src){call->x[i], ALLOY_F32};
}

static inline bool merge_has_base(const merge_call *call) { return call->base_src.data || call->base; }

/* Elements [lo, lo + m) of s as f32 into dst. Returns true when one of them
 * is not finite. */
bool merge_load(merge_src s, size_t lo, size_t m, float *dst);

/* A bf16 bit pattern widened to f32 (exact), inline so that loops over
 * bf16 data read in place vectorise. */
static inline float merge_bf16(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

/* The software prefetch merge_load does for a block of `bytes` at p, for
 * callers that read a block in place. */
void merge_prefetch_block(const void *p, size_t bytes);

/* True when one of elements [lo, lo + m) of s is NaN or infinite. */
bool merge_nonfinite(merge_src s, size_t lo, size_t m);

/* |x - base| of elements [lo, lo + m) of s into a, base the block's f32
 * base values: the load and the subtraction in one pass (bf16 inputs are
 * widened in registers), xbuf m floats of scratch for other dtypes. Returns
 * true when an element of s is not finite. */
bool merge_load_absdiff(merge_src s, size_t lo, size_t m, const float *base, float *xbuf, float *a);

/* Store result elements [lo, lo + m) from v: to call->sink when set, else
 * to out (f32). Returns the offset in the block of the first non-finite
 * value when storing to the sink, else m. Call from the thread that computed
 * the block, blocks of one thread in increasing order where possible. */
size_t merge_store(const merge_call *call, float *out, size_t lo, const float *v, size_t m);

/* An element-wise method's work on one block, elements [lo, lo + m): the
 * values of each of its nin inputs in in[0..nin), its results into o. */
typedef void (*merge_block_fn)(const void *ctx, size_t lo, const float *const *in, size_t m, float *o);

/* Run an element-wise streaming method: every block of MERGE_EW_BLOCK
 * elements of the inputs which[0..nin) (merge_input indices, -1 the base)
 * is loaded, passed to fn and stored (merge_store, out), on call->threads
 * threads. Returns
 * merge_stream_result for `method`, or an error when out of memory. */
#define MERGE_EW_BLOCK 1024
int merge_stream_elementwise(const merge_call *call, float *out, const char *method, int nin, const int *which,
                             merge_block_fn fn, const void *ctx, alloy_err *err);

/* A streaming reduction: vec_reduce (vec.h: deterministic, per fixed chunk)
 * of f over the tensor into acc[0..nacc), where f also counts non-finite
 * inputs in acc[nacc] and failed allocations in acc[nacc + 1] (acc holds
 * nacc + 2). Returns 0, MERGE_NONFINITE_INPUT, or -1 with err set. */
typedef void (*merge_chunk_fn)(const void *ctx, size_t lo, size_t hi, double *acc);
int merge_stream_reduce(const merge_call *call, int nacc, merge_chunk_fn f, const void *ctx, double *acc,
                        alloy_err *err);

/* A block kernel that stores its results itself, in the output dtype:
 * elements [b0, b0 + m) into dst (element b0's place: the sink's stage, or
 * out + b0 in f32 without a sink); true when an input was not finite, *ob
 * the index in the block of the first non-finite result, or m. */
typedef bool (*merge_kernel_fn)(const void *ctx, size_t b0, size_t m, void *dst, size_t *ob);

/* Run fn over every MERGE_EW_BLOCK block of the tensor on call->threads
 * threads (each thread's blocks one run, as the sink's stages want);
 * merge_stream_result for `method`. */
int merge_stream_blocks(const merge_call *call, float *out, const char *method, merge_kernel_fn fn, const void *ctx,
                        alloy_err *err);

/* How a streaming method ends: MERGE_NONFINITE_INPUT when an input was not
 * finite, an error naming the tensor and element when result element
 * first_bad (< call->n) was not, else 0. */
int merge_stream_result(const merge_call *call, const char *method, bool bad_input, size_t first_bad,
                        alloy_err *err);


/* NULL when unknown. */
const merge_method *merge_method_find(const char *name);
/* The closest known name to a misspelled one (edit distance), or NULL. */
const char *merge_method_suggest(const char *name);
/* All registered methods, NULL-terminated. */
const merge_method *const *merge_method_all(void);

#endif
