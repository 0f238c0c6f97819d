// CK_Q4 (include/compact.h): 4-bit blocks of 32 weights with a float16 scale and a float16 minimum
// (GGUF Q4_1-like), packed in 16-row panels for vpdpbusd; its packer, unpacker, product driver and
// the three implementations of its microkernel (AVX-512 VNNI, AVX2, scalar). The activations are
// quantised by the q8 products' quantiser (the same ck_impl's quant_x), so x tiles are shared.
//
// Panel p (rows 16p … 16p+15), block b (columns 32b … 32b+31) is 320 contiguous bytes at
// data + (p·kb + b)·320:
//   words [4][16] (256 B): word (g, r) = 4 bytes of row r; byte i (0…3) holds q of column 4g+i in
//                          its low nibble and q of column 16+4g+i in its high nibble;
//   d     [16] float16 scales of the 16 rows;
//   m     [16] float16 minimums.
// So one 64-byte load and a mask (or a shift and a mask) give vpdpbusd 16 rows × 4 columns as its
// unsigned operand: the low nibbles pair with the activation group g, the high ones with g + 4.
#include "compact_impl.h"
#include "dequant.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CK_PAUSE() _mm_pause()
#else
#define CK_PAUSE() ((void)0)
#endif
#include <sched.h>

#define Q4_NR 16
#define Q4_BLOCK_BYTES 320   // 256 B of nibbles, 32 B of scales, 32 B of minimums

// ---------------------------------------------------------------------------------------------
// Quantiser

uint16_t ck_q4_quantize_block(const float *src, int n, uint8_t q[32], uint16_t *mbits, int *bad) {
    float lo = 0, hi = 0;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        float v = src[i];
        if (!(fabsf(v) <= 3.4028235e38f)) finite = 0;
        if (i == 0 || v < lo) lo = v;
        if (i == 0 || v > hi) hi = v;
    }
    memset(q, 0, 32);
    if (!finite || fabsf(lo) > 65504.0f) goto nan;
    uint16_t mh = dequant_f16_bits(lo);
    if (mh == 0x8000) mh = 0;               // a zero minimum is stored as +0 (one byte pattern)
    float m = dequant_f16_value(mh);
    float range = hi - m;
    if (range < 0) range = 0;               // the minimum rounded up past every value
    float dr = range / 15.0f;
    if (!(dr <= 65504.0f)) goto nan;
    uint16_t dh = dequant_f16_bits(dr);
    float d = dequant_f16_value(dh);
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    for (int i = 0; i < n; i++) {
        float t = nearbyintf((src[i] - m) * id);
        q[i] = (uint8_t)(t < 0.0f ? 0 : t > 15.0f ? 15 : (int)t);
    }
    if (bad) *bad = 0;
    *mbits = mh;
    return dh;
nan:
    if (bad) *bad = 1;
    *mbits = 0x7E00;
    return 0x7E00;
}

// ---------------------------------------------------------------------------------------------
// Layout

size_t ck_q4_bytes(int N, int K) {
    size_t panels = (size_t)(N + Q4_NR - 1) / Q4_NR, kb = (size_t)(K + 31) / 32;
    return panels * kb * Q4_BLOCK_BYTES;
}

static inline uint8_t *q4_block(const ck_weights *w, int panel, int b) {
    return (uint8_t *)w->data + ((size_t)panel * (w->kpad / 32) + b) * Q4_BLOCK_BYTES;
}

/// One row's block: the 16 packed bytes (byte j: q of column j | q of column j + 16 << 4), d, m;
/// returns 1 for a bad block. src[idx …] holds the block's n values (CK_F32 or CK_BF16).
typedef int (*q4_block_fn)(const void *src, int type, size_t idx, int n, uint8_t bytes[16], uint16_t *d, uint16_t *m);

static int q4_block_scalar(const void *src, int type, size_t idx, int n, uint8_t bytes[16], uint16_t *d, uint16_t *m) {
    float tmp[32];
    const float *s;
    if (type == CK_F32) {
        s = (const float *)src + idx;
    } else {
        const uint16_t *h = (const uint16_t *)src + idx;
        for (int i = 0; i < n; i++) tmp[i] = ck_bf16_f32(h[i]);
        s = tmp;
    }
    uint8_t q[32];
    int bad = 0;
    *d = ck_q4_quantize_block(s, n, q, m, &bad);
    for (int j = 0; j < 16; j++) bytes[j] = (uint8_t)(q[j] | q[j + 16] << 4);
    return bad;
}

