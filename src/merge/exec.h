/* exec.h — streaming execution of a merge plan into a checkpoint directory.
 *
 * Tensor by tensor: read each input (mmapped) into f32, apply LoRA deltas,
 * check for non-finite values, run the method, convert to the output dtype
 * and write it with the safetensors writer. Peak memory is about
 * (inputs + 2) x the largest tensor in f32; pages of finished inputs are
 * released. Output goes to a temporary sibling directory renamed into place
 * at the end, so an interrupted merge never leaves a valid-looking OUT_DIR. */
#ifndef ALLOY_MERGE_EXEC_H
#define ALLOY_MERGE_EXEC_H

#include "alloy.h"
#include "merge/plan.h"

int exec_plan(const merge_plan *p, const char *out_dir, const alloy_merge_options *opt, alloy_err *err);

#endif
