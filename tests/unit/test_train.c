/* test_train.c — unit tests of the training kernels (src/train): every
 * *_backward against central finite differences of its *_forward (loss =
 * sum(out * R) for a fixed random R), AdamW against a hand-computed step, the
 * learning-rate schedule, clipping, and LoRA target parsing. The whole-model
 * comparison with PyTorch is tests/ref/test_train.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "train/adamw.h"
#include "train/layers.h"
#include "train/lora.h"

static double urand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static float *rnd(int n, uint64_t *s, double scale) {
    float *v = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) v[i] = (float)(urand(s) * scale);
    return v;
}

static double dotd(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Compare analytic gradient g of x against finite differences of f. */
typedef double (*lossfn)(void *ctx);
static void check_grad(const char *what, float *x, const float *g, int n, lossfn f, void *ctx) {
    double worst = 0, gmax = 1e-3;
    for (int i = 0; i < n; i++) {
        float keep = x[i];
        float h = 1e-2f * (fabsf(keep) > 1 ? fabsf(keep) : 1);
        x[i] = keep + h;
        double lp = f(ctx);
        x[i] = keep - h;
        double lm = f(ctx);
        x[i] = keep;
        double num = (lp - lm) / (2 * h);
        double d = fabs(num - g[i]);
        if (d > worst) worst = d;
        if (fabs(num) > gmax) gmax = fabs(num);
    }
    if (worst / gmax > 2e-2) fail_msg("%s: finite-difference mismatch %.3g (scale %.3g)", what, worst, gmax);
}

/* ---- rmsnorm ---- */
typedef struct { int N, C; float *x, *w, *out, *rstd, *R; } rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    tr_rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return dotd(c->out, c->R, c->N * c->C);
}
static void test_rmsnorm(void **st) {
    (void)st;
    uint64_t s = 1;
    rms_ctx c = {3, 8, rnd(24, &s, 1), rnd(8, &s, 1), calloc(24, 4), calloc(3, 4), rnd(24, &s, 1)};
    float *dx = calloc(24, 4), *dw = calloc(8, 4);
    rms_loss(&c);
    tr_rmsnorm_backward(dx, dw, c.R, c.rstd, c.x, c.w, c.N, c.C);
    check_grad("rmsnorm dx", c.x, dx, 24, rms_loss, &c);
    check_grad("rmsnorm dw", c.w, dw, 8, rms_loss, &c);
    free(c.x), free(c.w), free(c.out), free(c.rstd), free(c.R), free(dx), free(dw);
}

/* ---- attention (GQA, with RoPE in front) ---- */
typedef struct { int B, T, Hq, Hkv, hd; float *q, *k, *v, *qr, *kr, *att, *out, *R, *cs, *sn; } att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    int N = c->B * c->T;
    memcpy(c->qr, c->q, (size_t)N * c->Hq * c->hd * 4);
    memcpy(c->kr, c->k, (size_t)N * c->Hkv * c->hd * 4);
    tr_rope_forward(c->qr, c->cs, c->sn, N, c->T, c->Hq, c->hd);
    tr_rope_forward(c->kr, c->cs, c->sn, N, c->T, c->Hkv, c->hd);
    tr_attention_forward(c->out, c->att, c->qr, c->kr, c->v, c->B, c->T, c->Hq, c->Hkv, c->hd);
    return dotd(c->out, c->R, N * c->Hq * c->hd);
}
static void test_attention_rope(void **st) {
    (void)st;
    uint64_t s = 2;
    att_ctx c = {.B = 2, .T = 5, .Hq = 4, .Hkv = 2, .hd = 4};
    int N = c.B * c.T, QD = c.Hq * c.hd, KD = c.Hkv * c.hd;
    c.q = rnd(N * QD, &s, 1), c.k = rnd(N * KD, &s, 1), c.v = rnd(N * KD, &s, 1);
    c.qr = calloc((size_t)N * QD, 4), c.kr = calloc((size_t)N * KD, 4);
    c.att = calloc((size_t)c.B * c.Hq * c.T * c.T, 4), c.out = calloc((size_t)N * QD, 4);
    c.R = rnd(N * QD, &s, 1);
    c.cs = calloc((size_t)c.T * c.hd / 2, 4), c.sn = calloc((size_t)c.T * c.hd / 2, 4);
    double inv[2] = {1.0, 0.01};
    tr_rope_tables(c.cs, c.sn, inv, c.T, c.hd);
    att_loss(&c);
    float *dq = calloc((size_t)N * QD, 4), *dk = calloc((size_t)N * KD, 4), *dv = calloc((size_t)N * KD, 4);
    tr_attention_backward(dq, dk, dv, c.R, c.att, c.qr, c.kr, c.v, c.B, c.T, c.Hq, c.Hkv, c.hd);
    tr_rope_backward(dq, c.cs, c.sn, N, c.T, c.Hq, c.hd);
    tr_rope_backward(dk, c.cs, c.sn, N, c.T, c.Hkv, c.hd);
    check_grad("attention dq", c.q, dq, N * QD, att_loss, &c);
    check_grad("attention dk", c.k, dk, N * KD, att_loss, &c);
    check_grad("attention dv", c.v, dv, N * KD, att_loss, &c);
    /* causality: the first row attends only to itself */
    assert_float_equal(c.att[0], 1.0f, 1e-6);
    assert_float_equal(c.att[1], 0.0f, 0);
    free(c.q), free(c.k), free(c.v), free(c.qr), free(c.kr), free(c.att), free(c.out), free(c.R);
    free(c.cs), free(c.sn), free(dq), free(dk), free(dv);
}

