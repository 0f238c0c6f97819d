// Internal interface between the compact-product driver (compact.c) and its instruction-set
// implementations (compact_avx512.c, compact_avx2.c, the scalar one in compact.c).
#ifndef SELM_COMPACT_IMPL_H
#define SELM_COMPACT_IMPL_H
#include "compact.h"
#include <stddef.h>
#include <stdint.h>

#define CK_BF16_NR 32   // columns (W rows) per bf16 panel
#define CK_Q8_NR 16     // per q8 panel
#define CK_Q8_BLOCK 32
#define CK_MR_MAX 16

/// A q8 activation tile: `as` rows (padded), `kb` blocks. Words xq[(b·8+g)·as + r] hold 4 int8 of
/// row r, columns b·32+4g…+3; xd[b·as + r] the row's block scale; xc[b·as + r] = −128·Σ q (the
/// correction of vpdpbusd's unsigned operand, w + 128).
typedef struct { const int32_t *xq; const float *xd; const int32_t *xc; int as; } ck_q8x;

typedef struct ck_impl {
    const char *bf16_name, *q8_name;
    int bf16_mr, q8_mr;
    /// c (mr × nr, row stride ldc) (+)= A tile · B slice: kp column pairs; ap[p·as + r] the bf16
    /// pair of row r; bp[p·32 + j] the pair of panel row j.
    void (*bf16_ukr)(int mr, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp,
                     float *c, size_t ldc, int acc);
    /// c (mr × nr) (+)= q8 product over kb blocks; wq: [kb][8][16] words, wd: [kb][16] f16 scales.
    void (*q8_ukr)(int mr, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd,
                   float *c, size_t ldc, int acc);
    // Packing (identical output on every implementation; NULL = the generic one).
    /// One bf16 panel slice: rows n0 … n0+rows−1 (rows ≤ 32, the rest zero) of a row-major source
    /// (type CK_F32/CK_BF16, k contiguous), pairs [p0, p0+np): out[p·32 + j].
    void (*pack_b_rows)(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np);
    /// The same from a column-major source (element (n, k) at src[k·ld + n]).
    void (*pack_b_cols)(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np);
    /// An A tile of `rows` ≤ as rows: out[p·as + r], pairs [p0, p0+np); trans as in ck_operand.
    void (*pack_a)(uint32_t *out, int as, const void *src, int type, int trans, size_t ld, int rows, int K, int p0, int np);
    /// q8 activations of `rows` ≤ x.as rows (row r at src + r·ld), all kb blocks.
    void (*quant_x)(ck_q8x *x, const float *src, size_t ld, int rows, int K);
    /// One q8 weight panel: `rows` ≤ 16 rows (row r at src + r·ld, CK_F32 or CK_BF16), every block:
    /// wq [kb][8][16] words, wd [kb][16] scales. Returns the number of bad (NaN-scale) blocks.
    long (*pack_q8_panel)(uint32_t *wq, uint16_t *wd, const void *src, int type, size_t ld, int rows, int K);
} ck_impl;

extern const ck_impl ck_impl_scalar;
#if defined(__x86_64__)
extern const ck_impl ck_impl_avx2;
extern const ck_impl ck_impl_avx512vnni;
extern const ck_impl ck_impl_avx512bf16;
#endif

// Generic (scalar) packers, shared by the implementations.
void ck_pack_b_rows_generic(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np);
void ck_pack_b_cols_generic(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np);
void ck_pack_a_generic(uint32_t *out, int as, const void *src, int type, int trans, size_t ld, int rows, int K, int p0, int np);
void ck_quant_x_generic(ck_q8x *x, const float *src, size_t ld, int rows, int K);
long ck_pack_q8_panel_generic(uint32_t *wq, uint16_t *wd, const void *src, int type, size_t ld, int rows, int K);

/// Runs fn(ctx, tid) on the calling thread and up to nth − 1 pool helpers (nth = 0: as many as
/// a product called from this thread would use); see the pool in compact.c.
void ck_run_job(void (*fn)(void *ctx, int tid), void *ctx, int nth);

/// A 64-byte aligned scratch buffer of the calling thread (the one the q8 driver uses for its x tiles).
void *ck_scratch_shared(size_t bytes);
/// Threads a product called from this thread may use (ck_threads() capped by ck_set_thread_max).
int ck_call_threads(void);

// CK_Q4 (compact_q4.c): layout, packing, unpacking, the product, the path's name.
size_t ck_q4_bytes(int N, int K);
long ck_q4_pack_rows(ck_weights *w, const void *src, int type, size_t ld, int row_begin, int row_end);
long ck_q4_pack_q4_1(ck_weights *w, const void *src, size_t ld, int row_begin, int row_end);
void ck_q4_unpack_row(const ck_weights *w, int n, float *out);
void ck_q4_linear(float *y, size_t ldy, const float *x, size_t ldx, int M, const ck_weights *w, int acc);
const char *ck_q4_path_name(void);

// Bit-exact scalar conversions.
static inline uint32_t ck_f32_bits(float f) { union { float f; uint32_t u; } v = {f}; return v.u; }
static inline float ck_f32_from(uint32_t u) { union { uint32_t u; float f; } v = {u}; return v.f; }
static inline uint16_t ck_bf16_rne(float f) {
    uint32_t x = ck_f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}
static inline float ck_bf16_f32(uint16_t h) { return ck_f32_from((uint32_t)h << 16); }

/// Element (r, k) of a row-major f32/bf16 source as bf16 bits.
static inline uint16_t ck_load_bf16(const void *src, int type, size_t idx) {
    return type == CK_BF16 ? ((const uint16_t *)src)[idx] : ck_bf16_rne(((const float *)src)[idx]);
}

#endif
