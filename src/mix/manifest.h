/* manifest.h — alloy_mixture.json, the file that makes a directory a MoD
 * mixture, and the check that mixture members share one tokenizer.
 *
 * Format (JSON object):
 *   "format":  "alloy-mixture" (required), "version": 1
 *   "method":  "mod"
 *   "rule":    "arithmetic" | "geometric"          (default arithmetic)
 *   "members": [{"path": DIR, "weight": w}, ...]    (at least one)
 *   "parameters": {name: number, ...}               (recorded, optional)
 * A member path is absolute, or relative to the directory holding the
 * manifest. Weights are stored as given (not normalised).
 *
 * Not here: running the members (mixture.h), recipes (mod_recipe.h). */
#ifndef ALLOY_MIX_MANIFEST_H
#define ALLOY_MIX_MANIFEST_H

#include "alloy.h"
#include "mix/mixture.h"

#define MIX_MANIFEST "alloy_mixture.json"

typedef struct mix_manifest {
    int n;            /* members */
    char **paths;     /* (n) malloc'd; resolved (absolute or manifest-relative joined) on read */
    double *weights;  /* (n) as written */
    mix_rule rule;
    int nparams;      /* extra numeric parameters, recorded for the model card */
    char **param_names;
    double *param_values;
} mix_manifest;

/* Read DIR/alloy_mixture.json into *m (zeroed on failure). Member paths come
 * back joined with DIR when relative. Errors name the file and the key. */
int mix_manifest_read(mix_manifest *m, const char *dir, alloy_err *err);

/* Write m as DIR/alloy_mixture.json (paths written exactly as in m). */
int mix_manifest_write(const mix_manifest *m, const char *dir, alloy_err *err);

void mix_manifest_free(mix_manifest *m);

/* Check that the member directories dirs[0..n) can be mixed: each exists and
 * has a config.json, all vocab_size agree, and either none has a
 * tokenizer.json or all do with the same vocabulary, merges and added
 * tokens. The error names the two directories and the first difference
 * (a token, a merge index, an added token). */
int mix_check_members(const char *const *dirs, int n, alloy_err *err);

#endif
