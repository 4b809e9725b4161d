/* dio.c — O_DIRECT files written at any offset, behind a queue (see dio.h).
 *
 * Whole blocks go into runs: a run is a slot of the ring holding one
 * contiguous, aligned stretch of the file, which grows at either end as
 * adjacent blocks come (callers write a tensor in pieces, forwards or
 * backwards, and the partial blocks between two pieces complete when the
 * second comes). A run is queued for the writers when it is full, when a
 * new run needs its place (the oldest goes), or when the file is closed:
 * the device sees writes of up to DIO_SLOT bytes instead of one per piece
 * and one per 4 KiB block between pieces. Lock order: a file's mu, then the
 * pool's. */
#include "io/dio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/err.h"
#include "util/mem.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define DIO_RUNS 4 /* runs open per file at most */

typedef struct dio_job {
    dio_file *f;
    int slot;
    size_t soff, len; /* bytes [soff, soff + len) of the slot, multiples of DIO_BLOCK */
    uint64_t off;     /* their file offset, aligned */
} dio_job;

struct dio_pool {
    char *ring; /* DIO_SLOTS slots of DIO_SLOT bytes, aligned */
    int free_slot[DIO_SLOTS], nfree;
    dio_job queue[DIO_SLOTS]; /* a job holds a slot: never more than DIO_SLOTS */
    int qhead, qlen;
    int pending; /* jobs queued or being written */
    uint64_t writes, bytes; /* jobs written so far, and their bytes */
    bool stop;
    pthread_mutex_t mu;
    pthread_cond_t work, done; /* a job queued; a job finished (slot freed) */
    pthread_t th[DIO_WRITERS];
    int nth;
};

/* A block of which only some bytes have come. */
typedef struct dio_edge {
    uint64_t blk;
    uint64_t filled;
    char *buf; /* DIO_BLOCK bytes, aligned; zero where nothing came */
    struct dio_edge *next;
} dio_edge;

/* An open run: bytes [soff, soff + len) of slot, file offsets [base, base + len). */
typedef struct dio_run {
    int slot; /* -1: not open */
    size_t soff, len;
    uint64_t base;
    int busy;     /* copies into it under way (outside the lock) */
    uint64_t seq; /* opening order */
} dio_run;

struct dio_file {
    dio_pool *p;
    char *path;
    int fd;       /* O_DIRECT */
    int bfd;      /* an ordinary descriptor, once a direct write was refused (under p->mu) */
    uint64_t size;
    int inflight; /* jobs queued or being written (under p->mu) */
    int err_no;   /* the first failed write's errno (under p->mu) */
    pthread_mutex_t mu;
    pthread_cond_t idle; /* a run's copies finished */
    dio_edge *edges;     /* (under mu) */
    dio_run run[DIO_RUNS];
    uint64_t seq;
    uint64_t sent_lo[DIO_RUNS], sent_hi[DIO_RUNS]; /* the file ranges of the last runs queued */
    int nsent;                                     /* runs queued so far (their ring index) */
};

