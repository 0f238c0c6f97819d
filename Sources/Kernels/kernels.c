// Kernels: see include/kernels.h for shapes and conventions.
#include "kernels.h"
#include "learner_fused.h"
#include "compact.h"

#include <cblas.h>
#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

// ---------------------------------------------------------------------------------------------
// OpenBLAS control

const char *kernels_blas_core(void) { return openblas_get_corename(); }
int kernels_blas_threads(void) { return openblas_get_num_threads(); }
void kernels_set_blas_threads(int n) { openblas_set_num_threads(n); }

#if defined(__x86_64__)
static unsigned long long xgetbv0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

const char *kernels_best_core_for_cpu(void) {
#if defined(__x86_64__)
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return NULL;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx) return NULL;
    unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return NULL;  // OS does not save YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return "Sandybridge";
    int avx2 = (b >> 5) & 1;
    int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    if (avx512f && avx512dq && avx512bw && avx512vl && (xcr0 & 0xE0) == 0xE0) {
        // With AVX512_BF16 (CPUID 7.1 EAX bit 5): Cooperlake, what OpenBLAS itself detects on Zen 4.
        // Its sgemm is SkylakeX's (the two were within noise in `selm-bench kernels`, 7 runs) and
        // 1.5-2x the AVX2 cores (Haswell, Zen): README "OpenBLAS core".
        unsigned int a1 = 0, b1 = 0, c1 = 0, d1 = 0;
        if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && ((a1 >> 5) & 1)) return "Cooperlake";
        return "SkylakeX";
    }
    if (avx2 && fma) return "Haswell";
    return "Sandybridge";
#else
    return NULL;
#endif
}

int kernels_core_rank(const char *core) {
    if (!core) return 0;
    static const struct { const char *name; int rank; } table[] = {
        {"Prescott", 1}, {"Core2", 1}, {"Penryn", 1}, {"Dunnington", 1}, {"Nehalem", 1}, {"Atom", 1},
        {"Opteron", 1}, {"Barcelona", 1}, {"Bobcat", 1}, {"Katmai", 1}, {"Northwood", 1},
        {"Sandybridge", 2}, {"Bulldozer", 2}, {"Piledriver", 2}, {"Steamroller", 2}, {"Excavator", 2},
        {"Haswell", 3}, {"Zen", 3}, {"SkylakeX", 4}, {"Cooperlake", 5}, {"SapphireRapids", 5},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcasecmp(core, table[i].name) == 0) return table[i].rank;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Two-thread parallel loops

static pthread_mutex_t par_mu = PTHREAD_MUTEX_INITIALIZER;   // held by the one caller using the helper
static pthread_mutex_t par_job_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t par_job_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t par_once = PTHREAD_ONCE_INIT;
static struct { kernels_range_fn fn; void *ctx; size_t begin, end; int posted, done; } par_job;

static void *par_worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&par_job_mu);
    for (;;) {
        while (!par_job.posted) pthread_cond_wait(&par_job_cv, &par_job_mu);
        par_job.posted = 0;
        kernels_range_fn fn = par_job.fn; void *ctx = par_job.ctx; size_t b = par_job.begin, e = par_job.end;
        pthread_mutex_unlock(&par_job_mu);
        fn(ctx, b, e);
        pthread_mutex_lock(&par_job_mu);
        par_job.done = 1;
        pthread_cond_broadcast(&par_job_cv);
    }
    return NULL;
}

static void par_start(void) {
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &a, par_worker, NULL);
    pthread_attr_destroy(&a);
}

void kernels_parallel(size_t n, size_t min_parallel, kernels_range_fn fn, void *ctx) {
    if (n < 2 || n < min_parallel || pthread_mutex_trylock(&par_mu) != 0) { fn(ctx, 0, n); return; }
    pthread_once(&par_once, par_start);
    size_t mid = n / 2;
    pthread_mutex_lock(&par_job_mu);
    par_job.fn = fn; par_job.ctx = ctx; par_job.begin = mid; par_job.end = n; par_job.done = 0; par_job.posted = 1;
    pthread_cond_broadcast(&par_job_cv);
    pthread_mutex_unlock(&par_job_mu);
    fn(ctx, 0, mid);
    pthread_mutex_lock(&par_job_mu);
    while (!par_job.done) pthread_cond_wait(&par_job_cv, &par_job_mu);
    pthread_mutex_unlock(&par_job_mu);
    pthread_mutex_unlock(&par_mu);
}

// ---------------------------------------------------------------------------------------------
// BLAS sharing

static pthread_mutex_t share_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t share_cv = PTHREAD_COND_INITIALIZER;
static int share_mode = KERNELS_SHARING_NONE;
static double share_chunk_flops = 2e9;
static int share_busy = 0, share_waiting_high = 0;
static unsigned long share_next_ticket = 0, share_serving = 0;
static __thread int thread_low = 0;
static __thread int thread_depth = 0;
static int active_compute = 0;      // compute threads inside a pass (atomic)
static int max_blas_threads = 0;    // OpenBLAS threads at start-up
static int current_blas_threads = 0;
static __thread double thread_wait = 0;
static __thread double thread_blas = 0;

void kernels_set_sharing(int mode, double max_chunk_flops) {
    pthread_mutex_lock(&share_mu);
    if (max_blas_threads == 0) max_blas_threads = current_blas_threads = openblas_get_num_threads();
    share_mode = mode;
    if (max_chunk_flops > 0) share_chunk_flops = max_chunk_flops;
    pthread_mutex_unlock(&share_mu);
}
int kernels_sharing_mode(void) { return share_mode; }
void kernels_set_thread_priority(int high) { thread_low = !high; }
double kernels_thread_wait_seconds(void) { return thread_wait; }
double kernels_thread_blas_seconds(void) { return thread_blas; }
static __thread double thread_products = 0;   // inside matmul_forward/backward(_bf16)
double kernels_thread_product_seconds(void) { return thread_products; }

