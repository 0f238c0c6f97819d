// AVX-512 implementation of the compact products (compact_impl.h): vdpbf16ps (AVX512_BF16) for
// bf16, vpdpbusd (AVX512_VNNI) for q8, and the vectorised packers. Compiled for the baseline ISA;
// every function carries its target attribute and runs only after cpuid said yes.
#if defined(__x86_64__)
#include "compact_impl.h"
#include "dequant.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------
// Conversions

/// 16 floats → their bf16 bits (round to nearest even, NaN → quiet NaN) in the low half of each lane.
INLINE T512 __m512i bf16_lanes(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40)));
}

/// 32 consecutive source values (k0 … k0+31, those ≥ K zero) as 16 bf16 pair words.
INLINE T512 __m512i pairs32(const void *src, int type, size_t idx, int k0, int K) {
    int n = K - k0;
    if (n <= 0) return _mm512_setzero_si512();
    if (type == CK_BF16) {
        __mmask32 m = n >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << n) - 1);
        return _mm512_maskz_loadu_epi16(m, (const uint16_t *)src + idx);
    }
    const float *f = (const float *)src + idx;
    __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    __mmask16 m1 = n >= 32 ? 0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
    __m256i lo = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m0, f)));
    __m256i hi = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m1, f + 16)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/// 16 values at src[idx … idx+15] (lanes ≥ n zero) as bf16 bits in the low half of each lane.
INLINE T512 __m512i lanes16(const void *src, int type, size_t idx, int n) {
    __mmask16 m = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
    if (type == CK_BF16) return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)src + idx));
    return bf16_lanes(_mm512_maskz_loadu_ps(m, (const float *)src + idx));
}

/// In-register transpose of a 16×16 matrix of 32-bit elements (r[i] = row i → r[c] = column c).
INLINE T512 void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // u[4g + j], 128-bit lane L: rows 4g … 4g+3 of column 4L + j.
    for (int j = 0; j < 4; j++) {
        __m512i v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v2 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
        __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44), w2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
        r[8 + j] = _mm512_shuffle_i32x4(v2, w2, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(v2, w2, 0xDD);
    }
}

// ---------------------------------------------------------------------------------------------
// Packers (same output as the generic ones in compact.c)

static T512 void pack_b_rows(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np) {
    for (int c0 = 0; c0 < np; c0 += 16) {
        int k0 = 2 * (p0 + c0), nc = np - c0 < 16 ? np - c0 : 16;
        for (int half = 0; half < 2; half++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                int row = half * 16 + i;
                if (row < rows && k0 + 160 <= K) {   // 32 row streams: prefetch 4 chunks ahead
                    const char *ahead = type == CK_BF16 ? (const char *)((const uint16_t *)src + (size_t)row * ld + k0 + 128)
                                                        : (const char *)((const float *)src + (size_t)row * ld + k0 + 128);
                    for (int l = 0; l < (type == CK_BF16 ? 64 : 128); l += 64) _mm_prefetch(ahead + l, _MM_HINT_T0);
                }
                r[i] = row < rows ? pairs32(src, type, (size_t)row * ld + k0, k0, K) : _mm512_setzero_si512();
            }
            transpose16(r);
            for (int c = 0; c < nc; c++) _mm512_store_si512(out + (size_t)(c0 + c) * 32 + half * 16, r[c]);
        }
    }
}

