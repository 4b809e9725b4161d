/* safetensors.h — reading and writing Hugging Face safetensors checkpoints.
 *
 * Reader: files are memory-mapped and tensors are pointers into the mapping,
 * never copied. A checkpoint is one file or a set of shards described by
 * model.safetensors.index.json. Everything the format promises is validated
 * at open time: header length (8-byte little-endian, at most 100 MB, inside the
 * file), well-formed JSON, known dtypes, byte span = product(shape) x dtype
 * size, spans inside the data region, no overlaps, no holes.
 *
 * Writer: streaming. The caller declares every output tensor up front (name,
 * dtype, shape); the writer assigns shards by a byte budget, precomputes the
 * headers, then accepts tensor data in any order and pwrite()s it in place.
 * Output names follow transformers: model.safetensors for a single shard, else
 * model-0000k-of-0000N.safetensors plus model.safetensors.index.json with
 * metadata.total_size. __metadata__ is {"format": "pt"}.
 *
 * Not here: config.json and side files (checkpoint.h), merge logic. */
#ifndef ALLOY_IO_SAFETENSORS_H
#define ALLOY_IO_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"
#include "io/dio.h"

#define ST_MAX_DIMS 8

/* The writer pads each header with spaces (the format allows it) so that
 * the data start at a multiple of this: a tensor whose bytes before it are
 * whole cache lines then starts on a line, and a kernel can store its
 * results there with whole-line non-temporal stores (merge/gta_kernel.c).
 * Readers accept any padding. */
#define ST_DATA_ALIGN 64

typedef struct st_tensor {
    char *name;
    alloy_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* into the mapping of files[file] */
    int file;         /* index into st_model.files */
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;   /* whole-file mapping */
    size_t size; /* file size in bytes */
} st_file;

typedef struct st_model {
    char *source;  /* directory or file path it was opened from */
    unsigned flags; /* ST_OPEN_* it was opened with */
    int nfiles;
    st_file *files;
    int ntensors;
    st_tensor *tensors; /* in file order, shard by shard */
    /* open-addressing hash of tensor names -> index (internal) */
    int *slots;
    int nslots;
} st_model;

/* Open one .safetensors file. On failure *m is left zeroed and err names the
 * file (and the tensor, when one is at fault). */
int st_open_file(st_model *m, const char *path, alloy_err *err);

/* Open a checkpoint directory: model.safetensors.index.json when present
 * (every shard it names is opened and every weight_map entry must exist in
 * its shard), else model.safetensors, else the single *.safetensors file in
 * the directory. A directory with only pytorch_model.bin gets an error saying
 * so. */
int st_open_dir(st_model *m, const char *dir, alloy_err *err);

/* Flags of st_open_dir_ex. ST_OPEN_PRELOAD: read each file into anonymous
 * memory marked for transparent huge pages instead of mapping it, when the
 * file is at most half of the free memory (else it is mapped as usual). For
 * inference: every weight is streamed every token, and 4 KiB file pages cost
 * TLB misses and page faults (a 3-model mixture decoded ~1.5x slower mapped
 * than preloaded in bench_mod). */
enum { ST_OPEN_PRELOAD = 1u };
int st_open_dir_ex(st_model *m, const char *dir, unsigned flags, alloy_err *err);

void st_close(st_model *m);

/* Lookup by exact name; NULL when absent. */
const st_tensor *st_find(const st_model *m, const char *name);

/* ---- writer ---- */

typedef struct st_spec {
    const char *name; /* copied by the writer */
    alloy_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_spec;

typedef struct st_writer st_writer;

/* Plan the output files in directory dir (which must exist) for the n
 * tensors in specs, in that order. A shard is closed before a tensor that
 * would take it past max_shard_bytes (a tensor larger than the budget gets a
 * shard of its own); one shard means a plain model.safetensors. Files are
 * created and sized here. Returns NULL on failure. */
st_writer *st_writer_open(const char *dir, const st_spec *specs, int n,
                          uint64_t max_shard_bytes, alloy_err *err);

/* Write tensor i's bytes (exactly its nbytes). Any order; thread-safe for
 * distinct i. */
int st_writer_put(st_writer *w, int i, const void *data, alloy_err *err);

/* Write bytes [offset, offset + len) of tensor i; thread-safe for distinct
 * ranges. The tensor counts as written once st_writer_mark_done(w, i). */
int st_writer_put_part(st_writer *w, int i, uint64_t offset, const void *data, size_t len, alloy_err *err);
void st_writer_mark_done(st_writer *w, int i);

/* The direct-write file that tensor i goes into, and the offset of its first
 * byte there (for dio_stream, io/dio.h); NULL where its shard is written the
 * ordinary way. */
dio_file *st_writer_dio(st_writer *w, int i, uint64_t *file_off);

/* Check every tensor was written, fsync, write the index when sharded, and
 * free w. */
int st_writer_finish(st_writer *w, alloy_err *err);

/* Free w without finishing (files stay; the caller removes its temp dir). */
void st_writer_abort(st_writer *w);

/* Number of shards the writer planned (for messages). */
int st_writer_nshards(const st_writer *w);

#endif
