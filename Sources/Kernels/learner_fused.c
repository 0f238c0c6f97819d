// Vectorised exp-based passes of the learner's forward and backward (issue 14, item 2): the
// log-softmax rows over the vocabulary (log-sum-exp, and the gradient of the gathered log-probs)
// and SwiGLU forward/backward. They were scalar expf loops: for SmolLM2's benchmark step
// (1 152 response rows × 49 152 logits, 1 536 tokens × 1 536 hidden × 30 layers) about 0.4 G
// exponentials per step. Same results as the scalar loops within a few ulp (lf_exp: |rel err|
// ≤ 2 ulp on [-87, 88], exp(x) = 0 below -87.3, +Inf above 88.7 and for +Inf, NaN for NaN).
//
// Implementation by ck_isa() (compact.h; SELM_KERNELS=scalar|avx2 caps it): AVX-512F at
// avx512vnni and above, AVX2+FMA at avx2, else the scalar libm loops.
#include "learner_fused.h"
#include "compact.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>

#define T512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define TAVX2 __attribute__((target("avx2,fma")))

// exp(x) = 2^n · e^r, n = round(x·log2 e), r = x − n·ln 2 (two-part ln 2), e^r by a degree-6
// polynomial on [−ln2/2, ln2/2] (Cephes expf coefficients).
#define LF_EXP_HI 88.7228390f
#define LF_EXP_LO -87.3365448f

static inline float lf_exp_scalar(float x) { return expf(x); }

T512 static inline __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(LF_EXP_HI), lo = _mm512_set1_ps(LF_EXP_LO);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512 y = _mm512_scalef_ps(p, n);
    y = _mm512_mask_mov_ps(y, under, _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, over, _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, nan, x);
}

TAVX2 static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(LF_EXP_HI), lo = _mm256_set1_ps(LF_EXP_LO);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n: n is in [−126, 128] after the clamp; build it in two halves so 2^128 does not overflow
    // the exponent field (x near LF_EXP_HI).
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i h1 = _mm256_srai_epi32(ni, 1), h2 = _mm256_sub_epi32(ni, h1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h2, _mm256_set1_epi32(127)), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
    return _mm256_blendv_ps(y, x, nan);
}

static int lf_level(void) {
    int l = ck_isa();
    return l >= CK_ISA_AVX512VNNI ? 2 : l >= CK_ISA_AVX2 ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// max and Σ exp(x − m) of one row

T512 static float max512(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    float r = _mm512_reduce_max_ps(m);
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}
T512 static double sumexp512(const float *x, int n, float m) {
    __m512 vm = _mm512_set1_ps(m), s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
        s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm)));
    }
    double s = (double)_mm512_reduce_add_ps(s0) + (double)_mm512_reduce_add_ps(s1);
    for (; i < n; i++) s += expf(x[i] - m);
    return s;
}
TAVX2 static float max256(const float *x, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float t[8];
    _mm256_storeu_ps(t, m);
    float r = t[0];
    for (int k = 1; k < 8; k++) r = t[k] > r ? t[k] : r;
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}
TAVX2 static double sumexp256(const float *x, int n, float m) {
    __m256 vm = _mm256_set1_ps(m), s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
        s1 = _mm256_add_ps(s1, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm)));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(s0, s1));
    double s = 0;
    for (int k = 0; k < 8; k++) s += t[k];
    for (; i < n; i++) s += expf(x[i] - m);
    return s;
}

float lf_logsumexp_row(const float *x, int n) {
    int lv = lf_level();
    float mx;
    double sum;
    if (lv == 2) { mx = max512(x, n); sum = sumexp512(x, n, mx); }
    else if (lv == 1) { mx = max256(x, n); sum = sumexp256(x, n, mx); }
    else {
        mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += lf_exp_scalar(x[i] - mx);
    }
    return mx + (float)log(sum);
}

// ---------------------------------------------------------------------------------------------
// d = s · exp(x − l)

T512 static void scaledexp512(float *d, const float *x, int n, float l, float s) {
    __m512 vl = _mm512_set1_ps(l), vs = _mm512_set1_ps(s);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_mul_ps(vs, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vl))));
    for (; i < n; i++) d[i] = s * expf(x[i] - l);
}
TAVX2 static void scaledexp256(float *d, const float *x, int n, float l, float s) {
    __m256 vl = _mm256_set1_ps(l), vs = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_mul_ps(vs, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vl))));
    for (; i < n; i++) d[i] = s * expf(x[i] - l);
}