#if defined(__x86_64__)
static int q4_block_avx512(const void *src, int type, size_t idx, int n, uint8_t bytes[16], uint16_t *d, uint16_t *m);
#endif

long ck_q4_pack_rows(ck_weights *w, const void *src, int type, size_t ld, int rb, int re) {
    const int kb = w->kpad / 32, K = w->K;
    q4_block_fn quant = q4_block_scalar;
#if defined(__x86_64__)
    if (ck_isa() >= CK_ISA_AVX512VNNI) quant = q4_block_avx512;
#endif
    long bad = 0;
    for (int p = rb / Q4_NR; p * Q4_NR < re; p++) {
        int row0 = p * Q4_NR, rows = re - row0 < Q4_NR ? re - row0 : Q4_NR;
        for (int r = 0; r < Q4_NR; r++)
            for (int b = 0; b < kb; b++) {
                uint8_t *blk = q4_block(w, p, b), bytes[16] = {0};
                uint16_t d = 0, m = 0;
                if (r < rows) bad += quant(src, type, (size_t)(row0 + r) * ld + (size_t)b * 32, K - b * 32 < 32 ? K - b * 32 : 32, bytes, &d, &m);
                for (int g = 0; g < 4; g++) memcpy(blk + (g * Q4_NR + r) * 4, bytes + 4 * g, 4);
                memcpy(blk + 256 + 2 * r, &d, 2);
                memcpy(blk + 288 + 2 * r, &m, 2);
            }
    }
    return bad;
}

void ck_q4_unpack_row(const ck_weights *w, int n, float *out) {
    const int lane = n % Q4_NR;
    for (int k = 0; k < w->K; k++) {
        const uint8_t *blk = q4_block(w, n / Q4_NR, k / 32);
        int c = k % 32, g = (c % 16) / 4, i = c % 4;
        uint8_t byte = blk[(g * Q4_NR + lane) * 4 + i];
        int q = c < 16 ? byte & 0x0F : byte >> 4;
        uint16_t dh, mh;
        memcpy(&dh, blk + 256 + 2 * lane, 2);
        memcpy(&mh, blk + 288 + 2 * lane, 2);
        out[k] = dequant_f16_value(dh) * (float)q + dequant_f16_value(mh);
    }
}

