/* exec.c — the streaming merge executor (see exec.h), and alloy_merge().
 *
 * Two output modes: a dense checkpoint (every output tensor), or for
 * `out: lora` a PEFT adapter of the merged deltas of the adapter-targeted
 * tensors (truncated SVD in merge/svd.c, the directory in io/peft_write.c). */
#include "merge/exec.h"

#include <cblas.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "io/peft_write.h"
#include "io/st_async.h"
#include "merge/prefetch.h"
#include "merge/sink.h"
#include "merge/svd.h"
#include "merge/vec.h"
#include "mix/mod_recipe.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/mem.h"
#include "util/fs.h"
#include "util/rng.h"

/* Tensors below this many elements are merged on one thread: waking the
 * team costs more than their work (the bench's biases and norms, 121 of
 * them at most 896 elements, took 33-57 ms of a 0.9 s ties merge). */
#define SERIAL_BELOW ((size_t)1 << 15)

void alloy_merge_options_default(alloy_merge_options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->out_shard_bytes = 5000000000ull;
    opt->copy_tokenizer = 1;
}

/* Tell the kernel what we will read next, and drop what we are done with, so
 * that resident memory stays near the working set instead of the models. */
/* Input → f32 in buf, with its LoRA applied; errors name file and tensor. */
static int load_input(const merge_plan *p, const plan_input *in, float *buf, int threads, alloy_err *err) {
    const st_tensor *t = in->t;
    const plan_model *m = &p->models[in->model];
    size_t n = (size_t)t->numel;
    size_t es = dtype_size(t->dtype);
    int64_t bad = -1;
    size_t chunk = 1 << 16;
    size_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : bad)
    for (size_t c = 0; c < nchunks; c++) {
        size_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        int64_t b = dtype_to_f32((const char *)t->data + lo * es, t->dtype, buf + lo, len);
        if (b >= 0 && (bad < 0 || (int64_t)lo + b > bad)) bad = (int64_t)(lo + (size_t)b);
    }
    if (bad >= 0)
        return alloy_fail(err, "%s: tensor '%s': non-finite value (%g) at element %lld", m->st.files[t->file].path,
                          t->name, (double)buf[bad], (long long)bad);
    if (in->lora) {
        if (t->ndim != 2) return alloy_fail(err, "%s: LoRA on a %d-D tensor", t->name, t->ndim);
        return peft_apply(&m->lora, in->lora, buf, t->shape[0], t->shape[1], err);
    }
    return 0;
}

static int write_side_files(const merge_plan *p, const char *dir, const alloy_merge_options *opt,
                            alloy_err *err) {
    if (ckpt_write_config(dir, p->out_config, err)) return -1;
    if (opt->copy_tokenizer && ckpt_copy_side_files(p->tokenizer_dir, dir, NULL, err)) return -1;
    char *path = fs_join(dir, "alloy_recipe.yml");
    int rc = fs_write_file(path, p->rc.text, strlen(p->rc.text), err);
    free(path);
    if (rc) return -1;
    /* A short model card. */
    size_t cap = 8192 + (size_t)p->nmodels * 1024, k = 0;
    char *card = malloc(cap);
    if (!card) return alloy_fail(err, "out of memory");
    k += (size_t)snprintf(card + k, cap - k,
                          "---\nlibrary_name: transformers\ntags:\n- alloy\n- merge\n---\n# Merged model\n\n"
                          "This model was produced by [alloy](https://example.invalid/alloy) %s with the `%s` "
                          "merge method.\n\n",
                          ALLOY_VERSION, p->method->name);
    if (p->base >= 0) k += (size_t)snprintf(card + k, cap - k, "Base model: `%s`\n\n", p->models[p->base].ref);
    k += (size_t)snprintf(card + k, cap - k, "Models merged:\n\n");
    for (int i = 0; i < p->nmodels && k < cap; i++)
        if (i != p->base) k += (size_t)snprintf(card + k, cap - k, "- `%s`\n", p->models[i].ref);
    if (k < cap)
        k += (size_t)snprintf(card + k, cap - k, "\n## Recipe\n\nThe recipe is in `alloy_recipe.yml`:\n\n```yaml\n");
    path = fs_join(dir, "README.md");
    size_t tl = strlen(p->rc.text);
    char *full = malloc(k + tl + 16);
    if (full) {
        memcpy(full, card, k);
        memcpy(full + k, p->rc.text, tl);
        const char *fence = tl && p->rc.text[tl - 1] == '\n' ? "```\n" : "\n```\n";
        memcpy(full + k + tl, fence, strlen(fence) + 1);
        rc = fs_write_file(path, full, strlen(full), err);
    } else {
        rc = alloy_fail(err, "out of memory");
    }
    free(full);
    free(card);
    free(path);
    return rc;
}

