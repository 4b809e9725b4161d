/* state.h — resumable training state: the trainable parameters, the AdamW
 * moments, the step counter and the seed (the data order and every other
 * random choice are pure functions of (seed, step), so these restore the RNG
 * exactly). One binary file, written atomically (temp file + rename):
 *   "ALLOYTR1" | i64 step | u64 seed | u64 n | u32 len | fingerprint[len]
 *   | f32 params[n] | f32 m[n] | f32 v[n]      (little-endian host order)
 * The fingerprint describes the run (model, data, mode, shapes, schedule);
 * a state written by a different run is refused, not silently reused.
 *
 * Not here: where the file lives and when it is written (trainer.c). */
#ifndef ALLOY_TRAIN_STATE_H
#define ALLOY_TRAIN_STATE_H

#include <stdint.h>

#include "alloy.h"
#include "train/adamw.h"
#include "train/pset.h"

int tr_state_save(const char *path, const char *fingerprint, int64_t step, uint64_t seed,
                  const tr_pset *ps, const tr_adamw *opt, alloy_err *err);
/* Restore into ps/opt (same sizes). *step receives the saved step. */
int tr_state_load(const char *path, const char *fingerprint, uint64_t seed, tr_pset *ps, tr_adamw *opt,
                  int64_t *step, alloy_err *err);

#endif