long ck_q4_pack_q4_1(ck_weights *w, const void *src, size_t ld, int rb, int re) {
    const int kb = w->kpad / 32;
    for (int p = rb / Q4_NR; p * Q4_NR < re; p++)
        for (int b = 0; b < kb; b++) {
            uint8_t *blk = q4_block(w, p, b);
            uint16_t d[Q4_NR], m[Q4_NR];
            for (int r = 0; r < Q4_NR; r++) {
                int row = p * Q4_NR + r;
                uint8_t qs[16] = {0};
                d[r] = m[r] = 0;
                if (row < re) {
                    const uint8_t *g = (const uint8_t *)src + (size_t)row * ld + (size_t)b * 20;
                    d[r] = (uint16_t)(g[0] | g[1] << 8);
                    m[r] = (uint16_t)(g[2] | g[3] << 8);
                    memcpy(qs, g + 4, 16);   // GGUF: column j low nibble, j + 16 high: our byte order too
                }
                for (int gg = 0; gg < 4; gg++) memcpy(blk + (gg * Q4_NR + r) * 4, qs + 4 * gg, 4);
            }
            memcpy(blk + 256, d, sizeof d);
            memcpy(blk + 288, m, sizeof m);
        }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Microkernels: c (mr × nr ≤ 16) (+)= Σ_b d_w·d_x·I_b + m_w·d_x·S_b, I_b = Σ q_w·q_x (exact int32),
// S_b = Σ q_x (= −xc/128).

typedef void (*q4_ukr_fn)(int mr, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc);

static void q4_ukr_scalar(int mr, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) {
    float t[CK_MR_MAX][Q4_NR];
    memset(t, 0, sizeof t);
    for (int b = 0; b < kb; b++) {
        const uint8_t *blk = wb + (size_t)b * Q4_BLOCK_BYTES;
        for (int r = 0; r < mr; r++) {
            float dx = x.xd[(size_t)b * x.as + r];
            float sx = dx * (float)(-x.xc[(size_t)b * x.as + r] / 128);
            int8_t xq[32];
            for (int g = 0; g < 8; g++) memcpy(xq + 4 * g, &x.xq[(size_t)(b * 8 + g) * x.as + r], 4);
            for (int j = 0; j < Q4_NR; j++) {
                int32_t s = 0;
                for (int g = 0; g < 4; g++)
                    for (int i = 0; i < 4; i++) {
                        uint8_t byte = blk[(g * Q4_NR + j) * 4 + i];
                        s += (byte & 0x0F) * xq[4 * g + i] + (byte >> 4) * xq[16 + 4 * g + i];
                    }
                uint16_t dh, mh;
                memcpy(&dh, blk + 256 + 2 * j, 2);
                memcpy(&mh, blk + 288 + 2 * j, 2);
                t[r][j] += (float)s * (dequant_f16_value(dh) * dx) + dequant_f16_value(mh) * sx;
            }
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            float *o = c + (size_t)r * ldc + j;
            *o = acc ? *o + t[r][j] : t[r][j];
        }
}

#if defined(__x86_64__)
#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define TAVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
#define Q4_MR512 12

INLINE T512 void q4_tile512(const int MR, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) {
    __m512 f[Q4_MR512];
    for (int r = 0; r < MR; r++) f[r] = _mm512_setzero_ps();
    const __m512i mask = _mm512_set1_epi8(0x0F);
    const int as = x.as;
    for (int b = 0; b < kb; b++) {
        const uint8_t *blk = wb + (size_t)b * Q4_BLOCK_BYTES;
        if (b + 4 < kb) _mm_prefetch((const char *)(blk + 4 * Q4_BLOCK_BYTES), _MM_HINT_T0);
        const int32_t *xq = x.xq + (size_t)b * 8 * as;
        __m512i s[Q4_MR512];
        if (MR <= 4) {
            // Few rows: two chains per row (low and high nibbles) hide vpdpbusd's latency.
            __m512i t[4];
            for (int r = 0; r < MR; r++) s[r] = t[r] = _mm512_setzero_si512();
            for (int g = 0; g < 4; g++) {
                __m512i v = _mm512_load_si512(blk + 64 * g);
                __m512i lo = _mm512_and_si512(v, mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                for (int r = 0; r < MR; r++) {
                    s[r] = _mm512_dpbusd_epi32(s[r], lo, _mm512_set1_epi32(xq[g * as + r]));
                    t[r] = _mm512_dpbusd_epi32(t[r], hi, _mm512_set1_epi32(xq[(g + 4) * as + r]));
                }
            }
            for (int r = 0; r < MR; r++) s[r] = _mm512_add_epi32(s[r], t[r]);
        } else {
            // One group's nibbles at a time: 12 int32 and 12 f32 accumulators stay in registers.
            for (int r = 0; r < MR; r++) s[r] = _mm512_setzero_si512();
            for (int g = 0; g < 4; g++) {
                __m512i v = _mm512_load_si512(blk + 64 * g);
                __m512i lo = _mm512_and_si512(v, mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                for (int r = 0; r < MR; r++) {
                    s[r] = _mm512_dpbusd_epi32(s[r], lo, _mm512_set1_epi32(xq[g * as + r]));
                    s[r] = _mm512_dpbusd_epi32(s[r], hi, _mm512_set1_epi32(xq[(g + 4) * as + r]));
                }
            }
        }
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(blk + 256)));
        __m512 mw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(blk + 288)));
        for (int r = 0; r < MR; r++) {
            float dx = x.xd[(size_t)b * as + r];
            float sx = dx * (float)(-x.xc[(size_t)b * as + r] / 128);
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), f[r]);
            f[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), f[r]);
        }
    }
    __mmask16 m = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        __m512 v = acc ? _mm512_add_ps(f[r], _mm512_maskz_loadu_ps(m, cr)) : f[r];
        _mm512_mask_storeu_ps(cr, m, v);
    }
}

#define Q4_TILE512(n) \
    static T512 void q4_tile512_##n(int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) { \
        q4_tile512(n, nr, kb, x, wb, c, ldc, acc); \
    }