/* All len bytes of buf written to fd at off; 0 or an errno. */
static int pwrite_full(int fd, const char *buf, size_t len, uint64_t off) {
    while (len) {
        ssize_t k = pwrite(fd, buf, len, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return errno;
        if (k == 0) return EIO;
        buf += k, len -= (size_t)k, off += (uint64_t)k;
    }
    return 0;
}

/* buf (aligned, whole blocks) to f at off: through O_DIRECT, or the
 * ordinary descriptor from the first write the filesystem refused (EINVAL)
 * on. */
static int write_out(dio_file *f, const char *buf, size_t len, uint64_t off) {
    dio_pool *p = f->p;
    pthread_mutex_lock(&p->mu);
    int bfd = f->bfd;
    pthread_mutex_unlock(&p->mu);
    if (bfd < 0) {
        int e = pwrite_full(f->fd, buf, len, off);
        if (e != EINVAL) return e;
        pthread_mutex_lock(&p->mu);
        if (f->bfd < 0) f->bfd = open(f->path, O_WRONLY | O_CLOEXEC);
        bfd = f->bfd;
        e = errno;
        pthread_mutex_unlock(&p->mu);
        if (bfd < 0) return e;
    }
    return pwrite_full(bfd, buf, len, off);
}

static int run_job(dio_pool *p, const dio_job *j) {
    return write_out(j->f, p->ring + (size_t)j->slot * DIO_SLOT + j->soff, j->len, j->off);
}

static void *writer_main(void *arg) {
    dio_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->qlen && !p->stop) pthread_cond_wait(&p->work, &p->mu);
        if (!p->qlen) break;
        dio_job j = p->queue[p->qhead];
        p->qhead = (p->qhead + 1) % DIO_SLOTS;
        p->qlen--;
        pthread_mutex_unlock(&p->mu);
        int e = run_job(p, &j);
        pthread_mutex_lock(&p->mu);
        if (e && !j.f->err_no) j.f->err_no = e;
        p->writes++;
        p->bytes += j.len;
        p->free_slot[p->nfree++] = j.slot;
        p->pending--;
        j.f->inflight--;
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

dio_pool *dio_pool_new(alloy_err *err) {
    dio_pool *p = calloc(1, sizeof *p);
    /* on huge pages: each write pins its slot's pages for the device, a
     * 2 MiB page at a time instead of 512 small ones (ties on the bench:
     * median of 6 1.08 -> 0.98 s, linear 0.72 -> 0.63 s) */
    if (p) p->ring = mem_big_alloc((size_t)DIO_SLOTS * DIO_SLOT);
    if (!p || !p->ring) {
        if (p) free(p);
        alloy_fail(err, "out of memory (direct write buffers)");
        return NULL;
    }
    for (int s = 0; s < DIO_SLOTS; s++) p->free_slot[s] = s;
    p->nfree = DIO_SLOTS;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int t = 0; t < DIO_WRITERS; t++) {
        if (pthread_create(&p->th[t], NULL, writer_main, p)) break;
        p->nth++;
    }
    if (!p->nth) {
        dio_pool_free(p);
        alloy_fail(err, "cannot start the writer threads");
        return NULL;
    }
    return p;
}

void dio_pool_stats(dio_pool *p, uint64_t *writes, uint64_t *bytes) {
    pthread_mutex_lock(&p->mu);
    *writes = p->writes;
    *bytes = p->bytes;
    pthread_mutex_unlock(&p->mu);
}

void dio_pool_free(dio_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int t = 0; t < p->nth; t++) pthread_join(p->th[t], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}

/* The file made size bytes long with its blocks allocated (unwritten)
 * where the filesystem can: a direct write into a hole allocates, which
 * ext4 does under the inode's exclusive lock held until the write
 * completes, so the writer threads would take turns on the device; into
 * allocated blocks they write side by side under the shared lock. Else
 * (no fallocate here) only the size is set. 0, or -1 with errno. */
static int presize(int fd, uint64_t size) {
    if (size && !fallocate(fd, 0, 0, (off_t)size)) return 0;
    return ftruncate(fd, (off_t)size);
}

dio_file *dio_open(dio_pool *p, const char *path, uint64_t size, alloy_err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (e != EINVAL) alloy_fail(err, "%s: cannot create: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    dio_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (!f || !f->path || presize(fd, size)) {
        int e = f && f->path ? errno : ENOMEM;
        alloy_fail(err, "%s: cannot create: %s", path, strerror(e));
        if (f) free(f->path);
        free(f);
        close(fd);
        errno = e;
        return NULL;
    }
    f->p = p;
    f->fd = fd;
    f->bfd = -1;
    f->size = size;
    for (int r = 0; r < DIO_RUNS; r++) f->run[r].slot = -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->idle, NULL);
    return f;
}

/* Queue run r (no copies under way) for the writers and close it. Under
 * f->mu. */
static void queue_job(dio_file *f, int slot, size_t soff, size_t len, uint64_t base) {
    dio_pool *p = f->p;
    pthread_mutex_lock(&p->mu);
    p->queue[(p->qhead + p->qlen) % DIO_SLOTS] = (dio_job){f, slot, soff, len, base};
    p->qlen++;
    p->pending++;
    f->inflight++;
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);
    f->sent_lo[f->nsent % DIO_RUNS] = base;
    f->sent_hi[f->nsent % DIO_RUNS] = base + len;
    f->nsent++;
}

static void queue_run(dio_file *f, dio_run *r) {
    queue_job(f, r->slot, r->soff, r->len, r->base);
    r->slot = -1;
}