void lf_scaled_exp_row(float *d, const float *x, int n, float l, float s) {
    int lv = lf_level();
    if (lv == 2) scaledexp512(d, x, n, l, s);
    else if (lv == 1) scaledexp256(d, x, n, l, s);
    else for (int i = 0; i < n; i++) d[i] = s * lf_exp_scalar(x[i] - l);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: h = silu(g)·u;  backward: du += dh·silu(g), dg += dh·u·σ(g)·(1 + g·(1 − σ(g)))

// The elementwise passes treat their last partial vector with masks (AVX-512) or through a padded
// copy (AVX2), never with a scalar formula: every element gets the same arithmetic wherever a
// thread split puts it (kernels_parallel halves N), so results do not depend on the split — an
// exact resume recomputes activations in batches of another size and must get the same bits.
T512 static inline void swiglu_fwd16(float *h, const float *gate, const float *up, __mmask16 k) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 g = _mm512_maskz_loadu_ps(k, gate);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(h, k, _mm512_mul_ps(_mm512_mul_ps(g, s), _mm512_maskz_loadu_ps(k, up)));
}
T512 static void swiglu_fwd512(float *h, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) swiglu_fwd16(h + i, gate + i, up + i, 0xFFFF);
    if (i < n) swiglu_fwd16(h + i, gate + i, up + i, (__mmask16)((1u << (n - i)) - 1));
}
TAVX2 static inline void swiglu_fwd8(float *h, const float *gate, const float *up) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 g = _mm256_loadu_ps(gate);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(h, _mm256_mul_ps(_mm256_mul_ps(g, s), _mm256_loadu_ps(up)));
}
TAVX2 static void swiglu_fwd256(float *h, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) swiglu_fwd8(h + i, gate + i, up + i);
    if (i < n) {
        float hb[8] = {0}, gb[8] = {0}, ub[8] = {0};
        for (size_t k = 0; k < n - i; k++) { gb[k] = gate[i + k]; ub[k] = up[i + k]; }
        swiglu_fwd8(hb, gb, ub);
        for (size_t k = 0; k < n - i; k++) h[i + k] = hb[k];
    }
}

void lf_swiglu_forward(float *h, const float *gate, const float *up, size_t n) {
    int lv = lf_level();
    if (lv == 2) swiglu_fwd512(h, gate, up, n);
    else if (lv == 1) swiglu_fwd256(h, gate, up, n);
    else for (size_t i = 0; i < n; i++) { float g = gate[i]; h[i] = g / (1.0f + lf_exp_scalar(-g)) * up[i]; }
}

T512 static inline void swiglu_bwd16(float *dgate, float *dup, const float *dh, const float *gate, const float *up, __mmask16 k,
                                     int acc) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 g = _mm512_maskz_loadu_ps(k, gate), d = _mm512_maskz_loadu_ps(k, dh), u = _mm512_maskz_loadu_ps(k, up);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    __m512 silu = _mm512_mul_ps(g, s);
    __m512 up0 = acc ? _mm512_maskz_loadu_ps(k, dup) : _mm512_setzero_ps();
    __m512 g0 = acc ? _mm512_maskz_loadu_ps(k, dgate) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(dup, k, _mm512_fmadd_ps(d, silu, up0));
    __m512 t = _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one);   // 1 + g(1 − s)
    _mm512_mask_storeu_ps(dgate, k, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), s), t, g0));
}
T512 static void swiglu_bwd512(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n, int acc) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) swiglu_bwd16(dgate + i, dup + i, dh + i, gate + i, up + i, 0xFFFF, acc);
    if (i < n) swiglu_bwd16(dgate + i, dup + i, dh + i, gate + i, up + i, (__mmask16)((1u << (n - i)) - 1), acc);
}
TAVX2 static inline void swiglu_bwd8(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int acc) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 g = _mm256_loadu_ps(gate), d = _mm256_loadu_ps(dh), u = _mm256_loadu_ps(up);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    __m256 silu = _mm256_mul_ps(g, s);
    __m256 up0 = acc ? _mm256_loadu_ps(dup) : _mm256_setzero_ps(), g0 = acc ? _mm256_loadu_ps(dgate) : _mm256_setzero_ps();
    _mm256_storeu_ps(dup, _mm256_fmadd_ps(d, silu, up0));
    __m256 t = _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one);
    _mm256_storeu_ps(dgate, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(d, u), s), t, g0));
}
TAVX2 static void swiglu_bwd256(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n, int acc) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) swiglu_bwd8(dgate + i, dup + i, dh + i, gate + i, up + i, acc);
    if (i < n) {
        float a[8] = {0}, b[8] = {0}, c[8] = {0}, e[8] = {0}, f[8] = {0};
        const size_t r = n - i;
        for (size_t k = 0; k < r; k++) {
            if (acc) { a[k] = dgate[i + k]; b[k] = dup[i + k]; }
            c[k] = dh[i + k]; e[k] = gate[i + k]; f[k] = up[i + k];
        }
        swiglu_bwd8(a, b, c, e, f, acc);
        for (size_t k = 0; k < r; k++) { dgate[i + k] = a[k]; dup[i + k] = b[k]; }
    }
}

