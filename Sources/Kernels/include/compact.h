// Compact-precision products: the project's own C kernels for bf16 and 8-bit block weights
// (Debian's OpenBLAS has no sbgemm, and no int8 GEMM at all). f32 products stay with OpenBLAS
// (kernels.h); these are for the engine's compact weights (issue 13) and the learner's bf16 mixed
// precision (issue 14).
//
// Every product is y (M×N, f32, row-major) = x (M×K) · Wᵀ with W (N×K) — PyTorch's nn.Linear, the
// Llama projections — either overwriting y or adding to it. Accumulation is always f32.
//
// Formats of a compact weight matrix (ck_weights, N rows of K):
//   CK_BF16  bfloat16, rounded to nearest even from f32 (NaN stays NaN, subnormals kept).
//            Stored in panels of 32 rows: panel p holds, for each pair of columns (2j, 2j+1), 32
//            32-bit words (row p·32+i: bf16(W[r][2j]) | bf16(W[r][2j+1]) << 16), so one 64-byte
//            load feeds vdpbf16ps 16 rows × 2 columns. K is padded to even, N to 32, with zeros.
//            2 bytes per weight.
//   CK_Q8    Q8_0-like: blocks of 32 consecutive columns of a row share one float16 scale d;
//            w ≈ d·q with q an int8 in [−127, 127]. Panels of 16 rows: per block, 8 groups of
//            16 rows × 4 bytes (one 64-byte load = 16 rows × 4 columns for vpdpbusd), and the
//            16 scales of the block in a separate array. K is padded to 32, N to 16, with zeros.
//            34 bytes per 32 weights (1.0625 bytes per weight), as GGUF's Q8_0.
//            Quantiser: d = the smallest float16 ≥ max|w|/127 (round to nearest, bumped one step
//            when it rounded down), q = round-to-nearest-even(w / d); so |q| ≤ 127 and
//            |w − d·q| ≤ d/2 (+ one float rounding). A block with a NaN or ±Inf, or whose
//            max|w| exceeds 65504·127, gets d = NaN (its products are NaN) and is counted.
//   CK_Q4    Q4_1-like: blocks of 32 consecutive columns of a row share a float16 scale d and a
//            float16 minimum m; w ≈ d·q + m with q a 4-bit unsigned integer in [0, 15]. Panels of
//            16 rows; panel p, block b is 320 contiguous bytes: 4 groups of 16 rows × 4 bytes (byte
//            i of group g, row r: q of column 4g+i in the low nibble, of column 16+4g+i in the high
//            one — so a mask, or a shift and a mask, of one 64-byte load is vpdpbusd's unsigned
//            operand for 16 rows × 4 columns), then the 16 scales, then the 16 minimums. K is padded
//            to 32, N to 16. 20 bytes per 32 weights (0.625 bytes per weight), as GGUF's Q4_1.
//            Quantiser (f32 arithmetic): m = f16(min w) (a zero as +0), d = f16(max(max w − m, 0)
//            / 15) (nearest even, subnormals kept), q = clamp(rne((w − m)·(1/d)), 0, 15) (0 when d = 0); so
//            |w − (d·q + m)| ≤ ε_w = 0.501·d + 2^-11·|m| + 2^-21 (the last term: half float16
//            subnormal steps of m and of 15·d). A block with a NaN or ±Inf, |min w| > 65504 or
//            (max w − m)/15 > 65504 gets d = m = NaN and is counted. Blocks of
//            GGUF's Q4_1 (llama.cpp's quantiser: the same m, d = f16((max−min)/15)) come back
//            exactly: packing their dequantised values gives their d, m and q (ck_pack_q4_1 copies
//            them). Why Q4_1 rather than Q4_0 (4.5 bits): the minimum uses all 16 levels on a
//            block's actual range (Q4_0 spends half of them on the sign's side the block does not
//            use), and the model files the engine serves are mostly Q4_1 already, so a q4 engine
//            started from one computes with the file's own weights.
//
// Products with CK_Q8 weights quantise x the same way per 32-column block of each row (scale kept
// in f32, d_x = max|x|/127, q = rne(x/d_x)) and compute Σ_b d_w·d_x·Σ q_w·q_x with exact int32 block
// sums (vpdpbusd on AVX-512 VNNI). Products with CK_BF16 weights, and ck_gemm, round the f32
// operands to bf16 (nearest even) and multiply them exactly into f32 accumulators (vdpbf16ps on
// AVX-512 BF16). Error bounds (u = 2^-24, each output y = Σ_k x_k·w_k over K terms):
//   bf16:  |y − Σ x̂·ŵ| ≤ 1.01·(K+2)·u·Σ|x̂·ŵ|   (x̂, ŵ: the bf16-rounded operands; + |y0| with
//          accumulate), and |x̂·ŵ − x·w| ≤ (2^-7 + 2^-16)·|x·w| per term. On AVX-512 BF16,
//          operands below 2^-126 in magnitude count as zero (vdpbf16ps flushes subnormals).
//   q8:    |y − Σ x·w| ≤ Σ_b [ d_x,b/2 · Σ_{k∈b} |ŵ_k| + d_w,b/2 · Σ_{k∈b} |x_k| ] + (Kb+2)·u·Σ_b |d_w·d_x·I_b|
//          (ŵ = d_w·q_w, I_b the exact integer block sums, Kb = ⌈K/32⌉ blocks).
//   q4:    x quantised as for q8; y = Σ_b [ d_w·d_x·I_b + m_w·d_x·S_b ] (I_b = Σ q_w·q_x exact,
//          S_b = Σ q_x), and
//          |y − Σ x·w| ≤ Σ_b [ d_x,b/2 · Σ_{k∈b} |ŵ_k| + ε_w,b · Σ_{k∈b} |x_k| ]
//                        + (2Kb+4)·u·Σ_b (|d_w·d_x·I_b| + |m_w·d_x·S_b|)   (ŵ = d_w·q_w + m_w).
//
// Implementations (chosen once, at first use, from cpuid; SELM_KERNELS caps the instruction set):
//   bf16 products: "avx512bf16" (vdpbf16ps), "avx2" (AVX2+FMA, bf16 widened to f32), "scalar".
//   q8 products:   "avx512vnni" (vpdpbusd),  "avx2" (vpmaddubsw), "scalar".
//   q4 products:   "avx512vnni" (vpdpbusd on the nibbles), "avx2" (vpmaddubsw), "scalar"; every M
//                  (decode and prefill) runs the same integer kernels.
// SELM_KERNELS=avx512bf16|avx512vnni|avx2|scalar is the highest level used: avx512vnni runs q8 on
// VNNI and bf16 on AVX2 (there is no AVX-512 bf16 path without the BF16 instructions). All
// implementations give the same results within the bounds above (the packed data are identical).
//
// Threads: products split their output columns over a small persistent pool of
// ck_threads() − 1 helper threads plus the calling thread (default: the online CPU count, at most
// 8; SELM_KERNEL_THREADS or ck_set_threads() change it; ck_set_thread_max() caps the calling
// thread's calls, e.g. to 1 when the engine and the learner compute at once). The pool serves one
// call at a time: a call that finds it busy runs on its own thread alone. Every function is safe to
// call from any thread; products may run concurrently on distinct outputs.
#ifndef SELM_COMPACT_H
#define SELM_COMPACT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// Instruction-set selection

