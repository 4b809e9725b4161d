/* mod_recipe.h — `merge_method: mod`: turn a merge recipe into a MoD
 * mixture directory instead of a checkpoint. No weights are written; the
 * directory names its members.
 *
 * Recipe form (mergekit's `models:` list; alloy's parameters):
 *   merge_method: mod
 *   models:
 *     - model: ./math-expert
 *       parameters: {weight: 0.7}
 *     - model: ./chat-expert
 *       parameters: {weight: 0.3}
 *   parameters:
 *     geometric: false   # true: p ∝ Π p_i^α_i instead of the paper's Σ α_i p_i
 *     normalize: true    # false: the weights must already sum to 1 (as the paper's α)
 * A model without `weight` gets 1 (uniform mixture). Model paths are resolved
 * against the working directory, as mergekit does, and stored absolute.
 *
 * Output directory: alloy_mixture.json, the shared tokenizer files (from
 * the first member), alloy_recipe.yml (the recipe text), README.md. It is
 * built in a temporary sibling directory and renamed into place. */
#ifndef ALLOY_MIX_MOD_RECIPE_H
#define ALLOY_MIX_MOD_RECIPE_H

#include "alloy.h"
#include "io/recipe.h"

/* Validate r (method mod, models form, weights, members and their shared
 * tokenizer) and write the mixture directory out_dir (replaced if it
 * exists). On failure nothing is left at out_dir beyond what was there. */
int mix_write_from_recipe(const recipe *r, const char *out_dir, alloy_err *err);

#endif
