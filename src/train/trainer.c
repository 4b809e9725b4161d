/* trainer.c — the training loop (see trainer.h). */
#include "train/trainer.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/adamw.h"
#include "train/data.h"
#include "train/lora.h"
#include "train/state.h"
#include "train/train_model.h"
#include "util/err.h"
#include "util/fs.h"

void tr_options_default(tr_options *o) {
    memset(o, 0, sizeof *o);
    o->lora_rank = 16;
    o->lora_alpha = 32;
    o->lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    o->lr = 2e-4f;
    o->batch = 8;
    o->ctx = 512;
    o->grad_clip = 1.0f;
    o->log_every = 10;
}

/* ---- reference dump (testing) ---- */

typedef struct dump {
    int n, cap;
    st_spec *specs;
    void **data;
} dump;

static int dump_add(dump *d, const char *name, alloy_dtype dt, int64_t r, int64_t c, const void *src) {
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        st_spec *s = realloc(d->specs, (size_t)cap * sizeof *s);
        if (!s) return -1;
        d->specs = s;
        void **p = realloc(d->data, (size_t)cap * sizeof *p);
        if (!p) return -1;
        d->data = p;
        d->cap = cap;
    }
    size_t bytes = (size_t)r * (size_t)(c ? c : 1) * 4;
    st_spec *s = &d->specs[d->n];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    s->dtype = dt;
    s->ndim = c ? 2 : 1;
    s->shape[0] = r;
    s->shape[1] = c;
    d->data[d->n] = malloc(bytes ? bytes : 1);
    if (!s->name || !d->data[d->n]) return -1;
    memcpy(d->data[d->n], src, bytes);
    d->n++;
    return 0;
}

static int dump_pset(dump *d, const char *prefix, const tr_pset *ps, const float *block) {
    char name[256];
    for (int i = 0; i < ps->ntensors; i++) {
        const tr_tensor *t = &ps->t[i];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (dump_add(d, name, ALLOY_F32, t->shape[0], t->shape[1], block + t->off)) return -1;
    }
    return 0;
}

static int dump_write(dump *d, const char *dir, alloy_err *err) {
    if (fs_mkdirs(dir, err)) return -1;
    st_writer *w = st_writer_open(dir, d->specs, d->n, UINT64_MAX / 2, err);
    if (!w) return -1;
    for (int i = 0; i < d->n; i++)
        if (st_writer_put(w, i, d->data[i], err)) {
            st_writer_abort(w);
            return -1;
        }
    return st_writer_finish(w, err);
}

static void dump_free(dump *d) {
    for (int i = 0; i < d->n; i++) {
        free((char *)d->specs[i].name);
        free(d->data[i]);
    }
    free(d->specs);
    free(d->data);
}

/* ---- helpers ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void emit(const tr_options *o, tr_log *log) {
    if (o->on_log) o->on_log(o->user, log);
}

/* Mean loss over every window of ev, in batches of the model's B. */
static double eval_loss(tm_model *m, tr_data *ev, int32_t *tok, int32_t *tgt) {
    int B = m->a.B, T = m->a.T;
    double sum = 0.0;
    int64_t cnt = 0;
    for (int64_t s = 0; s < ev->nseq; s += B) {
        for (int b = 0; b < B; b++) {
            int64_t i = s + b;
            if (i < ev->nseq) {
                memcpy(tok + (size_t)b * T, ev->tokens + i * T, (size_t)T * sizeof(int32_t));
                memcpy(tgt + (size_t)b * T, ev->targets + i * T, (size_t)T * sizeof(int32_t));
            } else {
                memset(tok + (size_t)b * T, 0, (size_t)T * sizeof(int32_t));
                for (int t = 0; t < T; t++) tgt[(size_t)b * T + t] = -1;
            }
        }
        float l = tm_forward(m, tok, tgt);
        if (m->n_targets) {
            sum += (double)l * (double)m->n_targets;
            cnt += m->n_targets;
        }
    }
    return cnt ? sum / (double)cnt : NAN;
}

