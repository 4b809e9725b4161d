/* gguf.h — writing GGUF v3 files (llama.cpp's model format), and converting a
 * Hugging Face Qwen2/Llama checkpoint directory into one.
 *
 * Writer: metadata (key/value pairs) and tensor infos are collected in
 * memory in the order they are added; gguf_writer_begin() then lays out the
 * file (header, KV section, tensor infos, data section aligned to
 * GGUF_ALIGNMENT), creates it under a temporary name next to the final path
 * and writes everything but the tensor data. Tensor data is written with
 * gguf_writer_put() in any order; gguf_writer_finish() checks every tensor
 * was written, fsyncs and renames the file into place. Nothing is left behind
 * on failure. Dimensions are given in GGML order: ne[0] is the innermost
 * (fastest-varying) dimension, i.e. the reverse of a torch shape.
 *
 * Converter: which HF tensor becomes which GGUF tensor, the metadata keys
 * llama.cpp reads for the "qwen2" and "llama" architectures, the byte-level
 * BPE tokenizer metadata from tokenizer.json, and the q/k row permutation that
 * llama.cpp's "llama" architecture expects (its RoPE rotates adjacent pairs,
 * HF's rotate_half rotates the two halves of each head).
 *
 * Not here: reading GGUF (alloy runs from safetensors), quantized types. */
#ifndef ALLOY_IO_GGUF_H
#define ALLOY_IO_GGUF_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "alloy.h"

#define GGUF_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* ggml tensor types alloy writes (values are ggml's). */
typedef enum gguf_type {
    GGUF_TYPE_F32 = 0,
    GGUF_TYPE_F16 = 1,
    GGUF_TYPE_BF16 = 30,
} gguf_type;

/* general.file_type values (llama.cpp's LLAMA_FTYPE_*). */
enum {
    GGUF_FTYPE_ALL_F32 = 0,
    GGUF_FTYPE_MOSTLY_F16 = 1,
    GGUF_FTYPE_MOSTLY_BF16 = 32,
};

typedef struct gguf_writer gguf_writer;

/* A new, empty writer; NULL when out of memory. Free with gguf_writer_abort()
 * unless gguf_writer_finish() was called. */
gguf_writer *gguf_writer_new(alloy_err *err);

/* Metadata. Keys and values are copied. Each returns 0, or -1 when out of
 * memory or when called after gguf_writer_begin(). Arrays must be non-empty. */
int gguf_kv_u32(gguf_writer *w, const char *key, uint32_t v, alloy_err *err);
int gguf_kv_i32(gguf_writer *w, const char *key, int32_t v, alloy_err *err);
int gguf_kv_f32(gguf_writer *w, const char *key, float v, alloy_err *err);
int gguf_kv_bool(gguf_writer *w, const char *key, bool v, alloy_err *err);
int gguf_kv_str(gguf_writer *w, const char *key, const char *v, alloy_err *err);
int gguf_kv_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n,
                    alloy_err *err);
int gguf_kv_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                    alloy_err *err);

/* Declare a tensor (ne in GGML order, 1..GGUF_MAX_DIMS dims, each >= 1).
 * Returns its index (0, 1, ...) for gguf_writer_put(), or -1. Names must be
 * unique and shorter than 64 bytes (ggml's limit). */
int gguf_add_tensor(gguf_writer *w, const char *name, gguf_type type, int ndim,
                    const int64_t *ne, alloy_err *err);

/* Bytes of tensor i's data (its element count x type size). */
uint64_t gguf_tensor_nbytes(const gguf_writer *w, int i);

/* Create "<dir>/.<base>.tmp-XXXXXX" next to path and write the header, the
 * metadata and the tensor infos. No metadata or tensor may be added after. */
int gguf_writer_begin(gguf_writer *w, const char *path, alloy_err *err);

/* Write tensor i's data: exactly gguf_tensor_nbytes(w, i) bytes. */
int gguf_writer_put(gguf_writer *w, int i, const void *data, alloy_err *err);
/* Write n bytes at byte offset off inside tensor i's data (for tensors
 * converted in chunks); ranges must not overlap. */
int gguf_writer_write(gguf_writer *w, int i, uint64_t off, const void *data, uint64_t n,
                      alloy_err *err);

/* Check every tensor was written, fsync, rename the temp file to the path
 * given to gguf_writer_begin(), and free w (also on failure, after removing
 * the temp file). */
int gguf_writer_finish(gguf_writer *w, alloy_err *err);

/* Free w and remove its temp file if one was created. NULL is a no-op. */
void gguf_writer_abort(gguf_writer *w);

/* Convert the checkpoint directory dir (config.json, safetensors, and
 * tokenizer.json / tokenizer_config.json when present) to the GGUF file
 * out_path. Matrices are stored as type; 1-D tensors and norms stay F32.
 * Supported: model_type "qwen2" and "llama" (also "mistral" without sliding
 * window), rope scaling none, "linear" and "llama3". tokenizer.json must be
 * a byte-level BPE whose pre-tokenizer regex is Qwen2's or Llama-3's (llama.cpp
 * selects its pre-tokenizer by that name). The output is written to a temp
 * file and renamed into place when complete. One summary line goes to log
 * when non-NULL. */
int gguf_convert_dir(const char *dir, const char *out_path, gguf_type type, FILE *log,
                     alloy_err *err);

#endif