Q4_TILE512(1) Q4_TILE512(2) Q4_TILE512(3) Q4_TILE512(4) Q4_TILE512(5) Q4_TILE512(6)
Q4_TILE512(7) Q4_TILE512(8) Q4_TILE512(9) Q4_TILE512(10) Q4_TILE512(11) Q4_TILE512(12)

typedef void (*q4_tile_fn)(int, int, ck_q8x, const uint8_t *, float *, size_t, int);
static const q4_tile_fn q4_tiles512[Q4_MR512 + 1] = {
    NULL, q4_tile512_1, q4_tile512_2, q4_tile512_3, q4_tile512_4, q4_tile512_5, q4_tile512_6,
    q4_tile512_7, q4_tile512_8, q4_tile512_9, q4_tile512_10, q4_tile512_11, q4_tile512_12,
};

static void q4_ukr_avx512(int mr, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) {
    q4_tiles512[mr](nr, kb, x, wb, c, ldc, acc);
}

// AVX2: two 8-row halves of the panel; vpmaddubsw on the unsigned nibbles (≤ 15) and the signed
// activations (|q| ≤ 127): pair sums ≤ 3810, no saturation.
#define Q4_MR2 4

INLINE TAVX2 void q4_store8(float *c, int n, int acc, __m256 v) {
    if (n >= 8) {
        if (acc) v = _mm256_add_ps(v, _mm256_loadu_ps(c));
        _mm256_storeu_ps(c, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int j = 0; j < n; j++) c[j] = acc ? c[j] + t[j] : t[j];
}

INLINE TAVX2 void q4_tile2(const int R, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) {
    const __m256i ones = _mm256_set1_epi16(1), mask = _mm256_set1_epi8(0x0F);
    const int as = x.as;
    for (int h = 0; h < 2; h++) {
        if (nr <= 8 * h) break;
        __m256 f[Q4_MR2];
        for (int r = 0; r < R; r++) f[r] = _mm256_setzero_ps();
        for (int b = 0; b < kb; b++) {
            const uint8_t *blk = wb + (size_t)b * Q4_BLOCK_BYTES;
            const int32_t *xq = x.xq + (size_t)b * 8 * as;
            __m256i s[Q4_MR2];
            for (int r = 0; r < R; r++) s[r] = _mm256_setzero_si256();
            for (int g = 0; g < 4; g++) {
                __m256i v = _mm256_load_si256((const __m256i *)(blk + 64 * g + 32 * h));
                __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                for (int r = 0; r < R; r++) {
                    __m256i p = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xq[g * as + r]));
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xq[(g + 4) * as + r])));
                    s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p, ones));
                }
            }
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 256 + 16 * h)));
            __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 288 + 16 * h)));
            for (int r = 0; r < R; r++) {
                float dx = x.xd[(size_t)b * as + r];
                float sx = dx * (float)(-x.xc[(size_t)b * as + r] / 128);
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), f[r]);
                f[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), f[r]);
            }
        }
        for (int r = 0; r < R; r++) q4_store8(c + (size_t)r * ldc + 8 * h, nr - 8 * h, acc, f[r]);
    }
}

#define Q4_TILE2(n) \
    static TAVX2 void q4_tile2_##n(int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) { \
        q4_tile2(n, nr, kb, x, wb, c, ldc, acc); \
    }
Q4_TILE2(1) Q4_TILE2(2) Q4_TILE2(3) Q4_TILE2(4)

