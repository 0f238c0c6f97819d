// Dequantisation of ggml block formats to float32; see include/dequant.h for the layouts.
//
// Exactness. The results are bit-identical to gguf-py's `gguf.quants.dequantize` (and llama.cpp's
// dequantize_row_*) whatever the compiler does with -ffp-contract: every product below is EXACT in
// float32, so fusing a multiply into an add (FMA) cannot change a rounding:
//   - a half d has an 11-bit significand; Q8_0/Q4_0/Q4_1 multiply it by an integer of at most 8 bits
//     (≤ 19 significant bits);
//   - Q4_K/Q5_K: d·scale (6-bit) ≤ 17 bits, times a 4/5-bit q ≤ 22 bits; dmin·min ≤ 17 bits;
//   - Q6_K: d (11 bits) · |scale| ≤ 128 (≤ 7 significant bits) · |q − 32| ≤ 32 (≤ 5) ≤ 23 bits.
// So Q8_0, Q4_0 and Q6_K values are exact, and Q4_1 (d·q + m), Q4_K and Q5_K (d·s·q − dmin·m) round
// once, in the final addition, exactly as numpy's separate multiply and add do.
#include "dequant.h"
#include <math.h>
#include <string.h>

static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float f32_from(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// ---------------------------------------------------------------------------------------------
// float16 / bfloat16 <-> float32 (branch-free so the bulk loops vectorise)

static inline uint32_t f16_to_f32_bits(uint32_t h) {
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu;                      // exponent and mantissa
    const uint32_t normal = (em << 13) + (112u << 23);    // exponent bias 15 -> 127
    const uint32_t infnan = normal + (112u << 23);        // exponent 31 -> 255, payload kept
    // Subnormals (exponent 0): the value is mantissa · 2^-24, computed exactly in float.
    const uint32_t sub = f32_bits((float)(int32_t)em * 0x1p-24f);
    const uint32_t mag = em < 0x0400u ? sub : (em >= 0x7C00u ? infnan : normal);
    return sign | mag;
}

static inline uint16_t f32_to_f16_bits(float f) {
    const uint32_t x = f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t a = x & 0x7FFFFFFFu;
    // Normal result: rebias the exponent, round the 13 dropped bits to nearest even (a mantissa
    // carry correctly bumps the exponent).
    const uint32_t normal = (a - (112u << 23) + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
    // Subnormal result (|f| < 2^-14): 0.5 + |f| has a ulp of 2^-24, the f16 subnormal step, so the
    // FPU's round-to-nearest-even gives the mantissa (1024 = the smallest normal, also correct).
    const uint32_t sub = f32_bits(fabsf(f) + 0.5f) - 0x3F000000u;
    const uint32_t nan = 0x7E00u | ((a >> 13) & 0x03FFu);
    // 0x477FF000 = 65520, half-way between 65504 (the largest half) and 65536: ties go to inf.
    const uint32_t mag = a > 0x7F800000u ? nan : a >= 0x477FF000u ? 0x7C00u : a < 0x38800000u ? sub : normal;
    return (uint16_t)(sign | mag);
}

static inline uint16_t f32_to_bf16_bits(float f) {
    const uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);   // quiet NaN
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

float dequant_f16_value(uint16_t h) { return f32_from(f16_to_f32_bits(h)); }
uint16_t dequant_f16_bits(float f) { return f32_to_f16_bits(f); }
float dequant_bf16_value(uint16_t h) { return f32_from((uint32_t)h << 16); }
uint16_t dequant_bf16_bits(float f) { return f32_to_bf16_bits(f); }

void dequant_f16_to_f32(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t i = 0; i < n; i++) dst[i] = f32_from(f16_to_f32_bits(ld16(p + 2 * i)));
}

void dequant_bf16_to_f32(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t i = 0; i < n; i++) dst[i] = f32_from((uint32_t)ld16(p + 2 * i) << 16);
}

void dequant_f32_copy(const void *src, float *restrict dst, size_t n) { memcpy(dst, src, n * sizeof(float)); }

void dequant_f32_to_f16(const float *restrict src, void *dst, size_t n) {
    uint8_t *restrict p = dst;
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = f32_to_f16_bits(src[i]);
        p[2 * i] = (uint8_t)h;
        p[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

void dequant_f32_to_bf16(const float *restrict src, void *dst, size_t n) {
    uint8_t *restrict p = dst;
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = f32_to_bf16_bits(src[i]);
        p[2 * i] = (uint8_t)h;
        p[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks

void dequant_q8_0(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 32; b++, p += 34, dst += 32) {
        const float d = dequant_f16_value(ld16(p));
        const int8_t *restrict q = (const int8_t *)(p + 2);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)q[j];
    }
}

void dequant_q4_0(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 32; b++, p += 18, dst += 32) {
        const float d = dequant_f16_value(ld16(p));
        const uint8_t *restrict q = p + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((int)(q[j] & 0x0F) - 8);
            dst[j + 16] = d * (float)((int)(q[j] >> 4) - 8);
        }
    }
}

void dequant_q4_1(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 32; b++, p += 20, dst += 32) {
        const float d = dequant_f16_value(ld16(p));
        const float m = dequant_f16_value(ld16(p + 2));
        const uint8_t *restrict q = p + 4;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)(q[j] & 0x0F) + m;
            dst[j + 16] = d * (float)(q[j] >> 4) + m;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 256-element K-quant super-blocks

