/* alloy.h — public API of liballoy, a toolkit for merging large language models.
 *
 * This header is what an embedding program includes. It exposes the stable
 * entry points (run a merge recipe, inspect checkpoints) and the small set of
 * types they share. Internal module headers under src/ are not part of the API.
 *
 * Conventions: every function that can fail returns 0 on success and -1 on
 * failure, with a one-line message in the caller's alloy_err. Memory returned
 * to the caller is documented at each function; nothing here calls exit(). */
#ifndef ALLOY_H
#define ALLOY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALLOY_VERSION "0.1.0"

/* A failure message, filled by the function that failed. */
typedef struct alloy_err {
    char msg[1024];
} alloy_err;

/* Element types of safetensors tensors. Only F32, F16 and BF16 take part in
 * merge arithmetic (in f32); the others are copied through untouched. */
typedef enum alloy_dtype {
    ALLOY_F32 = 0,
    ALLOY_F16,
    ALLOY_BF16,
    ALLOY_F64,
    ALLOY_I64,
    ALLOY_I32,
    ALLOY_I16,
    ALLOY_I8,
    ALLOY_U8,
    ALLOY_BOOL,
    ALLOY_F8_E4M3,
    ALLOY_F8_E5M2,
    ALLOY_U16,
    ALLOY_U32,
    ALLOY_U64,
    ALLOY_DTYPE_COUNT
} alloy_dtype;

/* Options of a merge run; alloy_merge_options_default() fills the defaults. */
typedef struct alloy_merge_options {
    int threads;               /* worker threads; 0 = all cores */
    uint64_t seed;             /* seed of the random methods (dare_*, della*) */
    uint64_t out_shard_bytes;  /* maximum bytes per output shard (default 5e9) */
    int copy_tokenizer;        /* copy tokenizer and side files (default 1) */
    int dry_run;               /* validate, describe the plan, write nothing */
    FILE *plan_out;            /* where --dry-run describes the plan (default NULL: nowhere) */
    FILE *warn_out;            /* where warnings go (unknown parameters, ...); NULL: nowhere */
    /* Called after each output tensor (may be NULL). */
    void (*progress)(void *user, int done, int total, uint64_t bytes_done, uint64_t bytes_total);
    void *progress_user;
} alloy_merge_options;

void alloy_merge_options_default(alloy_merge_options *opt);

/* Run the mergekit-style YAML recipe at recipe_path and write the merged
 * checkpoint directory to out_dir. The whole recipe is validated before any
 * output is written; output goes to a temporary sibling directory that is
 * renamed to out_dir only when complete. out_dir must not exist yet, or be an
 * empty directory, or a previous alloy output (it is replaced). */
int alloy_merge(const char *recipe_path, const char *out_dir,
                const alloy_merge_options *opt, alloy_err *err);

#ifdef __cplusplus
}
#endif

#endif /* ALLOY_H */