/// The scalar quantiser's arithmetic on 32 lanes (same float operations, F16C conversions =
/// dequant_f16_bits/_value, cvtps with the default nearest-even rounding = nearbyintf).
static T512 int q4_block_avx512(const void *src, int type, size_t idx, int n, uint8_t bytes[16], uint16_t *dp, uint16_t *mp) {
    __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    __mmask16 m1 = n >= 32 ? 0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
    __m512 v0, v1;
    if (type == CK_BF16) {
        const uint16_t *h = (const uint16_t *)src + idx;
        v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, h)), 16));
        v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, h + 16)), 16));
    } else {
        const float *f = (const float *)src + idx;
        v0 = _mm512_maskz_loadu_ps(m0, f);
        v1 = _mm512_maskz_loadu_ps(m1, f + 16);
    }
    const __m512 big = _mm512_set1_ps(3.4028235e38f);
    __mmask16 nf = (_mm512_mask_cmp_ps_mask(m0, _mm512_abs_ps(v0), big, _CMP_NLE_UQ)) |
                   (_mm512_mask_cmp_ps_mask(m1, _mm512_abs_ps(v1), big, _CMP_NLE_UQ));
    memset(bytes, 0, 16);
    float lo = _mm512_mask_reduce_min_ps(m0, v0), hi = _mm512_mask_reduce_max_ps(m0, v0);
    if (m1) {
        float lo1 = _mm512_mask_reduce_min_ps(m1, v1), hi1 = _mm512_mask_reduce_max_ps(m1, v1);
        lo = lo1 < lo ? lo1 : lo;
        hi = hi1 > hi ? hi1 : hi;
    }
    if (nf || fabsf(lo) > 65504.0f) goto nan;
    uint16_t mh = _cvtss_sh(lo, _MM_FROUND_TO_NEAREST_INT);
    if (mh == 0x8000) mh = 0;
    float m = _cvtsh_ss(mh);
    float range = hi - m;
    if (range < 0) range = 0;
    float dr = range / 15.0f;
    if (!(dr <= 65504.0f)) goto nan;
    uint16_t dh = _cvtss_sh(dr, _MM_FROUND_TO_NEAREST_INT);
    float d = _cvtsh_ss(dh);
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    const __m512 vm = _mm512_set1_ps(m), vid = _mm512_set1_ps(id);
    const __m512i zero = _mm512_setzero_si512(), fifteen = _mm512_set1_epi32(15);
    __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v0, vm), vid)), zero), fifteen);
    __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v1, vm), vid)), zero), fifteen);
    q0 = _mm512_maskz_mov_epi32(m0, q0);
    q1 = _mm512_maskz_mov_epi32(m1, q1);
    _mm_storeu_si128((__m128i *)bytes, _mm512_cvtepi32_epi8(_mm512_or_si512(q0, _mm512_slli_epi32(q1, 4))));
    *dp = dh;
    *mp = mh;
    return 0;
nan:
    *dp = *mp = 0x7E00;
    return 1;
}

static void q4_ukr_avx2(int mr, int nr, int kb, ck_q8x x, const uint8_t *wb, float *c, size_t ldc, int acc) {
    switch (mr) {
    case 1: q4_tile2_1(nr, kb, x, wb, c, ldc, acc); break;
    case 2: q4_tile2_2(nr, kb, x, wb, c, ldc, acc); break;
    case 3: q4_tile2_3(nr, kb, x, wb, c, ldc, acc); break;
    default: q4_tile2_4(nr, kb, x, wb, c, ldc, acc); break;
    }
}
#endif

/// The activation quantiser (and its tile rows) and the q4 microkernel of the level in use.
static const ck_impl *q4_impl(q4_ukr_fn *ukr, const char **name) {
    int level = ck_isa();
#if defined(__x86_64__)
    if (level >= CK_ISA_AVX512VNNI) {
        if (ukr) *ukr = q4_ukr_avx512;
        if (name) *name = "avx512vnni";
        return level >= CK_ISA_AVX512BF16 ? &ck_impl_avx512bf16 : &ck_impl_avx512vnni;
    }
    if (level >= CK_ISA_AVX2) {
        if (ukr) *ukr = q4_ukr_avx2;
        if (name) *name = "avx2";
        return &ck_impl_avx2;
    }
#else
    (void)level;
#endif
    if (ukr) *ukr = q4_ukr_scalar;
    if (name) *name = "scalar";
    return &ck_impl_scalar;
}

const char *ck_q4_path_name(void) {
    const char *name = "scalar";
    (void)q4_impl(NULL, &name);
    return name;
}

// ---------------------------------------------------------------------------------------------
// Driver (as the q8 one in compact.c): x quantised once per call, in parallel, into tiles of the
// impl's q8_mr rows; then (m-band × n-band) units over the whole K.

typedef struct {
    const ck_impl *im;
    q4_ukr_fn ukr;
    int M, N, K, kb, mr;
    const float *x;
    size_t ldx;
    const ck_weights *w;
    float *y;
    size_t ldy;
    int acc;
    int MB, NBp, nbands, units, panels, tiles;
    char *xbuf;
    size_t tile_bytes;
    _Atomic int next, next_tile, packed;
} q4_job;