static double mono_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

// Per-thread seconds in the passes outside the linear layers' products (kernels.h KS_*).
static __thread double thread_sections[KS_COUNT];
static inline void section_end(int s, double t0) { thread_sections[s] += mono_now() - t0; }
double kernels_thread_section_seconds(int section) {
    return section >= 0 && section < KS_COUNT ? thread_sections[section] : 0;
}
const char *kernels_section_name(int section) {
    static const char *names[KS_COUNT] = {
        "attention forward", "attention backward", "RMSNorm forward", "RMSNorm backward", "SwiGLU forward",
        "SwiGLU backward", "RoPE", "log-softmax forward", "log-softmax backward", "embedding", "row gathers",
        "AdamW + gradient norm",
    };
    return section >= 0 && section < KS_COUNT ? names[section] : "?";
}

void kernels_compute_enter(void) {
    if (thread_depth++ == 0) __atomic_add_fetch(&active_compute, 1, __ATOMIC_SEQ_CST);
}

void kernels_compute_exit(void) {
    if (--thread_depth == 0) __atomic_sub_fetch(&active_compute, 1, __ATOMIC_SEQ_CST);
}

// ADAPTIVE: one BLAS thread per compute thread while two are busy, all of them for a lone one.
static void adapt_blas_threads(void) {
    int want = __atomic_load_n(&active_compute, __ATOMIC_RELAXED) >= 2 ? 1 : max_blas_threads;
    if (want != __atomic_load_n(&current_blas_threads, __ATOMIC_RELAXED)) {
        __atomic_store_n(&current_blas_threads, want, __ATOMIC_RELAXED);
        openblas_set_num_threads(want);
    }
}

// Returns whether the lock was taken (the mode may be NONE or ADAPTIVE).
static int blas_acquire(void) {
    if (share_mode == KERNELS_SHARING_ADAPTIVE) { adapt_blas_threads(); return 0; }
    if (share_mode == KERNELS_SHARING_NONE) return 0;
    double t0 = mono_now();
    pthread_mutex_lock(&share_mu);
    if (share_mode == KERNELS_SHARING_FIFO) {
        unsigned long ticket = share_next_ticket++;
        while (share_serving != ticket || share_busy) pthread_cond_wait(&share_cv, &share_mu);
    } else {
        int high = !thread_low;
        if (high) share_waiting_high++;
        while (share_busy || (!high && share_waiting_high > 0)) pthread_cond_wait(&share_cv, &share_mu);
        if (high) share_waiting_high--;
    }
    share_busy = 1;
    pthread_mutex_unlock(&share_mu);
    thread_wait += mono_now() - t0;
    return 1;
}

static void blas_release(int taken) {
    if (!taken) return;
    pthread_mutex_lock(&share_mu);
    share_busy = 0;
    if (share_mode == KERNELS_SHARING_FIFO) share_serving++;
    pthread_cond_broadcast(&share_cv);
    pthread_mutex_unlock(&share_mu);
}

// Rows per call for a product of `rows` rows costing `flops_per_row` each: everything at once
// unless a low-priority thread shares the BLAS.
static int chunk_rows(int rows, double flops_per_row) {
    if (share_mode == KERNELS_SHARING_NONE || share_mode == KERNELS_SHARING_ADAPTIVE || !thread_low) return rows;
    int r = (int)(share_chunk_flops / (flops_per_row > 1 ? flops_per_row : 1));
    return r < 1 ? 1 : (r > rows ? rows : r);
}

static void sgemm_shared(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    int taken = blas_acquire();
    double t0 = mono_now();
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    thread_blas += mono_now() - t0;
    blas_release(taken);
}

// ---------------------------------------------------------------------------------------------
// Matrix multiply

void matmul_forward(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate) {
    if (T == 0) return;
    if (T == 1) {
        // A matrix-vector product: sgemm would pack the whole weight matrix first (a second pass
        // over it); sgemv streams it once, which is what bounds single-sequence decoding.
        int taken = blas_acquire();
        double t0 = mono_now();
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, weight, C, inp, 1, accumulate ? 1.0f : 0.0f, out, 1);
        thread_blas += mono_now() - t0;
        blas_release(taken);
        return;
    }
    double p0 = mono_now();
    int step = chunk_rows(T, 2.0 * C * OC);
    for (int t = 0; t < T; t += step) {
        int n = T - t < step ? T - t : step;
        sgemm_shared(CblasNoTrans, CblasTrans, n, OC, C, 1.0f, inp + (size_t)t * C, C, weight, C,
                     accumulate ? 1.0f : 0.0f, out + (size_t)t * OC, OC);
    }
    thread_products += mono_now() - p0;
}

// The same product over a compact weight (compact.h): shared like the BLAS. ADAPTIVE caps the
// calling thread's kernel threads to 1 while two compute threads are inside a pass (as it gives each
// BLAS call one OpenBLAS thread), PRIORITY/FIFO run it under the BLAS lock with all threads, NONE
// leaves it alone (split sets the kernel pool to 1 thread, as it does OpenBLAS's).
static __thread int compact_last_threads = 0;
int kernels_compact_last_threads(void) { return compact_last_threads; }

void compact_linear_forward(float *out, const float *inp, const ck_weights *w, int T, int accumulate) {
    if (T == 0) return;
    int taken = 0;
    if (share_mode == KERNELS_SHARING_ADAPTIVE) {
        int both = __atomic_load_n(&active_compute, __ATOMIC_RELAXED) >= 2;
        ck_set_thread_max(both ? 1 : 0);
        compact_last_threads = both ? 1 : ck_threads();
    } else {
        taken = blas_acquire();
        compact_last_threads = ck_threads();
    }
    double t0 = mono_now();
    ck_linear(out, (size_t)w->N, inp, (size_t)w->K, T, w, accumulate);
    thread_blas += mono_now() - t0;
    if (share_mode == KERNELS_SHARING_ADAPTIVE) ck_set_thread_max(0);
    blas_release(taken);
}