void lf_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n,
                        int accumulate) {
    int lv = lf_level();
    if (lv == 2) swiglu_bwd512(dgate, dup, dh, gate, up, n, accumulate);
    else if (lv == 1) swiglu_bwd256(dgate, dup, dh, gate, up, n, accumulate);
    else for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + lf_exp_scalar(-g));
        float u0 = accumulate ? dup[i] : 0.0f, g0 = accumulate ? dgate[i] : 0.0f;
        dup[i] = u0 + dh[i] * g * s;
        dgate[i] = g0 + dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

float lf_exp(float x) {
    float in[16] = {x}, out[16];
    int lv = lf_level();
    if (lv == 0) return expf(x);
    lf_scaled_exp_row(out, in, 16, 0.0f, 1.0f);
    return out[0];
}

// ---------------------------------------------------------------------------------------------
// Fused causal attention (issue 14, item 2)
//
// One KV group g of one sequence: query rows r = t·G + j (token t at position p0 + t, head g·G + j),
// keys and values 0 … p0 + t (row r's `valid` = p0 + r/G + 1 keys). Everything in f32, in one pass
// per block of query rows, with no BLAS calls: the training batch has per (sequence, KV group) three
// products of 381 × 127 × 64 (SmolLM2's 128-token sequences) forward and four backward, each an
// OpenBLAS call whose packing and thread hand-off cost more than its arithmetic, plus a softmax pass
// of scalar expf. The backward recomputes the probabilities from the scores and the forward's
// log-sum-exp (P = exp(scale·q·k − lse), the same bits the forward computed), so nothing of size
// sequence² is kept between the passes; the softmax gradient's row term is D = dO·O (FlashAttention's
// identity Σ_j P_j dP_j = dO·O).
//
// Every output element is accumulated in a fixed order that does not depend on how rows or keys are
// blocked (scores: over the head dimension in order; P·V and dS·K: over the row's valid keys in
// order; Pᵀ·dO and dSᵀ·Q: over the key's query rows in order), so a row's results do not depend on
// which rows share its block, and masked positions are never read.
//
// Paths by lf_level(): AVX-512F when the head size is a multiple of 16, else the portable loops built
// for AVX2+FMA or plain (the exponentials by exp16 / exp8 / expf).

#include <stdlib.h>
#include <string.h>
#include <pthread.h>

// Per-thread workspace (the learner's thread and kernels_parallel's helper), grown on demand, freed
// when the thread ends.
static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
typedef struct { float *p; size_t cap; } lf_ws;
static void ws_free(void *w) { lf_ws *x = w; free(x->p); free(x); }
static void ws_init(void) { pthread_key_create(&ws_key, ws_free); }
float *lf_workspace(size_t floats) {
    pthread_once(&ws_once, ws_init);
    lf_ws *w = pthread_getspecific(ws_key);
    if (!w) { w = calloc(1, sizeof *w); pthread_setspecific(ws_key, w); }
    if (floats > w->cap) {
        free(w->p);
        size_t bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
        w->p = aligned_alloc(64, bytes);
        w->cap = w->p ? floats : 0;
    }
    return w->p;
}

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

#define ATT_RB 32       // query rows per block (scores for ATT_RB rows × all their keys at once)
#define ATT_KB 32       // keys are padded to a multiple of this

// ----- AVX-512: scores of 8 rows × 32 keys: S[r][j] = scale · Σ_i A[r][i] · Bt[i][j]
T512 static void sc8x32(float *S, int ls, const float *A, int hd, const float *Bt, int lp, int j0, float scale) {
    __m512 c[8][2];
    for (int r = 0; r < 8; r++) { c[r][0] = _mm512_setzero_ps(); c[r][1] = _mm512_setzero_ps(); }
    for (int i = 0; i < hd; i++) {
        __m512 b0 = _mm512_load_ps(Bt + (size_t)i * lp + j0), b1 = _mm512_load_ps(Bt + (size_t)i * lp + j0 + 16);
        for (int r = 0; r < 8; r++) {
            __m512 a = _mm512_set1_ps(A[(size_t)r * hd + i]);
            c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
        }
    }
    __m512 s = _mm512_set1_ps(scale);
    for (int r = 0; r < 8; r++) {
        _mm512_store_ps(S + (size_t)r * ls + j0, _mm512_mul_ps(c[r][0], s));
        _mm512_store_ps(S + (size_t)r * ls + j0 + 16, _mm512_mul_ps(c[r][1], s));
    }
}

