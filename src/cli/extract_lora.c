/* extract_lora.c — `alloy extract-lora MODEL_DIR BASE_DIR OUT_DIR --rank R`:
 * the truncated SVD of each weight delta as a PEFT LoRA adapter.
 *
 * For each selected tensor (2-D, float, ".weight"; by default every one but
 * embed_tokens / lm_head) delta = W_model - W_base = U S Vt is cut to rank R:
 * B = U_R S_R [out, R], A = Vt_R [R, in], lora_alpha = R so PEFT's scale
 * alpha / r is 1 and W_base + B A approximates W_model (exactly at full
 * rank). Prints the relative Frobenius error ||delta - B A|| / ||delta|| per
 * tensor. Argument parsing and messages only; SVD in merge/svd.c, the
 * adapter writer in io/peft_write.c. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cli/cli.h"
#include "io/peft_write.h"
#include "io/safetensors.h"
#include "merge/svd.h"
#include "util/dtype.h"
#include "util/rng.h"

static const char USAGE[] =
    "usage: alloy extract-lora MODEL_DIR BASE_DIR OUT_DIR --rank R [--include REGEX] [--exclude REGEX]\n"
    "                          [--threads N]\n"
    "  Extracts W_model - W_base of the 2-D linear weights as a rank-R PEFT LoRA adapter.\n"
    "  --include REGEX  only tensors whose name matches (default: all 2-D float *.weight)\n"
    "  --exclude REGEX  skip matching tensors (default: embed_tokens|lm_head)\n";

static pcre2_code *compile(const char *pat, const char *opt) {
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, 0, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        cli_error("extract-lora: %s '%s': %s at offset %zu", opt, pat, (const char *)msg, (size_t)off);
    }
    return re;
}

static bool matches(pcre2_code *re, const char *s) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) : -1;
    pcre2_match_data_free(md);
    return rc >= 0;
}

static bool is_float(alloy_dtype d) { return d == ALLOY_F32 || d == ALLOY_F16 || d == ALLOY_BF16; }

/* One tensor: delta in f64, rank-r SVD, B = U S and A = Vt in f32, and the
 * relative error of the f32 factors. Returns 0 or 1 (error printed). */
static int extract_one(const st_tensor *tm, const st_tensor *tb, int r, peft_writer *w, int idx, double *rel) {
    int64_t m = tm->shape[0], n = tm->shape[1];
    size_t mn = (size_t)(m * n);
    float *fm = malloc(mn * sizeof *fm), *fb = malloc(mn * sizeof *fb);
    double *d = malloc(mn * sizeof *d), *u = malloc((size_t)(m * r) * sizeof *u);
    double *vt = malloc((size_t)(r * n) * sizeof *vt), *s = malloc((size_t)r * sizeof *s);
    float *A = malloc((size_t)(r * n) * sizeof *A), *B = malloc((size_t)(m * r) * sizeof *B);
    int rc = 0;
    alloy_err err;
    if (!fm || !fb || !d || !u || !vt || !s || !A || !B) rc = cli_error("tensor '%s': out of memory", tm->name);
    if (!rc && (dtype_to_f32(tm->data, tm->dtype, fm, mn) >= 0 || dtype_to_f32(tb->data, tb->dtype, fb, mn) >= 0))
        rc = cli_error("tensor '%s': non-finite values", tm->name);
    double norm = 0;
    if (!rc) {
        for (size_t e = 0; e < mn; e++) d[e] = (double)fm[e] - (double)fb[e], norm += d[e] * d[e];
        norm = sqrt(norm);
    }
    if (!rc && norm == 0.0) { /* unchanged tensor: a zero adapter */
        memset(A, 0, (size_t)(r * n) * sizeof *A);
        memset(B, 0, (size_t)(m * r) * sizeof *B);
        *rel = 0.0;
    } else if (!rc) {
        if (svd_topr(d, m, n, r, rng_hash_str(tm->name), u, s, vt, tm->name, &err)) rc = cli_fail(&err);
        if (!rc) {
            for (int64_t i = 0; i < m; i++)
                for (int j = 0; j < r; j++) B[i * r + j] = (float)(u[i * r + j] * s[j]);
            for (size_t e = 0; e < (size_t)(r * n); e++) A[e] = (float)vt[e];
            /* residual of what PEFT will apply: delta - B A with the f32 factors */
            for (int64_t i = 0; i < m * r; i++) u[i] = B[i];
            for (int64_t i = 0; i < r * n; i++) vt[i] = A[i];
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, r, -1.0, u, r, vt, (int)n, 1.0, d,
                        (int)n);
            double res = 0;
            for (size_t e = 0; e < mn; e++) res += d[e] * d[e];
            *rel = sqrt(res) / norm;
        }
    }
    if (!rc && peft_writer_put(w, idx, A, B, &err)) rc = cli_fail(&err);
    free(fm), free(fb), free(d), free(u), free(vt), free(s), free(A), free(B);
    return rc;
}

