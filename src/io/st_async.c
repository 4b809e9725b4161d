/* st_async.c — background tensor writes (see st_async.h). */
#include "io/st_async.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

struct st_async {
    st_writer *w;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool busy, quit;
    int index;
    const void *data;
    int rc;        /* result of the last write */
    alloy_err err; /* its message */
};

static void *writer_main(void *p) {
    st_async *a = p;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->busy && !a->quit) pthread_cond_wait(&a->cv, &a->mu);
        if (!a->busy) break;
        int i = a->index;
        const void *data = a->data;
        pthread_mutex_unlock(&a->mu);
        alloy_err e;
        int rc = st_writer_put(a->w, i, data, &e);
        pthread_mutex_lock(&a->mu);
        if (rc && !a->rc) {
            a->rc = rc;
            a->err = e;
        }
        a->busy = false;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

st_async *st_async_start(st_writer *w, alloy_err *err) {
    st_async *a = calloc(1, sizeof *a);
    if (!a) {
        alloy_fail(err, "out of memory");
        return NULL;
    }
    a->w = w;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    if (pthread_create(&a->thread, NULL, writer_main, a)) {
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a);
        alloy_fail(err, "cannot start the writer thread");
        return NULL;
    }
    return a;
}

int st_async_wait(st_async *a, alloy_err *err) {
    pthread_mutex_lock(&a->mu);
    while (a->busy) pthread_cond_wait(&a->cv, &a->mu);
    int rc = a->rc;
    if (rc && err) *err = a->err;
    pthread_mutex_unlock(&a->mu);
    return rc ? -1 : 0;
}

int st_async_put(st_async *a, int i, const void *data, alloy_err *err) {
    if (st_async_wait(a, err)) return -1;
    pthread_mutex_lock(&a->mu);
    a->index = i;
    a->data = data;
    a->busy = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

int st_async_stop(st_async *a, alloy_err *err) {
    int rc = st_async_wait(a, err);
    pthread_mutex_lock(&a->mu);
    a->quit = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a);
    return rc;
}
