/* mem.h — allocation of large work buffers (merged tensors, masks, f32
 * copies of weights): 2 MiB aligned and marked for transparent huge pages,
 * so that first touching a buffer of hundreds of MB costs a few hundred page
 * faults instead of one per 4 KiB. Not here: anything small. */
#ifndef ALLOY_UTIL_MEM_H
#define ALLOY_UTIL_MEM_H

#include <stddef.h>

/* A buffer of at least `bytes` bytes (uninitialised), released with free();
 * NULL when out of memory. */
void *mem_big_alloc(size_t bytes);

#endif
