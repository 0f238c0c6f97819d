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
/// dup += dh · silu(gate);  dgate += dh · up · σ(gate) · (1 + gate · (1 − σ(gate))).
void lf_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n);
/// exp(x) as the vector paths compute it (for tests).
float lf_exp(float x);

#ifdef __cplusplus
}
#endif
#endif
