// Attention over the engine's paged 16-bit KV cache (include/compact.h, "Paged attention"):
// IEEE half conversions, and causal grouped-query attention that reads each sequence's keys and
// values through its block table, split over the compact pool's threads by (sequence, KV group).
#include "compact_impl.h"
#include "kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define CK_F16_MAX 65504.0f

// ---------------------------------------------------------------------------------------------
// Conversions (bit-identical on every path: F16C's conversions are IEEE round-to-nearest-even)

static uint16_t f32_to_f16_scalar(float f) {
    if (f != f) return 0x7E00;                          // NaN → quiet NaN
    if (f > CK_F16_MAX) f = CK_F16_MAX;                 // saturate: the cache never holds ±inf
    if (f < -CK_F16_MAX) f = -CK_F16_MAX;
    uint32_t x = ck_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFF;
    if (x < 0x38800000) {                               // below the smallest normal half: subnormal or 0
        if (x < 0x33000000) return sign;                // < 2^-25: rounds to 0
        uint32_t e = x >> 23, m = (x & 0x7FFFFF) | 0x800000;
        uint32_t shift = 126 - e;                       // 14 + (112 - e) + ... so that the result is m·2^(e-150) / 2^-24
        uint32_t half = m >> shift, rest = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t h = ((x >> 13) - (112u << 10));            // rebias exponent 127 → 15, keep 10 mantissa bits
    uint32_t rest = x & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;                          // (rounding up may carry into the exponent: correct)
}

static float f16_to_f32_scalar(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0) {
        if (m == 0) return ck_f32_from(sign);
        float v = (float)m * 0x1p-24f;                  // subnormal: exact
        return sign ? -v : v;
    }
    if (e == 31) return ck_f32_from(sign | 0x7F800000 | (m << 13));
    return ck_f32_from(sign | ((e + 112) << 23) | (m << 13));
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c")))
static void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    const __m256 hi = _mm256_set1_ps(CK_F16_MAX), lo = _mm256_set1_ps(-CK_F16_MAX);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        // min/max return their second operand when either is NaN: NaN stays NaN.
        x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++) dst[i] = f32_to_f16_scalar(src[i]);
}

__attribute__((target("avx2,fma,f16c")))
static void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = f16_to_f32_scalar(src[i]);
}
#endif