/* Where in its slot a new run for [x, x + n) starts. A writer streams a
 * tensor forwards or backwards, a stage at a time (half a slot, on the
 * bench): a run that continues one just before it (open without room, or
 * queued) starts at the slot's front, one that continues one just after it
 * ends at the slot's end, so that both fill their slot; with neither, it
 * starts in the middle, with room to grow either way. Placed at the middle
 * every time, each run of a stream held half a slot: the ring's capacity
 * and the size of the writes were halved. Under f->mu. */
static size_t run_start(const dio_file *f, size_t n, uint64_t x) {
    bool after = false, before = false;
    for (int i = 0; i < DIO_RUNS; i++) {
        const dio_run *r = &f->run[i];
        if (r->slot >= 0) after |= r->base + r->len == x, before |= x + n == r->base;
        if (i < f->nsent) after |= f->sent_hi[i] == x, before |= x + n == f->sent_lo[i];
    }
    if (after) return 0;
    if (before) return DIO_SLOT - n;
    return (DIO_SLOT - n) / 2 / DIO_BLOCK * DIO_BLOCK;
}

/* A free slot of the ring, waiting while one is in flight; -1 with *e the
 * file's error, or *e 0 when none is free and none in flight (every slot
 * held by open runs or streams). */
static int take_slot(dio_file *f, int *e) {
    dio_pool *p = f->p;
    pthread_mutex_lock(&p->mu);
    while (!p->nfree && !f->err_no && p->pending) pthread_cond_wait(&p->done, &p->mu);
    *e = f->err_no;
    int slot = *e || !p->nfree ? -1 : p->free_slot[--p->nfree];
    pthread_mutex_unlock(&p->mu);
    return slot;
}

/* Where n bytes (whole blocks, at most DIO_SLOT) for file offset x go: the
 * end or the front of an open run they adjoin, or a new run (a free slot:
 * the oldest idle run is queued to make room, and this waits while every
 * slot is in flight). The run is marked busy; *dst is the place in the
 * ring. NULL when an earlier write failed (its errno in *e), or, *e 0, when
 * no slot is free and none is in flight (the other files hold them all in
 * open runs): the caller writes these bytes itself. Under f->mu. */
static dio_run *claim(dio_file *f, size_t n, uint64_t x, char **dst, int *e) {
    dio_pool *p = f->p;
    for (int i = 0; i < DIO_RUNS; i++) {
        dio_run *r = &f->run[i];
        if (r->slot < 0) continue;
        if (r->base + r->len == x && r->soff + r->len + n <= DIO_SLOT) {
            *dst = p->ring + (size_t)r->slot * DIO_SLOT + r->soff + r->len;
            r->len += n;
            r->busy++;
            return r;
        }
        if (x + n == r->base && r->soff >= n) {
            r->soff -= n, r->base -= n, r->len += n;
            *dst = p->ring + (size_t)r->slot * DIO_SLOT + r->soff;
            r->busy++;
            return r;
        }
        /* a run these bytes continue but cannot join is done: out now */
        if (!r->busy && (r->base + r->len == x || x + n == r->base)) queue_run(f, r);
    }
    dio_run *r = NULL;
    for (;;) {
        dio_run *old = NULL;
        for (int i = 0; i < DIO_RUNS && !r; i++) {
            if (f->run[i].slot < 0) r = &f->run[i];
            else if (!f->run[i].busy && (!old || f->run[i].seq < old->seq)) old = &f->run[i];
        }
        if (r) break;
        if (old) {
            queue_run(f, old);
            continue;
        }
        pthread_cond_wait(&f->idle, &f->mu); /* every run busy: wait for a copy to end */
    }
    int slot = take_slot(f, e);
    if (slot < 0) {
        r->slot = -1;
        return NULL;
    }
    size_t soff = run_start(f, n, x);
    *r = (dio_run){.slot = slot, .soff = soff, .len = n, .base = x, .busy = 1, .seq = f->seq++};
    *dst = p->ring + (size_t)slot * DIO_SLOT + soff;
    return r;
}

/* n bytes (a multiple of DIO_BLOCK) of src into dst (DIO_BLOCK aligned)
 * with non-temporal stores where the CPU has them: the device reads the
 * ring from memory, so caching it only evicts the merge's inputs (and a
 * cached store first reads the line it overwrites). */