// ----- AVX-512: O[r] (=, or += with acc) Σ_{j < valid[r]} W[r][j] · B[j] for 4 rows, NC vectors of
// the head dimension starting at column c0 (B rows at stride bs).
#define T512_INLINE T512 static inline __attribute__((always_inline))
T512_INLINE void rows4(float *O, int os, const float *W, int ws, const float *B, int bs, const int *valid,
                       int c0, const int NC, int acc) {
    __m512 a[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < NC; c++)
            a[r][c] = acc ? _mm512_loadu_ps(O + (size_t)r * os + c0 + 16 * c) : _mm512_setzero_ps();
    int vmin = valid[0];
    for (int r = 1; r < 4; r++) vmin = valid[r] < vmin ? valid[r] : vmin;
    for (int j = 0; j < vmin; j++) {
        __m512 b[4];
        for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(B + (size_t)j * bs + c0 + 16 * c);
        for (int r = 0; r < 4; r++) {
            __m512 w = _mm512_set1_ps(W[(size_t)r * ws + j]);
            for (int c = 0; c < NC; c++) a[r][c] = _mm512_fmadd_ps(w, b[c], a[r][c]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int j = vmin; j < valid[r]; j++) {
            __m512 w = _mm512_set1_ps(W[(size_t)r * ws + j]);
            for (int c = 0; c < NC; c++) a[r][c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(B + (size_t)j * bs + c0 + 16 * c), a[r][c]);
        }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(O + (size_t)r * os + c0 + 16 * c, a[r][c]);
}
T512 static void rows4_all(float *O, int os, const float *W, int ws, const float *B, int bs, const int *valid, int hd, int acc) {
    for (int c0 = 0; c0 < hd; c0 += 64) {
        switch ((hd - c0) >= 64 ? 4 : (hd - c0) / 16) {
        case 4: rows4(O, os, W, ws, B, bs, valid, c0, 4, acc); break;
        case 3: rows4(O, os, W, ws, B, bs, valid, c0, 3, acc); break;
        case 2: rows4(O, os, W, ws, B, bs, valid, c0, 2, acc); break;
        default: rows4(O, os, W, ws, B, bs, valid, c0, 1, acc); break;
        }
    }
}

// ----- AVX-512: X[j] += Σ_{r ∈ [first[j], r1)} W[r][j] · A[r] for 4 keys j0 … j0+3 (rows r of the
// block [r0, r1) at W + (r − r0)·ws, A + (r − r0)·hd; first[k] ≥ r0 is key j0+k's first row).
T512_INLINE void keys4(float *X, const float *W, int ws, const float *A, int hd, int r0, int r1, const int *first,
                       int j0, int c0, const int NC) {
    __m512 a[4][4];
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < NC; c++) a[k][c] = _mm512_loadu_ps(X + (size_t)(j0 + k) * hd + c0 + 16 * c);
    int fmax = first[3];   // first[] is non-decreasing
    for (int k = 0; k < 3; k++)
        for (int r = first[k]; r < fmax && r < r1; r++) {
            __m512 w = _mm512_set1_ps(W[(size_t)(r - r0) * ws + j0 + k]);
            for (int c = 0; c < NC; c++) a[k][c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(A + (size_t)(r - r0) * hd + c0 + 16 * c), a[k][c]);
        }
    for (int r = fmax; r < r1; r++) {
        __m512 x[4];
        for (int c = 0; c < NC; c++) x[c] = _mm512_loadu_ps(A + (size_t)(r - r0) * hd + c0 + 16 * c);
        const float *wr = W + (size_t)(r - r0) * ws + j0;
        for (int k = 0; k < 4; k++) {
            __m512 w = _mm512_set1_ps(wr[k]);
            for (int c = 0; c < NC; c++) a[k][c] = _mm512_fmadd_ps(w, x[c], a[k][c]);
        }
    }
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(X + (size_t)(j0 + k) * hd + c0 + 16 * c, a[k][c]);
}
T512 static void keys4_all(float *X, const float *W, int ws, const float *A, int hd, int r0, int r1, const int *first, int j0) {
    for (int c0 = 0; c0 < hd; c0 += 64) {
        switch ((hd - c0) >= 64 ? 4 : (hd - c0) / 16) {
        case 4: keys4(X, W, ws, A, hd, r0, r1, first, j0, c0, 4); break;
        case 3: keys4(X, W, ws, A, hd, r0, r1, first, j0, c0, 3); break;
        case 2: keys4(X, W, ws, A, hd, r0, r1, first, j0, c0, 2); break;
        default: keys4(X, W, ws, A, hd, r0, r1, first, j0, c0, 1); break;
        }
    }
}

// ----- softmax pieces of one row: p_j = exp(x_j − l) (the backward's probabilities from the forward's lse)
T512 static void pexp512(float *p, const float *x, int n, float l) {
    __m512 vl = _mm512_set1_ps(l);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(p + i, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vl)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(p + i, k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vl)));
    }
}
TAVX2 static void pexp256(float *p, const float *x, int n, float l) {
    __m256 vl = _mm256_set1_ps(l);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vl)));
    if (i < n) {
        float in[8] = {0}, out[8];
        for (int k = 0; k < n - i; k++) in[k] = x[i + k] - l;
        _mm256_storeu_ps(out, exp8(_mm256_loadu_ps(in)));
        for (int k = 0; k < n - i; k++) p[i + k] = out[k];
    }
}
static void pexp_scalar(float *p, const float *x, int n, float l) { for (int i = 0; i < n; i++) p[i] = expf(x[i] - l); }