void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_isa() >= CK_ISA_AVX2) {
        f32_to_f16_avx2(src, dst, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16_scalar(src[i]);
}

void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_isa() >= CK_ISA_AVX2) {
        f16_to_f32_avx2(src, dst, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32_scalar(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Paged attention
//
// A work item is one (sequence, KV group): its M = n·G query rows (the G query heads of the group
// for each of the n new positions) against the L = p0 + n keys of that group. Pass 1 computes the
// scaled scores row by row, key by key (each key row converted once for all M query rows), pass 2
// the causal softmax, pass 3 P·V (each value row converted once for all M rows). Scores live in a
// per-thread buffer (M × L floats); nothing is written but the output rows.

typedef struct {
    float *out; int oStride;
    const float *q; int qStride;
    const uint16_t *k, *v;
    int bs, nH, nKV, hd;
    const ck_paged_seq *seqs;
    int nseq;
    int items;
    _Atomic int next;
} pa_ctx;

static _Thread_local float *pa_buf = NULL;
static _Thread_local size_t pa_cap = 0;

static float *pa_scratch(size_t n) {
    if (n > pa_cap) {
        free(pa_buf);
        pa_cap = n + n / 2 + 1024;
        pa_buf = aligned_alloc(64, ((pa_cap * sizeof(float)) + 63) & ~(size_t)63);
    }
    return pa_buf;
}

/// Key/value row j of group g of a sequence: block table[j / bs], row j % bs.
static inline const uint16_t *pa_row(const uint16_t *base, const int32_t *table, int j, int bs, int kvDim, int g, int hd) {
    return base + ((size_t)table[j / bs] * bs + (size_t)(j % bs)) * kvDim + (size_t)g * hd;
}

/// Walks a sequence's rows in order without a division per row: `at` is row j of group g.
typedef struct { const uint16_t *base, *at; const int32_t *table; int bs, kvDim, off, blk; size_t blockElems; } pa_cursor;

static inline void pa_cursor_init(pa_cursor *q, const uint16_t *base, const int32_t *table, int bs, int kvDim, int g, int hd) {
    q->base = base + (size_t)g * hd; q->table = table; q->bs = bs; q->kvDim = kvDim; q->off = 0; q->blk = 0;
    q->blockElems = (size_t)bs * kvDim;
    q->at = q->base + (size_t)table[0] * q->blockElems;
}

static inline void pa_cursor_next(pa_cursor *q) {
    if (++q->off == q->bs) {
        q->off = 0;
        q->at = q->base + (size_t)q->table[++q->blk] * q->blockElems;
#if defined(__x86_64__)
        // The next block is somewhere else in the pool: ask for its first lines now.
        _mm_prefetch((const char *)q->at, _MM_HINT_T0);
        _mm_prefetch((const char *)(q->at + q->kvDim), _MM_HINT_T0);
#endif
    } else {
        q->at += q->kvDim;
    }
}

static void pa_softmax(float *S, int M, int L, int p0, int G) {
    for (int r = 0; r < M; r++) {
        float *row = S + (size_t)r * L;
        const int valid = p0 + r / G + 1;
        float mx = -INFINITY;
        for (int j = 0; j < valid; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < valid; j++) { row[j] = expf(row[j] - mx); sum += row[j]; }
        const float inv = 1.0f / sum;
        for (int j = 0; j < valid; j++) row[j] *= inv;
    }
}

static void pa_item_scalar(const pa_ctx *c, const ck_paged_seq *s, int g, float *S, float *krow) {
    const int G = c->nH / c->nKV, hd = c->hd, kvDim = c->nKV * hd, M = s->n * G, L = s->p0 + s->n;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < L; j++) {
        const uint16_t *kj = pa_row(c->k, s->blocks, j, c->bs, kvDim, g, hd);
        for (int i = 0; i < hd; i++) krow[i] = f16_to_f32_scalar(kj[i]);
        for (int r = 0; r < M; r++) {
            if (j >= s->p0 + r / G + 1) continue;
            const float *qr = c->q + (size_t)(s->row0 + r / G) * c->qStride + (size_t)(g * G + r % G) * hd;
            float acc = 0.0f;
            for (int i = 0; i < hd; i++) acc += qr[i] * krow[i];
            S[(size_t)r * L + j] = scale * acc;
        }
    }
    pa_softmax(S, M, L, s->p0, G);
    for (int r = 0; r < M; r++) {
        float *o = c->out + (size_t)(s->row0 + r / G) * c->oStride + (size_t)(g * G + r % G) * hd;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
    }
    for (int j = 0; j < L; j++) {
        const uint16_t *vj = pa_row(c->v, s->blocks, j, c->bs, kvDim, g, hd);
        for (int i = 0; i < hd; i++) krow[i] = f16_to_f32_scalar(vj[i]);
        for (int r = 0; r < M; r++) {
            if (j >= s->p0 + r / G + 1) continue;
            const float p = S[(size_t)r * L + j];
            float *o = c->out + (size_t)(s->row0 + r / G) * c->oStride + (size_t)(g * G + r % G) * hd;
            for (int i = 0; i < hd; i++) o[i] += p * krow[i];
        }
    }
}

#if defined(__x86_64__)
// hd a multiple of 64 (four 16-float chunks per group), M ≤ PA_TILE rows at a time. Scores four keys at a time: each key row is
// converted once for all rows, the 4 × rows dot products accumulate in registers and are reduced
// together (one shuffle tree per four keys instead of one horizontal sum per key and row). P·V:
// each value row converted once, accumulated into every row's output in registers.
#define PA_TILE 4

// The four horizontal sums of a0 … a3, as lanes 0 … 3.
__attribute__((target("avx512f")))
static inline __m128 pa_hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 b0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 b1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 c = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b0), _mm512_castps_pd(b1))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b0), _mm512_castps_pd(b1))));
    c = _mm512_add_ps(c, _mm512_shuffle_f32x4(c, c, 0x4E));
    c = _mm512_add_ps(c, _mm512_shuffle_f32x4(c, c, 0xB1));
    return _mm512_castps512_ps128(c);
}

