// AVX2 + FMA implementation of the compact products (compact_impl.h), for x86-64 CPUs without
// AVX-512: bf16 widened to f32 (a shift or a mask per 32-bit pair) and FMA; q8 with vpmaddubsw on
// |x| and sign-transferred weights (both ≤ 127 in magnitude, so the 16-bit pair sums cannot
// saturate). Packing uses the generic packers (identical output).
#if defined(__x86_64__)
#include "compact_impl.h"

#include <immintrin.h>
#include <string.h>

#define TAVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
#define MR 4

INLINE TAVX2 void store8(float *c, int n, int acc, __m256 v) {
    if (n >= 8) {
        if (acc) v = _mm256_add_ps(v, _mm256_loadu_ps(c));
        _mm256_storeu_ps(c, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int j = 0; j < n; j++) c[j] = acc ? c[j] + t[j] : t[j];
}

// C (R × 32) in two 16-column halves; per pair the weight words give the even column as
// (word << 16) and the odd one as (word & 0xFFFF0000).
INLINE TAVX2 void bf16_tile(const int R, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) {
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int h = 0; h < 2; h++) {
        if (nr <= 16 * h) break;
        __m256 s0[MR], s1[MR];
        for (int r = 0; r < R; r++) s0[r] = s1[r] = _mm256_setzero_ps();
        for (int p = 0; p < kp; p++) {
            const uint32_t *b = bp + (size_t)p * 32 + 16 * h;
            __m256i w0 = _mm256_load_si256((const __m256i *)b), w1 = _mm256_load_si256((const __m256i *)(b + 8));
            __m256 b0e = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), b0o = _mm256_castsi256_ps(_mm256_and_si256(w0, hi));
            __m256 b1e = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), b1o = _mm256_castsi256_ps(_mm256_and_si256(w1, hi));
            const uint32_t *a = ap + (size_t)p * as;
            for (int r = 0; r < R; r++) {
                __m256i av = _mm256_set1_epi32((int)a[r]);
                __m256 ae = _mm256_castsi256_ps(_mm256_slli_epi32(av, 16)), ao = _mm256_castsi256_ps(_mm256_and_si256(av, hi));
                s0[r] = _mm256_fmadd_ps(ae, b0e, s0[r]);
                s1[r] = _mm256_fmadd_ps(ae, b1e, s1[r]);
                s0[r] = _mm256_fmadd_ps(ao, b0o, s0[r]);
                s1[r] = _mm256_fmadd_ps(ao, b1o, s1[r]);
            }
        }
        int n = nr - 16 * h;
        for (int r = 0; r < R; r++) {
            float *cr = c + (size_t)r * ldc + 16 * h;
            store8(cr, n, acc, s0[r]);
            if (n > 8) store8(cr + 8, n - 8, acc, s1[r]);
        }
    }
}

#define BF16_TILE(n) \
    static TAVX2 void bf16_tile_##n(int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) { \
        bf16_tile(n, nr, kp, ap, as, bp, c, ldc, acc); \
    }
BF16_TILE(1) BF16_TILE(2) BF16_TILE(3) BF16_TILE(4)

void ck_avx2_bf16_ukr(int mr, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) {
    switch (mr) {
    case 1: bf16_tile_1(nr, kp, ap, as, bp, c, ldc, acc); break;
    case 2: bf16_tile_2(nr, kp, ap, as, bp, c, ldc, acc); break;
    case 3: bf16_tile_3(nr, kp, ap, as, bp, c, ldc, acc); break;
    default: bf16_tile_4(nr, kp, ap, as, bp, c, ldc, acc); break;
    }
}

// q8: C (R × 16) in two 8-row halves of the panel.
INLINE TAVX2 void q8_tile(const int R, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int as = x.as;
    for (int h = 0; h < 2; h++) {
        if (nr <= 8 * h) break;
        __m256 f[MR];
        for (int r = 0; r < R; r++) f[r] = _mm256_setzero_ps();
        for (int b = 0; b < kb; b++) {
            __m256i s[MR];
            for (int r = 0; r < R; r++) s[r] = _mm256_setzero_si256();
            const uint32_t *w = wq + (size_t)b * 128 + 8 * h;
            const int32_t *xq = x.xq + (size_t)b * 8 * as;
            for (int g = 0; g < 8; g++) {
                __m256i wv = _mm256_load_si256((const __m256i *)(w + g * 16));
                for (int r = 0; r < R; r++) {
                    __m256i xv = _mm256_set1_epi32(xq[g * as + r]);
                    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
                    s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p, ones));
                }
            }
            __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wd + (size_t)b * 16 + 8 * h)));
            for (int r = 0; r < R; r++)
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]), _mm256_mul_ps(sw, _mm256_set1_ps(x.xd[(size_t)b * as + r])), f[r]);
        }
        for (int r = 0; r < R; r++) store8(c + (size_t)r * ldc + 8 * h, nr - 8 * h, acc, f[r]);
    }
}

#define Q8_TILE(n) \
    static TAVX2 void q8_tile_##n(int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) { \
        q8_tile(n, nr, kb, x, wq, wd, c, ldc, acc); \
    }
Q8_TILE(1) Q8_TILE(2) Q8_TILE(3) Q8_TILE(4)

static void q8_ukr(int mr, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) {
    switch (mr) {
    case 1: q8_tile_1(nr, kb, x, wq, wd, c, ldc, acc); break;
    case 2: q8_tile_2(nr, kb, x, wq, wd, c, ldc, acc); break;
    case 3: q8_tile_3(nr, kb, x, wq, wd, c, ldc, acc); break;
    default: q8_tile_4(nr, kb, x, wq, wd, c, ldc, acc); break;
    }
}

const ck_impl ck_impl_avx2 = {
    "avx2", "avx2", MR, MR, ck_avx2_bf16_ukr, q8_ukr,
    ck_pack_b_rows_generic, ck_pack_b_cols_generic, ck_pack_a_generic, ck_quant_x_generic, ck_pack_q8_panel_generic,
};

#endif