enum { CK_ISA_SCALAR = 0, CK_ISA_AVX2 = 1, CK_ISA_AVX512VNNI = 2, CK_ISA_AVX512BF16 = 3 };
/// The highest level this CPU (and OS) supports.
int ck_isa_detected(void);
/// The level in use: min(detected, SELM_KERNELS, the last ck_set_isa).
int ck_isa(void);
/// Sets the level (clamped to the detected one); returns the level now in use. For tests and
/// benchmarks; not meant to change while products run on other threads.
int ck_set_isa(int level);
/// "scalar", "avx2", "avx512vnni", "avx512bf16"; NULL for an unknown level.
const char *ck_isa_name(int level);
/// Parses an ISA name as SELM_KERNELS does; −1 if unknown.
int ck_isa_parse(const char *name);
/// The implementation that runs products of a format now: "avx512bf16", "avx512vnni", "avx2", "scalar".
const char *ck_path_name(int format);

// ---------------------------------------------------------------------------------------------
// Threads

/// Threads one product uses (the calling thread included).
int ck_threads(void);
/// Sets it (1 = single-threaded, 0 = the default; at most 64). Not while products run.
void ck_set_threads(int n);
/// Caps the threads of products called from the calling thread (0 = no cap).
void ck_set_thread_max(int n);

// ---------------------------------------------------------------------------------------------
// Compact weights

enum { CK_BF16 = 1, CK_Q8 = 2, CK_Q4 = 4 };