static T512 void pack_b_cols(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np) {
    const size_t esz = type == CK_BF16 ? 2 : 4;
    for (int p = 0; p < np; p++) {
        int k = 2 * (p0 + p);
        if (k + 17 < K) {   // strided rows: prefetch 8 pairs ahead (32 values = 2 lines of f32)
            for (int kk = k + 16; kk <= k + 17; kk++) {
                const char *r = (const char *)src + (size_t)kk * ld * esz;
                _mm_prefetch(r, _MM_HINT_T0);
                if (esz == 4 && rows > 16) _mm_prefetch(r + 64, _MM_HINT_T0);
            }
        }
        for (int half = 0; half < 2; half++) {
            int n = rows - half * 16;
            __m512i lo = lanes16(src, type, (size_t)k * ld + half * 16, n);
            __m512i hi = k + 1 < K ? lanes16(src, type, (size_t)(k + 1) * ld + half * 16, n) : _mm512_setzero_si512();
            _mm512_store_si512(out + (size_t)p * 32 + half * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

static T512 void pack_a(uint32_t *out, int as, const void *src, int type, int trans, size_t ld, int rows, int K, int p0, int np) {
    const __mmask16 sm = (__mmask16)((1u << as) - 1);
    if (trans) {
        const size_t esz = type == CK_BF16 ? 2 : 4;
        for (int p = 0; p < np; p++) {
            int k = 2 * (p0 + p);
            if (k + 17 < K) {   // strided rows: prefetch 8 pairs ahead
                _mm_prefetch((const char *)src + (size_t)(k + 16) * ld * esz, _MM_HINT_T0);
                _mm_prefetch((const char *)src + (size_t)(k + 17) * ld * esz, _MM_HINT_T0);
            }
            __m512i lo = k < K ? lanes16(src, type, (size_t)k * ld, rows) : _mm512_setzero_si512();
            __m512i hi = k + 1 < K ? lanes16(src, type, (size_t)(k + 1) * ld, rows) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(out + (size_t)p * as, sm, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
        return;
    }
    for (int c0 = 0; c0 < np; c0 += 16) {
        int k0 = 2 * (p0 + c0), nc = np - c0 < 16 ? np - c0 : 16;
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = i < rows ? pairs32(src, type, (size_t)i * ld + k0, k0, K) : _mm512_setzero_si512();
        transpose16(r);
        for (int c = 0; c < nc; c++) _mm512_mask_storeu_epi32(out + (size_t)(c0 + c) * as, sm, r[c]);
    }
}

/// Block quantisation shared by the weight and activation quantisers: 32 values (lanes ≥ n zero)
/// → 32 int8 (as 8 words in the low half of a __m256i) for the given 1/d. Non-finite → caller.
INLINE T512 __m256i quant32(__m512 v0, __m512 v1, float id) {
    const __m512 s = _mm512_set1_ps(id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, s)), lo), hi);
    __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, s)), lo), hi);
    return _mm256_set_m128i(_mm512_cvtepi32_epi8(q1), _mm512_cvtepi32_epi8(q0));
}

/// Loads 32 values of a block (f32, or bf16 widened), lanes ≥ n zero; returns max|v| and whether
/// every value is finite.
INLINE T512 float load_block(const void *src, int type, size_t idx, int n, __m512 *v0, __m512 *v1, int *finite) {
    __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    __mmask16 m1 = n >= 32 ? 0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
    if (type == CK_BF16) {
        const uint16_t *s = (const uint16_t *)src + idx;
        *v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, s)), 16));
        *v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, s + 16)), 16));
    } else {
        const float *f = (const float *)src + idx;
        *v0 = _mm512_maskz_loadu_ps(m0, f);
        *v1 = _mm512_maskz_loadu_ps(m1, f + 16);
    }
    __m512 a = _mm512_max_ps(_mm512_abs_ps(*v0), _mm512_abs_ps(*v1));
    const __m512 big = _mm512_set1_ps(3.4028235e38f);
    __mmask16 bad = _mm512_cmp_ps_mask(_mm512_abs_ps(*v0), big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(_mm512_abs_ps(*v1), big, _CMP_NLE_UQ);
    *finite = bad == 0;
    return _mm512_reduce_max_ps(a);
}