static void copy_out(char *restrict dst, const char *restrict src, size_t n) {
#if defined(__AVX512F__)
    for (size_t i = 0; i < n; i += 64)
        _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

/* Copy n bytes (whole blocks, at most DIO_SLOT) of src for offset x into
 * a run; the copy itself runs outside the lock. */
static int place(dio_file *f, const char *src, size_t n, uint64_t x, alloy_err *err) {
    char *dst;
    int e = 0;
    pthread_mutex_lock(&f->mu);
    dio_run *r = claim(f, n, x, &dst, &e);
    pthread_mutex_unlock(&f->mu);
    if (!r && !e) { /* no slot to be had: through a buffer of its own, now */
        char *own = aligned_alloc(DIO_BLOCK, n);
        if (!own) return alloy_fail(err, "%s: out of memory", f->path);
        memcpy(own, src, n);
        e = write_out(f, own, n, x);
        free(own);
        if (e) return alloy_fail(err, "%s: write failed: %s", f->path, strerror(e));
        return 0;
    }
    if (!r) return alloy_fail(err, "%s: write failed: %s", f->path, strerror(e));
    copy_out(dst, src, n);
    pthread_mutex_lock(&f->mu);
    if (!--r->busy) {
        pthread_cond_broadcast(&f->idle);
        if (r->soff == 0 && r->len == DIO_SLOT) queue_run(f, r); /* full */
    }
    pthread_mutex_unlock(&f->mu);
    return 0;
}

/* The bytes of block blk that lie inside the file. */
static uint64_t block_bytes(const dio_file *f, uint64_t blk) {
    uint64_t at = blk * DIO_BLOCK;
    return f->size - at < DIO_BLOCK ? f->size - at : DIO_BLOCK;
}

/* n bytes of src at off, all inside one block, into that block's edge;
 * *done is the edge, taken out, once all of the block's bytes have come
 * (else NULL). */
static int edge_add(dio_file *f, const char *src, size_t n, uint64_t off, dio_edge **done, alloy_err *err) {
    uint64_t blk = off / DIO_BLOCK;
    *done = NULL;
    pthread_mutex_lock(&f->mu);
    dio_edge **pe = &f->edges;
    while (*pe && (*pe)->blk != blk) pe = &(*pe)->next;
    dio_edge *g = *pe;
    if (!g) {
        g = calloc(1, sizeof *g);
        if (g && !(g->buf = aligned_alloc(DIO_BLOCK, DIO_BLOCK))) free(g), g = NULL;
        if (!g) {
            pthread_mutex_unlock(&f->mu);
            return alloy_fail(err, "%s: out of memory", f->path);
        }
        memset(g->buf, 0, DIO_BLOCK);
        g->blk = blk;
        g->next = f->edges;
        f->edges = g;
        pe = &f->edges;
    }
    memcpy(g->buf + off % DIO_BLOCK, src, n);
    g->filled += n;
    /* decided under the lock: once the edge is out of the list, whoever
     * completed it frees it, and it must not be read again here */
    uint64_t want = block_bytes(f, blk), filled = g->filled;
    if (filled >= want) *pe = g->next;
    pthread_mutex_unlock(&f->mu);
    if (filled > want) {
        free(g->buf);
        free(g);
        return alloy_fail(err, "%s: bytes near offset %llu written twice", f->path, (unsigned long long)off);
    }
    if (filled == want) *done = g;
    return 0;
}

/* A partial piece [off, off + n) inside one block: into its edge, and the
 * block into a run once complete. */
static int partial(dio_file *f, const char *src, size_t n, uint64_t off, alloy_err *err) {
    dio_edge *g;
    if (!n) return 0;
    if (edge_add(f, src, n, off, &g, err)) return -1;
    if (!g) return 0;
    int rc = place(f, g->buf, DIO_BLOCK, g->blk * DIO_BLOCK, err);
    free(g->buf);
    free(g);
    return rc;
}

int dio_write(dio_file *f, const void *data, size_t len, uint64_t off, alloy_err *err) {
    if (off > f->size || len > f->size - off)
        return alloy_fail(err, "%s: bytes %llu..%llu past its size %llu", f->path, (unsigned long long)off,
                          (unsigned long long)(off + len), (unsigned long long)f->size);
    const char *src = data;
    uint64_t end = off + len;
    uint64_t a = (off + DIO_BLOCK - 1) / DIO_BLOCK * DIO_BLOCK, b = end / DIO_BLOCK * DIO_BLOCK;
    if (a >= b) { /* no whole block: one or two partial ones */
        uint64_t cut = a < end ? a : end;
        if (partial(f, src, (size_t)(cut - off), off, err)) return -1;
        return partial(f, src + (cut - off), (size_t)(end - cut), cut, err);
    }
    /* the partial blocks first: one that completes joins the run of the
     * piece next to it, and then this piece's blocks join it too, whether
     * the pieces come forwards or backwards */
    if (partial(f, src, (size_t)(a - off), off, err) || partial(f, src + (b - off), (size_t)(end - b), b, err))
        return -1;
    if (b - a <= DIO_SLOT) return place(f, src + (a - off), (size_t)(b - a), a, err);
    for (uint64_t x = a; x < b;) {
        size_t n = b - x < DIO_SLOT ? (size_t)(b - x) : DIO_SLOT;
        if (place(f, src + (x - off), n, x, err)) return -1;
        x += n;
    }
    return 0;
}

/* ---- streams: bytes made straight into the ring ---- */

void dio_stream_init(dio_stream *s, dio_file *f) {
    *s = (dio_stream){.f = f, .slot = -1};
}

static void stream_release(dio_file *f, int slot) {
    dio_pool *p = f->p;
    pthread_mutex_lock(&p->mu);
    p->free_slot[p->nfree++] = slot;
    pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->mu);
}