typedef struct {
    int format;      ///< CK_BF16, CK_Q8 or CK_Q4
    int N, K;        ///< rows (outputs) and columns (inputs)
    int panels;      ///< ⌈N / panel rows⌉ (32 for bf16, 16 for q8 and q4)
    int kpad;        ///< K padded (to 2 for bf16, to 32 for q8 and q4)
    void *data;      ///< packed payload, 64-byte aligned (ck_weights_bytes)
    uint16_t *scales;///< q8: float16 scales [panel][block][16] (inside data); NULL for bf16 and q4
    int owned;       ///< data was allocated by ck_weights_alloc
} ck_weights;

/// Rows per panel of a format (32 for CK_BF16, 16 for CK_Q8 and CK_Q4), 0 if unknown.
int ck_panel_rows(int format);
/// Bytes of the packed payload of an N×K matrix in `format`.
size_t ck_weights_bytes(int format, int N, int K);
/// Describes an N×K matrix stored in `mem` (64-byte aligned, ck_weights_bytes bytes; its contents
/// are whatever was packed there). Returns 0, or −1 for a bad format/shape or misaligned memory.
int ck_weights_init(ck_weights *w, int format, int N, int K, void *mem);
/// Allocates (zeroed) storage; 0 or −1 (bad arguments or out of memory). Free with ck_weights_free.
int ck_weights_alloc(ck_weights *w, int format, int N, int K);
void ck_weights_free(ck_weights *w);

/// Packs rows [row_begin, row_end) of the f32 matrix src (row r at src + r·ld; the whole matrix is
/// W[0..N) so row_begin/row_end index it) into w. row_begin must be a multiple of
/// ck_panel_rows(format) and row_end either one too or N (so calls on consecutive ranges may run
/// on different threads). Runs on the calling thread only. Returns the number of q8/q4 blocks that
/// were non-finite or out of range (scale NaN; 0 for bf16 — NaN/Inf stay NaN/Inf in bf16), or −1
/// for a bad range.
long ck_pack_f32(ck_weights *w, const float *src, size_t ld, int row_begin, int row_end);

/// adamw_update (kernels.h) over a row-major (N, K) tensor, and in the same pass — each group of 32 rows right
/// after its update, while it is in this core's cache — its packed copy into `packed` (a compact
/// matrix of N × K, ck_pack_f32; NULL: none) and/or an f32 copy into `copy` (N·K floats; NULL: none):
/// the optimizer's pass makes the engine's next snapshot. The update is bit for bit adamw_update's.
/// Returns the q8 blocks that could not be represented (ck_pack_f32's count), -1 when `packed` is
/// not N × K.
long adamw_update_rows(float *p, const float *g, float *m, float *v, int N, int K, float beta1, float beta2,
                       float eps, float shrink, float step, float bc2sqrt, float gscale, ck_weights *packed, float *copy);
/// The same from bf16 (uint16_t bits) rows: exact for CK_BF16.
long ck_pack_bf16(ck_weights *w, const uint16_t *src, size_t ld, int row_begin, int row_end);
/// CK_Q8 from GGUF Q8_0 blocks (34 bytes: f16 d, int8 q[32]; row r at src + r·ld bytes, K a
/// multiple of 32): exact, except that q = −128 (never written by llama.cpp's quantiser) becomes
/// −127. Returns the number of values so changed, or −1 for a bad range or format.
long ck_pack_q8_0(ck_weights *w, const void *src, size_t ld, int row_begin, int row_end);
/// CK_Q4 from GGUF Q4_1 blocks (20 bytes: f16 d, f16 m, u8 qs[16]; row r at src + r·ld bytes, K a
/// multiple of 32): exact. Returns 0, or −1 for a bad range or format.
long ck_pack_q4_1(ck_weights *w, const void *src, size_t ld, int row_begin, int row_end);
/// Row n of w as f32 (K values): the weights the products use (embedding lookup of a tied table).
void ck_unpack_row(const ck_weights *w, int n, float *out);

// ---------------------------------------------------------------------------------------------
// Products

/// y (M×N, row r at y + r·ldy) = x (M×K, row r at x + r·ldx) · Wᵀ, or += with accumulate != 0.
/// M = 1…32 streams W once per call for all rows (decode batches); larger M is cache-blocked
/// (prefill). Output columns are split over ck_threads() threads.
void ck_linear(float *y, size_t ldy, const float *x, size_t ldx, int M, const ck_weights *w, int accumulate);

/// Operand of ck_gemm: data of `type` (CK_F32 or CK_BF16 (uint16_t bits), or CK_PACKED: data is
/// a const ck_weights * in CK_BF16, trans 0). trans = 0: the operand is stored as the shape its
/// role says (A: M×K, B: N×K) with row stride ld; trans = 1: stored transposed (A: K×M, B: K×N).
enum { CK_F32 = 0, CK_PACKED = 3 };  // CK_BF16 (= 1) as above
typedef struct { const void *data; int type; int trans; size_t ld; } ck_operand;