// The learner's bf16 mixed-precision products (issue 14): ck_matmul_*_bf16, shared like
// compact_linear_forward above.
static int bf16_share_enter(void) {
    if (share_mode != KERNELS_SHARING_ADAPTIVE) return blas_acquire();
    ck_set_thread_max(__atomic_load_n(&active_compute, __ATOMIC_RELAXED) >= 2 ? 1 : 0);
    return 0;
}
static void bf16_share_exit(int taken, double t0) {
    thread_blas += mono_now() - t0;
    thread_products += mono_now() - t0;
    if (share_mode == KERNELS_SHARING_ADAPTIVE) ck_set_thread_max(0);
    blas_release(taken);
}
void matmul_forward_bf16(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate) {
    if (T == 0) return;
    int taken = bf16_share_enter();
    double t0 = mono_now();
    ck_matmul_forward_bf16(out, inp, weight, T, C, OC, accumulate);
    bf16_share_exit(taken, t0);
}
void matmul_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          int T, int C, int OC) {
    if (T == 0) return;
    int taken = bf16_share_enter();
    double t0 = mono_now();
    ck_matmul_backward_bf16(dinp, dweight, dout, inp, weight, T, C, OC);
    bf16_share_exit(taken, t0);
}

void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                     int T, int C, int OC) {
    if (T == 0) return;
    double p0 = mono_now();
    if (dinp) {  // (T, C) += (T, OC) · (OC, C), chunked over independent rows of T
        int step = chunk_rows(T, 2.0 * C * OC);
        for (int t = 0; t < T; t += step) {
            int n = T - t < step ? T - t : step;
            sgemm_shared(CblasNoTrans, CblasNoTrans, n, C, OC, 1.0f, dout + (size_t)t * OC, OC, weight, C, 1.0f,
                         dinp + (size_t)t * C, C);
        }
    }
    if (dweight) {  // (OC, C) += (T, OC)^T · (T, C), chunked over independent rows of OC
        int step = chunk_rows(OC, 2.0 * C * T);
        for (int o = 0; o < OC; o += step) {
            int n = OC - o < step ? OC - o : step;
            sgemm_shared(CblasTrans, CblasNoTrans, n, C, T, 1.0f, dout + o, OC, inp, C, 1.0f,
                         dweight + (size_t)o * C, C);
        }
    }
    thread_products += mono_now() - p0;
}

// ---------------------------------------------------------------------------------------------
// Embedding

void embedding_forward(float *out, const int32_t *tokens, const float *table, int T, int C) {
    double _t0 = mono_now();
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * C, table + (size_t)tokens[t] * C, sizeof(float) * C);
    section_end(KS_EMBEDDING, _t0);
}

void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int T, int C) {
    double _t0 = mono_now();
    for (int t = 0; t < T; t++) {
        float *row = dtable + (size_t)tokens[t] * C;
        const float *g = dout + (size_t)t * C;
        for (int i = 0; i < C; i++) row[i] += g[i];
    }
    section_end(KS_EMBEDDING, _t0);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct rms_ctx { float *out, *rstd, *dinp, *partial; const float *inp, *weight, *dout; int T, C; float eps; };

// Σ x_i² and Σ a_i·b_i·c_i in double, with eight partial sums combined in a fixed order (a serial
// double sum waits on each addition; these are the per-row reductions of RMSNorm, 576 values for
// SmolLM2).
static inline double sumsq8(const float *x, int n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)x[i + k] * x[i + k];
    double s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}
static inline double dot3_8(const float *x, const float *y, const float *z, int n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)x[i + k] * y[i + k] * z[i + k];
    double s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += (double)x[i] * y[i] * z[i];
    return s;
}

// out = weight ⊙ (x · r), one row: the forward and rmsnorm_apply share it, so a recomputed output has
// the forward's bits.
static inline void rms_scale_row(float *o, const float *x, const float *weight, float r, int C) {
    for (int i = 0; i < C; i++) o[i] = weight[i] * (x[i] * r);
}

static void rmsnorm_forward_rows(void *p, size_t b, size_t e) {
    struct rms_ctx *c = p;
    float *out = c->out, *rstd = c->rstd; const float *inp = c->inp, *weight = c->weight; int C = c->C; float eps = c->eps;
    for (size_t t = b; t < e; t++) {
        const float *x = inp + (size_t)t * C;
        double ss = sumsq8(x, C);
        float r = 1.0f / sqrtf((float)(ss / C) + eps);
        rms_scale_row(out + (size_t)t * C, x, weight, r, C);
        if (rstd) rstd[t] = r;
    }
}

static void rmsnorm_apply_rows(void *p, size_t b, size_t e) {
    struct rms_ctx *c = p;
    for (size_t t = b; t < e; t++)
        rms_scale_row(c->out + t * (size_t)c->C, c->inp + t * (size_t)c->C, c->weight, c->rstd[t], c->C);
}

void rmsnorm_apply(float *out, const float *inp, const float *weight, const float *rstd, int T, int C) {
    double _t0 = mono_now();
    struct rms_ctx c = {out, (float *)rstd, NULL, NULL, inp, weight, NULL, T, C, 0};
    kernels_parallel((size_t)T, 64, rmsnorm_apply_rows, &c);
    section_end(KS_RMSNORM_BWD, _t0);
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int T, int C, float eps) {
    double _t0 = mono_now();
    struct rms_ctx c = {out, rstd, NULL, NULL, inp, weight, NULL, T, C, eps};
    kernels_parallel((size_t)T, 64, rmsnorm_forward_rows, &c);
    section_end(KS_RMSNORM_FWD, _t0);
}

