/* layers.c — forward/backward pairs of the decoder layers (see layers.h). */
#include "train/layers.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this many elements of work a loop runs on one thread: waking a team
 * costs more than it saves, and far more on a loaded machine. */
#define PAR_MIN 32768

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpyf(float *y, float a, const float *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* ---- matmul ---- */

void tr_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                       int N, int C, int OC) {
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if ((size_t)N * OC > PAR_MIN)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, w, C, beta,
                out, OC);
}

void tr_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                        const float *inp, const float *w, int N, int C, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, w, C,
                    1.0f, dinp, C);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
                    1.0f, dw, C);
    if (dbias) {
#pragma omp parallel for if ((size_t)N * OC > PAR_MIN)
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
            dbias[o] += s;
        }
    }
}

/* ---- rmsnorm ---- */

void tr_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                        int N, int C, float eps) {
#pragma omp parallel for if ((size_t)N * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = dotf(x, x, C) / (float)C;
        float r = 1.0f / sqrtf(ss + eps);
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
        rstd[n] = r;
    }
}

void tr_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *rstd,
                         const float *inp, const float *weight, int N, int C) {
    /* y = w * x * r, r = (mean(x^2) + eps)^-1/2
     * dx = r * (w*dy) - r^3 / C * x * sum(w*dy*x) */
#pragma omp parallel for if ((size_t)N * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n], s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < C; i++) s += weight[i] * dy[i] * x[i];
        float c = r * r * r * s / (float)C;
#pragma omp simd
        for (int i = 0; i < C; i++) dx[i] += r * weight[i] * dy[i] - c * x[i];
    }
    if (dweight) {
#pragma omp parallel for if ((size_t)N * C > PAR_MIN)
        for (int i = 0; i < C; i++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * C + i] * inp[(size_t)n * C + i] * rstd[n];
            dweight[i] += s;
        }
    }
}

/* ---- rope ---- */

void tr_rope_tables(float *cos_t, float *sin_t, const double *inv_freq, int T, int hd) {
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            /* HF computes the angle in f32: position * inv_freq (f32). */
            float ang = (float)t * (float)inv_freq[i];
            cos_t[(size_t)t * half + i] = (float)cos((double)ang);
            sin_t[(size_t)t * half + i] = (float)sin((double)ang);
        }
}

static void rope_apply(float *x, const float *cos_t, const float *sin_t, int N, int T, int nh,
                       int hd, float sign) {
    int half = hd / 2;
#pragma omp parallel for if ((size_t)N * nh * hd > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)(n % T) * half, *s = sin_t + (size_t)(n % T) * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + (size_t)n * nh * hd + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], sn = sign * s[i];
                v[i] = a * c[i] - b * sn;
                v[i + half] = b * c[i] + a * sn;
            }
        }
    }
}

void tr_rope_forward(float *x, const float *cos_t, const float *sin_t, int N, int T, int nh, int hd) {
    rope_apply(x, cos_t, sin_t, N, T, nh, hd, 1.0f);
}

void tr_rope_backward(float *dx, const float *cos_t, const float *sin_t, int N, int T, int nh, int hd) {
    /* The rotation is orthogonal: its transpose is the rotation by -angle. */
    rope_apply(dx, cos_t, sin_t, N, T, nh, hd, -1.0f);
}

/* ---- attention ---- */

void tr_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                          int B, int T, int Hq, int Hkv, int hd) {
    int QD = Hq * hd, KD = Hkv * hd, rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * Hq * T * T * hd > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            int kh = h / rep;
            for (int t = 0; t < T; t++) {
                const float *qt = q + (size_t)(b * T + t) * QD + (size_t)h * hd;
                float *p = att + (((size_t)b * Hq + h) * T + t) * T;
                float mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    const float *ks = k + (size_t)(b * T + s) * KD + (size_t)kh * hd;
                    p[s] = dotf(qt, ks, hd) * scale;
                    if (p[s] > mx) mx = p[s];
                }
                float sum = 0.0f;
                for (int s = 0; s <= t; s++) {
                    p[s] = expf(p[s] - mx);
                    sum += p[s];
                }
                float inv = 1.0f / sum;
                for (int s = 0; s <= t; s++) p[s] *= inv;
                for (int s = t + 1; s < T; s++) p[s] = 0.0f;
                float *o = out + (size_t)(b * T + t) * QD + (size_t)h * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int s = 0; s <= t; s++)
                    axpyf(o, p[s], v + (size_t)(b * T + s) * KD + (size_t)kh * hd, hd);
            }
        }
}