// The forward's softmax in place: x_j ← exp(x_j − max) / Σ, returning lse = max + log Σ.
T512 static float softmax512(float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
    if (i < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i));
    float mx = _mm512_reduce_max_ps(m);
    __m512 vm = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (i < n) {
        __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm)));
        _mm512_mask_storeu_ps(x + i, k, e);
        s = _mm512_add_ps(s, e);
    }
    float sum = _mm512_reduce_add_ps(s);
    __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    return mx + logf(sum);
}
TAVX2 static float softmax256(float *x, int n) {
    float mx = max256(x, n);
    __m256 vm = _mm256_set1_ps(mx), s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        s = _mm256_add_ps(s, e);
    }
    float t[8];
    _mm256_storeu_ps(t, s);
    float sum = ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
    if (i < n) {
        float in[8], out[8];
        for (int k = 0; k < 8; k++) in[k] = i + k < n ? x[i + k] - mx : -INFINITY;
        _mm256_storeu_ps(out, exp8(_mm256_loadu_ps(in)));
        for (int k = 0; k < n - i; k++) { x[i + k] = out[k]; sum += out[k]; }
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) x[j] *= inv;
    return mx + logf(sum);
}
static float softmax_scalar(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float s = 0.0f;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); s += x[i]; }
    const float inv = 1.0f / s;
    for (int i = 0; i < n; i++) x[i] *= inv;
    return mx + logf(s);
}
static inline float row_softmax(int lv, float *x, int n) {
    return lv == 2 ? softmax512(x, n) : lv == 1 ? softmax256(x, n) : softmax_scalar(x, n);
}
static inline void row_pexp(int lv, float *p, const float *x, int n, float l) {
    if (lv == 2) pexp512(p, x, n, l); else if (lv == 1) pexp256(p, x, n, l); else pexp_scalar(p, x, n, l);
}

// ----- layout helpers
// Rows [r0, r1) of group g into a contiguous (r1 − r0, hd) matrix (src: sequence base, row stride).
static void rows_gather(float *dst, const float *src, int r0, int r1, int g, int G, int hd, int stride) {
    for (int r = r0; r < r1; r++)
        memcpy(dst + (size_t)(r - r0) * hd, src + (size_t)(r / G) * stride + (size_t)(g * G + r % G) * hd, sizeof(float) * hd);
}
// Kt (hd, lp) = the group's keys 0 … L−1 transposed, zero past L.
static void keys_transpose(float *Kt, const float *k, int L, int lp, int g, int hd, int kvStride) {
    for (int i = 0; i < hd; i++) {
        float *row = Kt + (size_t)i * lp;
        const float *src = k + (size_t)g * hd + i;
        for (int j = 0; j < L; j++) row[j] = src[(size_t)j * kvStride];
        for (int j = L; j < lp; j++) row[j] = 0.0f;
    }
}

