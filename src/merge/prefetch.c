/* prefetch.c — maps the next tensor's input pages and drops the last
 * one's on a helper thread (see prefetch.h). */
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

void merge_advise_tensor(const plan_tensor *pt, int advice) {
    if (!pt->merge) {
        merge_advise(pt->copy.t, advice);
        return;
    }
    if (pt->has_base) merge_advise(pt->base.t, advice);
    for (int i = 0; i < pt->k; i++) merge_advise(pt->inputs[i].t, advice);
}

struct merge_prefetch {
    const merge_plan *p;
    const int *order;
    int n;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* the thread waits for work on it, the caller for `mapped` */
    int want;            /* map tensors [0, want) */
    int mapped;          /* tensors [0, mapped) are mapped */
    int drop, dropped;   /* drop tensors [dropped, drop) */
    bool stop;
};

static const plan_tensor *nth(const merge_plan *p, const int *order, int j) {
    return &p->tensors[order ? order[j] : j];
}

static void *prefetch_main(void *arg) {
    merge_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        if (pf->mapped < pf->want) { /* mapping first: the merge may be waiting for it */
            int j = pf->mapped;
            pthread_mutex_unlock(&pf->mu);
            merge_advise_tensor(nth(pf->p, pf->order, j), MADV_POPULATE_READ);
            pthread_mutex_lock(&pf->mu);
            pf->mapped = j + 1;
            pthread_cond_broadcast(&pf->cv);
        } else if (pf->dropped < pf->drop) {
            int j = pf->dropped;
            pthread_mutex_unlock(&pf->mu);
            merge_advise_tensor(nth(pf->p, pf->order, j), MADV_DONTNEED);
            pthread_mutex_lock(&pf->mu);
            pf->dropped = j + 1;
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
    merge_prefetch *pf = calloc(1, sizeof *pf);
    if (!pf) return NULL;
    *pf = (merge_prefetch){.p = p, .order = order, .n = n, .want = n > 0 ? 1 : 0};
    pthread_mutex_init(&pf->mu, NULL);
    pthread_cond_init(&pf->cv, NULL);
    if (pthread_create(&pf->th, NULL, prefetch_main, pf)) {
        pthread_mutex_destroy(&pf->mu);
        pthread_cond_destroy(&pf->cv);
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
    if (pf->drop < j + 1) pf->drop = j + 1;
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
    free(pf);
}