/// C (M×N, row stride ldc) = A · Bᵀ (or += with accumulate != 0) with A ≅ M×K and B ≅ N×K,
/// both rounded to bf16, f32 accumulation (bound above). The linear layer's three products:
///   forward      y  = x·Wᵀ:   M=T, N=OC, K=C:  A = {x, T×C},            B = {W, OC×C}
///   input grad   dx += dy·W:  M=T, N=C, K=OC:  A = {dy, T×OC},          B = {W as K×N: trans 1}
///   weight grad  dW += dyᵀ·x: M=OC, N=C, K=T:  A = {dy as K×M: trans 1}, B = {x as K×N: trans 1}
void ck_gemm(int M, int N, int K, ck_operand A, ck_operand B, float *C, size_t ldc, int accumulate);

/// matmul_forward / matmul_backward (kernels.h) with bf16 operands and f32 accumulation; f32
/// buffers, same shapes and conventions (gradients accumulate; either may be NULL).
void ck_matmul_forward_bf16(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate);
void ck_matmul_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             int T, int C, int OC);

// ---------------------------------------------------------------------------------------------
// Conversions and the activation quantiser (bulk, vectorised, identical on every implementation)

/// f32 → bf16 bits, round to nearest even; NaN → quiet NaN; subnormals rounded, not flushed.
void ck_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
void ck_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
/// The weight quantiser on one block of n ≤ 32 values (the rest count as 0): q[0..32), returns
/// the float16 bits of d. *bad = 1 if the block is non-finite or out of range (d = NaN).
uint16_t ck_q8_quantize_block(const float *src, int n, int8_t q[32], int *bad);
/// The q4 weight quantiser on one block of n ≤ 32 values (1 ≤ n): q[0..32) in [0, 15] (0 past n),
/// *m the float16 bits of the minimum; returns those of d. *bad = 1 for a bad block (d = m = NaN).
uint16_t ck_q4_quantize_block(const float *src, int n, uint8_t q[32], uint16_t *m, int *bad);
/// The activation quantiser of q8 products on one block of n ≤ 32 values: q[0..32), returns d_x.
float ck_q8_quantize_act_block(const float *src, int n, int8_t q[32]);

// ---------------------------------------------------------------------------------------------
// Paged attention over a 16-bit KV cache (paged_attention.c)

/// f32 → IEEE half bits, round to nearest even, saturating at ±65504 (the cache never holds ±inf);
/// NaN stays NaN. Identical on every path.
void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n);

/// One sequence of ck_paged_attention_f16: its n new positions p0 … p0+n−1 are rows row0 … of q
/// and out; its keys and values for positions 0 … p0+n−1 are in blocks[0 …]: position j is row
/// j % blockSize of block blocks[j / blockSize].
typedef struct { const int32_t *blocks; int p0, n, row0; } ck_paged_seq;

/// Causal grouped-query attention for a batch of sequences over a paged half-precision KV cache:
/// k and v point at one layer's pool, block b at k + b·blockSize·nKV·hd, row-major (blockSize,
/// nKV·hd). out rows (stride oStride) get softmax(q·kᵀ/√hd)·v per query head (head h reads KV
/// group h / (nH / nKV)); q rows have stride qStride. The (sequence, KV group) pairs are split over
/// the compact pool's threads. Scores and sums are f32. Meant for decoding (a few rows per
/// sequence): cost O(rows · L · hd) with no blocked product.
void ck_paged_attention_f16(float *out, int oStride, const float *q, int qStride,
                            const uint16_t *k, const uint16_t *v, int blockSize,
                            int nH, int nKV, int hd, const ck_paged_seq *seqs, int nseq);

// ---------------------------------------------------------------------------------------------
// Measurements (selm-bench): ceilings for the products' figures

/// GFLOP/s of a register-only vdpbf16ps loop (2 flops per bf16 pair) on `threads` threads for
/// about `seconds`; 0 without AVX-512 BF16.
double ck_peak_bf16_gflops(int threads, double seconds);
/// GOP/s of a register-only vpdpbusd loop (2 ops per int8 pair); 0 without AVX-512 VNNI.
double ck_peak_vnni_gops(int threads, double seconds);
/// GB/s of a streaming read of `bytes` (≫ caches) on `threads` threads, best of `reps`.
double ck_stream_read_gbs(size_t bytes, int threads, int reps);

#ifdef __cplusplus
}
#endif
#endif