// Rows per chunk of the backward: each chunk sums its rows' weight gradient on its own, the chunks'
// sums are added in order afterwards, so the result does not depend on which thread ran which chunk.
#define RMS_CHUNK_ROWS 32

// y_i = w_i · x_i · r,  r = (mean(x²) + eps)^(−1/2):
// dx_j = r · w_j · dy_j − r³/C · x_j · Σ_i dy_i · w_i · x_i;   dw_j = Σ_rows dy_j · x_j · r
static void rmsnorm_backward_chunks(void *p, size_t b, size_t e) {
    struct rms_ctx *c = p;
    const int C = c->C;
    for (size_t ch = b; ch < e; ch++) {
        const int t0 = (int)ch * RMS_CHUNK_ROWS, t1 = t0 + RMS_CHUNK_ROWS < c->T ? t0 + RMS_CHUNK_ROWS : c->T;
        float *dw = c->partial ? c->partial + ch * (size_t)C : NULL;
        if (dw) memset(dw, 0, sizeof(float) * C);
        for (int t = t0; t < t1; t++) {
            const float *x = c->inp + (size_t)t * C, *dy = c->dout + (size_t)t * C, *w = c->weight;
            const float r = c->rstd[t];
            if (c->dinp) {
                const float k = (float)(dot3_8(dy, w, x, C) * r * r * r / C);
                float *dx = c->dinp + (size_t)t * C;
                for (int i = 0; i < C; i++) dx[i] += r * w[i] * dy[i] - k * x[i];
            }
            if (dw)
                for (int i = 0; i < C; i++) dw[i] += dy[i] * x[i] * r;
        }
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int T, int C) {
    double _t0 = mono_now();
    const size_t chunks = ((size_t)T + RMS_CHUNK_ROWS - 1) / RMS_CHUNK_ROWS;
    float *partial = dweight ? malloc(sizeof(float) * chunks * (size_t)C) : NULL;
    struct rms_ctx c = {NULL, (float *)rstd, dinp, partial, inp, weight, dout, T, C, 0};
    kernels_parallel(chunks, 2, rmsnorm_backward_chunks, &c);
    if (partial) {
        for (size_t ch = 0; ch < chunks; ch++) {
            const float *src = partial + ch * (size_t)C;
            for (int i = 0; i < C; i++) dweight[i] += src[i];
        }
        free(partial);
    }
    section_end(KS_RMSNORM_BWD, _t0);
}

// ---------------------------------------------------------------------------------------------
// RoPE (Hugging Face rotate_half convention, float32 angle as transformers computes it)

void rope_tables(float *cos_out, float *sin_out, const int32_t *positions, int T, int hd, float theta) {
    int half = hd / 2;
    float inv[512];
    for (int i = 0; i < half && i < 512; i++) {
        float e = (float)(2 * i) / (float)hd;
        inv[i] = 1.0f / powf(theta, e);
    }
    for (int t = 0; t < T; t++) {
        float p = (float)positions[t];
        for (int i = 0; i < half; i++) {
            float f = p * inv[i];
            cos_out[(size_t)t * half + i] = (float)cos((double)f);
            sin_out[(size_t)t * half + i] = (float)sin((double)f);
        }
    }
}

static void rope_rotate(float *x, const float *cos_t, const float *sin_t, int T, int nHeads, int hd, int rowStride,
                        float sign) {
    int half = hd / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cos_t + (size_t)t * half;
        const float *s = sin_t + (size_t)t * half;
        for (int h = 0; h < nHeads; h++) {
            float *v = x + (size_t)t * rowStride + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                float si = sign * s[i];
                v[i] = a * c[i] - b * si;
                v[i + half] = b * c[i] + a * si;
            }
        }
    }
}

void rope_forward(float *x, const float *cos_t, const float *sin_t, int T, int nHeads, int hd, int rowStride) {
    double _t0 = mono_now();
    rope_rotate(x, cos_t, sin_t, T, nHeads, hd, rowStride, 1.0f);
    section_end(KS_ROPE, _t0);
}

void rope_backward(float *dx, const float *cos_t, const float *sin_t, int T, int nHeads, int hd, int rowStride) {
    double _t0 = mono_now();
    rope_rotate(dx, cos_t, sin_t, T, nHeads, hd, rowStride, -1.0f);
    section_end(KS_ROPE, _t0);
}

// ---------------------------------------------------------------------------------------------
// Attention

size_t attention_scratch_floats(int n, int nH, int hd) { return (size_t)2 * n * nH * hd; }


// Copy the G query heads of group g for n tokens into a contiguous (n*G, hd) matrix, or back.
static void group_gather(float *dst, const float *src, int n, int g, int G, int hd, int stride) {
    for (int t = 0; t < n; t++)
        memcpy(dst + (size_t)t * G * hd, src + (size_t)t * stride + (size_t)g * G * hd, sizeof(float) * G * hd);
}
static void group_scatter(float *dst, const float *src, int n, int g, int G, int hd, int stride, int add) {
    for (int t = 0; t < n; t++) {
        float *d = dst + (size_t)t * stride + (size_t)g * G * hd;
        const float *s = src + (size_t)t * G * hd;
        if (add) for (int i = 0; i < G * hd; i++) d[i] += s[i];
        else memcpy(d, s, sizeof(float) * G * hd);
    }
}

