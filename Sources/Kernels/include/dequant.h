// Dequantisation of ggml (llama.cpp / GGUF) tensor storage types to float32, and float16 / bfloat16
// <-> float32 conversion. Portable C (no intrinsics): the loops are written so that the compiler
// vectorises them with the baseline ISA (SSE2 on x86-64, NEON on arm64).
//
// Block layouts (little-endian, packed, `half` = IEEE binary16 bits):
//   Q8_0  32 elems  34 B: half d; int8 qs[32]                        y = d·q
//   Q4_0  32 elems  18 B: half d; u8 qs[16]                          y = d·(q − 8)
//   Q4_1  32 elems  20 B: half d; half m; u8 qs[16]                  y = d·q + m
//         (Q4_x: element j < 16 is the low nibble of qs[j], element j + 16 its high nibble)
//   Q4_K 256 elems 144 B: half d; half dmin; u8 scales[12]; u8 qs[128]
//   Q5_K 256 elems 176 B: half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//         (eight sub-blocks of 32 with 6-bit scale s and min m: y = d·s·q − dmin·m)
//   Q6_K 256 elems 210 B: u8 ql[128]; u8 qh[64]; int8 scales[16]; half d
//         (sixteen sub-blocks of 16: y = d·scale·(q − 32), q 6 bits)
//
// Every function takes `n` = number of ELEMENTS (a multiple of the type's block size) and writes
// n floats to dst. src needs no particular alignment.
#ifndef SELM_DEQUANT_H
#define SELM_DEQUANT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ggml type ids (enum ggml_type) of the types dequant_row handles.
enum {
    DEQUANT_TYPE_F32 = 0,
    DEQUANT_TYPE_F16 = 1,
    DEQUANT_TYPE_Q4_0 = 2,
    DEQUANT_TYPE_Q4_1 = 3,
    DEQUANT_TYPE_Q8_0 = 8,
    DEQUANT_TYPE_Q4_K = 12,
    DEQUANT_TYPE_Q5_K = 13,
    DEQUANT_TYPE_Q6_K = 14,
    DEQUANT_TYPE_BF16 = 30,
};

/// Dequantises n elements of ggml type `type` from src to dst (n floats).
/// Returns 0 on success, -1 if the type is not supported, -2 if n is not a multiple of its block size
/// (dst is then untouched).
int dequant_row(uint32_t type, const void *src, float *dst, size_t n);

// Per-type entry points (n a multiple of the block size; not checked).
void dequant_q8_0(const void *src, float *dst, size_t n);
void dequant_q4_0(const void *src, float *dst, size_t n);
void dequant_q4_1(const void *src, float *dst, size_t n);
void dequant_q4_k(const void *src, float *dst, size_t n);
void dequant_q5_k(const void *src, float *dst, size_t n);
void dequant_q6_k(const void *src, float *dst, size_t n);

/// float16 (IEEE binary16) -> float32, exact for every input (NaN payloads kept, not quieted).
void dequant_f16_to_f32(const void *src, float *dst, size_t n);
/// bfloat16 -> float32 (exact: the 16 bits become the high half of the float).
void dequant_bf16_to_f32(const void *src, float *dst, size_t n);
/// float32 -> float32 copy from a possibly unaligned source.
void dequant_f32_copy(const void *src, float *dst, size_t n);
/// float32 -> float16, round to nearest even; overflow gives ±inf, NaN gives a quiet NaN.
void dequant_f32_to_f16(const float *src, void *dst, size_t n);
/// float32 -> bfloat16, round to nearest even (as PyTorch and ggml do); NaN gives a quiet NaN.
void dequant_f32_to_bf16(const float *src, void *dst, size_t n);

/// Scalar versions of the conversions above.
float dequant_f16_value(uint16_t h);
uint16_t dequant_f16_bits(float f);
float dequant_bf16_value(uint16_t h);
uint16_t dequant_bf16_bits(float f);

#ifdef __cplusplus
}
#endif
#endif