/* Buffers of the executor, grown lazily to the largest tensor. */
typedef struct work {
    size_t maxn;
    int maxk;
    float **x;     /* [maxk] inputs */
    float *base;   /* base input (or, for out: lora, the delta base) */
    float *out;    /* merged tensor */
    void *packed[2]; /* output dtype: one being filled, one being written */
    merge_src *src; /* [maxk] sources handed to the method */
    void *scratch; /* merge_call.work */
    size_t scratch_bytes;
} work;

static int work_init(work *w, const merge_plan *p, alloy_err *err) {
    memset(w, 0, sizeof *w);
    w->maxn = 1;
    w->maxk = 1;
    for (int i = 0; i < p->ntensors; i++) {
        const plan_tensor *pt = &p->tensors[i];
        if ((size_t)pt->numel > w->maxn) w->maxn = (size_t)pt->numel;
        if (pt->k > w->maxk) w->maxk = pt->k;
    }
    w->x = calloc((size_t)w->maxk, sizeof *w->x);
    return w->x ? 0 : alloy_fail(err, "out of memory");
}

static void work_free(work *w) {
    for (int j = 0; w->x && j < w->maxk; j++) free(w->x[j]);
    free(w->x);
    free(w->base);
    free(w->out);
    free(w->packed[0]);
    free(w->packed[1]);
    free(w->scratch);
    free(w->src);
}

/* The source of an input for a streaming method: its bytes where they lie,
 * or (with a LoRA applied) an f32 copy in buf. */
static int input_src(const merge_plan *p, const plan_input *in, float *buf, int threads, merge_src *src,
                     alloy_err *err) {
    if (!in->lora) {
        *src = (merge_src){in->t->data, in->t->dtype};
        return 0;
    }
    *src = (merge_src){buf, ALLOY_F32};
    return load_input(p, in, buf, threads, err);
}

/* After MERGE_NONFINITE_INPUT: find the input at fault and name it. */
static int name_nonfinite(const merge_plan *p, const plan_tensor *pt, float *buf, int threads, alloy_err *err) {
    if (pt->has_base && load_input(p, &pt->base, buf, threads, err)) return -1;
    for (int j = 0; j < pt->k; j++)
        if (load_input(p, &pt->inputs[j], buf, threads, err)) return -1;
    return alloy_fail(err, "tensor '%s': non-finite input value", pt->name);
}

/* First non-finite element of out[0..n), or n. */
static size_t first_nonfinite(const float *out, size_t n, int threads) {
    size_t bad = n;
#pragma omp parallel for num_threads(threads) reduction(min : bad)
    for (size_t e = 0; e < n; e++)
        if (!(out[e] - out[e] == 0.0f) && e < bad) bad = e;
    return bad;
}

/* Load (or, for a streaming method, point at) the inputs of merged tensor
 * pt and run the method: into the output file through `sink` when given (a
 * streaming method, which checks the result itself), else into w->out (f32,
 * checked for non-finite values here for out: lora; exec_dense checks while
 * packing).
 * w->base holds the base input when pt->has_base and the method does not
 * stream. */
