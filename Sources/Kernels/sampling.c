// The sampler's passes over a logits row (include/kernels.h, "Sampling"): the maximum, and the
// sum of exp((x − m)·s) with the weights written out. One row of SmolLM2's vocabulary is 49 152
// logits; done with libm's expf these passes were most of a batch-32 decode step's sampling time.
#include "kernels.h"
#include "compact.h"

#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>

// AVX-512F comes with every level from avx512vnni up (SELM_KERNELS caps it as for the products).
static int have_avx512(void) { return ck_isa() >= CK_ISA_AVX512VNNI; }

__attribute__((target("avx512f")))
static float max_avx512(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    float r = _mm512_reduce_max_ps(m);
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

// exp(t) for t ≤ 0: t = k·ln 2 + f with |f| ≤ ln 2 / 2, e^f by its degree-7 Taylor polynomial
// (relative error below 2e-8 there, under float rounding), scaled by 2^k with vscalefps (exact,
// and gradual underflow to 0 far below the largest logit).
__attribute__((target("avx512f")))
static inline __m512 exp_avx512(__m512 t) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2hi = _mm512_set1_ps(0.693359375f), ln2lo = _mm512_set1_ps(-2.12194440e-4f);
    t = _mm512_max_ps(t, _mm512_set1_ps(-104.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(k, ln2hi, t);
    f = _mm512_fnmadd_ps(k, ln2lo, f);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

__attribute__((target("avx512f")))
static double exp_sum_avx512(const float *x, int n, float m, float s, float *w) {
    const __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(s);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vs));
        if (w) _mm512_storeu_ps(w + i, e);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_mask_loadu_ps(vm, k, x + i), vm), vs));
        e = _mm512_maskz_mov_ps(k, e);
        if (w) _mm512_mask_storeu_ps(w + i, k, e);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

// S = Σ exp(x − m) and T = Σ exp(x − m)·(x − m), both in double lanes; the tail through masks.
__attribute__((target("avx512f")))
static void entropy_sums_avx512(const float *x, int n, float m, double *S, double *T) {
    const __m512 vm = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), t0 = _mm512_setzero_pd(), t1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        // d clamped at −104 (as exp_avx512 clamps), so a −inf logit adds 0 to both sums, never NaN.
        __m512 d = _mm512_max_ps(_mm512_maskz_sub_ps(k, _mm512_mask_loadu_ps(vm, k, x + i), vm), _mm512_set1_ps(-104.0f));
        __m512 e = _mm512_maskz_mov_ps(k, exp_avx512(d));
        __m512 ed = _mm512_mul_ps(e, d);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
        t0 = _mm512_add_pd(t0, _mm512_cvtps_pd(_mm512_castps512_ps256(ed)));
        t1 = _mm512_add_pd(t1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ed), 1))));
    }
    *S = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    *T = _mm512_reduce_add_pd(_mm512_add_pd(t0, t1));
}
#endif

float kernels_max(const float *x, int n) {
#if defined(__x86_64__)
    if (have_avx512()) return max_avx512(x, n);
#endif
    float r = -INFINITY;
    for (int i = 0; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

double kernels_exp_sum(const float *x, int n, float m, float s, float *w) {
#if defined(__x86_64__)
    if (have_avx512()) return exp_sum_avx512(x, n, m, s, w);
#endif
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        float e = expf((x[i] - m) * s);
        if (w) w[i] = e;
        sum += e;
    }
    return sum;
}

float kernels_logsumexp(const float *x, int n) {
    float m = kernels_max(x, n);
    return m + (float)log(kernels_exp_sum(x, n, m, 1.0f, NULL));
}

float kernels_log_prob(const float *x, int n, int token) { return x[token] - kernels_logsumexp(x, n); }

double kernels_entropy(const float *x, int n) {
    if (n <= 0) return 0.0;
    float m = kernels_max(x, n);
    double S = 0.0, T = 0.0;
#if defined(__x86_64__)
    if (have_avx512()) {
        entropy_sums_avx512(x, n, m, &S, &T);
    } else
#endif
    {
        for (int i = 0; i < n; i++) {
            float d = x[i] - m;
            if (!(d >= -104.0f)) continue;  // exp(d) counts as 0 (and a −inf logit adds no NaN)
            float e = expf(d);
            S += e;
            T += (double)e * d;
        }
    }
    return log(S) - T / S;
}