// Attention of one KV group for a few query rows (decoding: M = n·G ≤ ATTENTION_DIRECT_ROWS), by
// direct dot products: two OpenBLAS calls per group and sequence cost more in packing than their
// arithmetic at this size (21 % of a batch-32 decode step on SmolLM2 went to sgemm's copy routines
// and kernel for 3 × L × 64 products). Same outputs as the sgemm path up to summation order: scores
// (scale·q·k), the causal softmax, P·V. AVX-512F for head sizes that are a multiple of 16, else an
// AVX2+FMA build of the portable loop (eight partial sums per dot product), chosen at run time.
#define ATTENTION_DIRECT_ROWS 8
#define ATTENTION_DIRECT_BODY                                                                          \
    for (int r = 0; r < M; r++) {                                                                      \
        const float *qr = qg + (size_t)r * hd;                                                         \
        float *row = P + (size_t)r * L;                                                                \
        const int valid = p0 + r / G + 1;                                                              \
        float mx = -INFINITY;                                                                          \
        for (int j = 0; j < valid; j++) {                                                              \
            const float *kj = kg + (size_t)j * kvStride;                                               \
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                   \
            int i = 0;                                                                                 \
            for (; i + 8 <= hd; i += 8)                                                                \
                for (int l = 0; l < 8; l++) acc[l] += qr[i + l] * kj[i + l];                           \
            float sdot = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
            for (; i < hd; i++) sdot += qr[i] * kj[i];                                                 \
            row[j] = scale * sdot;                                                                     \
            mx = row[j] > mx ? row[j] : mx;                                                            \
        }                                                                                              \
        float sum = 0.0f;                                                                              \
        for (int j = 0; j < valid; j++) { row[j] = expf(row[j] - mx); sum += row[j]; }                 \
        const float inv = 1.0f / sum;                                                                  \
        if (lse) lse[r] = mx + logf(sum);                                                              \
        for (int j = 0; j < valid; j++) row[j] *= inv;                                                 \
        for (int j = valid; j < L; j++) row[j] = 0.0f;                                                 \
        float *o = og + (size_t)r * hd;                                                                \
        for (int i2 = 0; i2 < hd; i2++) o[i2] = 0.0f;                                                  \
        for (int j = 0; j < valid; j++) {                                                              \
            const float pj = row[j], *vj = vg + (size_t)j * kvStride;                                  \
            for (int i2 = 0; i2 < hd; i2++) o[i2] += pj * vj[i2];                                      \
        }                                                                                              \
    }

static void attention_group_direct_generic(float *P, float *og, const float *qg, const float *kg, const float *vg,
                                           int M, int L, int hd, int kvStride, int p0, int G, float scale, float *lse) {
    ATTENTION_DIRECT_BODY
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
static void attention_group_direct_avx2(float *P, float *og, const float *qg, const float *kg, const float *vg,
                                        int M, int L, int hd, int kvStride, int p0, int G, float scale, float *lse) {
    ATTENTION_DIRECT_BODY
}

// Each key's row is loaded once for all M query rows (scores by FMA + one horizontal sum); P·V
// accumulates each output row in registers.
__attribute__((target("avx512f")))
static void attention_group_direct_avx512(float *P, float *og, const float *qg, const float *kg, const float *vg,
                                          int M, int L, int hd, int kvStride, int p0, int G, float scale, float *lse) {
    const int C = hd / 16;
    const int validMax = p0 + (M - 1) / G + 1;
    for (int j = 0; j < validMax; j++) {
        const float *kj = kg + (size_t)j * kvStride;
        for (int r = 0; r < M; r++) {
            if (j >= p0 + r / G + 1) continue;
            const float *qr = qg + (size_t)r * hd;
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qr), _mm512_loadu_ps(kj));
            for (int c = 1; c < C; c++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 16 * c), _mm512_loadu_ps(kj + 16 * c), acc);
            P[(size_t)r * L + j] = scale * _mm512_reduce_add_ps(acc);
        }
    }
    for (int r = 0; r < M; r++) {
        float *row = P + (size_t)r * L;
        const int valid = p0 + r / G + 1;
        float mx = -INFINITY;
        for (int j = 0; j < valid; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < valid; j++) { row[j] = expf(row[j] - mx); sum += row[j]; }
        const float inv = 1.0f / sum;
        if (lse) lse[r] = mx + logf(sum);
        for (int j = 0; j < valid; j++) row[j] *= inv;
        for (int j = valid; j < L; j++) row[j] = 0.0f;
        float *o = og + (size_t)r * hd;
        for (int c = 0; c < C; c++) {
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            int j = 0;
            for (; j + 2 <= valid; j += 2) {
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(row[j]), _mm512_loadu_ps(vg + (size_t)j * kvStride + 16 * c), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(row[j + 1]), _mm512_loadu_ps(vg + (size_t)(j + 1) * kvStride + 16 * c), a1);
            }
            if (j < valid) a0 = _mm512_fmadd_ps(_mm512_set1_ps(row[j]), _mm512_loadu_ps(vg + (size_t)j * kvStride + 16 * c), a0);
            _mm512_storeu_ps(o + 16 * c, _mm512_add_ps(a0, a1));
        }
    }
}
#endif

static void attention_group_direct(float *P, float *og, const float *qg, const float *kg, const float *vg,
                                   int M, int L, int hd, int kvStride, int p0, int G, float scale, float *lse) {
#if defined(__x86_64__)
    static int detected = -1;  // 2: AVX-512F, 1: AVX2+FMA, 0: portable; set once (engine and learner threads)
    int level = __atomic_load_n(&detected, __ATOMIC_RELAXED);
    if (level < 0) {
        level = __builtin_cpu_supports("avx512f") ? 2 : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
        __atomic_store_n(&detected, level, __ATOMIC_RELAXED);
    }
    if (level == 2 && hd % 16 == 0) { attention_group_direct_avx512(P, og, qg, kg, vg, M, L, hd, kvStride, p0, G, scale, lse); return; }
    if (level >= 1) { attention_group_direct_avx2(P, og, qg, kg, vg, M, L, hd, kvStride, p0, G, scale, lse); return; }
#endif
    attention_group_direct_generic(P, og, qg, kg, vg, M, L, hd, kvStride, p0, G, scale, lse);
}

