/* layers.h — the layers of a Qwen2/Llama decoder as forward/backward pairs,
 * for training (src/train). Every *_backward takes the arguments of its
 * *_forward in the same order, with each output replaced by the gradient it
 * receives and each input by the gradient it produces, as in llm.c.
 *
 * Conventions: activations are row-major (N rows = batch x time); a linear
 * weight is (OC, C) as in PyTorch, y = x W^T + b. Backward functions
 * ACCUMULATE (+=) into every gradient they produce, so the caller zeroes
 * gradient buffers once and shared inputs (residual stream, q/k/v input) sum
 * naturally. A NULL gradient pointer means "not wanted" (frozen weights).
 * Matmuls go to cblas_sgemm; element-wise loops use OpenMP. Pure functions: no
 * allocation except per-thread scratch in attention_backward, no state.
 *
 * Not here: the model wiring (train_model.c), LoRA (lora.c), optimizer. */
#ifndef ALLOY_TRAIN_LAYERS_H
#define ALLOY_TRAIN_LAYERS_H

#include <stdint.h>

/* out (N, OC) = inp (N, C) · w (OC, C)^T + bias (OC, may be NULL). */
void tr_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                       int N, int C, int OC);
/* dinp (N, C) += dout · w; dw (OC, C) += dout^T · inp; dbias += column sums.
 * Any of dinp, dw, dbias may be NULL. */
void tr_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                        const float *inp, const float *w, int N, int C, int OC);

/* RMSNorm (HF): out = weight * x / sqrt(mean(x^2) + eps); rstd (N) keeps
 * 1/sqrt(mean(x^2) + eps) for the backward pass. */
void tr_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                        int N, int C, float eps);
void tr_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *rstd,
                         const float *inp, const float *weight, int N, int C);

/* Rotary embedding tables: cos/sin (T, hd/2) for positions 0..T-1 from the
 * inverse frequencies inv_freq (hd/2). */
void tr_rope_tables(float *cos_t, float *sin_t, const double *inv_freq, int T, int hd);
/* RoPE in place on x (N, nh*hd), HF rotate_half layout; row n has position
 * n % T. The backward rotates the gradient by the opposite angle. */
void tr_rope_forward(float *x, const float *cos_t, const float *sin_t, int N, int T, int nh, int hd);
void tr_rope_backward(float *dx, const float *cos_t, const float *sin_t, int N, int T, int nh, int hd);

/* Causal grouped-query attention. q (B*T, Hq*hd), k and v (B*T, Hkv*hd);
 * query head h reads kv head h / (Hq/Hkv). att (B, Hq, T, T) keeps the
 * softmax probabilities (upper triangle zero); out (B*T, Hq*hd). */
void tr_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                          int B, int T, int Hq, int Hkv, int hd);
void tr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                           const float *q, const float *k, const float *v,
                           int B, int T, int Hq, int Hkv, int hd);

/* SwiGLU: h = silu(gate) * up over n elements. */
void tr_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
void tr_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, int64_t n);

/* Token embedding: out (N, C) = wte[tokens]. */
void tr_embed_forward(float *out, const int32_t *tokens, const float *wte, int N, int C);
void tr_embed_backward(float *dwte, const float *dout, const int32_t *tokens, int N, int C);

/* Cross-entropy over logits (N, V) with targets (N; -1 = ignored). Returns
 * the SUM of -log p(target) over the counted rows and sets *count to their
 * number. The backward writes (softmax - onehot) * scale into dlogits (which
 * may alias logits; ignored rows get 0): scale = 1/count gives the gradient
 * of the mean. */
double tr_xent_forward(const float *logits, const int32_t *targets, int N, int V, int64_t *count);
void tr_xent_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                      float scale);

#endif