static T512 void quant_x(ck_q8x *x, const float *src, size_t ld, int rows, int K) {
    const int kb = (K + 31) / 32, as = x->as;
    int32_t *xq = (int32_t *)x->xq, *xc = (int32_t *)x->xc;
    float *xd = (float *)x->xd;
    for (int r = 0; r < as; r++)
        for (int b = 0; b < kb; b++) {
            float d = 0;
            __m256i q = _mm256_setzero_si256();
            if (r < rows) {
                __m512 v0, v1;
                int finite;
                float amax = load_block(src, CK_F32, (size_t)r * ld + (size_t)b * 32, K - b * 32, &v0, &v1, &finite);
                if (!finite) d = NAN;
                else if (amax >= 0x1p-100f) {
                    d = amax / 127.0f;
                    q = quant32(v0, v1, 1.0f / d);
                }
            }
            // Σq: widen the 32 bytes and add.
            __m512i w = _mm512_cvtepi8_epi16(q);
            int sum = _mm512_reduce_add_epi32(_mm512_madd_epi16(w, _mm512_set1_epi16(1)));
            int32_t words[8];
            _mm256_storeu_si256((__m256i *)words, q);
            for (int g = 0; g < 8; g++) xq[(size_t)(b * 8 + g) * as + r] = words[g];
            xd[(size_t)b * as + r] = d;
            xc[(size_t)b * as + r] = -128 * sum;
        }
}

static T512 long pack_q8_panel(uint32_t *wq, uint16_t *wd, const void *src, int type, size_t ld, int rows, int K) {
    const int kb = (K + 31) / 32;
    long bad = 0;
    for (int b0 = 0; b0 < kb; b0 += 2) {
        // 16 rows × 2 blocks = 16 words per row; the transpose gives [block][group][row].
        __m512i r[16];
        for (int i = 0; i < 16; i++) {
            // 16 row streams are too many for the hardware prefetchers: fetch 4 blocks ahead.
            if (i < rows && b0 + 6 <= kb) {
                const char *ahead = type == CK_BF16 ? (const char *)((const uint16_t *)src + (size_t)i * ld + (size_t)(b0 + 4) * 32)
                                                    : (const char *)((const float *)src + (size_t)i * ld + (size_t)(b0 + 4) * 32);
                for (int l = 0; l < (type == CK_BF16 ? 128 : 256); l += 64) _mm_prefetch(ahead + l, _MM_HINT_T0);
            }
            __m256i q[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
            for (int bb = 0; bb < 2; bb++) {
                int b = b0 + bb;
                if (b >= kb) continue;
                uint16_t dh = 0;
                if (i < rows) {
                    __m512 v0, v1;
                    int finite;
                    float amax = load_block(src, type, (size_t)i * ld + (size_t)b * 32, K - b * 32, &v0, &v1, &finite);
                    if (!finite || amax > 65504.0f * 127.0f) {
                        dh = 0x7E00;
                        bad++;
                    } else {
                        // F16C conversions (nearest even, subnormals kept) = dequant_f16_bits/_value.
                        dh = _cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT);
                        float d = _cvtsh_ss(dh);
                        if (d * 127.0f < amax) d = _cvtsh_ss(++dh);
                        q[bb] = quant32(v0, v1, d == 0.0f ? 0.0f : 1.0f / d);
                    }
                }
                wd[(size_t)b * 16 + i] = dh;
            }
            r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(q[0]), q[1], 1);
        }
        transpose16(r);
        int nb = kb - b0 < 2 ? kb - b0 : 2;
        for (int c = 0; c < 8 * nb; c++) _mm512_store_si512(wq + (size_t)(b0 * 8 + c) * 16, r[c]);
    }
    return bad;
}

// ---------------------------------------------------------------------------------------------
// bf16 microkernel: C (MR × 32) (+)= A (MR × 2kp) · B panel slice, vdpbf16ps.