static int merge_tensor(const merge_plan *p, const plan_tensor *pt, work *w, const alloy_merge_options *opt,
                        int threads, merge_sink *sink, alloy_err *err) {
    size_t n = (size_t)pt->numel;
    bool streams = p->method->streams;
    if (n < SERIAL_BELOW) threads = 1;
    if (!w->out) {
        w->out = mem_big_alloc(sizeof(float) * w->maxn);
        w->base = mem_big_alloc(sizeof(float) * w->maxn);
        w->src = calloc((size_t)w->maxk, sizeof *w->src);
        /* the methods' scratch: room for TIES-style masks and keys; only the
         * pages a method touches become resident */
        w->scratch_bytes = (2 * sizeof(float) + (size_t)w->maxk) * w->maxn + 1;
        w->scratch = mem_big_alloc(w->scratch_bytes);
        if (!w->out || !w->base || !w->src || !w->scratch) return alloy_fail(err, "out of memory");
    }
    merge_src base_src = {0};
    for (int j = 0; j < pt->k; j++) {
        bool need = !streams || pt->inputs[j].lora;
        if (need && !w->x[j] && !(w->x[j] = mem_big_alloc(sizeof(float) * w->maxn)))
            return alloy_fail(err, "out of memory");
        if (streams ? input_src(p, &pt->inputs[j], w->x[j], threads, &w->src[j], err)
                    : load_input(p, &pt->inputs[j], w->x[j], threads, err))
            return -1;
        if (!streams) w->src[j] = (merge_src){w->x[j], ALLOY_F32};
    }
    if (pt->has_base) {
        if (streams ? input_src(p, &pt->base, w->base, threads, &base_src, err)
                    : load_input(p, &pt->base, w->base, threads, err))
            return -1;
        if (!streams) base_src = (merge_src){w->base, ALLOY_F32};
    }
    merge_call call = {
        .tensor_name = pt->name,
        .ndim = pt->ndim,
        .shape = pt->shape,
        .n = n,
        .base = pt->has_base && !streams ? w->base : NULL,
        .k = pt->k,
        .x = streams ? NULL : (const float *const *)w->x,
        .src = w->src,
        .base_src = base_src,
        .work = w->scratch,
        .work_bytes = w->scratch_bytes,
        .gparam = pt->gparam,
        .mparam = pt->mparam,
        .nparams = p->method->nparams,
        .seed = rng_mix64(opt->seed ^ rng_hash_str(pt->name)),
        .threads = threads,
        .sink = sink,
    };
    int rc = p->method->merge(&call, w->out, err);
    if (rc == MERGE_NONFINITE_INPUT) return name_nonfinite(p, pt, w->out, threads, err);
    if (rc) return -1;
    size_t bad = p->out_lora ? first_nonfinite(w->out, n, threads) : n; /* dense: checked while packing */
    if (bad < n)
        return alloy_fail(err, "tensor '%s': the %s merge produced a non-finite value at element %zu", pt->name,
                          p->method->name, bad);
    return 0;
}

/* out (n floats) into packed in dtype dt, and the first non-finite element
 * of out (n when none): one pass for both. */
static size_t pack_checked(const float *out, alloy_dtype dt, void *packed, size_t n, int threads) {
    size_t es = dtype_size(dt), chunk = 1 << 14, bad = n;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : bad)
    for (size_t lo = 0; lo < n; lo += chunk) {
        size_t len = n - lo < chunk ? n - lo : chunk;
        const float *o = out + lo;
        size_t at = vec_first_nonfinite(o, len);
        if (at < len && lo + at < bad) bad = lo + at;
        dtype_from_f32(o, dt, (char *)packed + lo * es, len);
    }
    return bad;
}


/* What the tensors of a dense merge share: the plan and options, the
 * writer and its queue, the prefetcher, and the progress so far. */
typedef struct dense_run {
    const merge_plan *p;
    const alloy_merge_options *opt;
    st_writer *w;
    st_async *aw;
    merge_prefetch *pf;
    int own;            /* tensors [0, own) are mapped in line, not by the prefetcher */
    uint64_t total, done_bytes;
    int ndone;
} dense_run;

/* Tensor i is written: the prefetcher may drop its inputs, and the
 * progress goes on (from either lane: one at a time). */
static void dense_done(dense_run *r, int i, int rc) {
    const plan_tensor *pt = &r->p->tensors[i];
    merge_prefetch_done(r->pf, r->p, NULL, i);
#pragma omp critical(alloy_merge_progress)
    {
        r->ndone++;
        r->done_bytes += (uint64_t)pt->numel * dtype_size(pt->out_dtype);
        if (!rc && r->opt->progress)
            r->opt->progress(r->opt->progress_user, r->ndone, r->p->ntensors, r->done_bytes, r->total);
    }
}

/* Tensor i of a streaming method on `threads` threads, its results
 * through sink s, with work wk; a copied tensor straight from the input
 * mapping, which is dropped right after. */