/* The bytes [lo, hi) that s made in its slot, out: the partial blocks at
 * either end into their edges (copied, so first: once queued, the slot may
 * be reused), the whole blocks between them queued from the slot itself;
 * the slot is s's no more. */
static int stream_emit(dio_stream *s, uint64_t lo, uint64_t hi, alloy_err *err) {
    dio_file *f = s->f;
    const char *mem = f->p->ring + (size_t)s->slot * DIO_SLOT;
    uint64_t a = (lo + DIO_BLOCK - 1) / DIO_BLOCK * DIO_BLOCK, b = hi / DIO_BLOCK * DIO_BLOCK;
    /* [lo, cut) and [tail, hi): the partial pieces (with no whole block
     * between them, the one or two partial blocks there are) */
    uint64_t cut = a < hi ? a : hi, tail = b > cut ? b : cut;
    int rc = partial(f, mem + (lo - s->fb), (size_t)(cut - lo), lo, err);
    if (!rc) rc = partial(f, mem + (tail - s->fb), (size_t)(hi - tail), tail, err);
    if (rc || a >= b) {
        stream_release(f, s->slot);
    } else {
#if defined(__AVX512F__)
        _mm_sfence(); /* the kernels' non-temporal stores, before the device reads them */
#endif
        pthread_mutex_lock(&f->mu);
        queue_job(f, s->slot, (size_t)(a - s->fb), (size_t)(b - a), a);
        pthread_mutex_unlock(&f->mu);
    }
    s->slot = -1;
    return rc;
}

int dio_stream_end(dio_stream *s, alloy_err *err) {
    if (s->slot < 0) return 0;
    return stream_emit(s, s->own, s->end, err);
}

void dio_stream_abandon(dio_stream *s) {
    if (s->slot >= 0) stream_release(s->f, s->slot);
    s->slot = -1;
}