// Dynamic task scheduling over the calling thread and kernels_parallel's helper: each takes the next
// task index until none is left. Tasks must write disjoint outputs; then results do not depend on
// which thread ran which task (or on the helper being busy, when the caller runs them all).
typedef void (*task_fn)(void *ctx, size_t task);
struct task_ctx { size_t n, next; task_fn fn; void *user; };
static void task_worker(void *p, size_t b, size_t e) {
    (void)b; (void)e;
    struct task_ctx *c = p;
    size_t i;
    while ((i = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED)) < c->n) c->fn(c->user, i);
}
static void parallel_tasks(size_t n, task_fn fn, void *user) {
    if (n == 0) return;
    if (n == 1) { fn(user, 0); return; }
    struct task_ctx c = {n, 0, fn, user};
    kernels_parallel(2, 2, task_worker, &c);
}

// Query tokens per forward task: a sequence's rows of one KV group are cut into chunks this long
// (each row's result is the same whatever the cut: learner_fused.c).
#define ATTENTION_CHUNK_TOKENS 128

struct att_task { int seq, g, t0, t1; double cost; };
static int att_task_cmp(const void *a, const void *b) {
    double x = ((const struct att_task *)a)->cost, y = ((const struct att_task *)b)->cost;
    return x < y ? 1 : x > y ? -1 : 0;
}

struct att_fwd_ctx {
    float *out, *lse; const float *q, *k, *v; const int32_t *start, *count; const struct att_task *tasks;
    int n1, p0, nH, nKV, hd, qStride, kvStride, oStride, lseStride;   // n1: the token count without `count`
};
static void att_fwd_task(void *p, size_t i) {
    const struct att_fwd_ctx *c = p;
    const struct att_task *t = &c->tasks[i];
    const size_t s0 = c->start ? (size_t)c->start[t->seq] : 0;
    const int n = c->count ? c->count[t->seq] : c->n1;
    const int G = c->nH / c->nKV, M = n * G, L = c->p0 + n;
    float *out = c->out + s0 * c->oStride;
    const float *q = c->q + s0 * c->qStride, *k = c->k + s0 * c->kvStride, *v = c->v + s0 * c->kvStride;
    float *lse = c->lse ? c->lse + s0 * c->lseStride : NULL;
    if (M <= ATTENTION_DIRECT_ROWS) {   // decoding sizes: the direct path, as attention_forward
        float *ws = lf_workspace((size_t)M * L + 2 * (size_t)M * c->hd + 16);
        float *P = ws, *qg = P + (size_t)M * L, *og = qg + (size_t)M * c->hd;
        float lg[ATTENTION_DIRECT_ROWS];
        group_gather(qg, q, n, t->g, G, c->hd, c->qStride);
        attention_group_direct(P, og, qg, k + (size_t)t->g * c->hd, v + (size_t)t->g * c->hd, M, L, c->hd, c->kvStride,
                               c->p0, G, 1.0f / sqrtf((float)c->hd), lse ? lg : NULL);
        group_scatter(out, og, n, t->g, G, c->hd, c->oStride, 0);
        if (lse)
            for (int r = 0; r < M; r++) lse[(size_t)(r / G) * c->lseStride + t->g * G + r % G] = lg[r];
        return;
    }
    lf_attention_forward_rows(out, lse, q, k, v, t->t0, t->t1, c->p0, t->g, c->nH, c->nKV, c->hd,
                              c->qStride, c->kvStride, c->oStride, c->lseStride);
}

// Tasks (sequence, group, chunk of query tokens), the costliest first.
static struct att_task *att_fwd_tasks(const int32_t *count, int nSeq, int n1, int p0, int nH, int nKV, size_t *nt) {
    size_t cap = 0;
    for (int s = 0; s < nSeq; s++) {
        int n = count ? count[s] : n1;
        cap += (size_t)nKV * ((n + ATTENTION_CHUNK_TOKENS - 1) / ATTENTION_CHUNK_TOKENS);
    }
    struct att_task *t = malloc(sizeof *t * (cap ? cap : 1));
    size_t k = 0;
    const int G = nH / nKV;
    for (int s = 0; s < nSeq; s++) {
        int n = count ? count[s] : n1;
        if (n <= 0) continue;
        int direct = n * G <= ATTENTION_DIRECT_ROWS;
        for (int g = 0; g < nKV; g++)
            for (int t0 = 0; t0 < n; t0 += direct ? n : ATTENTION_CHUNK_TOKENS) {
                int t1 = direct || t0 + ATTENTION_CHUNK_TOKENS > n ? n : t0 + ATTENTION_CHUNK_TOKENS;
                t[k++] = (struct att_task){s, g, t0, t1, (double)(t1 - t0) * (p0 + (t0 + t1) / 2.0 + 1)};
            }
    }
    qsort(t, k, sizeof *t, att_task_cmp);
    *nt = k;
    return t;
}

void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                       int n, int p0, int nH, int nKV, int hd, int qStride, int kvStride, int oStride,
                       float *scratch) {
    double _t0 = mono_now();
    if (n == 0) return;
    const int G = nH / nKV, L = p0 + n, M = n * G;
    if (M <= ATTENTION_DIRECT_ROWS) {
        const float scale = 1.0f / sqrtf((float)hd);
        float *qg = scratch;                      // (M, hd)
        float *og = scratch + (size_t)M * hd;     // (M, hd)
        for (int g = 0; g < nKV; g++) {
            float *P = probs + (size_t)g * M * L;  // (M, L)
            group_gather(qg, q, n, g, G, hd, qStride);
            attention_group_direct(P, og, qg, k + (size_t)g * hd, v + (size_t)g * hd, M, L, hd, kvStride, p0, G, scale, NULL);
            group_scatter(out, og, n, g, G, hd, oStride, 0);
        }
    } else {
        size_t nt;
        struct att_task *tasks = att_fwd_tasks(NULL, 1, n, p0, nH, nKV, &nt);
        struct att_fwd_ctx c = {out, NULL, q, k, v, NULL, NULL, tasks, n, p0, nH, nKV, hd, qStride, kvStride, oStride, 0};
        parallel_tasks(nt, att_fwd_task, &c);
        free(tasks);
    }
    section_end(KS_ATTENTION_FWD, _t0);
}

void attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v,
                             const int32_t *tokenStart, const int32_t *count, int nSeq, int nH, int nKV, int hd,
                             int qStride, int kvStride, int oStride) {
    double _t0 = mono_now();
    size_t nt;
    struct att_task *tasks = att_fwd_tasks(count, nSeq, 0, 0, nH, nKV, &nt);
    struct att_fwd_ctx c = {out, lse, q, k, v, tokenStart, count, tasks, 0, 0, nH, nKV, hd, qStride, kvStride, oStride, nH};
    parallel_tasks(nt, att_fwd_task, &c);
    free(tasks);
    section_end(KS_ATTENTION_FWD, _t0);
}

struct att_bwd_ctx {
    float *dq, *dk, *dv; const float *dout, *out, *lse, *q, *k, *v; const int32_t *start, *count;
    const struct att_task *tasks; int nH, nKV, hd, qStride, kvStride, oStride;
};
static void att_bwd_task(void *p, size_t i) {
    const struct att_bwd_ctx *c = p;
    const struct att_task *t = &c->tasks[i];
    const size_t s0 = (size_t)c->start[t->seq];
    lf_attention_backward_group(c->dq + s0 * c->qStride, c->dk + s0 * c->kvStride, c->dv + s0 * c->kvStride,
                                c->dout + s0 * c->oStride, c->out + s0 * c->oStride, c->lse + s0 * c->nH,
                                c->q + s0 * c->qStride, c->k + s0 * c->kvStride, c->v + s0 * c->kvStride,
                                c->count[t->seq], 0, t->g, c->nH, c->nKV, c->hd, c->qStride, c->kvStride, c->oStride, c->nH);
}

void attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                              const float *q, const float *k, const float *v,
                              const int32_t *tokenStart, const int32_t *count, int nSeq, int nH, int nKV, int hd,
                              int qStride, int kvStride, int oStride) {
    double _t0 = mono_now();
    struct att_task *tasks = malloc(sizeof *tasks * (size_t)(nSeq * nKV > 0 ? nSeq * nKV : 1));
    size_t nt = 0;
    for (int s = 0; s < nSeq; s++)
        for (int g = 0; g < nKV && count[s] > 0; g++)
            tasks[nt++] = (struct att_task){s, g, 0, count[s], (double)count[s] * count[s]};
    qsort(tasks, nt, sizeof *tasks, att_task_cmp);
    struct att_bwd_ctx c = {dq, dk, dv, dout, out, lse, q, k, v, tokenStart, count, tasks, nH, nKV, hd, qStride, kvStride, oStride};
    parallel_tasks(nt, att_bwd_task, &c);
    free(tasks);
    section_end(KS_ATTENTION_BWD, _t0);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct swiglu_ctx { float *h, *dgate, *dup; const float *dh, *gate, *up; };

static void swiglu_forward_range(void *p, size_t b, size_t e) {
    struct swiglu_ctx *c = p;
    lf_swiglu_forward(c->h + b, c->gate + b, c->up + b, e - b);   // learner_fused.c
}

void swiglu_forward(float *h, const float *gate, const float *up, size_t N) {
    double _t0 = mono_now();
    struct swiglu_ctx c = {h, NULL, NULL, NULL, gate, up};
    kernels_parallel(N, 1 << 16, swiglu_forward_range, &c);
    section_end(KS_SWIGLU_FWD, _t0);
}

static void swiglu_backward_range(void *p, size_t b, size_t e) {
    struct swiglu_ctx *c = p;
    lf_swiglu_backward(c->dgate + b, c->dup + b, c->dh + b, c->gate + b, c->up + b, e - b, 0);   // learner_fused.c
}

void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t N) {
    double _t0 = mono_now();
    struct swiglu_ctx c = {NULL, dgate, dup, dh, gate, up};
    kernels_parallel(N, 1 << 16, swiglu_backward_range, &c);
    section_end(KS_SWIGLU_BWD, _t0);
}

// ---------------------------------------------------------------------------------------------
// Elementwise

void add_forward(float *out, const float *a, const float *b, size_t N) {
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void gather_rows(float *dst, const float *src, const int32_t *rows, int n, int C) {
    double _t0 = mono_now();
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * C, src + (size_t)rows[i] * C, sizeof(float) * C);
    section_end(KS_GATHER, _t0);
}

// ---------------------------------------------------------------------------------------------
// Log-softmax

struct lse_ctx { float *lse, *dlogits; const float *logits, *dlogp, *lse_in; const int32_t *targets; int V; };

static void lse_range(void *p, size_t b, size_t e) {
    struct lse_ctx *c = p;
    float *lse = c->lse; const float *logits = c->logits; int V = c->V;
    for (size_t r = b; r < e; r++) {
        const float *x = logits + (size_t)r * V;
        lse[r] = lf_logsumexp_row(x, V);   // learner_fused.c
    }
}

void logsumexp_rows(float *lse, const float *logits, int R, int V) {
    struct lse_ctx c = {lse, NULL, logits, NULL, NULL, NULL, V};
    kernels_parallel((size_t)R, 8, lse_range, &c);
}