static int dense_stream(dense_run *r, int i, work *wk, merge_sink *s, int threads, alloy_err *err) {
    const plan_tensor *pt = &r->p->tensors[i];
    if (i < r->own) merge_advise_tensor(pt, MADV_POPULATE_READ);
    merge_prefetch_ready(r->pf, r->p, NULL, i);
    int rc;
    if (!pt->merge) {
        rc = st_async_wait(r->aw, err);
        if (!rc) rc = st_writer_put(r->w, i, pt->copy.t->data, err);
    } else {
        merge_sink_begin(s, r->w, i, pt->out_dtype);
        rc = merge_tensor(r->p, pt, wk, r->opt, threads, s, err);
        if (!rc) rc = merge_sink_end(s, err);
    }
    dense_done(r, i, rc);
    return rc;
}

/* A method with a first pass that writes nothing (TIES, DARE, ...) merges
 * on two lanes of half the threads each, which take the output tensors one
 * by one from a shared counter. The lanes keep the disk busy through every
 * tensor's first pass: an output tensor of LANE_BYTES or more (a 0.5B
 * model's embedding, 272 MB of bf16, comes out of a ties merge pass at
 * about 2 GB/s on two cores, and the disk writes 1.1 GB/s) would otherwise
 * leave it idle through its first pass and be bound by it in its second,
 * while the other lane goes on with the next tensors. On two cores each
 * lane is one thread, so no tensor waits at the barriers between its
 * phases (sample, plan, pass, cuts, merge) for the other thread: on the
 * bench, medians of alternating bench-like rounds, ties 1.20 -> 1.15 s,
 * dare_ties 0.99 -> 0.95 s (before, only a large tensor had a lane of its
 * own). Two tensors of LANE_BYTES or more never merge at once (the second
 * waits), so peak memory stays that of one large tensor. */
#define LANE_BYTES ((uint64_t)128 << 20)

/* LANE_BYTES, or ALLOY_LANE_BYTES from the environment (bytes; 0: never
 * two lanes): for tests, and for trying on a disk of another speed. */
static uint64_t lane_bytes(void) {
    const char *e = getenv("ALLOY_LANE_BYTES");
    if (!e || !*e) return LANE_BYTES;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    return *end ? LANE_BYTES : v ? (uint64_t)v : UINT64_MAX;
}

static bool lane_big(const merge_plan *p, int i, uint64_t big) {
    const plan_tensor *pt = &p->tensors[i];
    return pt->merge && (uint64_t)pt->numel * dtype_size(pt->out_dtype) >= big;
}

/* Whether the merge runs on two lanes. */
static bool two_lanes_on(const merge_plan *p, int threads, uint64_t big) {
    return p->method->streams && p->method->first_pass && threads >= 2 && big != UINT64_MAX && p->ntensors > 1;
}

/* Every tensor on lane A (threads / 2, with wa and sa) or lane B (the
 * rest, wb and sb), whichever takes it first; a lane that fails stops both
 * after their current tensors. The results do not depend on the lanes:
 * every method's output is the same on any number of threads. */
static int two_lanes(dense_run *r, int threads, uint64_t big, work *wa, merge_sink *sa, work *wb, merge_sink *sb,
                     alloy_err *err) {
    int ta = threads / 2, tb = threads - ta, next = 0, stop = 0, rc_a = 0, rc_b = 0;
    alloy_err eb = {0};
    pthread_mutex_t big_mu = PTHREAD_MUTEX_INITIALIZER;
    int levels = omp_get_max_active_levels();
    if (ta > 1 || tb > 1) omp_set_max_active_levels(levels > 2 ? levels : 2);
#pragma omp parallel num_threads(2)
    {
        int me = omp_get_thread_num(), rc = 0;
        while (!rc && !__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
            int j = __atomic_fetch_add(&next, 1, __ATOMIC_ACQ_REL);
            if (j >= r->p->ntensors) break;
            bool b = lane_big(r->p, j, big);
            if (b) pthread_mutex_lock(&big_mu);
            rc = dense_stream(r, j, me ? wb : wa, me ? sb : sa, me ? tb : ta, me ? &eb : err);
            if (b) pthread_mutex_unlock(&big_mu);
        }
        if (rc) __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
        *(me ? &rc_b : &rc_a) = rc;
    }
    omp_set_max_active_levels(levels);
    pthread_mutex_destroy(&big_mu);
    if (rc_a) return rc_a;
    if (rc_b) *err = eb;
    return rc_b;
}

