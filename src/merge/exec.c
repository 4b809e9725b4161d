/* exec.c — the streaming merge executor (see exec.h), and alloy_merge(). */
#include "merge/exec.h"

#include <dirent.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/rng.h"

void alloy_merge_options_default(alloy_merge_options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->out_shard_bytes = 5000000000ull;
    opt->copy_tokenizer = 1;
}

/* Tell the kernel what we will read next, and drop what we are done with, so
 * that resident memory stays near the working set instead of the models. */
static void advise(const st_tensor *t, int advice) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    uintptr_t b = (uintptr_t)t->data + t->nbytes;
    if (b > a) madvise((void *)a, b - a, advice);
}

static void advise_tensor(const plan_tensor *pt, int advice) {
    if (!pt->merge) {
        advise(pt->copy.t, advice);
        return;
    }
    if (pt->has_base) advise(pt->base.t, advice);
    for (int i = 0; i < pt->k; i++) advise(pt->inputs[i].t, advice);
}

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

int exec_plan(const merge_plan *p, const char *out_dir, const alloy_merge_options *opt, alloy_err *err) {
    int threads = opt->threads > 0 ? opt->threads : omp_get_max_threads();
    st_spec *specs = calloc((size_t)p->ntensors, sizeof *specs);
    size_t maxn = 1;
    int maxk = 1;
    uint64_t total = 0;
    if (!specs) return alloy_fail(err, "out of memory");
    for (int i = 0; i < p->ntensors; i++) {
        const plan_tensor *pt = &p->tensors[i];
        specs[i].name = pt->name;
        specs[i].dtype = pt->out_dtype;
        specs[i].ndim = pt->ndim;
        memcpy(specs[i].shape, pt->shape, sizeof specs[i].shape);
        if ((size_t)pt->numel > maxn) maxn = (size_t)pt->numel;
        if (pt->k > maxk) maxk = pt->k;
        total += (uint64_t)pt->numel * dtype_size(pt->out_dtype);
    }
    char *tmp = fs_make_temp_sibling(out_dir, err);
    if (!tmp) {
        free(specs);
        return -1;
    }
    int rc = 0;
    st_writer *w = st_writer_open(tmp, specs, p->ntensors, opt->out_shard_bytes, err);
    float **x = calloc((size_t)maxk, sizeof *x);
    float *base = NULL, *out = NULL;
    void *packed = NULL;
    if (!w || !x) rc = w ? alloy_fail(err, "out of memory") : -1;
    uint64_t done_bytes = 0;
    for (int i = 0; i < p->ntensors && !rc; i++) {
        const plan_tensor *pt = &p->tensors[i];
        if (i + 1 < p->ntensors) advise_tensor(&p->tensors[i + 1], MADV_WILLNEED);
        size_t n = (size_t)pt->numel;
        if (!pt->merge) {
            rc = st_writer_put(w, i, pt->copy.t->data, err);
        } else {
            /* Buffers grow lazily to the largest tensor seen. */
            if (!out) {
                out = malloc(sizeof(float) * maxn);
                base = malloc(sizeof(float) * maxn);
                packed = malloc(sizeof(float) * maxn);
                if (!out || !base || !packed) rc = alloy_fail(err, "out of memory");
            }
            for (int j = 0; j < pt->k && !rc; j++) {
                if (!x[j] && !(x[j] = malloc(sizeof(float) * maxn))) rc = alloy_fail(err, "out of memory");
                if (!rc) rc = load_input(p, &pt->inputs[j], x[j], threads, err);
            }
            if (!rc && pt->has_base) rc = load_input(p, &pt->base, base, threads, err);
            if (!rc) {
                merge_call call = {
                    .tensor_name = pt->name,
                    .ndim = pt->ndim,
                    .shape = pt->shape,
                    .n = n,
                    .base = pt->has_base ? base : NULL,
                    .k = pt->k,
                    .x = (const float *const *)x,
                    .gparam = pt->gparam,
                    .mparam = pt->mparam,
                    .nparams = p->method->nparams,
                    .seed = rng_mix64(opt->seed ^ rng_hash_str(pt->name)),
                    .threads = threads,
                };
                rc = p->method->merge(&call, out, err);
            }
            if (!rc) {
                size_t bad = n;
#pragma omp parallel for num_threads(threads) reduction(min : bad)
                for (size_t e = 0; e < n; e++)
                    if (!(out[e] - out[e] == 0.0f) && e < bad) bad = e;
                if (bad < n)
                    rc = alloy_fail(err, "tensor '%s': the %s merge produced a non-finite value at element %zu",
                                    pt->name, p->method->name, bad);
            }
            if (!rc) {
                size_t es = dtype_size(pt->out_dtype), chunk = 1 << 16;
#pragma omp parallel for num_threads(threads) schedule(static)
                for (size_t lo = 0; lo < n; lo += chunk)
                    dtype_from_f32(out + lo, pt->out_dtype, (char *)packed + lo * es, n - lo < chunk ? n - lo : chunk);
                rc = st_writer_put(w, i, packed, err);
            }
        }
        advise_tensor(pt, MADV_DONTNEED);
        done_bytes += (uint64_t)pt->numel * dtype_size(pt->out_dtype);
        if (!rc && opt->progress) opt->progress(opt->progress_user, i + 1, p->ntensors, done_bytes, total);
    }
    if (!rc) {
        rc = st_writer_finish(w, err);
        w = NULL;
    }
    if (!rc) rc = write_side_files(p, tmp, opt, err);
    if (!rc) rc = fs_commit_dir(tmp, out_dir, err);
    if (w) st_writer_abort(w);
    if (rc) fs_remove_tree(tmp, NULL);
    for (int j = 0; j < maxk; j++) free(x[j]);
    free(x);
    free(out);
    free(base);
    free(packed);
    free(specs);
    free(tmp);
    return rc;
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