// One tile of MR (a compile-time constant after inlining) query rows r0 … r0+MR−1 of an item:
// accumulators stay in registers (4 keys × MR rows for the scores, 4 chunks × MR rows for P·V).
__attribute__((target("avx512f"), always_inline))
static inline void pa_tile_avx512(const pa_ctx *c, const ck_paged_seq *s, int g, float *S, int r0, const int MR) {
    const int G = c->nH / c->nKV, hd = c->hd, kvDim = c->nKV * hd, L = s->p0 + s->n;
    const int CQ = hd / 64;     // groups of four 16-float chunks
    const float scale = 1.0f / sqrtf((float)hd);
    const float *qr[4];
    int valid[4];
    for (int r = 0; r < MR; r++) {
        qr[r] = c->q + (size_t)(s->row0 + (r0 + r) / G) * c->qStride + (size_t)(g * G + (r0 + r) % G) * hd;
        valid[r] = s->p0 + (r0 + r) / G + 1;
    }
    const int jmax = valid[MR - 1];
    pa_cursor kc;
    pa_cursor_init(&kc, c->k, s->blocks, c->bs, kvDim, g, hd);
    int j = 0;
    for (; j + 4 <= jmax; j += 4) {
        __m512 acc[4][4];
        for (int r = 0; r < MR; r++) for (int u = 0; u < 4; u++) acc[r][u] = _mm512_setzero_ps();
        const uint16_t *kj[4];
        for (int u = 0; u < 4; u++) { kj[u] = kc.at; if (j + u + 1 < jmax) pa_cursor_next(&kc); }
        for (int cq = 0; cq < CQ; cq++) {
            for (int cc = 4 * cq; cc < 4 * cq + 4; cc++) {
                __m512 qv[4];
                for (int r = 0; r < MR; r++) qv[r] = _mm512_loadu_ps(qr[r] + 16 * cc);
                for (int u = 0; u < 4; u++) {
                    __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj[u] + 16 * cc)));
                    for (int r = 0; r < MR; r++) acc[r][u] = _mm512_fmadd_ps(qv[r], kv, acc[r][u]);
                }
            }
        }
        for (int r = 0; r < MR; r++) {
            __m128 sc = _mm_mul_ps(pa_hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), _mm_set1_ps(scale));
            float *row = S + (size_t)(r0 + r) * L + j;
            if (j + 4 <= valid[r]) _mm_storeu_ps(row, sc);
            else {
                float tmp[4];
                _mm_storeu_ps(tmp, sc);
                for (int u = 0; u < 4; u++) if (j + u < valid[r]) row[u] = tmp[u];
            }
        }
    }
    for (; j < jmax; j++) {
        const uint16_t *kj = kc.at;
        if (j + 1 < jmax) pa_cursor_next(&kc);
        __m512 acc[4];
        for (int r = 0; r < MR; r++) acc[r] = _mm512_setzero_ps();
        for (int cc = 0; cc < 4 * CQ; cc++) {
            __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * cc)));
            for (int r = 0; r < MR; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(qr[r] + 16 * cc), kv, acc[r]);
        }
        for (int r = 0; r < MR; r++)
            if (j < valid[r]) S[(size_t)(r0 + r) * L + j] = scale * _mm512_reduce_add_ps(acc[r]);
    }
    for (int r = 0; r < MR; r++) {
        float *row = S + (size_t)(r0 + r) * L;
        const float mx = kernels_max(row, valid[r]);
        const float inv = (float)(1.0 / kernels_exp_sum(row, valid[r], mx, 1.0f, row));
        for (int jj = 0; jj < valid[r]; jj++) row[jj] *= inv;
        for (int jj = valid[r]; jj < jmax; jj++) row[jj] = 0.0f;   // causal: P·V runs to jmax for every row
    }
    for (int cq = 0; cq < CQ; cq++) {
        __m512 acc[4][4];
        for (int r = 0; r < MR; r++) for (int cc = 0; cc < 4; cc++) acc[r][cc] = _mm512_setzero_ps();
        pa_cursor vc;
        pa_cursor_init(&vc, c->v, s->blocks, c->bs, kvDim, g, hd);
        for (int jj = 0; jj < jmax; jj++) {
            const uint16_t *vj = vc.at + 64 * cq;
            if (jj + 1 < jmax) pa_cursor_next(&vc);
            __m512 p[4];
            for (int r = 0; r < MR; r++) p[r] = _mm512_set1_ps(S[(size_t)(r0 + r) * L + jj]);
            for (int cc = 0; cc < 4; cc++) {
                __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * cc)));
                for (int r = 0; r < MR; r++) acc[r][cc] = _mm512_fmadd_ps(p[r], vv, acc[r][cc]);
            }
        }
        for (int r = 0; r < MR; r++) {
            float *o = c->out + (size_t)(s->row0 + (r0 + r) / G) * c->oStride + (size_t)(g * G + (r0 + r) % G) * hd + 64 * cq;
            for (int cc = 0; cc < 4; cc++) _mm512_storeu_ps(o + 16 * cc, acc[r][cc]);
        }
    }
}