/* Every output tensor: copied, merged by a streaming method straight into
 * the file (sink.h; a large one on a lane of its own beside the next ones),
 * or merged into f32 and packed into one of two buffers while the other is
 * being written (st_async). */
static int exec_dense(const merge_plan *p, const char *out_dir, const alloy_merge_options *opt, int threads,
                      alloy_err *err) {
    st_spec *specs = calloc((size_t)p->ntensors, sizeof *specs);
    uint64_t total = 0;
    if (!specs) return alloy_fail(err, "out of memory");
    for (int i = 0; i < p->ntensors; i++) {
        const plan_tensor *pt = &p->tensors[i];
        specs[i].name = pt->name;
        specs[i].dtype = pt->out_dtype;
        specs[i].ndim = pt->ndim;
        memcpy(specs[i].shape, pt->shape, sizeof specs[i].shape);
        total += (uint64_t)pt->numel * dtype_size(pt->out_dtype);
    }
    char *tmp = fs_make_temp_sibling(out_dir, err);
    if (!tmp) {
        free(specs);
        return -1;
    }
    work wk, wk2; /* wk2: the second lane's, made when first needed */
    bool have_wk2 = false;
    int rc = work_init(&wk, p, err);
    st_writer *w = rc ? NULL : st_writer_open(tmp, specs, p->ntensors, opt->out_shard_bytes, err);
    st_async *aw = w ? st_async_start(w, err) : NULL;
    bool streams = p->method->streams;
    merge_sink *sink = streams && aw ? merge_sink_new(threads) : NULL, *sink2 = NULL;
    if (!aw || (streams && !sink)) rc = rc ? rc : alloy_fail(err, "out of memory");
    int cur = 0; /* the packed buffer not being written */
    uint64_t big = lane_bytes();
    /* on two lanes, the first tensor is mapped by the lane that takes it
     * (on the bench 1 GiB of inputs, 45-70 ms) while the helper maps the
     * next ones for the other */
    bool lanes = !rc && two_lanes_on(p, threads, big);
    int own = lanes ? 1 : 0;
    merge_prefetch *pf = rc ? NULL : merge_prefetch_start_from(p, NULL, p->ntensors, own);
    dense_run run = {.p = p, .opt = opt, .w = w, .aw = aw, .pf = pf, .own = own, .total = total};
    if (lanes) {
        rc = work_init(&wk2, p, err);
        have_wk2 = !rc;
        sink2 = rc ? NULL : merge_sink_new(threads - threads / 2);
        if (!rc && !sink2) rc = alloy_fail(err, "out of memory");
        if (!rc) rc = two_lanes(&run, threads, big, &wk, sink, &wk2, sink2, err);
    }
    for (int i = 0; i < p->ntensors && !rc && !lanes;) {
        const plan_tensor *pt = &p->tensors[i];
        if (streams) {
            rc = dense_stream(&run, i, &wk, sink, threads, err);
            i++;
            continue;
        }
        merge_prefetch_ready(pf, p, NULL, i);
        size_t n = (size_t)pt->numel;
        if (!pt->merge) {
            /* straight from the input mapping, which is dropped right after */
            rc = st_async_wait(aw, err);
            if (!rc) rc = st_writer_put(w, i, pt->copy.t->data, err);
        } else {
            if (!wk.packed[cur] && !(wk.packed[cur] = mem_big_alloc(sizeof(float) * wk.maxn)))
                rc = alloy_fail(err, "out of memory");
            if (!rc) rc = merge_tensor(p, pt, &wk, opt, threads, NULL, err);
            size_t bad = rc ? n : pack_checked(wk.out, pt->out_dtype, wk.packed[cur], n, threads);
            if (bad < n)
                rc = alloy_fail(err, "tensor '%s': the %s merge produced a non-finite value at element %zu",
                                pt->name, p->method->name, bad);
            if (!rc) rc = st_async_put(aw, i, wk.packed[cur], err);
            cur ^= 1;
        }
        dense_done(&run, i, rc);
        i++;
    }
    merge_prefetch_stop(pf);
    if (aw) {
        alloy_err e2;
        int r2 = st_async_stop(aw, rc ? &e2 : err);
        if (!rc) rc = r2;
    }
    if (!rc) {
        rc = st_writer_finish(w, err);
        w = NULL;
    }
    if (!rc) rc = write_side_files(p, tmp, opt, err);
    if (!rc) rc = fs_commit_dir(tmp, out_dir, err);
    if (w) st_writer_abort(w);
    if (rc) fs_remove_tree(tmp, NULL);
    merge_sink_free(sink);
    merge_sink_free(sink2);
    work_free(&wk);
    if (have_wk2) work_free(&wk2);
    free(specs);
    free(tmp);
    return rc;
}

