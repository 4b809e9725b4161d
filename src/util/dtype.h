/* dtype.h — element types: sizes, names, and conversion to and from f32.
 *
 * bf16 and f16 are converted with round-to-nearest-even, as PyTorch does, so a
 * merge computed in f32 and stored as bf16 matches torch's `.to(bfloat16)`. */
#ifndef ALLOY_UTIL_DTYPE_H
#define ALLOY_UTIL_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

size_t dtype_size(alloy_dtype dt);
/* safetensors spelling: "F32", "BF16", ... */
const char *dtype_name(alloy_dtype dt);
/* Parse a safetensors dtype string; -1 when unknown. */
int dtype_parse(const char *s, alloy_dtype *out);
/* Parse a torch/mergekit dtype ("bfloat16", "float16", "float32", also
 * "bf16", "fp16", "f32"); -1 when unknown. */
int dtype_parse_torch(const char *s, alloy_dtype *out);
/* torch spelling for config.json: "bfloat16", "float16", "float32". */
const char *dtype_torch_name(alloy_dtype dt);
/* True for F32, F16, BF16: the types merge arithmetic reads and writes. */
bool dtype_is_mergeable(alloy_dtype dt);

float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Convert n elements of src (type dt, possibly unaligned) to f32. Returns the
 * index of the first non-finite value, or -1 if all are finite. */
int64_t dtype_to_f32(const void *src, alloy_dtype dt, float *dst, size_t n);
/* Convert n f32 values to dt (a mergeable type) into dst. */
void dtype_from_f32(const float *src, alloy_dtype dt, void *dst, size_t n);

#endif
