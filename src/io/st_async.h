/* st_async.h — one safetensors tensor write in flight on a background thread.
 *
 * The merge executor packs tensor i+1 while tensor i is being written: the
 * write's copy into the page cache and any writeback throttling overlap the
 * computation instead of adding to it. The caller alternates two buffers;
 * a buffer handed to st_async_put must stay untouched until the next
 * st_async_put or st_async_wait returns. Only one thread may use the
 * st_writer at a time: call st_async_wait before using it directly. */
#ifndef ALLOY_IO_ST_ASYNC_H
#define ALLOY_IO_ST_ASYNC_H

#include "alloy.h"
#include "io/safetensors.h"

typedef struct st_async st_async;

/* NULL (err set) when the thread cannot be started. */
st_async *st_async_start(st_writer *w, alloy_err *err);

/* Wait for the write in flight, if any: 0, or -1 with its error. */
int st_async_wait(st_async *a, alloy_err *err);

/* Wait for the write in flight, then start writing tensor i from data. */
int st_async_put(st_async *a, int i, const void *data, alloy_err *err);

/* Wait, stop the thread and free a: the last write's result. */
int st_async_stop(st_async *a, alloy_err *err);

#endif