/* ---- out: lora ---- */

/* delta = merged - base (m x n, f64) as B (m x r) · A (r x n) in f32 by
 * truncated SVD: B = U_q S_q, A = Vt_q with q = min(r, m, n), rows/columns
 * beyond q zero. *rel = ||delta - B A||_F / ||delta||_F of the f32 factors
 * (0 for a zero delta). */
static int factor_delta(const plan_tensor *pt, const float *merged, const float *base, int r, uint64_t seed,
                        float *A, float *B, double *rel, alloy_err *err) {
    int64_t m = pt->shape[0], n = pt->shape[1], mn = m < n ? m : n;
    int q = r < mn ? r : (int)mn;
    size_t sz = (size_t)(m * n);
    memset(A, 0, (size_t)r * (size_t)n * sizeof *A);
    memset(B, 0, (size_t)m * (size_t)r * sizeof *B);
    double *d = malloc(sz * sizeof *d), *u = malloc((size_t)(m * q) * sizeof *u);
    double *vt = malloc((size_t)(q * n) * sizeof *vt), *s = malloc((size_t)q * sizeof *s);
    int rc = (!d || !u || !vt || !s) ? alloy_fail(err, "tensor '%s': out of memory", pt->name) : 0;
    double norm = 0;
    if (!rc) {
        for (size_t e = 0; e < sz; e++) d[e] = (double)merged[e] - (double)base[e], norm += d[e] * d[e];
        norm = sqrt(norm);
    }
    *rel = 0;
    if (!rc && norm > 0) {
        rc = svd_topr(d, m, n, q, seed, u, s, vt, pt->name, err);
        if (!rc) {
            for (int64_t i = 0; i < m; i++)
                for (int j = 0; j < q; j++) B[i * r + j] = (float)(u[i * q + j] * s[j]);
            for (int j = 0; j < q; j++)
                for (int64_t c = 0; c < n; c++) A[j * n + c] = (float)vt[j * n + c];
            /* the residual of what PEFT will apply: delta - B A with the f32 factors */
            for (int64_t i = 0; i < m; i++)
                for (int j = 0; j < q; j++) u[i * q + j] = B[i * r + j];
            for (size_t e = 0; e < (size_t)(q * n); e++) vt[e] = A[e];
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, q, -1.0, u, q, vt, (int)n, 1.0, d,
                        (int)n);
            double res = 0;
            for (size_t e = 0; e < sz; e++) res += d[e] * d[e];
            *rel = sqrt(res) / norm;
        }
    }
    free(d);
    free(u);
    free(vt);
    free(s);
    return rc;
}

/* alloy_recipe.yml (the marker of an alloy output) and a model card with the
 * truncation error of each module. */
static int write_lora_side_files(const merge_plan *p, const char *dir, const double *rel, alloy_err *err) {
    char *path = fs_join(dir, "alloy_recipe.yml");
    int rc = path ? fs_write_file(path, p->rc.text, strlen(p->rc.text), err) : alloy_fail(err, "out of memory");
    free(path);
    if (rc) return -1;
    size_t tl = strlen(p->rc.text), cap = 4096 + tl + (size_t)p->nlora_targets * 160, k = 0;
    char *card = malloc(cap);
    if (!card) return alloy_fail(err, "out of memory");
    k += (size_t)snprintf(card + k, cap - k,
                          "---\nlibrary_name: peft\nbase_model: %s\ntags:\n- alloy\n- merge\n- lora\n---\n"
                          "# Merged LoRA adapter\n\nProduced by alloy %s with the `%s` merge method and `out: lora`: "
                          "the merged weights minus the base, cut to rank %d by truncated SVD.\n\n"
                          "| module | relative truncation error |\n|---|---|\n",
                          p->rc.base_model, ALLOY_VERSION, p->method->name, p->out_rank);
    for (int i = 0, j = 0; i < p->ntensors && k < cap; i++)
        if (p->tensors[i].lora_target)
            k += (size_t)snprintf(card + k, cap - k, "| `%s` | %.3e |\n", p->tensors[i].name, rel[j++]);
    if (k < cap) k += (size_t)snprintf(card + k, cap - k, "\n## Recipe\n\n```yaml\n%s%s```\n", p->rc.text,
                                       tl && p->rc.text[tl - 1] == '\n' ? "" : "\n");
    path = fs_join(dir, "README.md");
    rc = path ? fs_write_file(path, card, k < cap ? k : cap - 1, err) : alloy_fail(err, "out of memory");
    free(path);
    free(card);
    return rc;
}