// hd a multiple of 64 (SmolLM2 and Llama: 64, 128).
__attribute__((target("avx512f")))
static void pa_item_avx512(const pa_ctx *c, const ck_paged_seq *s, int g, float *S) {
    const int M = s->n * (c->nH / c->nKV);
    int r0 = 0;
    for (; r0 + 4 <= M; r0 += 4) pa_tile_avx512(c, s, g, S, r0, 4);
    switch (M - r0) {
    case 3: pa_tile_avx512(c, s, g, S, r0, 3); break;
    case 2: pa_tile_avx512(c, s, g, S, r0, 2); break;
    case 1: pa_tile_avx512(c, s, g, S, r0, 1); break;
    default: break;
    }
}

// hd a multiple of 8: the same with 8-float chunks.
__attribute__((target("avx2,fma,f16c")))
static void pa_item_avx2(const pa_ctx *c, const ck_paged_seq *s, int g, float *S) {
    const int G = c->nH / c->nKV, hd = c->hd, kvDim = c->nKV * hd, M = s->n * G, L = s->p0 + s->n;
    const int C = hd / 8;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int r0 = 0; r0 < M; r0 += PA_TILE) {
        const int mr = M - r0 < PA_TILE ? M - r0 : PA_TILE;
        const float *qr[PA_TILE];
        for (int r = 0; r < mr; r++)
            qr[r] = c->q + (size_t)(s->row0 + (r0 + r) / G) * c->qStride + (size_t)(g * G + (r0 + r) % G) * hd;
        const int jmax = s->p0 + (r0 + mr - 1) / G + 1;
        for (int j = 0; j < jmax; j++) {
            const uint16_t *kj = pa_row(c->k, s->blocks, j, c->bs, kvDim, g, hd);
            __m256 acc[PA_TILE];
            for (int r = 0; r < mr; r++) acc[r] = _mm256_setzero_ps();
            for (int cc = 0; cc < C; cc++) {
                __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 8 * cc)));
                for (int r = 0; r < mr; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr[r] + 8 * cc), kv, acc[r]);
            }
            for (int r = 0; r < mr; r++) {
                if (j >= s->p0 + (r0 + r) / G + 1) continue;
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_movehdup_ps(h));
                S[(size_t)(r0 + r) * L + j] = scale * _mm_cvtss_f32(h);
            }
        }
    }
    pa_softmax(S, M, L, s->p0, G);
    for (int r0 = 0; r0 < M; r0 += PA_TILE) {
        const int mr = M - r0 < PA_TILE ? M - r0 : PA_TILE;
        const int jmax = s->p0 + (r0 + mr - 1) / G + 1;
        for (int cc = 0; cc < C; cc++) {
            __m256 acc[PA_TILE];
            for (int r = 0; r < mr; r++) acc[r] = _mm256_setzero_ps();
            for (int j = 0; j < jmax; j++) {
                const uint16_t *vj = pa_row(c->v, s->blocks, j, c->bs, kvDim, g, hd);
                __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * cc)));
                for (int r = 0; r < mr; r++) {
                    const int valid = s->p0 + (r0 + r) / G + 1;
                    const float p = j < valid ? S[(size_t)(r0 + r) * L + j] : 0.0f;
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(p), vv, acc[r]);
                }
            }
            for (int r = 0; r < mr; r++) {
                float *o = c->out + (size_t)(s->row0 + (r0 + r) / G) * c->oStride + (size_t)(g * G + (r0 + r) % G) * hd;
                _mm256_storeu_ps(o + 8 * cc, acc[r]);
            }
        }
    }
}
#endif

