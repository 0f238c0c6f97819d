// Vectorised exp-based row passes of the learner (learner_fused.c): AVX-512F or AVX2+FMA by
// ck_isa() (SELM_KERNELS caps it), scalar libm otherwise. Results equal the scalar loops within a
// few ulp per exponential (exp(x) flushes to 0 below −87.34). Thread: any (no state).
#ifndef SELM_LEARNER_FUSED_H
#define SELM_LEARNER_FUSED_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// log Σ exp(x[i]) over n values, computed stably (max subtracted; the sum accumulated in f32
/// lanes then double).
float lf_logsumexp_row(const float *x, int n);
/// d[i] = s · exp(x[i] − l)  (the gradient of gathered log-probs: s = −dlogp, l = log-sum-exp).
void lf_scaled_exp_row(float *d, const float *x, int n, float l, float s);
/// h = silu(gate) · up over n values.
void lf_swiglu_forward(float *h, const float *gate, const float *up, size_t n);
/// dup += dh · silu(gate);  dgate += dh · up · σ(gate) · (1 + gate · (1 − σ(gate))); with
/// accumulate = 0 they are written instead (the same bits as adding to zeros).
void lf_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n,
                        int accumulate);
/// exp(x) as the vector paths compute it (for tests).
float lf_exp(float x);

/// Fused causal attention of one KV group g (f32; AVX-512F for head sizes that are a multiple of 16,
/// else AVX2+FMA or portable loops; learner_fused.c). Query rows are token t's heads g·G … g·G+G−1
/// (G = nH/nKV), token t at position p0 + t attending to keys 0 … p0 + t. Pointers are the
/// sequence's: q/out/dq/dout row t at + t·qStride (oStride), k/v/dk/dv key j at + j·kvStride (head
/// g at column g·hd), lse row t at + t·lseStride (head h at column h).
///
/// Forward of tokens [t0, t1): writes their output rows and, when lse is not NULL, each row's
/// log Σ_j exp(scale·q·k_j) (scale = 1/√hd). A row's result does not depend on t0, t1.
void lf_attention_forward_rows(float *out, float *lse, const float *q, const float *k, const float *v,
                               int t0, int t1, int p0, int g, int nH, int nKV, int hd,
                               int qStride, int kvStride, int oStride, int lseStride);
/// Backward of all n tokens of group g: dq (n rows), dk, dv (keys 0 … p0+n−1) ACCUMULATED (+=), from
/// dout, the forward's out and lse; the probabilities are recomputed.
void lf_attention_backward_group(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                 const float *q, const float *k, const float *v, int n, int p0, int g, int nH, int nKV,
                                 int hd, int qStride, int kvStride, int oStride, int lseStride);
/// The calling thread's scratch of at least `floats` floats (64-byte aligned, reused; freed when the
/// thread ends). For kernels that call no other user of it while they hold it.
float *lf_workspace(size_t floats);

#ifdef __cplusplus
}
#endif
#endif