static ck_q8x q4_tile_x(const q4_job *j, int t) {
    char *base = j->xbuf + (size_t)t * j->tile_bytes;
    size_t words = (size_t)j->kb * 8 * j->mr;
    ck_q8x x = {(const int32_t *)base, (const float *)(base + words * 4),
                (const int32_t *)(base + words * 4 + (size_t)j->kb * j->mr * 4), j->mr};
    return x;
}

static void q4_wait(_Atomic int *count, int n) {
    int spins = 0;
    while (atomic_load_explicit(count, memory_order_acquire) < n) {
        CK_PAUSE();
        if (++spins > 4096) sched_yield();
    }
}

static void q4_job_run(void *ctx, int tid) {
    (void)tid;
    q4_job *j = ctx;
    const int mr = j->mr;
    int t;
    while ((t = atomic_fetch_add(&j->next_tile, 1)) < j->tiles) {
        ck_q8x x = q4_tile_x(j, t);
        int rows = j->M - t * mr < mr ? j->M - t * mr : mr;
        j->im->quant_x(&x, j->x + (size_t)t * mr * j->ldx, j->ldx, rows, j->K);
        atomic_fetch_add_explicit(&j->packed, 1, memory_order_release);
    }
    q4_wait(&j->packed, j->tiles);
    const int kb = j->kb;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->units) break;
        int mb = u / j->nbands, nb = u % j->nbands;
        int m0 = mb * j->MB, m1 = m0 + j->MB < j->M ? m0 + j->MB : j->M;
        int j0 = nb * j->NBp, j1 = j0 + j->NBp < j->panels ? j0 + j->NBp : j->panels;
        for (int jp = j0; jp < j1; jp++) {
            int n0 = jp * Q4_NR, nr = j->N - n0 < Q4_NR ? j->N - n0 : Q4_NR;
            const uint8_t *wb = q4_block(j->w, jp, 0);
            for (int m = m0; m < m1; m += mr)
                j->ukr(m1 - m < mr ? m1 - m : mr, nr, kb, q4_tile_x(j, m / mr), wb, j->y + (size_t)m * j->ldy + n0, j->ldy, j->acc);
        }
    }
}

void ck_q4_linear(float *y, size_t ldy, const float *x, size_t ldx, int M, const ck_weights *w, int acc) {
    q4_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->im = q4_impl(&j->ukr, NULL);
    j->M = M; j->N = w->N; j->K = w->K; j->kb = w->kpad / 32; j->mr = j->im->q8_mr;
    j->x = x; j->ldx = ldx; j->w = w; j->y = y; j->ldy = ldy; j->acc = acc;
    j->panels = w->panels;
    const int mr = j->mr;
    j->tiles = (M + mr - 1) / mr;
    j->tile_bytes = (size_t)j->kb * mr * (8 * 4 + 4 + 4);
    j->xbuf = ck_scratch_shared(j->tile_bytes * j->tiles);
    // An m-band's x tiles (kb·40 bytes a row) stay in L2 while the band's panels stream by.
    int mbrows = (int)((size_t)(512 << 10) / ((size_t)j->kb * 40 + 1)) / mr * mr;
    if (mbrows < mr) mbrows = mr;
    j->MB = M < mbrows ? M : mbrows;
    int mbands = (M + j->MB - 1) / j->MB;
    int nth = ck_call_threads();
    double flops = 2.0 * M * j->N * j->K, bytes = (double)ck_q4_bytes(j->N, j->K);
    if (flops < 4e6 && bytes < 96e3) nth = 1;
    int nb_target = (nth * 4 + mbands - 1) / mbands;
    j->NBp = (j->panels + nb_target - 1) / nb_target;
    if (j->NBp < 1) j->NBp = 1;
    j->nbands = (j->panels + j->NBp - 1) / j->NBp;
    j->units = mbands * j->nbands;
    if (nth > j->units && nth > j->tiles) nth = j->units > j->tiles ? j->units : j->tiles;
    atomic_store(&j->next, 0);
    ck_run_job(q4_job_run, j, nth);
    free(j);
}