INLINE T512 void store2(float *c, int nr, int acc, __m512 v0, __m512 v1) {
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    if (acc) {
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
}

#define BF16_MR 12

INLINE T512BF void bf16_tile(const int MR, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) {
    __m512 c0[BF16_MR], c1[BF16_MR];
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    if (MR <= 2) {
        // Few rows: a second set of accumulators for odd pairs hides vdpbf16ps latency.
        __m512 d0[BF16_MR], d1[BF16_MR];
        for (int r = 0; r < MR; r++) d0[r] = d1[r] = _mm512_setzero_ps();
        int p = 0;
        for (; p + 2 <= kp; p += 2) {
            const uint32_t *b = bp + (size_t)p * 32, *a = ap + (size_t)p * as;
            __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
            __m512bh b2 = (__m512bh)_mm512_load_si512(b + 32), b3 = (__m512bh)_mm512_load_si512(b + 48);
            for (int r = 0; r < MR; r++) {
                __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)a[r]), x1 = (__m512bh)_mm512_set1_epi32((int)a[as + r]);
                c0[r] = _mm512_dpbf16_ps(c0[r], x0, b0);
                c1[r] = _mm512_dpbf16_ps(c1[r], x0, b1);
                d0[r] = _mm512_dpbf16_ps(d0[r], x1, b2);
                d1[r] = _mm512_dpbf16_ps(d1[r], x1, b3);
            }
        }
        for (; p < kp; p++) {
            const uint32_t *b = bp + (size_t)p * 32, *a = ap + (size_t)p * as;
            __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
            for (int r = 0; r < MR; r++) {
                __m512bh x0 = (__m512bh)_mm512_set1_epi32((int)a[r]);
                c0[r] = _mm512_dpbf16_ps(c0[r], x0, b0);
                c1[r] = _mm512_dpbf16_ps(c1[r], x0, b1);
            }
        }
        for (int r = 0; r < MR; r++) {
            c0[r] = _mm512_add_ps(c0[r], d0[r]);
            c1[r] = _mm512_add_ps(c1[r], d1[r]);
        }
    } else {
        for (int p = 0; p < kp; p++) {
            const uint32_t *b = bp + (size_t)p * 32, *a = ap + (size_t)p * as;
            __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
            for (int r = 0; r < MR; r++) {
                __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r]);
                c0[r] = _mm512_dpbf16_ps(c0[r], x, b0);
                c1[r] = _mm512_dpbf16_ps(c1[r], x, b1);
            }
        }
    }
    for (int r = 0; r < MR; r++) store2(c + (size_t)r * ldc, nr, acc, c0[r], c1[r]);
}

#define BF16_TILE(n) \
    static T512BF void bf16_tile_##n(int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) { \
        bf16_tile(n, nr, kp, ap, as, bp, c, ldc, acc); \
    }
BF16_TILE(1) BF16_TILE(2) BF16_TILE(3) BF16_TILE(4) BF16_TILE(5) BF16_TILE(6)
BF16_TILE(7) BF16_TILE(8) BF16_TILE(9) BF16_TILE(10) BF16_TILE(11) BF16_TILE(12)

typedef void (*bf16_tile_fn)(int, int, const uint32_t *, int, const uint32_t *, float *, size_t, int);
static const bf16_tile_fn bf16_tiles[BF16_MR + 1] = {
    NULL, bf16_tile_1, bf16_tile_2, bf16_tile_3, bf16_tile_4, bf16_tile_5, bf16_tile_6,
    bf16_tile_7, bf16_tile_8, bf16_tile_9, bf16_tile_10, bf16_tile_11, bf16_tile_12,
};

static void bf16_ukr(int mr, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) {
    bf16_tiles[mr](nr, kp, ap, as, bp, c, ldc, acc);
}

// ---------------------------------------------------------------------------------------------
// q8 microkernel: C (MR × 16) (+)= Σ_b d_w·d_x·(int32 block sums), vpdpbusd with the weight as
// the unsigned operand (q + 128, a sign-bit flip) and the −128·Σq_x correction as the start value.

#define Q8_MR 12

