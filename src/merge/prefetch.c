/* prefetch.c — maps the next tensors' input pages and drops the done
 * ones' in batches, in slices, on a helper thread (see prefetch.h). */
#include "merge/prefetch.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

void merge_advise(const st_tensor *t, int advice) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    uintptr_t b = (uintptr_t)t->data + t->nbytes;
    if (b > a) madvise((void *)a, b - a, advice);
}

/* How many input tensors pt reads, and the i-th of them: the copied
 * tensor, or the base (when it has one) and then the models. */
static int ninputs(const plan_tensor *pt) { return pt->merge ? pt->k + (pt->has_base ? 1 : 0) : 1; }

static const st_tensor *input(const plan_tensor *pt, int i) {
    if (!pt->merge) return pt->copy.t;
    if (pt->has_base) return i == 0 ? pt->base.t : pt->inputs[i - 1].t;
    return pt->inputs[i].t;
}

void merge_advise_tensor(const plan_tensor *pt, int advice) {
    for (int i = 0; i < ninputs(pt); i++) merge_advise(input(pt, i), advice);
}

typedef struct span {
    uintptr_t a, b;
} span;

struct merge_prefetch {
    const merge_plan *p;
    const int *order;
    int n;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* the thread waits for work on it, the caller for `mapped` */
    int want;            /* map tensors [0, want) before anything else */
    int cur;             /* the last tensor asked for: tensors after it are mapped ahead */
    int mapped;          /* tensors [0, mapped) are mapped */
    uint8_t *done;       /* per tensor: 1 done and still mapped, 2 dropped (in any order) */
    uint64_t pending;    /* input bytes of the tensors done and still mapped */
    int *js;             /* the tensors of the drop being planned */
    span *sp;            /* the drop under way: its ranges [isp, nsp), joined */
    int nsp, isp;
    span *left;          /* the ends of dropped ranges kept for a later drop (see HUGE_SPAN) */
    int nleft;
    bool stop;
};

static const plan_tensor *nth(const merge_plan *p, const int *order, int j) {
    return &p->tensors[order ? order[j] : j];
}

/* Done tensors are dropped in batches of at least this many input bytes
 * (all that are left at the end): each madvise(MADV_DONTNEED) flushes the
 * TLB of every CPU that ran the merge, a round of inter-processor
 * interrupts that on a VM costs about 0.2 ms of the helper's time while
 * the merge's threads are interrupted, and a 0.5B model's layer tensors
 * are a few MB each (4 inputs x 291 tensors: 1164 flushes a merge). */
#define DROP_BATCH ((uint64_t)64 << 20)

static uint64_t input_bytes(const plan_tensor *pt) {
    uint64_t b = 0;
    for (int i = 0; i < ninputs(pt); i++) b += input(pt, i)->nbytes;
    return b;
}

static int span_cmp(const void *x, const void *y) {
    uintptr_t a = ((const span *)x)->a, b = ((const span *)y)->a;
    return a < b ? -1 : a > b;
}

/* Tensors ahead of the one being merged are mapped while their inputs
 * come to less than this many bytes (and the next one always): a run of
 * small tensors (norms, biases, attention projections) merges faster than
 * the helper maps the large one after it one at a time. */
#define AHEAD_BYTES ((uint64_t)64 << 20)

/* A drop goes in slices of at most this many bytes, the mapping that the
 * merge waits for taken between two: unmapping a 0.5B model's embedding
 * (1 GiB of inputs) takes 40-60 ms, which the next tensors' mapping
 * otherwise waits behind. */
#define DROP_SLICE ((uintptr_t)32 << 20)

/* Drops end on multiples of this many bytes of address, except the last:
 * the kernel maps a large file's page cache in 2 MiB pages where it can
 * (a 0.5B checkpoint: 70-85 % of it), and a drop that ends inside one
 * splits it into 512 small ones, which the next drop then unmaps one by
 * one. The part of a range past the last multiple waits for a later drop,
 * with which it joins. */
#define HUGE_SPAN ((uintptr_t)2 << 20)