void logprob_gather_forward(float *logp, float *lse, const float *logits, const int32_t *targets, int R, int V) {
    double _t0 = mono_now();
    logsumexp_rows(lse, logits, R, V);
    for (int r = 0; r < R; r++) logp[r] = logits[(size_t)r * V + targets[r]] - lse[r];
    section_end(KS_LOGSOFTMAX_FWD, _t0);
}

static void logprob_backward_range(void *p, size_t b, size_t e) {
    struct lse_ctx *c = p;
    int V = c->V;
    for (size_t r = b; r < e; r++) {
        const float *x = c->logits + r * V;
        float *d = c->dlogits + r * V;
        float g = c->dlogp[r], l = c->lse_in[r];
        lf_scaled_exp_row(d, x, V, l, -g);   // d[i] = −g·exp(x[i] − l)
        d[c->targets[r]] += g;
    }
}

void logprob_gather_backward(float *dlogits, const float *dlogp, const float *logits, const float *lse,
                             const int32_t *targets, int R, int V) {
    double _t0 = mono_now();
    struct lse_ctx c = {NULL, dlogits, logits, dlogp, lse, targets, V};
    kernels_parallel((size_t)R, 8, logprob_backward_range, &c);
    section_end(KS_LOGSOFTMAX_BWD, _t0);
}

// ---------------------------------------------------------------------------------------------
// Optimizer

struct adamw_ctx { float *p, *m, *v; const float *g; float b1, b2, eps, shrink, step, bc2, gscale; };

static void adamw_elems(const struct adamw_ctx *c, size_t b, size_t e) {
    float *p = c->p, *m = c->m, *v = c->v; const float *g = c->g;
    float b1 = c->b1, b2 = c->b2, eps = c->eps, shrink = c->shrink, step = c->step, bc2 = c->bc2, gs = c->gscale;
    for (size_t i = b; i < e; i++) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi; v[i] = vi;
        float denom = sqrtf(vi) / bc2 + eps;
        p[i] = p[i] * shrink - step * mi / denom;
    }
}

static void adamw_range(void *ctx, size_t b, size_t e) { adamw_elems(ctx, b, e); }

void adamw_update(float *p, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                  float eps, float shrink, float step, float bc2sqrt, float gscale) {
    double _t0 = mono_now();
    struct adamw_ctx c = {p, m, v, g, beta1, beta2, eps, shrink, step, bc2sqrt, gscale};
    kernels_parallel(n, 1 << 16, adamw_range, &c);
    section_end(KS_OPTIMIZER, _t0);
}

// The fused update: groups of AW_ROWS rows (a multiple of every compact format's panel height),
// each updated and then, while its rows are in this core's cache, packed and/or copied.
#define AW_ROWS 32
struct adamw_rows_ctx { struct adamw_ctx a; int N, K; ck_weights *packed; float *copy; long *bad; };

static void adamw_rows_range(void *ctx, size_t b, size_t e) {
    struct adamw_rows_ctx *c = ctx;
    long bad = 0;
    for (size_t grp = b; grp < e; grp++) {
        int r0 = (int)grp * AW_ROWS, r1 = r0 + AW_ROWS < c->N ? r0 + AW_ROWS : c->N;
        size_t lo = (size_t)r0 * c->K, hi = (size_t)r1 * c->K;
        adamw_elems(&c->a, lo, hi);
        if (c->packed) bad += ck_pack_f32(c->packed, c->a.p, (size_t)c->K, r0, r1);
        if (c->copy) memcpy(c->copy + lo, c->a.p + lo, (hi - lo) * sizeof(float));
    }
    if (bad) __atomic_fetch_add(c->bad, bad, __ATOMIC_RELAXED);
}

long adamw_update_rows(float *p, const float *g, float *m, float *v, int N, int K, float beta1, float beta2,
                       float eps, float shrink, float step, float bc2sqrt, float gscale, ck_weights *packed, float *copy) {
    if (N <= 0 || K <= 0) return 0;
    if (packed && (packed->N != N || packed->K != K)) return -1;
    double _t0 = mono_now();
    long bad = 0;
    struct adamw_rows_ctx c = {{p, m, v, g, beta1, beta2, eps, shrink, step, bc2sqrt, gscale}, N, K, packed, copy, &bad};
    size_t groups = ((size_t)N + AW_ROWS - 1) / AW_ROWS;
    // As adamw_update's threshold: go parallel from about 2^16 values.
    size_t minGroups = ((size_t)1 << 16) / ((size_t)AW_ROWS * (size_t)K) + 1;
    kernels_parallel(groups, minGroups, adamw_rows_range, &c);
    section_end(KS_OPTIMIZER, _t0);
    return bad;
}

// Fixed chunks of SS_CHUNK values, each summed with eight partial sums, the chunks' sums added in
// order: the same result whatever the thread split.
#define SS_CHUNK ((size_t)1 << 16)
struct ss_ctx { const float *x; size_t n; double *part; };

static void ss_range(void *ctx, size_t b, size_t e) {
    struct ss_ctx *c = ctx;
    for (size_t ch = b; ch < e; ch++) {
        size_t lo = ch * SS_CHUNK, hi = lo + SS_CHUNK < c->n ? lo + SS_CHUNK : c->n;
        c->part[ch] = sumsq8(c->x + lo, (int)(hi - lo));
    }
}

double sum_squares(const float *x, size_t n) {
    double _t0 = mono_now();
    size_t chunks = (n + SS_CHUNK - 1) / SS_CHUNK;
    double stack[64], *part = chunks <= 64 ? stack : malloc(sizeof(double) * chunks);
    struct ss_ctx c = {x, n, part};
    kernels_parallel(chunks, 2, ss_range, &c);
    double r = 0;
    for (size_t ch = 0; ch < chunks; ch++) r += part[ch];
    if (part != stack) free(part);
    section_end(KS_OPTIMIZER, _t0);
    return r;
}
