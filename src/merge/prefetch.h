/* prefetch.h — the input pages of a merge, mapped ahead of it.
 *
 * The executor walks the output tensors in order; each needs its inputs'
 * pages mapped (MADV_POPULATE_READ: one call instead of a fault per 4 KiB)
 * and, once merged, dropped again (MADV_DONTNEED) so the resident set stays
 * a few tensors' inputs rather than the whole model. Both are kernel work
 * with the merge's threads idle when done in line; a helper thread does
 * them instead: while tensor i merges it maps tensor i + 1 and those after
 * it up to AHEAD_BYTES of inputs, and drops the done tensors in batches of
 * DROP_BATCH input bytes (prefetch.c: each drop is a TLB flush on every
 * CPU), a slice at a time, so that a mapping the merge waits for is never
 * queued behind a long drop.
 * Used by `alloy merge` and by the bench's I/O floor, which so share one
 * I/O path. */
#ifndef ALLOY_MERGE_PREFETCH_H
#define ALLOY_MERGE_PREFETCH_H

#include "merge/plan.h"

/* madvise(advice) over the pages of t / of every input of pt. */
void merge_advise(const st_tensor *t, int advice);
void merge_advise_tensor(const plan_tensor *pt, int advice);

typedef struct merge_prefetch merge_prefetch;

/* For tensors[order[0..n)] of p (order NULL: 0..n-1); NULL when no thread
 * could be started (then every call below works in line). */
merge_prefetch *merge_prefetch_start(const merge_plan *p, const int *order, int n);
/* The same, but the first `own` tensors are the caller's to map (they
 * count as mapped, and are dropped as the others once done): the helper
 * starts at tensor own, so that a lane can begin on it while another maps
 * a large first tensor itself. */
merge_prefetch *merge_prefetch_start_from(const merge_plan *p, const int *order, int n, int own);
/* Returns once the j-th tensor's pages are mapped; asks for the next one's. */
void merge_prefetch_ready(merge_prefetch *pf, const merge_plan *p, const int *order, int j);
/* The j-th tensor is done: its pages may go (tensors may be done in any
 * order: each goes with the first batch after it is done). */
void merge_prefetch_done(merge_prefetch *pf, const merge_plan *p, const int *order, int j);
/* Drops what is left and joins the thread. */
void merge_prefetch_stop(merge_prefetch *pf);

#endif