// ----- portable loops (built twice: for AVX2+FMA and plain)
#define PORTABLE static inline __attribute__((always_inline))
// S[r][j] = scale · Σ_i A[r][i] · Bt[i][j] for rows [0, nr), keys [0, nj).
PORTABLE void sc_portable(float *S, int ls, const float *A, int nr, int hd, const float *Bt, int lp, int nj, float scale) {
    for (int r = 0; r < nr; r++) {
        float *s = S + (size_t)r * ls;
        for (int j = 0; j < nj; j++) s[j] = 0.0f;
        for (int i = 0; i < hd; i++) {
            const float a = A[(size_t)r * hd + i], *b = Bt + (size_t)i * lp;
            for (int j = 0; j < nj; j++) s[j] += a * b[j];
        }
        for (int j = 0; j < nj; j++) s[j] *= scale;
    }
}
// O[r] (= or +=) Σ_{j < valid} W[r][j] · B[j]   (one row)
PORTABLE void row_portable(float *o, const float *w, const float *B, int bs, int valid, int hd, int acc) {
    if (!acc) for (int c = 0; c < hd; c++) o[c] = 0.0f;
    for (int j = 0; j < valid; j++) {
        const float x = w[j], *b = B + (size_t)j * bs;
        for (int c = 0; c < hd; c++) o[c] += x * b[c];
    }
}

// ----- forward of query rows [ra, rb) (tokens ra/G … of one group)
typedef struct {
    const float *q, *k, *v;
    float *out, *lse;
    int p0, g, G, nH, hd, qStride, kvStride, oStride, lseStride;
    float scale;
} att_fwd_args;

PORTABLE void att_fwd_body(const att_fwd_args *a, int ra, int rb, int lv) {
    const int G = a->G, hd = a->hd, p0 = a->p0;
    const int L = p0 + (rb - 1) / G + 1, lp = round_up(L, ATT_KB);
    const int nr = rb - ra, mp = round_up(nr, ATT_RB);
    const int use512 = lv == 2 && hd % 16 == 0;
    float *ws = lf_workspace((size_t)2 * mp * hd + (size_t)hd * lp + (size_t)ATT_RB * lp + 64);
    float *Qg = ws, *Og = Qg + (size_t)mp * hd, *Kt = Og + (size_t)mp * hd, *S = Kt + (size_t)hd * lp;
    rows_gather(Qg, a->q, ra, rb, a->g, G, hd, a->qStride);
    memset(Qg + (size_t)nr * hd, 0, sizeof(float) * (size_t)(mp - nr) * hd);
    keys_transpose(Kt, a->k, L, lp, a->g, hd, a->kvStride);
    const float *vg = a->v + (size_t)a->g * hd;
    for (int b0 = 0; b0 < nr; b0 += ATT_RB) {
        const int nb = nr - b0 < ATT_RB ? nr - b0 : ATT_RB;
        const int vmax = p0 + (ra + b0 + nb - 1) / G + 1;
        const int nj = round_up(vmax, ATT_KB);
        if (use512) {
            for (int r8 = 0; r8 < ATT_RB; r8 += 8)
                for (int j0 = 0; j0 < nj; j0 += ATT_KB) sc8x32(S + (size_t)r8 * lp, lp, Qg + (size_t)(b0 + r8) * hd, hd, Kt, lp, j0, a->scale);
        } else {
            sc_portable(S, lp, Qg + (size_t)b0 * hd, nb, hd, Kt, lp, nj, a->scale);
        }
        int valid[ATT_RB];
        for (int i = 0; i < ATT_RB; i++) {
            int r = ra + b0 + i;
            valid[i] = i < nb ? p0 + r / G + 1 : 0;
            if (i >= nb) continue;
            float l = row_softmax(lv, S + (size_t)i * lp, valid[i]);
            if (a->lse) a->lse[(size_t)(r / G) * a->lseStride + a->g * G + r % G] = l;
        }
        if (use512) {
            for (int i = 0; i < ATT_RB; i += 4) rows4_all(Og + (size_t)(b0 + i) * hd, hd, S + (size_t)i * lp, lp, vg, a->kvStride, valid + i, hd, 0);
        } else {
            for (int i = 0; i < nb; i++) row_portable(Og + (size_t)(b0 + i) * hd, S + (size_t)i * lp, vg, a->kvStride, valid[i], hd, 0);
        }
    }
    for (int r = ra; r < rb; r++)
        memcpy(a->out + (size_t)(r / G) * a->oStride + (size_t)(a->g * G + r % G) * hd, Og + (size_t)(r - ra) * hd, sizeof(float) * hd);
}
T512 static void att_fwd_512(const att_fwd_args *a, int ra, int rb) { att_fwd_body(a, ra, rb, 2); }
TAVX2 static void att_fwd_avx2(const att_fwd_args *a, int ra, int rb) { att_fwd_body(a, ra, rb, 1); }
static void att_fwd_plain(const att_fwd_args *a, int ra, int rb) { att_fwd_body(a, ra, rb, 0); }

