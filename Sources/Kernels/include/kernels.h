// Kernels: the math of a Llama block on float buffers, each layer a *_forward / *_backward pair
// (llm.c style: the backward's arguments mirror the forward's, gradients are named d*, and gradient
// outputs are ACCUMULATED (+=) so that several uses of one parameter add up).
//
// All buffers are row-major float32. Shapes are given as comments: (T, C) = T rows of C floats.
// The linear layers' products go through cblas_sgemm (or the bf16 kernels of compact.h); attention
// has its own fused kernels (learner_fused.c).
#ifndef SELM_KERNELS_H
#define SELM_KERNELS_H
#include <stddef.h>
#include <stdint.h>
#include "compact.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// OpenBLAS control

/// The name of the OpenBLAS kernel core in use ("Haswell", "Zen", "SkylakeX", "Prescott", ...).
const char *kernels_blas_core(void);
/// Number of threads OpenBLAS uses for one call.
int kernels_blas_threads(void);
void kernels_set_blas_threads(int n);
/// The best OpenBLAS core name this CPU supports (by cpuid), or NULL when the CPU is not x86-64.
/// "Cooperlake" needs AVX-512 F/BW/DQ/VL and AVX512_BF16 (SkylakeX's sgemm, what OpenBLAS detects on Zen 4:
/// README "OpenBLAS core"), "SkylakeX" AVX-512 F/BW/DQ/VL, "Haswell" AVX2+FMA, else "Sandybridge".
const char *kernels_best_core_for_cpu(void);
/// A rough rank of a core's speed class, used to decide whether OpenBLAS fell back to a slower core
/// than the CPU supports: 0 = unknown/generic, 1 = SSE-era, 2 = AVX, 3 = AVX2, 4 = AVX-512,
/// 5 = AVX-512 with BF16 (Cooperlake, SapphireRapids).
int kernels_core_rank(const char *core);

// ---------------------------------------------------------------------------------------------
// Sharing the BLAS between compute threads (the engine's and the learner's).
//
// OpenBLAS keeps one thread pool per process. With sharing on, every BLAS call of every thread runs
// under one lock, so each call gets all BLAS threads and calls of different threads interleave at
// call granularity; low-priority threads split their big products into row chunks of at most
// `max_chunk_flops` (rows are independent, so results change only by float rounding: OpenBLAS rounds
// edge tiles differently) so a high-priority thread waits at most one chunk. Modes: NONE (no lock: one compute thread, or threads that each run single-threaded
// BLAS), PRIORITY (high-priority waiters go first: rollout priority), FIFO (first come, first served).
// ADAPTIVE takes no lock: while two compute threads are inside a forward/backward pass each BLAS call
// runs on one core (one BLAS thread each, side by side); while only one is, it gets all BLAS threads.
enum { KERNELS_SHARING_NONE = 0, KERNELS_SHARING_PRIORITY = 1, KERNELS_SHARING_FIFO = 2, KERNELS_SHARING_ADAPTIVE = 3 };
void kernels_set_sharing(int mode, double max_chunk_flops);
int kernels_sharing_mode(void);
/// Marks the calling thread high (1) or low (0) priority for KERNELS_SHARING_PRIORITY. Default: high.
void kernels_set_thread_priority(int high);
/// A compute thread enters before a forward or backward pass and exits after it (ADAPTIVE mode
/// counts them to choose the BLAS thread count). Nestable per thread.
void kernels_compute_enter(void);
void kernels_compute_exit(void);
/// Seconds the calling thread has spent waiting for the BLAS lock (for measurements).
double kernels_thread_wait_seconds(void);
/// Seconds the calling thread has spent inside BLAS calls (sgemm, sgemv), for measurements.
double kernels_thread_blas_seconds(void);
/// Seconds the calling thread has spent inside the linear layers' products (matmul_forward,
/// matmul_backward and their _bf16 forms; attention's own products are not counted), for measurements.
double kernels_thread_product_seconds(void);
/// Seconds the calling thread has spent in each pass of the learner outside those products (for
/// bench-learner's breakdown): the functions of this header named in the comments, timed as wholes
/// (their helper thread's share included).
enum {
    KS_ATTENTION_FWD = 0,   // attention_forward, attention_forward_batch
    KS_ATTENTION_BWD,       // attention_backward_batch
    KS_RMSNORM_FWD,         // rmsnorm_forward
    KS_RMSNORM_BWD,         // rmsnorm_backward, rmsnorm_apply (the backward's recomputation)
    KS_SWIGLU_FWD,          // swiglu_forward
    KS_SWIGLU_BWD,          // swiglu_backward
    KS_ROPE,                // rope_forward, rope_backward
    KS_LOGSOFTMAX_FWD,      // logprob_gather_forward
    KS_LOGSOFTMAX_BWD,      // logprob_gather_backward
    KS_EMBEDDING,           // embedding_forward, embedding_backward
    KS_GATHER,              // gather_rows
    KS_OPTIMIZER,           // adamw_update, sum_squares
    KS_COUNT
};
double kernels_thread_section_seconds(int section);
const char *kernels_section_name(int section);