int cmd_extract_lora(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL}, *inc = NULL, *exc = "embed_tokens|lm_head";
    int npos = 0;
    long rank = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--rank")) {
            if (!v || cli_parse_int(v, -(1L << 30), 1L << 30, &rank))
                return cli_error("extract-lora: --rank needs an integer");
            i++;
        } else if (!strcmp(a, "--threads")) {
            if (!v || cli_parse_int(v, 1, 4096, &threads)) return cli_error("extract-lora: --threads needs a positive integer");
            i++;
        } else if (!strcmp(a, "--include") || !strcmp(a, "--exclude")) {
            if (!v) return cli_error("extract-lora: %s needs a regular expression", a);
            *(a[2] == 'i' ? &inc : &exc) = v;
            i++;
        } else if (a[0] == '-' && a[1]) {
            return cli_error("extract-lora: unknown option '%s'\n%s", a, USAGE);
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            return cli_error("extract-lora: unexpected argument '%s'\n%s", a, USAGE);
        }
    }
    if (npos < 3) return cli_error("extract-lora: missing arguments\n%s", USAGE);
    if (rank <= 0) return cli_error("extract-lora: --rank must be given and positive (got %ld)", rank);
    pcre2_code *re_inc = inc ? compile(inc, "--include") : NULL, *re_exc = exc && *exc ? compile(exc, "--exclude") : NULL;
    if ((inc && !re_inc) || (exc && *exc && !re_exc)) {
        pcre2_code_free(re_inc);
        pcre2_code_free(re_exc);
        return 1;
    }
    svd_set_threads((int)threads);
    alloy_err err;
    st_model mm = {0}, mb = {0};
    int rc = 0, nsel = 0;
    int *sel = NULL;
    peft_write_module *mods = NULL;
    peft_writer *w = NULL;
    if (st_open_dir(&mm, pos[0], &err) || st_open_dir(&mb, pos[1], &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    sel = malloc(sizeof *sel * (size_t)(mm.ntensors + 1));
    mods = malloc(sizeof *mods * (size_t)(mm.ntensors + 1));
    if (!sel || !mods) {
        rc = cli_error("out of memory");
        goto done;
    }
    /* Select and validate everything before any SVD. */
    for (int i = 0; i < mm.ntensors && !rc; i++) {
        const st_tensor *t = &mm.tensors[i];
        size_t len = strlen(t->name);
        if (t->ndim != 2 || !is_float(t->dtype) || len < 7 || strcmp(t->name + len - 7, ".weight")) continue;
        if ((re_inc && !matches(re_inc, t->name)) || (re_exc && matches(re_exc, t->name))) continue;
        const st_tensor *b = st_find(&mb, t->name);
        if (!b) {
            rc = cli_error("%s: tensor '%s' is missing from the base", pos[1], t->name);
        } else if (b->ndim != 2 || b->shape[0] != t->shape[0] || b->shape[1] != t->shape[1] || !is_float(b->dtype)) {
            rc = cli_error("tensor '%s': shape [%lld, %lld] in %s but a different shape or type in %s", t->name,
                           (long long)t->shape[0], (long long)t->shape[1], pos[0], pos[1]);
        } else if (rank > (t->shape[0] < t->shape[1] ? t->shape[0] : t->shape[1])) {
            rc = cli_error("tensor '%s' [%lld, %lld]: --rank %ld exceeds min(out, in)", t->name,
                           (long long)t->shape[0], (long long)t->shape[1], rank);
        } else {
            mods[nsel] = (peft_write_module){.out_features = t->shape[0], .in_features = t->shape[1]};
            sel[nsel++] = i;
        }
    }
    if (!rc && nsel == 0) rc = cli_error("extract-lora: no tensor of %s matches the selection", pos[0]);
    char **names = NULL;
    if (!rc) {
        names = calloc((size_t)nsel, sizeof *names);
        for (int j = 0; names && j < nsel; j++) {
            names[j] = strdup(mm.tensors[sel[j]].name);
            if (names[j]) names[j][strlen(names[j]) - 7] = 0, mods[j].module = names[j];
            else rc = cli_error("out of memory");
        }
        if (!names) rc = cli_error("out of memory");
    }
    if (!rc && !(w = peft_writer_open(pos[2], pos[1], (int)rank, (double)rank, mods, nsel, &err))) rc = cli_fail(&err);
    double worst = 0;
    for (int j = 0; j < nsel && !rc; j++) {
        const st_tensor *t = &mm.tensors[sel[j]];
        double rel = 0;
        rc = extract_one(t, st_find(&mb, t->name), (int)rank, w, j, &rel);
        if (!rc) printf("%-60s [%lld, %lld]  rank %ld  rel. error %.3e\n", t->name, (long long)t->shape[0],
                        (long long)t->shape[1], rank, rel);
        if (rel > worst) worst = rel;
    }
    if (!rc) {
        peft_writer *wf = w;
        w = NULL;
        if (peft_writer_finish(wf, &err)) rc = cli_fail(&err);
        else printf("wrote %s: %d modules, rank %ld, max rel. error %.3e\n", pos[2], nsel, rank, worst);
    }
    if (names)
        for (int j = 0; j < nsel; j++) free(names[j]);
    free(names);
done:
    if (w) peft_writer_abort(w);
    free(sel);
    free(mods);
    st_close(&mm);
    st_close(&mb);
    pcre2_code_free(re_inc);
    pcre2_code_free(re_exc);
    return rc;
}
