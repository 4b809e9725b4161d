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
    char pad[64];   /* keep the threads' hot fields apart */
} stage;

struct merge_sink {
    int threads;
    stage *st;
    st_writer *w;
    int tensor;
    alloy_dtype dt;
    size_t es;
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
    for (int t = 0; s->st && t < s->threads; t++) free(s->st[t].buf);
    free(s->st);
    free(s);
}

void merge_sink_begin(merge_sink *s, st_writer *w, int i, alloy_dtype dt) {
    s->w = w;
    s->tensor = i;
    s->dt = dt;
    s->es = dtype_size(dt);
    for (int t = 0; t < s->threads; t++) s->st[t].len = 0, s->st[t].failed = 0;
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
    if (g->len && (g->lo + g->len != lo || g->len + m > cap)) flush(s, g);
    if (!g->len) g->lo = lo;
    size_t bad = vec_first_nonfinite(v, m);
    size_t done = 0;
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
    if (g->len && (g->lo + g->len != lo || (g->len + m) * s->es > STAGE_BYTES)) flush(s, g);
    if (!g->len) g->lo = lo;
    void *p = g->buf + g->len * s->es;
    g->len += m;
    return p;
}

alloy_dtype merge_sink_dtype(const merge_sink *s) { return s->dt; }

int merge_sink_end(merge_sink *s, alloy_err *err) {
    int rc = 0;
    for (int t = 0; t < s->threads; t++) {
        stage *g = &s->st[t];
        flush(s, g);
        if (g->failed && !rc) {
            if (err) *err = g->err;
            rc = -1;
        }
    }
    if (!rc) st_writer_mark_done(s->w, s->tensor);
    return rc;
}
