/* mem.c — large work buffers on transparent huge pages (see mem.h). */
#include "util/mem.h"

#include <stdlib.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

void *mem_big_alloc(size_t bytes) {
    if (bytes < HUGE_PAGE) return malloc(bytes ? bytes : 1);
    size_t rounded = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE, rounded)) return NULL;
    /* advice only: without THP support the buffer is still valid */
    (void)madvise(p, rounded, MADV_HUGEPAGE);
    return p;
}