void lf_attention_forward_rows(float *out, float *lse, const float *q, const float *k, const float *v,
                               int t0, int t1, int p0, int g, int nH, int nKV, int hd,
                               int qStride, int kvStride, int oStride, int lseStride) {
    if (t1 <= t0) return;
    const int G = nH / nKV;
    att_fwd_args a = {q, k, v, out, lse, p0, g, G, nH, hd, qStride, kvStride, oStride, lseStride, 1.0f / sqrtf((float)hd)};
    int lv = lf_level();
    if (lv == 2 && hd % 16 == 0) att_fwd_512(&a, t0 * G, t1 * G);
    else if (lv >= 1) att_fwd_avx2(&a, t0 * G, t1 * G);
    else att_fwd_plain(&a, t0 * G, t1 * G);
}

// ----- backward of one group of one sequence (all n tokens)
typedef struct {
    const float *q, *k, *v, *dout, *out, *lse;
    float *dq, *dk, *dv;
    int n, p0, g, G, hd, qStride, kvStride, oStride, lseStride;
    float scale;
} att_bwd_args;

PORTABLE void att_bwd_body(const att_bwd_args *a, int lv) {
    const int G = a->G, hd = a->hd, p0 = a->p0, g = a->g;
    const int M = a->n * G, L = p0 + a->n, lp = round_up(L, ATT_KB), mp = round_up(M, ATT_RB);
    const int use512 = lv == 2 && hd % 16 == 0;
    const size_t need = (size_t)3 * mp * hd + 2 * (size_t)mp + (size_t)2 * hd * lp + (size_t)2 * lp * hd + (size_t)2 * ATT_RB * lp + 64;
    float *ws = lf_workspace(need);
    float *Qg = ws, *dOg = Qg + (size_t)mp * hd, *dQg = dOg + (size_t)mp * hd, *D = dQg + (size_t)mp * hd;
    float *lg = D + mp, *Kt = lg + mp, *Vt = Kt + (size_t)hd * lp, *dKa = Vt + (size_t)hd * lp, *dVa = dKa + (size_t)lp * hd;
    float *P = dVa + (size_t)lp * hd, *dS = P + (size_t)ATT_RB * lp;
    rows_gather(Qg, a->q, 0, M, g, G, hd, a->qStride);
    rows_gather(dOg, a->dout, 0, M, g, G, hd, a->oStride);
    memset(Qg + (size_t)M * hd, 0, sizeof(float) * (size_t)(mp - M) * hd);
    memset(dOg + (size_t)M * hd, 0, sizeof(float) * (size_t)(mp - M) * hd);
    memset(dQg, 0, sizeof(float) * (size_t)mp * hd);
    memset(dKa, 0, sizeof(float) * (size_t)2 * lp * hd);
    for (int r = 0; r < M; r++) {   // D_r = dO_r · O_r, lse_r
        const float *o = a->out + (size_t)(r / G) * a->oStride + (size_t)(g * G + r % G) * hd, *d = dOg + (size_t)r * hd;
        float s = 0.0f;
        for (int c = 0; c < hd; c++) s += d[c] * o[c];
        D[r] = s;
        lg[r] = a->lse[(size_t)(r / G) * a->lseStride + g * G + r % G];
    }
    keys_transpose(Kt, a->k, L, lp, g, hd, a->kvStride);
    keys_transpose(Vt, a->v, L, lp, g, hd, a->kvStride);
    const float *kg = a->k + (size_t)g * hd;
    for (int b0 = 0; b0 < M; b0 += ATT_RB) {
        const int nb = M - b0 < ATT_RB ? M - b0 : ATT_RB, b1 = b0 + nb;
        const int vmax = p0 + (b1 - 1) / G + 1, nj = round_up(vmax, ATT_KB);
        if (use512) {
            for (int r8 = 0; r8 < ATT_RB; r8 += 8)
                for (int j0 = 0; j0 < nj; j0 += ATT_KB) {
                    sc8x32(P + (size_t)r8 * lp, lp, Qg + (size_t)(b0 + r8) * hd, hd, Kt, lp, j0, a->scale);
                    sc8x32(dS + (size_t)r8 * lp, lp, dOg + (size_t)(b0 + r8) * hd, hd, Vt, lp, j0, 1.0f);
                }
        } else {
            sc_portable(P, lp, Qg + (size_t)b0 * hd, nb, hd, Kt, lp, nj, a->scale);
            sc_portable(dS, lp, dOg + (size_t)b0 * hd, nb, hd, Vt, lp, nj, 1.0f);
        }
        int valid[ATT_RB];
        for (int i = 0; i < ATT_RB; i++) {
            valid[i] = i < nb ? p0 + (b0 + i) / G + 1 : 0;
            float *p = P + (size_t)i * lp, *ds = dS + (size_t)i * lp;
            if (i < nb) {
                row_pexp(lv, p, p, valid[i], lg[b0 + i]);                       // P = exp(S − lse)
                const float d = D[b0 + i], sc = a->scale;
                for (int j = 0; j < valid[i]; j++) ds[j] = sc * p[j] * (ds[j] - d);   // dS·scale
            }
            for (int j = valid[i]; j < nj; j++) { p[j] = 0.0f; ds[j] = 0.0f; }
        }
        // dQ rows += dS·K;  dV[j] += Σ_r P[r][j]·dO[r];  dK[j] += Σ_r dS[r][j]·Q[r]
        // (key j has the rows r ≥ (j − p0)·G of this block)
        if (use512) {
            for (int i = 0; i < ATT_RB; i += 4) rows4_all(dQg + (size_t)(b0 + i) * hd, hd, dS + (size_t)i * lp, lp, kg, a->kvStride, valid + i, hd, 1);
            for (int j0 = 0; j0 < vmax; j0 += 4) {
                int first[4];
                for (int kk = 0; kk < 4; kk++) {
                    long f = (long)(j0 + kk - p0) * G;
                    first[kk] = f < b0 ? b0 : f > b1 ? b1 : (int)f;
                }
                keys4_all(dVa, P, lp, dOg + (size_t)b0 * hd, hd, b0, b1, first, j0);
                keys4_all(dKa, dS, lp, Qg + (size_t)b0 * hd, hd, b0, b1, first, j0);
            }
        } else {
            for (int i = 0; i < nb; i++) row_portable(dQg + (size_t)(b0 + i) * hd, dS + (size_t)i * lp, kg, a->kvStride, valid[i], hd, 1);
            for (int i = 0; i < nb; i++) {
                const float *p = P + (size_t)i * lp, *ds = dS + (size_t)i * lp, *dor = dOg + (size_t)(b0 + i) * hd, *qr = Qg + (size_t)(b0 + i) * hd;
                for (int j = 0; j < valid[i]; j++) {
                    float *xv = dVa + (size_t)j * hd, *xk = dKa + (size_t)j * hd;
                    const float pj = p[j], dj = ds[j];
                    for (int c = 0; c < hd; c++) { xv[c] += pj * dor[c]; xk[c] += dj * qr[c]; }
                }
            }
        }
    }
    for (int r = 0; r < M; r++) {
        float *d = a->dq + (size_t)(r / G) * a->qStride + (size_t)(g * G + r % G) * hd;
        const float *s = dQg + (size_t)r * hd;
        for (int c = 0; c < hd; c++) d[c] += s[c];
    }
    for (int j = 0; j < L; j++) {
        float *dk = a->dk + (size_t)j * a->kvStride + (size_t)g * hd, *dv = a->dv + (size_t)j * a->kvStride + (size_t)g * hd;
        const float *sk = dKa + (size_t)j * hd, *sv = dVa + (size_t)j * hd;
        for (int c = 0; c < hd; c++) { dk[c] += sk[c]; dv[c] += sv[c]; }
    }
}
T512 static void att_bwd_512(const att_bwd_args *a) { att_bwd_body(a, 2); }
TAVX2 static void att_bwd_avx2(const att_bwd_args *a) { att_bwd_body(a, 1); }
static void att_bwd_plain(const att_bwd_args *a) { att_bwd_body(a, 0); }

void lf_attention_backward_group(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                 const float *q, const float *k, const float *v, int n, int p0, int g, int nH, int nKV,
                                 int hd, int qStride, int kvStride, int oStride, int lseStride) {
    if (n <= 0) return;
    att_bwd_args a = {q, k, v, dout, out, lse, dq, dk, dv, n, p0, g, nH / nKV, hd, qStride, kvStride, oStride, lseStride,
                      1.0f / sqrtf((float)hd)};
    int lv = lf_level();
    if (lv == 2 && hd % 16 == 0) att_bwd_512(&a);
    else if (lv >= 1) att_bwd_avx2(&a);
    else att_bwd_plain(&a);
}