// ---------------------------------------------------------------------------------------------
// Matrix multiply: out (T, OC) = inp (T, C) · weight (OC, C)^T   (PyTorch nn.Linear, no bias)
// accumulate != 0 adds into out instead of overwriting.  Every product goes through OpenBLAS: sgemm, or
// sgemv when T == 1 (a matrix-vector product; sgemm would pack the whole weight matrix first).
void matmul_forward(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate);
// The same product with a compact weight (compact.h: CK_BF16 or CK_Q8, OC = w->N rows of C = w->K):
// ck_linear, sharing the cores with the other compute thread as the BLAS does (kernels_set_sharing):
// ADAPTIVE runs it on one kernel thread while two compute threads are inside a pass and on all of
// them otherwise; PRIORITY and FIFO run it under the BLAS lock; NONE as it is (split: the kernel pool
// is set to one thread with ck_set_threads(1), as OpenBLAS is). Counted in
// kernels_thread_blas_seconds. Thread: any.
void compact_linear_forward(float *out, const float *inp, const ck_weights *w, int T, int accumulate);
/// Threads the calling thread's last compact_linear_forward was allowed (for tests and benchmarks).
int kernels_compact_last_threads(void);
// dinp (T, C) += dout (T, OC) · weight (OC, C);   dweight (OC, C) += dout^T · inp.   Either may be NULL.
void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                     int T, int C, int OC);

// matmul_forward / matmul_backward with bf16 operands and f32 accumulation (ck_matmul_*_bf16,
// compact.h), shared between compute threads as compact_linear_forward is: the learner's
// `--precision bf16` products. Counted in kernels_thread_blas_seconds. Thread: any.
void matmul_forward_bf16(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate);
void matmul_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          int T, int C, int OC);

// ---------------------------------------------------------------------------------------------
// Embedding lookup: out (T, C) = table[tokens[t]]
void embedding_forward(float *out, const int32_t *tokens, const float *table, int T, int C);
// dtable[tokens[t]] += dout[t]
void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int T, int C);

// ---------------------------------------------------------------------------------------------
// RMSNorm (Llama): out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps).  rstd: (T) saved.
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int T, int C, float eps);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int T, int C);
// out = inp * rstd * weight again from the forward's rstd: the forward's output, bit for bit (the
// learner recomputes the norm outputs in the backward instead of keeping them per layer).
void rmsnorm_apply(float *out, const float *inp, const float *weight, const float *rstd, int T, int C);

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, Hugging Face "rotate_half" layout: within each head, element i pairs
// with element i + hd/2.  cos/sin: (T, hd/2) per token, from rope_tables().  x: (T, rowStride), heads
// at column h*hd for h < nHeads.  Backward rotates the gradient by the opposite angle.
void rope_tables(float *cos_out, float *sin_out, const int32_t *positions, int T, int hd, float theta);
void rope_forward(float *x, const float *cos_t, const float *sin_t, int T, int nHeads, int hd, int rowStride);
void rope_backward(float *dx, const float *cos_t, const float *sin_t, int T, int nHeads, int hd, int rowStride);

// ---------------------------------------------------------------------------------------------
// Causal multi-head attention with grouped KV heads for ONE sequence.
// n query tokens at positions p0 .. p0+n-1 attend to L = p0 + n keys (positions 0 .. L-1).
//   q     (n, qStride)   query heads at columns h*hd, h < nH          (after RoPE)
//   k, v  (L, kvStride)  key/value heads at columns g*hd, g < nKV     (after RoPE for k)
//   out   (n, oStride)   head outputs at columns h*hd
//   probs (nKV, n*G, L)  scratch (G = nH/nKV) for decoding sizes (n*G <= 8 query rows per KV group:
//                        direct dot products); larger ones run the fused kernel of learner_fused.c
//                        over chunks of query tokens, on the calling thread and kernels_parallel's
//                        helper.
//   scratch              attention_scratch_floats(n, nH, hd) floats.
size_t attention_scratch_floats(int n, int nH, int hd);
void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                       int n, int p0, int nH, int nKV, int hd, int qStride, int kvStride, int oStride,
                       float *scratch);