// The 12 scale bytes of Q4_K / Q5_K pack eight 6-bit scales and eight 6-bit mins. Sub-blocks 0..3
// keep theirs in the low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks 4..7 keep their low
// 4 bits in the nibbles of bytes 8..11 (scale low, min high) and their top 2 bits in the top 2 bits
// of bytes 0..3 (scale) and 4..7 (min).
static inline void k_scale_min(int j, const uint8_t *s, float *scale, float *min) {
    int sc, m;
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    *scale = (float)sc;
    *min = (float)m;
}

void dequant_q4_k(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 256; b++, p += 144) {
        const float d = dequant_f16_value(ld16(p));
        const float dmin = dequant_f16_value(ld16(p + 2));
        const uint8_t *s = p + 4;
        const uint8_t *restrict q = p + 16;
        // Sub-blocks 2i and 2i+1 share 32 bytes: low nibbles are 2i, high nibbles 2i+1.
        for (int i = 0; i < 4; i++, q += 32, dst += 64) {
            float s0, m0, s1, m1;
            k_scale_min(2 * i, s, &s0, &m0);
            k_scale_min(2 * i + 1, s, &s1, &m1);
            const float d0 = d * s0, min0 = dmin * m0, d1 = d * s1, min1 = dmin * m1;
            for (int l = 0; l < 32; l++) {
                dst[l] = d0 * (float)(q[l] & 0x0F) - min0;
                dst[l + 32] = d1 * (float)(q[l] >> 4) - min1;
            }
        }
    }
}

void dequant_q5_k(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 256; b++, p += 176) {
        const float d = dequant_f16_value(ld16(p));
        const float dmin = dequant_f16_value(ld16(p + 2));
        const uint8_t *s = p + 4;
        const uint8_t *restrict qh = p + 16;     // bit j of qh[l] is the 5th bit of element l of sub-block j
        const uint8_t *restrict q = p + 48;
        for (int i = 0; i < 4; i++, q += 32, dst += 64) {
            float s0, m0, s1, m1;
            k_scale_min(2 * i, s, &s0, &m0);
            k_scale_min(2 * i + 1, s, &s1, &m1);
            const float d0 = d * s0, min0 = dmin * m0, d1 = d * s1, min1 = dmin * m1;
            const int sh0 = 2 * i, sh1 = 2 * i + 1;
            for (int l = 0; l < 32; l++) {
                const int q0 = (q[l] & 0x0F) | (((qh[l] >> sh0) & 1) << 4);
                const int q1 = (q[l] >> 4) | (((qh[l] >> sh1) & 1) << 4);
                dst[l] = d0 * (float)q0 - min0;
                dst[l + 32] = d1 * (float)q1 - min1;
            }
        }
    }
}

void dequant_q6_k(const void *src, float *restrict dst, size_t n) {
    const uint8_t *restrict p = src;
    for (size_t b = 0; b < n / 256; b++, p += 210) {
        const uint8_t *restrict ql = p;          // low 4 bits
        const uint8_t *restrict qh = p + 128;    // high 2 bits
        const int8_t *sc = (const int8_t *)(p + 192);
        const float d = dequant_f16_value(ld16(p + 208));
        // Two halves of 128; in each, four runs of 32 elements take their low bits from
        // ql[0..31] & 15, ql[32..63] & 15, ql[0..31] >> 4, ql[32..63] >> 4 and their high bits from
        // bits 0-1, 2-3, 4-5, 6-7 of qh[0..31]. One scale per 16 elements.
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, dst += 128) {
            float ds[8];
            for (int k = 0; k < 8; k++) ds[k] = d * (float)sc[k];
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                dst[l] = ds[is + 0] * (float)q1;
                dst[l + 32] = ds[is + 2] * (float)q2;
                dst[l + 64] = ds[is + 4] * (float)q3;
                dst[l + 96] = ds[is + 6] * (float)q4;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

int dequant_row(uint32_t type, const void *src, float *dst, size_t n) {
    size_t block;
    switch (type) {
    case DEQUANT_TYPE_F32: case DEQUANT_TYPE_F16: case DEQUANT_TYPE_BF16: block = 1; break;
    case DEQUANT_TYPE_Q8_0: case DEQUANT_TYPE_Q4_0: case DEQUANT_TYPE_Q4_1: block = 32; break;
    case DEQUANT_TYPE_Q4_K: case DEQUANT_TYPE_Q5_K: case DEQUANT_TYPE_Q6_K: block = 256; break;
    default: return -1;
    }
    if (n % block != 0) return -2;
    switch (type) {
    case DEQUANT_TYPE_F32: dequant_f32_copy(src, dst, n); break;
    case DEQUANT_TYPE_F16: dequant_f16_to_f32(src, dst, n); break;
    case DEQUANT_TYPE_BF16: dequant_bf16_to_f32(src, dst, n); break;
    case DEQUANT_TYPE_Q8_0: dequant_q8_0(src, dst, n); break;
    case DEQUANT_TYPE_Q4_0: dequant_q4_0(src, dst, n); break;
    case DEQUANT_TYPE_Q4_1: dequant_q4_1(src, dst, n); break;
    case DEQUANT_TYPE_Q4_K: dequant_q4_k(src, dst, n); break;
    case DEQUANT_TYPE_Q5_K: dequant_q5_k(src, dst, n); break;
    case DEQUANT_TYPE_Q6_K: dequant_q6_k(src, dst, n); break;
    }
    return 0;
}