void tr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                           const float *q, const float *k, const float *v,
                           int B, int T, int Hq, int Hkv, int hd) {
    int QD = Hq * hd, KD = Hkv * hd, rep = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel if ((size_t)B * Hq * T * T * hd > PAR_MIN)
    {
        float *dp = malloc((size_t)T * sizeof(float));
        /* One task per (batch, kv head): the query heads of a group all write
         * the same dk/dv rows, so they stay on one thread. */
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < Hkv; kh++) {
                if (!dp) continue;
                for (int h = kh * rep; h < (kh + 1) * rep; h++)
                    for (int t = 0; t < T; t++) {
                        const float *p = att + (((size_t)b * Hq + h) * T + t) * T;
                        const float *dot = dout + (size_t)(b * T + t) * QD + (size_t)h * hd;
                        const float *qt = q + (size_t)(b * T + t) * QD + (size_t)h * hd;
                        float *dqt = dq + (size_t)(b * T + t) * QD + (size_t)h * hd;
                        float pdp = 0.0f;
                        for (int s = 0; s <= t; s++) {
                            size_t kv = (size_t)(b * T + s) * KD + (size_t)kh * hd;
                            dp[s] = dotf(dot, v + kv, hd);
                            pdp += p[s] * dp[s];
                            axpyf(dv + kv, p[s], dot, hd);
                        }
                        for (int s = 0; s <= t; s++) {
                            size_t kv = (size_t)(b * T + s) * KD + (size_t)kh * hd;
                            float ds = p[s] * (dp[s] - pdp) * scale;
                            axpyf(dqt, ds, k + kv, hd);
                            axpyf(dk + kv, ds, qt, hd);
                        }
                    }
            }
        free(dp);
    }
}

/* ---- swiglu ---- */

void tr_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void tr_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        dgate[i] += dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] += dh[i] * g * s;
    }
}

/* ---- embedding ---- */

void tr_embed_forward(float *out, const int32_t *tokens, const float *wte, int N, int C) {
#pragma omp parallel for if ((size_t)N * C > PAR_MIN)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void tr_embed_backward(float *dwte, const float *dout, const int32_t *tokens, int N, int C) {
    /* Rows may repeat: split the work by channel, not by token. */
#pragma omp parallel for if ((size_t)N * C > PAR_MIN)
    for (int i = 0; i < C; i++)
        for (int n = 0; n < N; n++) dwte[(size_t)tokens[n] * C + i] += dout[(size_t)n * C + i];
}

/* ---- cross-entropy ---- */

double tr_xent_forward(const float *logits, const int32_t *targets, int N, int V, int64_t *count) {
    double total = 0.0;
    int64_t cnt = 0;
#pragma omp parallel for reduction(+ : total, cnt) if ((size_t)N * V > PAR_MIN)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        const float *l = logits + (size_t)n * V;
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        double s = 0.0;
        for (int i = 0; i < V; i++) s += exp((double)(l[i] - mx));
        total += log(s) + mx - l[targets[n]];
        cnt++;
    }
    *count = cnt;
    return total;
}

void tr_xent_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                      float scale) {
#pragma omp parallel for if ((size_t)N * V > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        if (targets[n] < 0) {
            memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        float s = 0.0f;
        for (int i = 0; i < V; i++) {
            d[i] = expf(l[i] - mx);
            s += d[i];
        }
        float inv = scale / s;
        for (int i = 0; i < V; i++) d[i] *= inv;
        d[targets[n]] -= scale;
    }
}