static int exec_lora(const merge_plan *p, const char *out_dir, const alloy_merge_options *opt, int threads,
                     alloy_err *err) {
    int nt = p->nlora_targets, r = p->out_rank;
    peft_write_module *mods = calloc((size_t)nt, sizeof *mods);
    char **names = calloc((size_t)nt, sizeof *names);
    double *rel = calloc((size_t)nt, sizeof *rel);
    int *idx = calloc((size_t)nt, sizeof *idx);
    uint64_t total = 0, done_bytes = 0;
    int rc = (!mods || !names || !rel || !idx) ? alloy_fail(err, "out of memory") : 0;
    int64_t maxa = 1, maxb = 1;
    for (int i = 0, j = 0; i < p->ntensors && !rc; i++) {
        const plan_tensor *pt = &p->tensors[i];
        if (!pt->lora_target) continue;
        size_t len = strlen(pt->name);
        names[j] = strdup(pt->name);
        if (!names[j]) {
            rc = alloy_fail(err, "out of memory");
            break;
        }
        if (len > 7 && !strcmp(names[j] + len - 7, ".weight")) names[j][len - 7] = 0;
        mods[j] = (peft_write_module){.module = names[j], .out_features = pt->shape[0], .in_features = pt->shape[1]};
        if (r * pt->shape[1] > maxa) maxa = r * pt->shape[1];
        if (r * pt->shape[0] > maxb) maxb = r * pt->shape[0];
        total += (uint64_t)(r * (pt->shape[0] + pt->shape[1])) * sizeof(float);
        idx[j++] = i;
    }
    /* The adapter is committed into tmp (then tmp, with the recipe, into
     * out_dir), so out_dir only ever holds a complete adapter. */
    char *tmp = rc ? NULL : fs_make_temp_sibling(out_dir, err);
    if (!rc && !tmp) rc = -1;
    peft_writer *pw = rc ? NULL
                         : peft_writer_open(tmp, p->rc.base_model, r, (double)r, mods, nt, err);
    if (!rc && !pw) rc = -1;
    float *A = rc ? NULL : malloc((size_t)maxa * sizeof *A), *B = rc ? NULL : malloc((size_t)maxb * sizeof *B);
    if (!rc && (!A || !B)) rc = alloy_fail(err, "out of memory");
    work wk;
    memset(&wk, 0, sizeof wk);
    if (!rc) rc = work_init(&wk, p, err);
    svd_set_threads(threads);
    merge_prefetch *pf = rc ? NULL : merge_prefetch_start(p, idx, nt);
    for (int j = 0; j < nt && !rc; j++) {
        const plan_tensor *pt = &p->tensors[idx[j]];
        merge_prefetch_ready(pf, p, idx, j);
        rc = merge_tensor(p, pt, &wk, opt, threads, NULL, err);
        /* the base in f32 (a streaming method did not convert it) */
        if (!rc && (!pt->has_base || p->method->streams)) rc = load_input(p, &pt->delta_base, wk.base, threads, err);
        if (!rc)
            rc = factor_delta(pt, wk.out, wk.base, r, rng_mix64(opt->seed ^ rng_hash_str(pt->name)), A, B, &rel[j],
                              err);
        if (!rc) rc = peft_writer_put(pw, j, A, B, err);
        merge_prefetch_done(pf, p, idx, j);
        merge_advise(pt->delta_base.t, MADV_DONTNEED);
        done_bytes += (uint64_t)(r * (pt->shape[0] + pt->shape[1])) * sizeof(float);
        if (!rc && opt->progress) opt->progress(opt->progress_user, j + 1, nt, done_bytes, total);
    }
    merge_prefetch_stop(pf);
    if (!rc) {
        peft_writer *f = pw;
        pw = NULL;
        rc = peft_writer_finish(f, err);
    }
    if (!rc) rc = write_lora_side_files(p, tmp, rel, err);
    if (!rc) rc = fs_commit_dir(tmp, out_dir, err);
    if (pw) peft_writer_abort(pw);
    if (rc && tmp) fs_remove_tree(tmp, NULL);
    if (!rc && opt->plan_out) {
        double worst = 0, mean = 0;
        int at = 0;
        for (int j = 0; j < nt; j++) {
            const plan_tensor *pt = &p->tensors[idx[j]];
            fprintf(opt->plan_out, "%-60s [%lld, %lld]  rank %d  rel. error %.3e\n", pt->name,
                    (long long)pt->shape[0], (long long)pt->shape[1], r, rel[j]);
            mean += rel[j] / nt;
            if (rel[j] > worst) worst = rel[j], at = j;
        }
        fprintf(opt->plan_out, "wrote LoRA adapter %s: %d modules, rank %d, rel. truncation error max %.3e (%s), "
                "mean %.3e\n", out_dir, nt, r, worst, p->tensors[idx[at]].name, mean);
    }
    work_free(&wk);
    if (names)
        for (int j = 0; j < nt; j++) free(names[j]);
    free(names);
    free(mods);
    free(rel);
    free(idx);
    free(A);
    free(B);
    free(tmp);
    return rc;
}

