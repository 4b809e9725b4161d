/* sink.h — streamed merge results written from the threads that make them.
 *
 * A streaming method hands each finished block of results to merge_store
 * (method.h), which packs it into the calling thread's staging buffer (a
 * megabyte, hot in cache) in the output dtype; a full buffer, or one that the
 * next block would not continue, is written at its offset in the output
 * file by that same thread. So no tensor-sized output buffer exists, and the
 * copy into the page cache reads cached bytes and runs on every thread. */
#ifndef ALLOY_MERGE_SINK_H
#define ALLOY_MERGE_SINK_H

#include <stdbool.h>
#include <stddef.h>

#include "alloy.h"
#include "io/safetensors.h"

typedef struct merge_sink merge_sink;

/* Staging for up to `threads` OpenMP threads; NULL when out of memory. */
merge_sink *merge_sink_new(int threads);
void merge_sink_free(merge_sink *s);

/* Results of output tensor i of w, in dtype dt, go to the file from now on. */
void merge_sink_begin(merge_sink *s, st_writer *w, int i, alloy_dtype dt);

/* Elements [lo, lo + m) from v, called from OpenMP thread
 * omp_get_thread_num(). Returns the offset in the block of the first
 * non-finite value, or m. */
size_t merge_sink_put(merge_sink *s, size_t lo, const float *v, size_t m);

/* Room for elements [lo, lo + m) in the calling thread's stage (m at most
 * a stage's worth), in the sink's dtype, counted as staged from now: the
 * caller fills it before its next call to the sink. What merge_sink_put
 * does for a kernel that converts and stores itself. */
void *merge_sink_slot(merge_sink *s, size_t lo, size_t m);

/* Whether merge_sink_slot gives the calling thread's room in the ring of
 * direct writes (memory that only the device reads) rather than in a
 * stage: then whole cache lines of results are best stored there
 * non-temporally. For this tensor, until a slot call finds no room there. */
bool merge_sink_direct(const merge_sink *s);

/* The dtype of the tensor being written. */
alloy_dtype merge_sink_dtype(const merge_sink *s);

/* Write what is staged, mark the tensor written: 0, or -1 with the first
 * write error. */
int merge_sink_end(merge_sink *s, alloy_err *err);

#endif