/* The ranges of the inputs of the tensors js[0..nj) and the ends left by
 * the drops before, sorted, those that touch or overlap joined, page
 * aligned, into pf->sp (a range between two files' mappings is never
 * joined: the mappings are not adjacent unless their pages are, and
 * madvise takes adjacent mappings in one call); unless last, each cut to
 * multiples of HUGE_SPAN, the ends kept in pf->left. False when out of
 * memory. */
static bool drop_plan(merge_prefetch *pf, const int *js, int nj, bool last) {
    int cap = pf->nleft;
    for (int q = 0; q < nj; q++) cap += ninputs(nth(pf->p, pf->order, js[q]));
    span *sp = malloc((size_t)(cap ? cap : 1) * sizeof *sp), *left = malloc((size_t)(2 * cap + 1) * sizeof *left);
    if (!sp || !left) {
        free(sp);
        free(left);
        return false;
    }
    int n = 0, nl = 0;
    for (int q = 0; q < pf->nleft; q++) sp[n++] = pf->left[q];
    for (int q = 0; q < nj; q++) {
        const plan_tensor *pt = nth(pf->p, pf->order, js[q]);
        for (int i = 0; i < ninputs(pt); i++) {
            const st_tensor *t = input(pt, i);
            sp[n++] = (span){(uintptr_t)t->data, (uintptr_t)t->data + t->nbytes};
        }
    }
    qsort(sp, (size_t)n, sizeof *sp, span_cmp);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    int w = 0;
    for (int i = 0; i < n;) {
        uintptr_t a = sp[i].a & ~(page - 1), b = sp[i].b;
        for (i++; i < n && sp[i].a <= ((b + page - 1) & ~(page - 1)); i++)
            if (sp[i].b > b) b = sp[i].b;
        if (b <= a) continue;
        uintptr_t ha = last ? a : (a + HUGE_SPAN - 1) & ~(HUGE_SPAN - 1), hb = last ? b : b & ~(HUGE_SPAN - 1);
        if (hb <= ha) { /* inside one huge page: all of it later */
            left[nl++] = (span){a, b};
            continue;
        }
        if (a < ha) left[nl++] = (span){a, ha};
        if (hb < b) left[nl++] = (span){hb, b};
        sp[w++] = (span){ha, hb};
    }
    free(pf->left);
    pf->left = left, pf->nleft = nl;
    pf->sp = sp, pf->nsp = w, pf->isp = 0;
    if (!w) {
        free(sp);
        pf->sp = NULL;
    }
    return true;
}

/* The next slice of the drop under way (outside pf->mu: only the helper
 * touches pf->sp); frees the plan after the last. */
static void drop_slice(merge_prefetch *pf) {
    span *s = &pf->sp[pf->isp];
    uintptr_t b = s->b - s->a > DROP_SLICE ? s->a + DROP_SLICE : s->b;
    madvise((void *)s->a, b - s->a, MADV_DONTNEED);
    s->a = b;
    if (s->a >= s->b && ++pf->isp == pf->nsp) {
        free(pf->sp);
        pf->sp = NULL;
    }
}

/* The input bytes of the tensors mapped ahead of pf->cur (under pf->mu). */
static uint64_t ahead_bytes(const merge_prefetch *pf) {
    uint64_t b = 0;
    for (int j = pf->cur + 1; j < pf->mapped; j++) b += input_bytes(nth(pf->p, pf->order, j));
    return b;
}

/* The helper's work, most urgent first: the tensors the merge needs (it
 * may be waiting), a slice of the drop under way, a new drop once a
 * batch is done (or at the stop), and then the tensors ahead. */