INLINE T512 void q8_tile(const int MR, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) {
    __m512 f[Q8_MR];
    for (int r = 0; r < MR; r++) f[r] = _mm512_setzero_ps();
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int as = x.as;
    for (int b = 0; b < kb; b++) {
        __m512i s[Q8_MR];
        for (int r = 0; r < MR; r++) s[r] = _mm512_set1_epi32(x.xc[(size_t)b * as + r]);
        const uint32_t *w = wq + (size_t)b * 128;
        const int32_t *xq = x.xq + (size_t)b * 8 * as;
        for (int g = 0; g < 8; g++) {
            __m512i wv = _mm512_xor_si512(_mm512_load_si512(w + g * 16), flip);
            for (int r = 0; r < MR; r++) s[r] = _mm512_dpbusd_epi32(s[r], wv, _mm512_set1_epi32(xq[g * as + r]));
        }
        __m512 sw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(wd + (size_t)b * 16)));
        for (int r = 0; r < MR; r++)
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(sw, _mm512_set1_ps(x.xd[(size_t)b * as + r])), f[r]);
    }
    __mmask16 m = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        __m512 v = acc ? _mm512_add_ps(f[r], _mm512_maskz_loadu_ps(m, cr)) : f[r];
        _mm512_mask_storeu_ps(cr, m, v);
    }
}

#define Q8_TILE(n) \
    static T512 void q8_tile_##n(int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) { \
        q8_tile(n, nr, kb, x, wq, wd, c, ldc, acc); \
    }
Q8_TILE(1) Q8_TILE(2) Q8_TILE(3) Q8_TILE(4) Q8_TILE(5) Q8_TILE(6)
Q8_TILE(7) Q8_TILE(8) Q8_TILE(9) Q8_TILE(10) Q8_TILE(11) Q8_TILE(12)

typedef void (*q8_tile_fn)(int, int, ck_q8x, const uint32_t *, const uint16_t *, float *, size_t, int);
static const q8_tile_fn q8_tiles[Q8_MR + 1] = {
    NULL, q8_tile_1, q8_tile_2, q8_tile_3, q8_tile_4, q8_tile_5, q8_tile_6,
    q8_tile_7, q8_tile_8, q8_tile_9, q8_tile_10, q8_tile_11, q8_tile_12,
};

static void q8_ukr(int mr, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) {
    q8_tiles[mr](nr, kb, x, wq, wd, c, ldc, acc);
}

// The bf16 products of the AVX-512 VNNI level (no BF16 instructions) run the AVX2 microkernel.
void ck_avx2_bf16_ukr(int mr, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc);
#define AVX2_BF16_MR 4

const ck_impl ck_impl_avx512bf16 = {
    "avx512bf16", "avx512vnni", BF16_MR, Q8_MR, bf16_ukr, q8_ukr,
    pack_b_rows, pack_b_cols, pack_a, quant_x, pack_q8_panel,
};

const ck_impl ck_impl_avx512vnni = {
    "avx2", "avx512vnni", AVX2_BF16_MR, Q8_MR, ck_avx2_bf16_ukr, q8_ukr,
    pack_b_rows, pack_b_cols, pack_a, quant_x, pack_q8_panel,
};

// ---------------------------------------------------------------------------------------------
// Peak loops (register-only): the ceilings bench-kernels prints.

T512BF double ck_avx512_bf16_loop(long iters) {
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F803F80), y = (__m512bh)_mm512_set1_epi32(0x3F803F80);
    for (long n = 0; n < iters; n++) {
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

T512 long ck_avx512_vnni_loop(long iters) {
    __m512i a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_epi32(i);
    __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(1);
    for (long n = 0; n < iters; n++) {
        for (int i = 0; i < 16; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    __m512i s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_epi32(s, a[i]);
    return _mm512_reduce_add_epi32(s);
}

// ---------------------------------------------------------------------------------------------
// Bulk conversion

T512 void ck_avx512_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(bf16_lanes(_mm512_loadu_ps(src + i))));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m, src + i))));
    }
}

#endif