char *dio_stream_room(dio_stream *s, uint64_t x, size_t n, alloy_err *err) {
    dio_file *f = s->f;
    s->refused = false;
    if (x > f->size || n > f->size - x) {
        alloy_fail(err, "%s: bytes %llu..%llu past its size %llu", f->path, (unsigned long long)x,
                   (unsigned long long)(x + n), (unsigned long long)f->size);
        return NULL;
    }
    if (n > DIO_STREAM_MAX) {
        alloy_fail(err, "%s: %zu bytes at once (at most %zu)", f->path, n, (size_t)DIO_STREAM_MAX);
        return NULL;
    }
    if (s->slot >= 0 && x != s->end && dio_stream_end(s, err)) return NULL; /* a new stretch */
    int e = 0;
    if (s->slot < 0) {
        if ((s->slot = take_slot(f, &e)) < 0) {
            if (e) alloy_fail(err, "%s: write failed: %s", f->path, strerror(e));
            else s->refused = true;
            return NULL;
        }
        s->fb = x / DIO_BLOCK * DIO_BLOCK;
        s->own = s->end = x;
    } else if (x + n - s->fb > DIO_SLOT) {
        /* the slot is full: its whole blocks out, the block that x falls in
         * carried to the front of the next slot (so the stream has partial
         * blocks only where it starts and ends) */
        uint64_t nb = x / DIO_BLOCK * DIO_BLOCK;
        char carry[DIO_BLOCK];
        const char *mem = f->p->ring + (size_t)s->slot * DIO_SLOT;
        memcpy(carry, mem + (nb - s->fb), (size_t)(x - nb));
        if (stream_emit(s, s->own, nb, err)) return NULL;
        if ((s->slot = take_slot(f, &e)) < 0) {
            /* the carried bytes go the ordinary way, and the stream starts again at x */
            if (x > nb && partial(f, carry, (size_t)(x - nb), nb, err)) return NULL;
            if (e) alloy_fail(err, "%s: write failed: %s", f->path, strerror(e));
            else s->refused = true;
            return NULL;
        }
        s->fb = s->own = nb;
        memcpy(f->p->ring + (size_t)s->slot * DIO_SLOT, carry, (size_t)(x - nb));
    }
    char *at = f->p->ring + (size_t)s->slot * DIO_SLOT + (x - s->fb);
    s->end = x + n;
    return at;
}

/* Wait until none of f's jobs is queued or being written: its first
 * failed write's errno, or 0. */
static int drain(dio_file *f) {
    dio_pool *p = f->p;
    pthread_mutex_lock(&p->mu);
    while (f->inflight) pthread_cond_wait(&p->done, &p->mu);
    int e = f->err_no;
    pthread_mutex_unlock(&p->mu);
    return e;
}

static void file_free(dio_file *f) {
    for (dio_edge *g = f->edges, *nx; g; g = nx) {
        nx = g->next;
        free(g->buf);
        free(g);
    }
    pthread_cond_destroy(&f->idle);
    pthread_mutex_destroy(&f->mu);
    free(f->path);
    free(f);
}

void dio_flush(dio_file *f) {
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < DIO_RUNS; i++) {
        dio_run *r = &f->run[i];
        while (r->slot >= 0 && r->busy) pthread_cond_wait(&f->idle, &f->mu);
        if (r->slot >= 0) queue_run(f, r);
    }
    pthread_mutex_unlock(&f->mu);
}

int dio_close(dio_file *f, alloy_err *err) {
    int rc = 0;
    /* what is left: the short last block, or blocks with bytes never written */
    while (!rc && f->edges) {
        dio_edge *g = f->edges;
        f->edges = g->next;
        rc = place(f, g->buf, DIO_BLOCK, g->blk * DIO_BLOCK, err);
        free(g->buf);
        free(g);
    }
    dio_flush(f);
    int e = drain(f);
    if (!rc && e) rc = alloy_fail(err, "%s: write failed: %s", f->path, strerror(e));
    if (!rc && (ftruncate(f->fd, (off_t)f->size) || fsync(f->fd) || (f->bfd >= 0 && fsync(f->bfd))))
        rc = alloy_fail(err, "%s: write failed: %s", f->path, strerror(errno));
    if (close(f->fd) && !rc) rc = alloy_fail(err, "%s: write failed: %s", f->path, strerror(errno));
    if (f->bfd >= 0 && close(f->bfd) && !rc) rc = alloy_fail(err, "%s: write failed: %s", f->path, strerror(errno));
    file_free(f);
    return rc;
}

void dio_abort(dio_file *f) {
    if (!f) return;
    dio_pool *p = f->p;
    pthread_mutex_lock(&f->mu);
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < DIO_RUNS; i++) /* open runs: their slots back, unwritten */
        if (f->run[i].slot >= 0) p->free_slot[p->nfree++] = f->run[i].slot, f->run[i].slot = -1;
    pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&f->mu);
    drain(f);
    close(f->fd);
    if (f->bfd >= 0) close(f->bfd);
    file_free(f);
}