static void *prefetch_main(void *arg) {
    merge_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        bool ahead = !pf->stop && pf->mapped < pf->n && ahead_bytes(pf) < AHEAD_BYTES;
        bool batch = (pf->pending > 0 || (pf->stop && pf->nleft > 0)) && (pf->stop || pf->pending >= DROP_BATCH);
        if (pf->mapped < pf->want || (ahead && !pf->sp && !batch)) {
            int j = pf->mapped;
            pthread_mutex_unlock(&pf->mu);
            merge_advise_tensor(nth(pf->p, pf->order, j), MADV_POPULATE_READ);
            pthread_mutex_lock(&pf->mu);
            pf->mapped = j + 1;
            pthread_cond_broadcast(&pf->cv);
        } else if (pf->sp) {
            pthread_mutex_unlock(&pf->mu);
            drop_slice(pf);
            pthread_mutex_lock(&pf->mu);
        } else if (batch) { /* every done tensor still mapped, marked dropped now */
            int nj = 0;
            for (int j = 0; j < pf->n; j++)
                if (pf->done[j] == 1) pf->done[j] = 2, pf->js[nj++] = j;
            pf->pending = 0;
            bool last = pf->stop;
            pthread_mutex_unlock(&pf->mu);
            if (!drop_plan(pf, pf->js, nj, last)) { /* no memory for the plan: a call per input */
                for (int q = 0; q < nj; q++) merge_advise_tensor(nth(pf->p, pf->order, pf->js[q]), MADV_DONTNEED);
                for (int q = 0; q < pf->nleft; q++)
                    madvise((void *)pf->left[q].a, pf->left[q].b - pf->left[q].a, MADV_DONTNEED);
                pf->nleft = 0;
            }
            pthread_mutex_lock(&pf->mu);
        } else if (pf->stop) {
            break;
        } else {
            pthread_cond_wait(&pf->cv, &pf->mu);
        }
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

merge_prefetch *merge_prefetch_start(const merge_plan *p, const int *order, int n) {
    return merge_prefetch_start_from(p, order, n, 0);
}

merge_prefetch *merge_prefetch_start_from(const merge_plan *p, const int *order, int n, int own) {
    merge_prefetch *pf = calloc(1, sizeof *pf);
    if (!pf) return NULL;
    own = own < 0 ? 0 : own > n ? n : own;
    *pf = (merge_prefetch){.p = p, .order = order, .n = n, .want = n > own ? own + 1 : own, .cur = -1, .mapped = own};
    pf->done = calloc((size_t)(n > 0 ? n : 1), 1);
    pf->js = malloc((size_t)(n > 0 ? n : 1) * sizeof *pf->js);
    if (!pf->done || !pf->js) {
        free(pf->done);
        free(pf->js);
        free(pf);
        return NULL;
    }
    pthread_mutex_init(&pf->mu, NULL);
    pthread_cond_init(&pf->cv, NULL);
    if (pthread_create(&pf->th, NULL, prefetch_main, pf)) {
        pthread_mutex_destroy(&pf->mu);
        pthread_cond_destroy(&pf->cv);
        free(pf->done);
        free(pf->js);
        free(pf);
        return NULL;
    }
    return pf;
}

void merge_prefetch_ready(merge_prefetch *pf, const merge_plan *p, const int *order, int j) {
    if (!pf) {
        merge_advise_tensor(nth(p, order, j), MADV_POPULATE_READ);
        return;
    }
    pthread_mutex_lock(&pf->mu);
    if (pf->want < j + 1) pf->want = j + 1;
    if (pf->want < j + 2 && j + 2 <= pf->n) pf->want = j + 2;
    if (pf->cur < j) pf->cur = j;
    pthread_cond_broadcast(&pf->cv);
    while (pf->mapped < j + 1) pthread_cond_wait(&pf->cv, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
}

void merge_prefetch_done(merge_prefetch *pf, const merge_plan *p, const int *order, int j) {
    if (!pf) {
        merge_advise_tensor(nth(p, order, j), MADV_DONTNEED);
        return;
    }
    pthread_mutex_lock(&pf->mu);
    if (!pf->done[j]) {
        pf->done[j] = 1;
        pf->pending += input_bytes(nth(p, order, j));
    }
    pthread_cond_broadcast(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
}

void merge_prefetch_stop(merge_prefetch *pf) {
    if (!pf) return;
    pthread_mutex_lock(&pf->mu);
    pf->stop = true;
    pf->want = pf->mapped; /* nothing more to map */
    pthread_cond_broadcast(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->th, NULL);
    pthread_mutex_destroy(&pf->mu);
    pthread_cond_destroy(&pf->cv);
    free(pf->done);
    free(pf->js);
    free(pf->left);
    free(pf);
}