static void pa_group(const pa_ctx *c, const ck_paged_seq *s, int g, int isa) {
    const int G = c->nH / c->nKV, M = s->n * G, L = s->p0 + s->n;
    float *S = pa_scratch((size_t)M * L + (size_t)c->hd);
#if defined(__x86_64__)
    if (isa >= CK_ISA_AVX512VNNI && c->hd % 64 == 0) { pa_item_avx512(c, s, g, S); return; }
    if (isa >= CK_ISA_AVX2 && c->hd % 8 == 0) { pa_item_avx2(c, s, g, S); return; }
#endif
    (void)isa;
    pa_item_scalar(c, s, g, S, S + (size_t)M * L);
}

// A work item is a whole sequence (its KV groups one after the other, so each key and value row
// is read from memory once: a group's slice of a row is a third of SmolLM2's, and the lines next
// to it come along anyway) when there are enough sequences to share out; else one KV group of one.
static void pa_job(void *p, int tid) {
    (void)tid;
    pa_ctx *c = p;
    const int isa = ck_isa();
    const int perGroup = c->items > c->nseq;
    for (;;) {
        int it = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (it >= c->items) break;
        if (perGroup) { pa_group(c, &c->seqs[it / c->nKV], it % c->nKV, isa); continue; }
        for (int g = 0; g < c->nKV; g++) pa_group(c, &c->seqs[it], g, isa);
    }
}

void ck_paged_attention_f16(float *out, int oStride, const float *q, int qStride,
                            const uint16_t *k, const uint16_t *v, int blockSize,
                            int nH, int nKV, int hd, const ck_paged_seq *seqs, int nseq) {
    if (nseq <= 0) return;
    // One thread unless there is enough work to pay for waking a helper (~ 10 µs).
    long work = 0;
    for (int i = 0; i < nseq; i++) work += (long)seqs[i].n * (seqs[i].p0 + seqs[i].n);
    const int threads = work * nH * hd >= 200000 ? 0 : 1;
    const int items = threads != 1 && nseq < 8 * ck_threads() ? nseq * nKV : nseq;
    pa_ctx c = {out, oStride, q, qStride, k, v, blockSize, nH, nKV, hd, seqs, nseq, items, 0};
    ck_run_job(pa_job, &c, threads);
}
