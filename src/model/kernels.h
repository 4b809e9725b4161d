/* kernels.h — the pure numeric building blocks of the forward pass: RMSNorm,
 * RoPE, softmax, SwiGLU, and matrix products with bf16 / f16 / f32 weights.
 *
 * Everything computes and accumulates in f32. Weights are read in their
 * stored dtype and converted on the fly (AVX2/FMA/F16C, and AVX-512 for
 * bf16 rows, when the compiler targets them; a portable loop otherwise). The matrix products split their
 * output rows over OpenMP threads; the other kernels are single-threaded and
 * allocate nothing. Not here: the layer wiring (forward.c). */
#ifndef ALLOY_MODEL_KERNELS_H
#define ALLOY_MODEL_KERNELS_H

#include <stddef.h>

#include "model/weights.h"

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i], i < n. out may be x. */
void k_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);

/* In-place softmax of x[0..n). */
void k_softmax(float *x, int n);

/* Rotate n_heads heads of head_dim values at position pos, transformers'
 * rotate_half layout: pairs (i, i + head_dim/2) turn by pos * inv_freq[i]. */
void k_rope(float *x, int n_heads, int head_dim, int pos, const float *inv_freq);

/* gate[i] = silu(gate[i]) * up[i]. */
void k_swiglu(float *gate, const float *up, size_t n);

/* dot(w, x) of n floats (AVX2/FMA when available). */
float k_dot(const float *w, const float *x, int n);

/* y[i] += a * x[i], i < n. */
void k_axpy(float *y, float a, const float *x, int n);

/* Row r of m converted to f32 (m->cols values). */
void k_row_f32(float *out, const Mat *m, int r);

/* dot(row r of m, x). */
float k_dot_row(const Mat *m, int r, const float *x);

/* out[r] = dot(row r of m, x) for every row: the decode matvec, memory
 * bound; OpenMP over rows. */
void k_matvec(float *out, const float *x, const Mat *m);

/* out (n, ldo) [:, 0:m->rows] = x (n, m->cols) @ m^T, for a batch of n
 * tokens. f32 weights go straight to cblas_sgemm; bf16/f16 weights are
 * converted in blocks of rows into scratch (scratch_floats floats, at least
 * m->cols) and multiplied block by block. When OpenBLAS runs single-threaded
 * the rows are split over the OpenMP threads, each with its own slice of
 * scratch and its own sgemm calls; otherwise OpenBLAS threads each sgemm.
 * n == 1 is k_matvec. */
void k_matmul(float *out, int ldo, const float *x, int n, const Mat *m, float *scratch, size_t scratch_floats);

#endif