/* ---- swiglu + matmul + lora ---- */
typedef struct { int N, C, OC, r; float *x, *w, *b, *A, *B, *ax, *y, *g, *u, *h, *R; } mlp_ctx;
static double mlp_loss(void *p) {
    mlp_ctx *c = p;
    tr_matmul_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->OC);
    tr_lora_forward(c->y, c->ax, c->x, c->A, c->B, 2.0f, c->N, c->C, c->OC, c->r);
    int half = c->N * c->OC / 2;
    memcpy(c->g, c->y, (size_t)half * 4);
    memcpy(c->u, c->y + half, (size_t)half * 4);
    tr_swiglu_forward(c->h, c->g, c->u, half);
    return dotd(c->h, c->R, half);
}
static void test_linear_lora_swiglu(void **st) {
    (void)st;
    uint64_t s = 3;
    mlp_ctx c = {.N = 4, .C = 6, .OC = 6, .r = 2};
    int NC = c.N * c.C, NO = c.N * c.OC, half = NO / 2;
    c.x = rnd(NC, &s, 1), c.w = rnd(c.OC * c.C, &s, 0.5), c.b = rnd(c.OC, &s, 0.5);
    c.A = rnd(c.r * c.C, &s, 0.5), c.B = rnd(c.OC * c.r, &s, 0.5);
    c.ax = calloc((size_t)c.N * c.r, 4), c.y = calloc((size_t)NO, 4);
    c.g = calloc((size_t)half, 4), c.u = calloc((size_t)half, 4), c.h = calloc((size_t)half, 4);
    c.R = rnd(half, &s, 1);
    mlp_loss(&c);
    float *dg = calloc((size_t)half, 4), *du = calloc((size_t)half, 4), *dy = calloc((size_t)NO, 4);
    tr_swiglu_backward(dg, du, c.R, c.g, c.u, half);
    memcpy(dy, dg, (size_t)half * 4);
    memcpy(dy + half, du, (size_t)half * 4);
    float *dx = calloc((size_t)NC, 4), *dw = calloc((size_t)c.OC * c.C, 4), *db = calloc((size_t)c.OC, 4);
    float *dA = calloc((size_t)c.r * c.C, 4), *dB = calloc((size_t)c.OC * c.r, 4);
    float *scratch = calloc((size_t)c.N * c.r, 4);
    tr_matmul_backward(dx, dw, db, dy, c.x, c.w, c.N, c.C, c.OC);
    tr_lora_backward(dx, dA, dB, dy, scratch, c.x, c.ax, c.A, c.B, 2.0f, c.N, c.C, c.OC, c.r);
    check_grad("linear dx", c.x, dx, NC, mlp_loss, &c);
    check_grad("linear dw", c.w, dw, c.OC * c.C, mlp_loss, &c);
    check_grad("linear db", c.b, db, c.OC, mlp_loss, &c);
    check_grad("lora dA", c.A, dA, c.r * c.C, mlp_loss, &c);
    check_grad("lora dB", c.B, dB, c.OC * c.r, mlp_loss, &c);
    free(c.x), free(c.w), free(c.b), free(c.A), free(c.B), free(c.ax), free(c.y), free(c.g), free(c.u);
    free(c.h), free(c.R), free(dg), free(du), free(dy), free(dx), free(dw), free(db), free(dA), free(dB);
    free(scratch);
}

