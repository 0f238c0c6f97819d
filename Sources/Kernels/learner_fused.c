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

T512 static inline void swiglu_bwd16(float *dgate, float *dup, const float *dh, const float *gate, const float *up, __mmask16 k) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 g = _mm512_maskz_loadu_ps(k, gate), d = _mm512_maskz_loadu_ps(k, dh), u = _mm512_maskz_loadu_ps(k, up);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    __m512 silu = _mm512_mul_ps(g, s);
    _mm512_mask_storeu_ps(dup, k, _mm512_fmadd_ps(d, silu, _mm512_maskz_loadu_ps(k, dup)));
    __m512 t = _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one);   // 1 + g(1 − s)
    _mm512_mask_storeu_ps(dgate, k, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), s), t, _mm512_maskz_loadu_ps(k, dgate)));
}
T512 static void swiglu_bwd512(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) swiglu_bwd16(dgate + i, dup + i, dh + i, gate + i, up + i, 0xFFFF);
    if (i < n) swiglu_bwd16(dgate + i, dup + i, dh + i, gate + i, up + i, (__mmask16)((1u << (n - i)) - 1));
}
TAVX2 static inline void swiglu_bwd8(float *dgate, float *dup, const float *dh, const float *gate, const float *up) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 g = _mm256_loadu_ps(gate), d = _mm256_loadu_ps(dh), u = _mm256_loadu_ps(up);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    __m256 silu = _mm256_mul_ps(g, s);
    _mm256_storeu_ps(dup, _mm256_fmadd_ps(d, silu, _mm256_loadu_ps(dup)));
    __m256 t = _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one);
    _mm256_storeu_ps(dgate, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(d, u), s), t, _mm256_loadu_ps(dgate)));
}
TAVX2 static void swiglu_bwd256(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) swiglu_bwd8(dgate + i, dup + i, dh + i, gate + i, up + i);
    if (i < n) {
        float a[8] = {0}, b[8] = {0}, c[8] = {0}, e[8] = {0}, f[8] = {0};
        const size_t r = n - i;
        for (size_t k = 0; k < r; k++) { a[k] = dgate[i + k]; b[k] = dup[i + k]; c[k] = dh[i + k]; e[k] = gate[i + k]; f[k] = up[i + k]; }
        swiglu_bwd8(a, b, c, e, f);
        for (size_t k = 0; k < r; k++) { dgate[i + k] = a[k]; dup[i + k] = b[k]; }
    }
}

void lf_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
    int lv = lf_level();
    if (lv == 2) swiglu_bwd512(dgate, dup, dh, gate, up, n);
    else if (lv == 1) swiglu_bwd256(dgate, dup, dh, gate, up, n);
    else for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + lf_exp_scalar(-g));
        dup[i] += dh[i] * g * s;
        dgate[i] += dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

float lf_exp(float x) {
    float in[16] = {x}, out[16];
    int lv = lf_level();
    if (lv == 0) return expf(x);
    lf_scaled_exp_row(out, in, 16, 0.0f, 1.0f);
    return out[0];
}
