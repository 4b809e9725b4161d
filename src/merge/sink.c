/* sink.c — per-thread staged writes of streamed results (see sink.h). */
#include "merge/sink.h"

#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merge/vec.h"
#include "util/dtype.h"
#include "util/err.h"

#define STAGE_BYTES ((size_t)1 << 20)

typedef struct stage {
    char *buf;
    size_t lo, len; /* staged: elements [lo, lo + len) */
    int failed;
    alloy_err err;
    dio_stream ds;  /* straight into the ring (when the sink has it) */
    bool direct;    /* results go to ds, not buf */
    char pad[64];   /* keep the threads' hot fields apart */
} stage;

struct merge_sink {
    int threads;
    stage *st;
    st_writer *w;
    int tensor;
    alloy_dtype dt;
    size_t es;
    uint64_t fbase; /* with direct stages: the tensor's offset in its file */
};

merge_sink *merge_sink_new(int threads) {
    merge_sink *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->threads = threads > 0 ? threads : 1;
    s->st = calloc((size_t)s->threads, sizeof *s->st);
    for (int t = 0; s->st && t < s->threads; t++)
        if (!(s->st[t].buf = malloc(STAGE_BYTES))) {
            merge_sink_free(s);
            return NULL;
        }
    if (!s->st) {
        free(s);
        return NULL;
    }
    return s;
}

void merge_sink_free(merge_sink *s) {
    if (!s) return;
    for (int t = 0; s->st && t < s->threads; t++) {
        if (s->st[t].direct) dio_stream_abandon(&s->st[t].ds);
        free(s->st[t].buf);
    }
    free(s->st);
    free(s);
}

/* A sink of one thread writes each tensor as one stream of pieces, in
 * order (the executor's lanes, merge/exec.c): then its results go straight
 * into the ring of direct writes (io/dio.h, dio_stream), instead of into a
 * stage and from there by a copy into the ring. Several threads take turns
 * at a tensor's pieces, so each one's stream would break at every turn and
 * leave two partial blocks each time: they stage. */
void merge_sink_begin(merge_sink *s, st_writer *w, int i, alloy_dtype dt) {
    s->w = w;
    s->tensor = i;
    s->dt = dt;
    s->es = dtype_size(dt);
    dio_file *f = s->threads == 1 ? st_writer_dio(w, i, &s->fbase) : NULL;
    for (int t = 0; t < s->threads; t++) {
        stage *g = &s->st[t];
        g->len = 0, g->failed = 0;
        if (g->direct) dio_stream_abandon(&g->ds); /* (a tensor left unfinished) */
        g->direct = f != NULL;
        if (f) dio_stream_init(&g->ds, f);
    }
}

/* Room for elements [lo, lo + m) in g's stream, or NULL: the stream failed
 * (g failed) or found no slot (g stages from now on). */
static void *direct_room(merge_sink *s, stage *g, size_t lo, size_t m) {
    void *p = dio_stream_room(&g->ds, s->fbase + (uint64_t)lo * s->es, m * s->es, &g->err);
    if (!p) {
        if (!g->ds.refused) g->failed = 1;
        dio_stream_abandon(&g->ds); /* (after an error: a slot it may still hold) */
        g->direct = false;
    }
    return p;
}

static void flush(merge_sink *s, stage *g) {
    if (g->len && !g->failed &&
        st_writer_put_part(s->w, s->tensor, (uint64_t)g->lo * s->es, g->buf, g->len * s->es, &g->err))
        g->failed = 1;
    g->len = 0;
}

size_t merge_sink_put(merge_sink *s, size_t lo, const float *v, size_t m) {
    int t = omp_get_thread_num();
    stage *g = &s->st[t < s->threads ? t : 0];
    size_t cap = STAGE_BYTES / s->es;
    size_t bad = vec_first_nonfinite(v, m);
    size_t done = 0, most = DIO_STREAM_MAX / s->es;
    while (g->direct && done < m) {
        size_t part = m - done < most ? m - done : most;
        void *p = direct_room(s, g, lo + done, part);
        if (!p) break;
        dtype_from_f32(v + done, s->dt, p, part);
        done += part;
    }
    if (done == m) return bad;
    if (g->failed) return bad; /* (merge_sink_end reports it) */
    lo += done, v += done, m -= done;
    if (g->len && (g->lo + g->len != lo || g->len + m > cap)) flush(s, g);
    if (!g->len) g->lo = lo;
    done = 0;
    while (done < m) { /* a block larger than the stage goes in pieces */
        size_t part = m - done < cap - g->len ? m - done : cap - g->len;
        dtype_from_f32(v + done, s->dt, g->buf + g->len * s->es, part);
        g->len += part;
        done += part;
        if (g->len == cap) {
            flush(s, g);
            g->lo = lo + done;
        }
    }
    return bad;
}

void *merge_sink_slot(merge_sink *s, size_t lo, size_t m) {
    int t = omp_get_thread_num();
    stage *g = &s->st[t < s->threads ? t : 0];
    if (g->direct && m * s->es <= DIO_STREAM_MAX) {
        void *p = direct_room(s, g, lo, m);
        if (p) return p;
    }
    if (g->failed) return g->buf; /* filled and dropped: merge_sink_end reports the error */
    if (g->len && (g->lo + g->len != lo || (g->len + m) * s->es > STAGE_BYTES)) flush(s, g);
    if (!g->len) g->lo = lo;
    void *p = g->buf + g->len * s->es;
    g->len += m;
    return p;
}

bool merge_sink_direct(const merge_sink *s) {
    int t = omp_get_thread_num();
    return s->st[t < s->threads ? t : 0].direct;
}

alloy_dtype merge_sink_dtype(const merge_sink *s) { return s->dt; }

int merge_sink_end(merge_sink *s, alloy_err *err) {
    int rc = 0;
    for (int t = 0; t < s->threads; t++) {
        stage *g = &s->st[t];
        if (g->direct) {
            if (!g->failed && dio_stream_end(&g->ds, &g->err)) g->failed = 1;
            if (g->failed) dio_stream_abandon(&g->ds);
            g->direct = false;
        }
        flush(s, g);
        if (g->failed && !rc) {
            if (err) *err = g->err;
            rc = -1;
        }
    }
    if (!rc) st_writer_mark_done(s->w, s->tensor);
    return rc;
}