/* ---- cross-entropy ---- */
typedef struct { int N, V; float *l; int32_t *t; } xe_ctx;
static double xe_loss(void *p) {
    xe_ctx *c = p;
    int64_t n;
    return tr_xent_forward(c->l, c->t, c->N, c->V, &n) / (double)n;
}
static void test_xent(void **st) {
    (void)st;
    uint64_t s = 4;
    int32_t t[3] = {2, -1, 4};
    xe_ctx c = {3, 5, rnd(15, &s, 2), t};
    int64_t n;
    tr_xent_forward(c.l, t, 3, 5, &n);
    assert_int_equal(n, 2);
    float *d = calloc(15, 4);
    tr_xent_backward(d, c.l, t, 3, 5, 0.5f);
    for (int i = 5; i < 10; i++) assert_float_equal(d[i], 0.0f, 0); /* ignored row */
    check_grad("xent", c.l, d, 15, xe_loss, &c);
    /* uniform logits: loss = log V */
    float z[5] = {0};
    int32_t t0 = 1;
    assert_float_equal(tr_xent_forward(z, &t0, 1, 5, &n), log(5.0), 1e-6);
    free(c.l), free(d);
}

/* ---- optimizer ---- */
static void test_adamw(void **st) {
    (void)st;
    tr_pset ps = {0};
    tr_pset_add(&ps, "w", 1, 2, true);
    tr_pset_add(&ps, "norm", 1, 0, false);
    assert_int_equal(tr_pset_alloc(&ps, true, NULL), 0);
    ps.data[0] = 1.0f, ps.data[1] = -2.0f, ps.data[2] = 0.5f;
    ps.grad[0] = 0.1f, ps.grad[1] = -0.3f, ps.grad[2] = 0.2f;
    tr_adamw opt;
    assert_int_equal(tr_adamw_init(&opt, ps.n, 0.1f, NULL), 0);
    tr_adamw_step(&opt, &ps, 0.01f);
    /* first step: m_hat = g, v_hat = g^2 -> p = p*(1-lr*wd) - lr*g/(|g|+eps) */
    assert_float_equal(ps.data[0], 1.0f * (1 - 0.001f) - 0.01f * (0.1f / (0.1f + 1e-8f)), 1e-6);
    assert_float_equal(ps.data[1], -2.0f * (1 - 0.001f) + 0.01f, 1e-6);
    assert_float_equal(ps.data[2], 0.5f - 0.01f, 1e-6); /* no decay on norms */
    /* clipping: norm sqrt(0.01+0.09+0.04) */
    double norm = tr_clip_grad_norm(&ps, 0.1);
    assert_float_equal(norm, sqrt(0.14), 1e-6);
    assert_float_equal(tr_pset_grad_norm(&ps), 0.1, 1e-5);
    tr_adamw_free(&opt);
    tr_pset_free(&ps);
}

static void test_schedule(void **st) {
    (void)st;
    assert_float_equal(tr_lr_at(1.0f, 0, 4, 10), 0.25f, 1e-7);
    assert_float_equal(tr_lr_at(1.0f, 3, 4, 10), 1.0f, 1e-7);
    assert_float_equal(tr_lr_at(1.0f, 4, 4, 10), 1.0f, 1e-7);
    assert_float_equal(tr_lr_at(1.0f, 7, 4, 10), 0.5f, 1e-6);
    assert_float_equal(tr_lr_at(1.0f, 10, 4, 10), 0.0f, 1e-7);
    assert_float_equal(tr_lr_at(2.0f, 0, 0, 1), 2.0f, 1e-7);
}

static void test_targets(void **st) {
    (void)st;
    unsigned m;
    alloy_err err;
    assert_int_equal(tr_lora_parse_targets("q_proj, v_proj", &m, &err), 0);
    assert_int_equal(m, (1u << TM_Q) | (1u << TM_V));
    assert_int_equal(tr_lora_parse_targets("all-linear", &m, &err), 0);
    assert_int_equal(m, 127u);
    assert_int_equal(tr_lora_parse_targets("q_proj,lm_head", &m, &err), -1);
    assert_non_null(strstr(err.msg, "'lm_head' matches no module"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),  cmocka_unit_test(test_attention_rope),
        cmocka_unit_test(test_linear_lora_swiglu), cmocka_unit_test(test_xent),
        cmocka_unit_test(test_adamw),    cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_targets),
    };
    return cmocka_run_group_tests_name("train", tests, NULL, NULL);
}