int tr_train(const tr_options *o, alloy_err *err) {
    if (o->batch < 1 || o->ctx < 1) return alloy_fail(err, "--batch and --ctx must be positive");
    if (!o->full && (o->lora_rank < 1 || o->lora_alpha <= 0))
        return alloy_fail(err, "--lora-rank must be >= 1 and --lora-alpha > 0");
    unsigned targets = 0;
    if (!o->full && tr_lora_parse_targets(o->lora_targets, &targets, err)) return -1;
    if (o->threads > 0) {
        omp_set_num_threads(o->threads);
        openblas_set_num_threads(o->threads);
    }
    if (fs_exists(o->out_dir) && !fs_is_dir(o->out_dir))
        return alloy_fail(err, "%s: exists and is not a directory", o->out_dir);

    int rc = -1;
    tokenizer *tok = NULL;
    tm_model model;
    memset(&model, 0, sizeof model);
    tr_lora lora;
    memset(&lora, 0, sizeof lora);
    tr_data data, evd;
    memset(&data, 0, sizeof data);
    memset(&evd, 0, sizeof evd);
    tr_adamw opt;
    memset(&opt, 0, sizeof opt);
    dump dmp = {0};
    int32_t *tk = NULL, *tg = NULL;
    char *state_dir = NULL, *state_path = NULL, *tmp_dir = NULL;
    char fp[2048];

    if (tm_load(&model, o->base_dir, o->full, err)) goto done;
    const tm_config *c = &model.cfg;
    if (o->ctx > c->max_pos) {
        alloy_fail(err, "--ctx %d exceeds max_position_embeddings %d of %s", o->ctx, c->max_pos, o->base_dir);
        goto done;
    }
    if (tok_load(&tok, o->base_dir, err)) goto done;
    if (tr_data_load(&data, o->data_path, tok, o->ctx, c->vocab, err)) goto done;
    if (o->eval_path && tr_data_load(&evd, o->eval_path, tok, o->ctx, c->vocab, err)) goto done;
    if (!o->full) {
        int in[TM_NLIN], out[TM_NLIN];
        tm_linear_dims(c, in, out);
        if (tr_lora_init(&lora, c->n_layers, in, out, targets, o->lora_rank, o->lora_alpha, o->seed, err))
            goto done;
        tm_set_lora(&model, &lora);
    }
    if (tm_alloc_acts(&model, o->batch, o->ctx, err)) goto done;
    tk = malloc((size_t)o->batch * o->ctx * sizeof(int32_t));
    tg = malloc((size_t)o->batch * o->ctx * sizeof(int32_t));
    if (!tk || !tg) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    tr_pset *ps = o->full ? &model.params : &lora.ps;
    if (tr_adamw_init(&opt, ps->n, o->weight_decay, err)) goto done;
    int64_t total = o->steps > 0 ? o->steps : tr_data_steps_for_epochs(&data, o->epochs > 0 ? o->epochs : 1.0, o->batch);

    /* Resume. */
    state_dir = malloc(strlen(o->out_dir) + 8);
    if (!state_dir) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    sprintf(state_dir, "%s.state", o->out_dir);
    state_path = fs_join(state_dir, "state.bin");
    snprintf(fp, sizeof fp, "base=%s data=%s mode=%s r=%d alpha=%g targets=%u batch=%d ctx=%d steps=%lld "
             "lr=%g warmup=%lld wd=%g clip=%g",
             o->base_dir, o->data_path, o->full ? "full" : "lora", o->full ? 0 : o->lora_rank,
             o->full ? 0.0 : (double)o->lora_alpha, targets, o->batch, o->ctx, (long long)total, (double)o->lr,
             (long long)o->warmup, (double)o->weight_decay, (double)o->grad_clip);
    int64_t step = 0;
    if (fs_is_file(state_path)) {
        if (tr_state_load(state_path, fp, o->seed, ps, &opt, &step, err)) goto done;
        tr_log lg = {.kind = TR_LOG_RESUME, .step = step, .total = total, .msg = state_path};
        emit(o, &lg);
    }
    if (o->dump_dir && dump_pset(&dmp, "init.", ps, ps->data)) {
        alloy_fail(err, "out of memory");
        goto done;
    }

    double t0 = now_s();
    int64_t tokens_seen = 0, start_step = step;
    char name[64];
    for (; step < total; step++) {
        tr_data_batch(&data, o->seed, step, o->batch, tk, tg);
        tr_pset_zero_grad(ps);
        float loss = tm_forward(&model, tk, tg);
        tm_backward(&model);
        if (o->dump_dir) {
            float lv = loss;
            int ok = 1;
            snprintf(name, sizeof name, "s%lld.", (long long)step);
            char nm[96];
            snprintf(nm, sizeof nm, "%stokens", name);
            ok &= !dump_add(&dmp, nm, ALLOY_I32, o->batch, o->ctx, tk);
            snprintf(nm, sizeof nm, "%stargets", name);
            ok &= !dump_add(&dmp, nm, ALLOY_I32, o->batch, o->ctx, tg);
            snprintf(nm, sizeof nm, "%sloss", name);
            ok &= !dump_add(&dmp, nm, ALLOY_F32, 1, 0, &lv);
            snprintf(nm, sizeof nm, "%sparam.", name);
            ok &= !dump_pset(&dmp, nm, ps, ps->data);
            snprintf(nm, sizeof nm, "%sgrad.", name);
            ok &= !dump_pset(&dmp, nm, ps, ps->grad);
            if (!ok) {
                alloy_fail(err, "out of memory");
                goto done;
            }
        }
        double gn = tr_clip_grad_norm(ps, o->grad_clip);
        float lr = tr_lr_at(o->lr, step, o->warmup, total);
        tr_adamw_step(&opt, ps, lr);
        tokens_seen += (int64_t)o->batch * o->ctx;
        int64_t done_steps = step + 1;
        if (!isfinite(loss) && model.n_targets) {
            alloy_fail(err, "training diverged at step %lld (loss %g); lower --lr", (long long)done_steps,
                       (double)loss);
            goto done;
        }
        double el = now_s() - t0;
        tr_log lg = {.kind = TR_LOG_STEP, .step = done_steps, .total = total, .loss = loss, .lr = lr,
                     .grad_norm = gn, .tok_per_s = el > 0 ? (double)tokens_seen / el : 0.0};
        (void)start_step;
        emit(o, &lg);
        if (o->eval_path && o->eval_every > 0 && done_steps % o->eval_every == 0 && done_steps < total) {
            tr_log le = {.kind = TR_LOG_EVAL, .step = done_steps, .total = total,
                         .eval_loss = eval_loss(&model, &evd, tk, tg)};
            emit(o, &le);
        }
        bool stop = o->stop_after > 0 && done_steps >= o->stop_after && done_steps < total;
        if ((o->save_every > 0 && done_steps % o->save_every == 0 && done_steps < total) || stop) {
            if (fs_mkdirs(state_dir, err) || tr_state_save(state_path, fp, done_steps, o->seed, ps, &opt, err))
                goto done;
        }
        if (stop) {
            tr_log li = {.kind = TR_LOG_INFO, .step = done_steps, .total = total, .msg = "stopped early; state saved"};
            emit(o, &li);
            rc = 0;
            goto done;
        }
    }
    if (o->eval_path) {
        tr_log le = {.kind = TR_LOG_EVAL, .step = total, .total = total,
                     .eval_loss = eval_loss(&model, &evd, tk, tg)};
        emit(o, &le);
    }
    if (o->dump_dir) {
        if (dump_pset(&dmp, "final.", ps, ps->data)) {
            alloy_fail(err, "out of memory");
            goto done;
        }
        if (dump_write(&dmp, o->dump_dir, err)) goto done;
    }

    /* Output, atomically. */
    tmp_dir = fs_make_temp_sibling(o->out_dir, err);
    if (!tmp_dir) goto done;
    int wrc = o->full ? tm_save_hf(&model, o->base_dir, tmp_dir, o->out_dtype_set ? o->out_dtype : c->dtype, err)
                      : tr_lora_save(&lora, tmp_dir, o->base_dir, err);
    if (wrc || fs_commit_dir(tmp_dir, o->out_dir, err)) {
        alloy_err e2;
        fs_remove_tree(tmp_dir, &e2);
        goto done;
    }
    alloy_err e3;
    fs_remove_tree(state_dir, &e3);
    rc = 0;
done:
    if (o->dump_dir) dump_free(&dmp);
    free(tk);
    free(tg);
    free(state_dir);
    free(state_path);
    free(tmp_dir);
    tr_adamw_free(&opt);
    tr_data_free(&data);
    tr_data_free(&evd);
    tr_lora_free(&lora);
    tm_free(&model);
    tok_free(tok);
    return rc;
}