int exec_plan(const merge_plan *p, const char *out_dir, const alloy_merge_options *opt, alloy_err *err) {
    int threads = opt->threads > 0 ? opt->threads : omp_get_max_threads();
    return p->out_lora ? exec_lora(p, out_dir, opt, threads, err) : exec_dense(p, out_dir, opt, threads, err);
}

/* OUT_DIR may be new, an empty directory, or an earlier alloy output; never
 * silently replace anything else. Its parent is created when missing. */
static int check_out_dir(const char *out_dir, alloy_err *err) {
    if (fs_exists(out_dir)) {
        if (!fs_is_dir(out_dir)) return alloy_fail(err, "%s: exists and is not a directory", out_dir);
        DIR *d = opendir(out_dir);
        if (!d) return alloy_fail(err, "%s: cannot read directory", out_dir);
        bool empty = true;
        struct dirent *e;
        while (empty && (e = readdir(d))) empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
        closedir(d);
        char *marker = fs_join(out_dir, "alloy_recipe.yml");
        bool ours = fs_is_file(marker);
        free(marker);
        if (!empty && !ours)
            return alloy_fail(err, "%s: directory exists and is not an earlier alloy output; refusing to replace it",
                              out_dir);
        return 0;
    }
    char *parent = fs_dirname(out_dir);
    int rc = parent ? fs_mkdirs(parent, err) : alloy_fail(err, "out of memory");
    free(parent);
    return rc;
}

int alloy_merge(const char *recipe_path, const char *out_dir, const alloy_merge_options *opt, alloy_err *err) {
    alloy_merge_options defaults;
    if (!opt) {
        alloy_merge_options_default(&defaults);
        opt = &defaults;
    }
    if (!opt->dry_run && check_out_dir(out_dir, err)) return -1;
    /* MoD merges in output space: the result is a mixture directory (a
     * manifest over the members), not tensors. */
    recipe r;
    if (recipe_load(&r, recipe_path, err)) return -1;
    if (!strcmp(r.merge_method, "mod")) {
        int rc = 0;
        if (opt->dry_run) {
            if (opt->plan_out) {
                fprintf(opt->plan_out, "recipe:     %s\nmethod:     mod (mixture of output distributions)\n", r.path);
                for (int i = 0; i < r.nmodels; i++) fprintf(opt->plan_out, "member %d:   %s\n", i, r.models[i].model);
            }
        } else {
            rc = mix_write_from_recipe(&r, out_dir, err);
        }
        recipe_free(&r);
        return rc;
    }
    recipe_free(&r);
    merge_plan p;
    if (plan_build(&p, recipe_path, err)) return -1;
    for (int i = 0; opt->warn_out && i < p.nwarnings; i++) fprintf(opt->warn_out, "alloy: warning: %s\n", p.warnings[i]);
    int rc = 0;
    if (opt->dry_run) {
        if (opt->plan_out) plan_describe(&p, opt->plan_out);
    } else {
        rc = exec_plan(&p, out_dir, opt, err);
    }
    plan_free(&p);
    return rc;
}