// The learner's attention: the sequences of a batch laid end to end (sequence s is rows
// tokenStart[s] ..< tokenStart[s] + count[s] of q, k, v, out; every one starts at position 0), each
// (sequence, KV group, chunk of query tokens) a task of the fused kernel, spread over the calling
// thread and kernels_parallel's helper (results do not depend on the split). Bit for bit what
// attention_forward computes for each sequence alone. Also writes lse (T, nH): each query row's
// log Σ_j exp(q·k_j/√hd), all the backward keeps of the softmax.
void attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v,
                             const int32_t *tokenStart, const int32_t *count, int nSeq, int nH, int nKV, int hd,
                             int qStride, int kvStride, int oStride);
// Its gradients, one fused task per (sequence, KV group): dq (T, qStride), dk/dv (T, kvStride)
// ACCUMULATED, from dout, the forward's out and lse (the probabilities are recomputed).
void attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                              const float *q, const float *k, const float *v,
                              const int32_t *tokenStart, const int32_t *count, int nSeq, int nH, int nKV, int hd,
                              int qStride, int kvStride, int oStride);

// ---------------------------------------------------------------------------------------------
// SwiGLU: h = silu(gate) * up, silu(x) = x * sigmoid(x).  All (N) with N = T * hidden.
void swiglu_forward(float *h, const float *gate, const float *up, size_t N);
// dgate, dup are WRITTEN (not accumulated: gate and up feed nothing else, so the backward need not
// clear them first).
void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t N);

// ---------------------------------------------------------------------------------------------
// Data-parallel loops outside BLAS: split [0, n) over the calling thread and one helper thread
// (this machine class has two cores; OpenBLAS's own threads idle between BLAS calls). Falls back to
// the calling thread alone for small n or when the helper is busy with another caller's loop.
typedef void (*kernels_range_fn)(void *ctx, size_t begin, size_t end);
void kernels_parallel(size_t n, size_t min_parallel, kernels_range_fn fn, void *ctx);

// AdamW (PyTorch semantics) over a contiguous segment: p = p·shrink − step·m̂/(sqrt(v̂)+eps) with
// m, v updated in place, for the gradient g·gscale (gradient clipping's factor, 1 for none; the
// same float product a separate scaling pass would store).  shrink = 1 − lr·wd (1 for no decay),
// step = lr / (1 − β1^t), bc2sqrt = sqrt(1 − β2^t).
void adamw_update(float *p, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                  float eps, float shrink, float step, float bc2sqrt, float gscale);
// Sum of squares of n floats (double accumulation over fixed chunks, so the same whatever the
// thread split), parallel.
double sum_squares(const float *x, size_t n);

// ---------------------------------------------------------------------------------------------
// Elementwise
// out = a + b (out may alias a or b)
void add_forward(float *out, const float *a, const float *b, size_t N);
// Copy rows: dst[i] = src[rows[i]]  (C floats each)
void gather_rows(float *dst, const float *src, const int32_t *rows, int n, int C);

// ---------------------------------------------------------------------------------------------
// Log-softmax.  For each row r of logits (R, V): lse[r] = log(sum(exp(logits[r]))) computed stably.
void logsumexp_rows(float *lse, const float *logits, int R, int V);
// logp[r] = logits[r, targets[r]] - lse[r]
void logprob_gather_forward(float *logp, float *lse, const float *logits, const int32_t *targets, int R, int V);
// dlogits[r] (overwritten) = dlogp[r] * (onehot(targets[r]) - softmax(logits[r]))
void logprob_gather_backward(float *dlogits, const float *dlogp, const float *logits, const float *lse,
                             const int32_t *targets, int R, int V);

// ---------------------------------------------------------------------------------------------
// Sampling (sampling.c): one logits row at a time, AVX-512 when the CPU has it, libm otherwise
// (the two agree to a few parts in 10⁸ per weight).
// The largest of x[0 ..< n] (−inf for n = 0).
float kernels_max(const float *x, int n);
// Σ exp((x[i] − m)·s) in double precision; each term is also written to w[i] when w is not NULL.
// Meant for m ≥ max x and s > 0 (every term in [0, 1]).
double kernels_exp_sum(const float *x, int n, float m, float s, float *w);
// log Σ exp(x), computed stably: max + log Σ exp(x − max).
float kernels_logsumexp(const float *x, int n);
// log softmax(x)[token] = x[token] − kernels_logsumexp(x, n) (so x[token] − log_prob gives the
// same log-sum-exp back for the other tokens' log-probabilities).
float kernels_log_prob(const float *x, int n, int token);
// Entropy of softmax(x) in nats, −Σ p log p = log S − (Σ e·d)/S with d = x − max, e = exp(d),
// S = Σ e (sums in double precision; a term exp(d) below e^−104 counts as 0).
double kernels_entropy(const float *x, int n);

#ifdef __cplusplus
}
#endif
#endif
