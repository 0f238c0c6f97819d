// Compact-precision products (include/compact.h): instruction-set choice, the thread pool, the
// packed formats, the cache-blocked drivers, and the portable scalar implementation.
#include "compact_impl.h"
#include "dequant.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define CK_PAUSE() _mm_pause()
#else
#define CK_PAUSE() ((void)0)
#endif

// ---------------------------------------------------------------------------------------------
// Instruction set

static int isa_detected = -1, isa_level = -1;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static const char *isa_names[] = {"scalar", "avx2", "avx512vnni", "avx512bf16"};

const char *ck_isa_name(int level) { return level >= 0 && level <= 3 ? isa_names[level] : NULL; }

int ck_isa_parse(const char *name) {
    if (!name) return -1;
    for (int i = 0; i <= 3; i++)
        if (strcasecmp(name, isa_names[i]) == 0) return i;
    if (strcasecmp(name, "avx512") == 0) return CK_ISA_AVX512BF16;
    return -1;
}

static int detect_isa(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return CK_ISA_SCALAR;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return CK_ISA_SCALAR;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    unsigned long long xcr0 = ((unsigned long long)hi << 32) | lo;
    if ((xcr0 & 0x6) != 0x6) return CK_ISA_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return CK_ISA_SCALAR;
    int avx2 = (b >> 5) & 1;
    int f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    if (!(avx2 && fma && f16c)) return CK_ISA_SCALAR;
    if (!(f512 && dq && bw && vl && vnni && (xcr0 & 0xE0) == 0xE0)) return CK_ISA_AVX2;
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    return ((a1 >> 5) & 1) ? CK_ISA_AVX512BF16 : CK_ISA_AVX512VNNI;
#else
    return CK_ISA_SCALAR;
#endif
}

static int default_threads(void);
static int pool_threads = 0;

static void isa_init(void) {
    isa_detected = detect_isa();
    isa_level = isa_detected;
    const char *env = getenv("SELM_KERNELS");
    if (env && *env) {
        int want = ck_isa_parse(env);
        if (want < 0)
            fprintf(stderr, "selm: SELM_KERNELS=%s is not one of avx512bf16, avx512vnni, avx2, scalar; using %s\n",
                    env, isa_names[isa_detected]);
        else
            isa_level = want < isa_detected ? want : isa_detected;
    }
    pool_threads = default_threads();
}

int ck_isa_detected(void) { pthread_once(&isa_once, isa_init); return isa_detected; }
int ck_isa(void) { pthread_once(&isa_once, isa_init); return isa_level; }
int ck_set_isa(int level) {
    pthread_once(&isa_once, isa_init);
    if (level < 0) level = 0;
    isa_level = level < isa_detected ? level : isa_detected;
    return isa_level;
}

static const ck_impl *impl_for_bf16(void) {
    (void)ck_isa();
#if defined(__x86_64__)
    if (isa_level >= CK_ISA_AVX512BF16) return &ck_impl_avx512bf16;
    if (isa_level >= CK_ISA_AVX2) return &ck_impl_avx2;
#endif
    return &ck_impl_scalar;
}

static const ck_impl *impl_for_q8(void) {
    (void)ck_isa();
#if defined(__x86_64__)
    if (isa_level >= CK_ISA_AVX512BF16) return &ck_impl_avx512bf16;
    if (isa_level >= CK_ISA_AVX512VNNI) return &ck_impl_avx512vnni;
    if (isa_level >= CK_ISA_AVX2) return &ck_impl_avx2;
#endif
    return &ck_impl_scalar;
}

/// The implementation whose packers (identical output everywhere) are fastest here.
static const ck_impl *impl_for_packing(void) { return impl_for_q8(); }

const char *ck_path_name(int format) {
    if (format == CK_Q8) return impl_for_q8()->q8_name;
    if (format == CK_BF16) return impl_for_bf16()->bf16_name;
    if (format == CK_Q4) return ck_q4_path_name();
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Thread pool: up to ck_threads() − 1 persistent helpers join the caller's job.
//
// A job is a function that claims its work from shared counters until none is left, so it is
// correct with any number of participants: the caller runs it, helpers that wake in time join it,
// and the caller waits only for those that joined (a helper descheduled by another process never
// holds a product up; it finds the job closed when it gets to run). One job at a time: a call
// that finds the pool busy runs alone on its own thread.

#define CK_MAX_THREADS 64
typedef void (*ck_job_fn)(void *ctx, int tid);

#define TICKET_CLOSED 0x80000000u
#define TICKET_SLOTS 0x7FFFFFFFu

static struct {
    pthread_mutex_t owner;          // held by the caller whose job runs
    pthread_mutex_t mu;             // sleeping helpers
    pthread_cond_t cv;
    _Atomic uint64_t ticket;        // generation << 32 | closed | free join slots
    _Atomic int sleepers;
    _Atomic int finished;           // joined helpers done with the current job
    ck_job_fn fn;
    void *ctx;
    int started;                    // helpers created
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, NULL, 0};

static __thread int thread_cap = 0;
static double spin_seconds = 100e-6;   // helpers spin this long for the next job before sleeping

static int default_threads(void) {
    const char *env = getenv("SELM_KERNEL_THREADS");
    int n = env && *env ? atoi(env) : 0;
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
        if (n > 8) n = 8;
    }
    if (n > CK_MAX_THREADS) n = CK_MAX_THREADS;
    const char *spin = getenv("SELM_KERNEL_SPIN_US");
    if (spin && *spin) spin_seconds = atof(spin) * 1e-6;
    return n;
}

int ck_threads(void) { (void)ck_isa(); return pool_threads; }
void ck_set_threads(int n) {
    (void)ck_isa();
    pool_threads = n < 1 ? default_threads() : (n > CK_MAX_THREADS ? CK_MAX_THREADS : n);
}
void ck_set_thread_max(int n) { thread_cap = n < 0 ? 0 : n; }

static double ck_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *pool_helper(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg;   // the generation current when this helper was made
    for (;;) {
        // Spin briefly (the products of a forward pass come microseconds apart), then sleep.
        double t0 = 0;
        int spins = 0;
        while ((uint32_t)(atomic_load_explicit(&pool.ticket, memory_order_acquire) >> 32) == seen) {
            CK_PAUSE();
            if (++spins == 256) {
                spins = 0;
                double t = ck_now();
                if (t0 == 0) t0 = t;
                else if (t - t0 > spin_seconds) {
                    pthread_mutex_lock(&pool.mu);
                    atomic_fetch_add(&pool.sleepers, 1);
                    while ((uint32_t)(atomic_load(&pool.ticket) >> 32) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
                    atomic_fetch_sub(&pool.sleepers, 1);
                    pthread_mutex_unlock(&pool.mu);
                    break;
                }
            }
        }
        uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
        seen = (uint32_t)(t >> 32);
        // Join if the job is still open and has a free slot; only a joined helper reads fn/ctx.
        while (!(t & TICKET_CLOSED) && (t & TICKET_SLOTS) > 0) {
            if (atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t - 1, memory_order_acq_rel, memory_order_acquire)) {
                pool.fn(pool.ctx, (int)(t & TICKET_SLOTS));
                atomic_fetch_add_explicit(&pool.finished, 1, memory_order_release);
                break;
            }
            if ((uint32_t)(t >> 32) != seen) break;   // (cannot happen while we have not finished)
        }
    }
    return NULL;
}

/// Threads a call from this thread may use (≥ 1).
static int call_threads(void) {
    int n = ck_threads();
    if (thread_cap > 0 && thread_cap < n) n = thread_cap;
    return n;
}

/// Runs fn(ctx, tid) on the calling thread (tid 0) and on up to nth − 1 helpers (tids 1 …) that
/// join while it runs; returns when every participant has returned.
static void ck_run(ck_job_fn fn, void *ctx, int nth) {
    if (nth > 1 && pthread_mutex_trylock(&pool.owner) == 0) {
        uint64_t t = atomic_load(&pool.ticket);
        uint32_t gen = (uint32_t)(t >> 32) + 1;
        while (pool.started < nth - 1) {
            pthread_t th;
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            int rc = pthread_create(&th, &a, pool_helper, (void *)(uintptr_t)(gen - 1));
            pthread_attr_destroy(&a);
            if (rc != 0) break;
            pool.started++;
        }
        uint32_t slots = (uint32_t)(nth - 1 < pool.started ? nth - 1 : pool.started);
        pool.fn = fn;
        pool.ctx = ctx;
        atomic_store(&pool.finished, 0);
        atomic_store(&pool.ticket, (uint64_t)gen << 32 | slots);   // seq_cst: pairs with sleepers
        if (atomic_load(&pool.sleepers) > 0) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_broadcast(&pool.cv);
            pthread_mutex_unlock(&pool.mu);
        }
        fn(ctx, 0);
        uint64_t last = atomic_fetch_or(&pool.ticket, (uint64_t)TICKET_CLOSED);
        int joined = (int)(slots - (uint32_t)(last & TICKET_SLOTS));
        int spins = 0;
        while (atomic_load_explicit(&pool.finished, memory_order_acquire) < joined) {
            CK_PAUSE();
            if (++spins > 4096) sched_yield();
        }
        pthread_mutex_unlock(&pool.owner);
        return;
    }
    fn(ctx, 0);
}

void ck_run_job(ck_job_fn fn, void *ctx, int nth) { ck_run(fn, ctx, nth > 0 ? nth : call_threads()); }
int ck_call_threads(void) { return call_threads(); }

/// Waits until *count reaches n (work items other participants claimed are being finished).
static void wait_count(_Atomic int *count, int n) {
    int spins = 0;
    while (atomic_load_explicit(count, memory_order_acquire) < n) {
        CK_PAUSE();
        if (++spins > 4096) sched_yield();
    }
}

// Per-thread scratch buffers (64-byte aligned, grown on demand, freed at thread exit).
enum { BUF_A, BUF_B, BUF_SHARED, BUF_BSHARED, BUF_COUNT };
typedef struct { void *p[BUF_COUNT]; size_t cap[BUF_COUNT]; } ck_tls;
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static void tls_free(void *v) {
    ck_tls *t = v;
    for (int i = 0; i < BUF_COUNT; i++) free(t->p[i]);
    free(t);
}
static void tls_init(void) { pthread_key_create(&tls_key, tls_free); }

static void *scratch(int which, size_t bytes) {
    pthread_once(&tls_once, tls_init);
    ck_tls *t = pthread_getspecific(tls_key);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) abort();
        pthread_setspecific(tls_key, t);
    }
    if (t->cap[which] < bytes) {
        free(t->p[which]);
        size_t cap = bytes + bytes / 4 + 4096;
        cap = (cap + 63) & ~(size_t)63;
        void *p = NULL;
        if (posix_memalign(&p, 64, cap) != 0) {
            fprintf(stderr, "selm: out of memory for a %zu-byte kernel buffer\n", cap);
            abort();
        }
        t->p[which] = p;
        t->cap[which] = cap;
    }
    return t->p[which];
}

void *ck_scratch_shared(size_t bytes) { return scratch(BUF_SHARED, bytes); }

// ---------------------------------------------------------------------------------------------
// Formats

int ck_panel_rows(int format) { return format == CK_BF16 ? CK_BF16_NR : format == CK_Q8 || format == CK_Q4 ? CK_Q8_NR : 0; }

static int kpad_of(int format, int K) {
    return format == CK_BF16 ? (K + 1) & ~1 : (K + CK_Q8_BLOCK - 1) / CK_Q8_BLOCK * CK_Q8_BLOCK;
}

static size_t q8_quant_bytes(int N, int K) {
    size_t panels = (size_t)(N + CK_Q8_NR - 1) / CK_Q8_NR, kb = (size_t)kpad_of(CK_Q8, K) / CK_Q8_BLOCK;
    return panels * kb * CK_Q8_NR * CK_Q8_BLOCK;
}

size_t ck_weights_bytes(int format, int N, int K) {
    if (N <= 0 || K <= 0) return 0;
    if (format == CK_BF16) {
        size_t panels = (size_t)(N + CK_BF16_NR - 1) / CK_BF16_NR;
        return panels * (size_t)(kpad_of(format, K) / 2) * CK_BF16_NR * 4;
    }
    if (format == CK_Q8) {
        size_t panels = (size_t)(N + CK_Q8_NR - 1) / CK_Q8_NR, kb = (size_t)kpad_of(CK_Q8, K) / CK_Q8_BLOCK;
        size_t scales = panels * kb * CK_Q8_NR * 2;
        return q8_quant_bytes(N, K) + ((scales + 63) & ~(size_t)63);
    }
    if (format == CK_Q4) return ck_q4_bytes(N, K);
    return 0;
}

int ck_weights_init(ck_weights *w, int format, int N, int K, void *mem) {
    if (!w || ck_weights_bytes(format, N, K) == 0 || !mem || ((uintptr_t)mem & 63)) return -1;
    memset(w, 0, sizeof *w);
    w->format = format;
    w->N = N;
    w->K = K;
    w->panels = (N + ck_panel_rows(format) - 1) / ck_panel_rows(format);
    w->kpad = kpad_of(format, K);
    w->data = mem;
    w->scales = format == CK_Q8 ? (uint16_t *)((char *)mem + q8_quant_bytes(N, K)) : NULL;
    return 0;
}

int ck_weights_alloc(ck_weights *w, int format, int N, int K) {
    size_t bytes = ck_weights_bytes(format, N, K);
    if (!w || bytes == 0) return -1;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return -1;
    memset(p, 0, bytes);
    if (ck_weights_init(w, format, N, K, p) != 0) { free(p); return -1; }
    w->owned = 1;
    return 0;
}

void ck_weights_free(ck_weights *w) {
    if (w && w->owned) free(w->data);
    if (w) memset(w, 0, sizeof *w);
}

static int range_ok(const ck_weights *w, int b, int e) {
    int pr = ck_panel_rows(w->format);
    return pr && b >= 0 && b <= e && e <= w->N && b % pr == 0 && (e % pr == 0 || e == w->N);
}

uint16_t ck_q8_quantize_block(const float *src, int n, int8_t q[32], int *bad) {
    float amax = 0;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        float a = fabsf(src[i]);
        if (!(a <= 3.4028235e38f)) finite = 0;   // NaN or Inf
        amax = a > amax ? a : amax;
    }
    if (!finite || amax > 65504.0f * 127.0f) {
        memset(q, 0, 32);
        if (bad) *bad = 1;
        return 0x7E00;   // NaN
    }
    if (bad) *bad = 0;
    uint16_t dh = dequant_f16_bits(amax / 127.0f);
    if (dequant_f16_value(dh) * 127.0f < amax) dh++;   // exact product: 11-bit × 7-bit significands
    float d = dequant_f16_value(dh);
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    for (int i = 0; i < 32; i++) q[i] = i < n ? (int8_t)(int)nearbyintf(src[i] * id) : 0;
    return dh;
}

float ck_q8_quantize_act_block(const float *src, int n, int8_t q[32]) {
    float amax = 0;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        float a = fabsf(src[i]);
        if (!(a <= 3.4028235e38f)) finite = 0;
        amax = a > amax ? a : amax;
    }
    memset(q, 0, 32);
    if (!finite) return NAN;                 // the block's products become NaN
    if (amax < 0x1p-100f) return 0.0f;       // (keeps 1/d finite; the values are < 8e-31)
    float d = amax / 127.0f, id = 1.0f / d;
    for (int i = 0; i < n; i++) {
        float v = nearbyintf(src[i] * id);
        q[i] = (int8_t)(int)(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
    }
    return d;
}

// Packs 16 rows' worth of one q8 block: q[r][32] and scales → the panel's block layout.
static void q8_store_block(uint32_t *wq, uint16_t *wd, int8_t q[CK_Q8_NR][32], const uint16_t d[CK_Q8_NR]) {
    for (int g = 0; g < 8; g++)
        for (int r = 0; r < CK_Q8_NR; r++) {
            uint32_t word;
            memcpy(&word, &q[r][4 * g], 4);
            wq[g * CK_Q8_NR + r] = word;
        }
    memcpy(wd, d, CK_Q8_NR * 2);
}

long ck_pack_q8_panel_generic(uint32_t *wq, uint16_t *wd, const void *src, int type, size_t ld, int rows, int K) {
    const int kb = (K + CK_Q8_BLOCK - 1) / CK_Q8_BLOCK;
    long bad = 0;
    float tmp[32];
    for (int b = 0; b < kb; b++) {
        int8_t q[CK_Q8_NR][32];
        uint16_t d[CK_Q8_NR];
        int n = K - b * 32 < 32 ? K - b * 32 : 32;
        for (int r = 0; r < CK_Q8_NR; r++) {
            if (r >= rows) { memset(q[r], 0, 32); d[r] = 0; continue; }
            int isbad = 0;
            if (type == CK_F32) {
                d[r] = ck_q8_quantize_block((const float *)src + (size_t)r * ld + (size_t)b * 32, n, q[r], &isbad);
            } else {
                const uint16_t *s = (const uint16_t *)src + (size_t)r * ld + (size_t)b * 32;
                for (int i = 0; i < n; i++) tmp[i] = ck_bf16_f32(s[i]);
                d[r] = ck_q8_quantize_block(tmp, n, q[r], &isbad);
            }
            bad += isbad;
        }
        q8_store_block(wq + (size_t)b * 128, wd + (size_t)b * CK_Q8_NR, q, d);
    }
    return bad;
}

static long pack_q8_rows(ck_weights *w, const void *src, int type, size_t ld, int rb, int re) {
    const ck_impl *im = impl_for_packing();
    const int kb = w->kpad / CK_Q8_BLOCK;
    long bad = 0;
    for (int p = rb / CK_Q8_NR; p * CK_Q8_NR < re; p++) {
        int row0 = p * CK_Q8_NR, rows = re - row0 < CK_Q8_NR ? re - row0 : CK_Q8_NR;
        const void *s = type == CK_F32 ? (const void *)((const float *)src + (size_t)row0 * ld)
                                       : (const void *)((const uint16_t *)src + (size_t)row0 * ld);
        bad += im->pack_q8_panel((uint32_t *)w->data + (size_t)p * kb * 128, w->scales + (size_t)p * kb * CK_Q8_NR,
                                 s, type, ld, rows, w->K);
    }
    return bad;
}

static void pack_bf16_rows(ck_weights *w, const void *src, int type, size_t ld, int rb, int re) {
    const ck_impl *im = impl_for_packing();
    const int kp = w->kpad / 2;
    for (int p = rb / CK_BF16_NR; p * CK_BF16_NR < re; p++) {
        int row0 = p * CK_BF16_NR, rows = re - row0 < CK_BF16_NR ? re - row0 : CK_BF16_NR;
        const void *s = type == CK_F32 ? (const void *)((const float *)src + (size_t)row0 * ld)
                                       : (const void *)((const uint16_t *)src + (size_t)row0 * ld);
        im->pack_b_rows((uint32_t *)w->data + (size_t)p * kp * CK_BF16_NR, s, type, ld, rows, w->K, 0, kp);
    }
}

long ck_pack_f32(ck_weights *w, const float *src, size_t ld, int row_begin, int row_end) {
    if (!w || !src || !range_ok(w, row_begin, row_end) || ld < (size_t)w->K) return -1;
    if (w->format == CK_BF16) { pack_bf16_rows(w, src, CK_F32, ld, row_begin, row_end); return 0; }
    if (w->format == CK_Q4) return ck_q4_pack_rows(w, src, CK_F32, ld, row_begin, row_end);
    return pack_q8_rows(w, src, CK_F32, ld, row_begin, row_end);
}

long ck_pack_bf16(ck_weights *w, const uint16_t *src, size_t ld, int row_begin, int row_end) {
    if (!w || !src || !range_ok(w, row_begin, row_end) || ld < (size_t)w->K) return -1;
    if (w->format == CK_BF16) { pack_bf16_rows(w, src, CK_BF16, ld, row_begin, row_end); return 0; }
    if (w->format == CK_Q4) return ck_q4_pack_rows(w, src, CK_BF16, ld, row_begin, row_end);
    return pack_q8_rows(w, src, CK_BF16, ld, row_begin, row_end);
}

long ck_pack_q4_1(ck_weights *w, const void *src, size_t ld, int row_begin, int row_end) {
    if (!w || !src || w->format != CK_Q4 || w->K % 32 || !range_ok(w, row_begin, row_end) || ld < (size_t)w->K / 32 * 20)
        return -1;
    return ck_q4_pack_q4_1(w, src, ld, row_begin, row_end);
}

long ck_pack_q8_0(ck_weights *w, const void *src, size_t ld, int row_begin, int row_end) {
    if (!w || !src || w->format != CK_Q8 || w->K % 32 || !range_ok(w, row_begin, row_end) || ld < (size_t)w->K / 32 * 34)
        return -1;
    const int kb = w->kpad / CK_Q8_BLOCK;
    long changed = 0;
    for (int p = row_begin / CK_Q8_NR; p * CK_Q8_NR < row_end; p++) {
        uint32_t *wq = (uint32_t *)w->data + (size_t)p * kb * 128;
        uint16_t *wd = w->scales + (size_t)p * kb * CK_Q8_NR;
        for (int b = 0; b < kb; b++) {
            int8_t q[CK_Q8_NR][32];
            uint16_t d[CK_Q8_NR];
            for (int r = 0; r < CK_Q8_NR; r++) {
                int row = p * CK_Q8_NR + r;
                if (row >= row_end) { memset(q[r], 0, 32); d[r] = 0; continue; }
                const uint8_t *blk = (const uint8_t *)src + (size_t)row * ld + (size_t)b * 34;
                d[r] = (uint16_t)(blk[0] | blk[1] << 8);
                memcpy(q[r], blk + 2, 32);
                for (int i = 0; i < 32; i++)
                    if (q[r][i] == -128) { q[r][i] = -127; changed++; }
            }
            q8_store_block(wq + (size_t)b * 128, wd + (size_t)b * CK_Q8_NR, q, d);
        }
    }
    return changed;
}

void ck_unpack_row(const ck_weights *w, int n, float *out) {
    if (w->format == CK_Q4) { ck_q4_unpack_row(w, n, out); return; }
    if (w->format == CK_BF16) {
        const uint32_t *panel = (const uint32_t *)w->data + (size_t)(n / CK_BF16_NR) * (w->kpad / 2) * CK_BF16_NR;
        int lane = n % CK_BF16_NR;
        for (int k = 0; k < w->K; k++) {
            uint32_t word = panel[(size_t)(k / 2) * CK_BF16_NR + lane];
            out[k] = ck_f32_from(k & 1 ? word & 0xFFFF0000u : word << 16);
        }
        return;
    }
    const int kb = w->kpad / CK_Q8_BLOCK, lane = n % CK_Q8_NR;
    const uint32_t *wq = (const uint32_t *)w->data + (size_t)(n / CK_Q8_NR) * kb * 128;
    const uint16_t *wd = w->scales + (size_t)(n / CK_Q8_NR) * kb * CK_Q8_NR;
    for (int k = 0; k < w->K; k++) {
        int b = k / 32, g = (k % 32) / 4;
        uint32_t word = wq[(size_t)b * 128 + g * CK_Q8_NR + lane];
        int8_t q = (int8_t)(word >> (8 * (k % 4)));
        out[k] = dequant_f16_value(wd[(size_t)b * CK_Q8_NR + lane]) * (float)q;
    }
}

// ---------------------------------------------------------------------------------------------
// Generic packers and the scalar implementation

void ck_pack_b_rows_generic(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np) {
    for (int p = 0; p < np; p++) {
        int k = 2 * (p0 + p);
        for (int j = 0; j < CK_BF16_NR; j++) {
            uint32_t lo = 0, hi = 0;
            if (j < rows) {
                if (k < K) lo = ck_load_bf16(src, type, (size_t)j * ld + k);
                if (k + 1 < K) hi = ck_load_bf16(src, type, (size_t)j * ld + k + 1);
            }
            out[(size_t)p * CK_BF16_NR + j] = lo | hi << 16;
        }
    }
}

void ck_pack_b_cols_generic(uint32_t *out, const void *src, int type, size_t ld, int rows, int K, int p0, int np) {
    for (int p = 0; p < np; p++) {
        int k = 2 * (p0 + p);
        for (int j = 0; j < CK_BF16_NR; j++) {
            uint32_t lo = 0, hi = 0;
            if (j < rows) {
                if (k < K) lo = ck_load_bf16(src, type, (size_t)k * ld + j);
                if (k + 1 < K) hi = ck_load_bf16(src, type, (size_t)(k + 1) * ld + j);
            }
            out[(size_t)p * CK_BF16_NR + j] = lo | hi << 16;
        }
    }
}

void ck_pack_a_generic(uint32_t *out, int as, const void *src, int type, int trans, size_t ld, int rows, int K, int p0, int np) {
    for (int p = 0; p < np; p++) {
        int k = 2 * (p0 + p);
        for (int r = 0; r < as; r++) {
            uint32_t lo = 0, hi = 0;
            if (r < rows) {
                if (k < K) lo = ck_load_bf16(src, type, trans ? (size_t)k * ld + r : (size_t)r * ld + k);
                if (k + 1 < K) hi = ck_load_bf16(src, type, trans ? (size_t)(k + 1) * ld + r : (size_t)r * ld + k + 1);
            }
            out[(size_t)p * as + r] = lo | hi << 16;
        }
    }
}

void ck_quant_x_generic(ck_q8x *x, const float *src, size_t ld, int rows, int K) {
    const int kb = (K + 31) / 32, as = x->as;
    int32_t *xq = (int32_t *)x->xq, *xc = (int32_t *)x->xc;
    float *xd = (float *)x->xd;
    for (int r = 0; r < as; r++)
        for (int b = 0; b < kb; b++) {
            int8_t q[32];
            float d = 0;
            if (r < rows) d = ck_q8_quantize_act_block(src + (size_t)r * ld + (size_t)b * 32, K - b * 32 < 32 ? K - b * 32 : 32, q);
            else memset(q, 0, 32);
            int sum = 0;
            for (int i = 0; i < 32; i++) sum += q[i];
            for (int g = 0; g < 8; g++) memcpy(&xq[(size_t)(b * 8 + g) * as + r], &q[4 * g], 4);
            xd[(size_t)b * as + r] = d;
            xc[(size_t)b * as + r] = -128 * sum;
        }
}

#define SCALAR_MR 4

static void store_tile(float *c, size_t ldc, int mr, int nr, int acc, const float *t, int tstride) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            float v = t[r * tstride + j];
            c[(size_t)r * ldc + j] = acc ? c[(size_t)r * ldc + j] + v : v;
        }
}

static void bf16_ukr_scalar(int mr, int nr, int kp, const uint32_t *ap, int as, const uint32_t *bp, float *c, size_t ldc, int acc) {
    float t[SCALAR_MR][CK_BF16_NR];
    memset(t, 0, sizeof t);
    for (int p = 0; p < kp; p++) {
        const uint32_t *b = bp + (size_t)p * CK_BF16_NR;
        for (int r = 0; r < mr; r++) {
            uint32_t a = ap[(size_t)p * as + r];
            float a0 = ck_f32_from(a << 16), a1 = ck_f32_from(a & 0xFFFF0000u);
            for (int j = 0; j < CK_BF16_NR; j++) {
                t[r][j] += a0 * ck_f32_from(b[j] << 16);
                t[r][j] += a1 * ck_f32_from(b[j] & 0xFFFF0000u);
            }
        }
    }
    store_tile(c, ldc, mr, nr, acc, &t[0][0], CK_BF16_NR);
}

static void q8_ukr_scalar(int mr, int nr, int kb, ck_q8x x, const uint32_t *wq, const uint16_t *wd, float *c, size_t ldc, int acc) {
    float t[SCALAR_MR][CK_Q8_NR];
    memset(t, 0, sizeof t);
    for (int b = 0; b < kb; b++) {
        int32_t s[SCALAR_MR][CK_Q8_NR];
        memset(s, 0, sizeof s);
        for (int g = 0; g < 8; g++) {
            const uint32_t *w = wq + (size_t)(b * 8 + g) * CK_Q8_NR;
            for (int r = 0; r < mr; r++) {
                uint32_t xv = (uint32_t)x.xq[(size_t)(b * 8 + g) * x.as + r];
                for (int j = 0; j < CK_Q8_NR; j++)
                    for (int i = 0; i < 4; i++)
                        s[r][j] += (int8_t)(w[j] >> (8 * i)) * (int8_t)(xv >> (8 * i));
            }
        }
        for (int r = 0; r < mr; r++) {
            float dx = x.xd[(size_t)b * x.as + r];
            for (int j = 0; j < CK_Q8_NR; j++)
                t[r][j] += (float)s[r][j] * (dequant_f16_value(wd[(size_t)b * CK_Q8_NR + j]) * dx);
        }
    }
    store_tile(c, ldc, mr, nr, acc, &t[0][0], CK_Q8_NR);
}

const ck_impl ck_impl_scalar = {
    "scalar", "scalar", SCALAR_MR, SCALAR_MR, bf16_ukr_scalar, q8_ukr_scalar,
    ck_pack_b_rows_generic, ck_pack_b_cols_generic, ck_pack_a_generic, ck_quant_x_generic, ck_pack_q8_panel_generic,
};

// ---------------------------------------------------------------------------------------------
// bf16 driver: C (M×N) (+)= A · Bᵀ, cache-blocked, output tiles split over threads.
//
// Units of work are (m-band × n-band) tiles of C, taken from a shared counter. Within a unit, for
// each block of KCp column pairs: the A band is packed (unless all of A was packed once up front,
// when it is small), then for each 32-row panel of B (prepacked, or packed now) every mr-row tile
// of the band runs the microkernel. A band stays in L2 while a panel slice is reused from L1/L2.

typedef struct {
    const ck_impl *im;
    int M, N, K, kp, mr;
    ck_operand A, B;
    const uint32_t *bpacked;     // prepacked B (CK_PACKED): panel j at bpacked + j·kp·32
    float *C;
    size_t ldc;
    int acc;
    int MB, NBp, KCp, mbands, nbands, units, panels;
    uint32_t *ashared;           // all of A, tile t at ashared + t·kp·mr (NULL: pack per unit)
    int bfirst;                  // B is packed whole into bpacked first (shared), not per unit
    _Atomic int next, next_tile, packed, next_panel, bdone;
} bf16_job;

static const void *operand_at(const ck_operand *o, size_t idx) {
    return o->type == CK_BF16 ? (const void *)((const uint16_t *)o->data + idx) : (const void *)((const float *)o->data + idx);
}

static void bf16_pack_a_tile(const bf16_job *j, uint32_t *out, int m0, int rows, int p0, int np) {
    // A row m0 starts at element m0·ld (trans 0) or column m0 (trans 1).
    size_t off = j->A.trans ? (size_t)m0 : (size_t)m0 * j->A.ld;
    j->im->pack_a(out, j->mr, operand_at(&j->A, off), j->A.type, j->A.trans, j->A.ld, rows, j->K, p0, np);
}

static void bf16_job_run(void *ctx, int tid) {
    (void)tid;
    bf16_job *j = ctx;
    const int mr = j->mr;
    if (j->ashared) {
        int tiles = (j->M + mr - 1) / mr, t;
        while ((t = atomic_fetch_add(&j->next_tile, 1)) < tiles) {
            int rows = j->M - t * mr < mr ? j->M - t * mr : mr;
            bf16_pack_a_tile(j, j->ashared + (size_t)t * j->kp * mr, t * mr, rows, 0, j->kp);
            atomic_fetch_add_explicit(&j->packed, 1, memory_order_release);
        }
        wait_count(&j->packed, tiles);
    }
    if (j->bfirst) {   // every panel of B once, shared by all units (else each m-band packs it again)
        int jp;
        uint32_t *bout = (uint32_t *)j->bpacked;
        while ((jp = atomic_fetch_add(&j->next_panel, 1)) < j->panels) {
            int n0 = jp * CK_BF16_NR, nr = j->N - n0 < CK_BF16_NR ? j->N - n0 : CK_BF16_NR;
            uint32_t *out = bout + (size_t)jp * j->kp * CK_BF16_NR;
            if (j->B.trans)
                j->im->pack_b_cols(out, operand_at(&j->B, (size_t)n0), j->B.type, j->B.ld, nr, j->K, 0, j->kp);
            else
                j->im->pack_b_rows(out, operand_at(&j->B, (size_t)n0 * j->B.ld), j->B.type, j->B.ld, nr, j->K, 0, j->kp);
            atomic_fetch_add_explicit(&j->bdone, 1, memory_order_release);
        }
        wait_count(&j->bdone, j->panels);
    }
    uint32_t *abuf = NULL, *bbuf = NULL;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->units) break;
        int mb = u / j->nbands, nb = u % j->nbands;
        int m0 = mb * j->MB, m1 = m0 + j->MB < j->M ? m0 + j->MB : j->M;
        int j0 = nb * j->NBp, j1 = j0 + j->NBp < j->panels ? j0 + j->NBp : j->panels;
        for (int pc = 0; pc < j->kp; pc += j->KCp) {
            int np = j->kp - pc < j->KCp ? j->kp - pc : j->KCp;
            int first = pc == 0 ? j->acc : 1;
            if (!j->ashared) {
                if (!abuf) abuf = scratch(BUF_A, (size_t)(j->MB + mr) * j->KCp * 4);
                for (int m = m0, t = 0; m < m1; m += mr, t++)
                    bf16_pack_a_tile(j, abuf + (size_t)t * np * mr, m, m1 - m < mr ? m1 - m : mr, pc, np);
            }
            for (int jp = j0; jp < j1; jp++) {
                int n0 = jp * CK_BF16_NR, nr = j->N - n0 < CK_BF16_NR ? j->N - n0 : CK_BF16_NR;
                const uint32_t *bp;
                if (j->bpacked) {
                    bp = j->bpacked + ((size_t)jp * j->kp + pc) * CK_BF16_NR;
                } else {
                    if (!bbuf) bbuf = scratch(BUF_B, (size_t)j->KCp * CK_BF16_NR * 4);
                    if (j->B.trans)
                        j->im->pack_b_cols(bbuf, operand_at(&j->B, (size_t)n0), j->B.type, j->B.ld, nr, j->K, pc, np);
                    else
                        j->im->pack_b_rows(bbuf, operand_at(&j->B, (size_t)n0 * j->B.ld), j->B.type, j->B.ld, nr, j->K, pc, np);
                    bp = bbuf;
                }
                for (int m = m0, t = 0; m < m1; m += mr, t++) {
                    const uint32_t *ap = j->ashared ? j->ashared + (size_t)(m / mr) * j->kp * mr + (size_t)pc * mr
                                                    : abuf + (size_t)t * np * mr;
                    j->im->bf16_ukr(m1 - m < mr ? m1 - m : mr, nr, np, ap, mr, bp, j->C + (size_t)m * j->ldc + n0, j->ldc, first);
                }
            }
        }
    }
}

// Tunables (bench-kernels measures them): pairs per k-block, A band budget, units per thread.
static int tune_kc_pairs = 256;
static size_t tune_aband_bytes = 384 << 10;
static size_t tune_ashared_bytes = 8 << 20;
static size_t tune_bshared_bytes = 16 << 20;

static void bf16_gemm(int M, int N, int K, ck_operand A, ck_operand B, const ck_weights *wp, float *C, size_t ldc, int acc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!acc) for (int m = 0; m < M; m++) memset(C + (size_t)m * ldc, 0, sizeof(float) * N);
        return;
    }
    bf16_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->im = impl_for_bf16();
    j->M = M; j->N = N; j->K = K; j->kp = (K + 1) / 2; j->mr = j->im->bf16_mr;
    j->A = A; j->B = B; j->C = C; j->ldc = ldc; j->acc = acc;
    j->bpacked = wp ? (const uint32_t *)wp->data : NULL;
    j->panels = (N + CK_BF16_NR - 1) / CK_BF16_NR;
    const int mr = j->mr;
    int tiles = (M + mr - 1) / mr;
    size_t ashared_bytes = (size_t)tiles * mr * j->kp * 4;
    // Small M: one k-block (each panel is streamed once, whole); else blocks of tune_kc_pairs.
    j->KCp = M <= 4 * mr || j->kp <= tune_kc_pairs + tune_kc_pairs / 2 ? j->kp : tune_kc_pairs;
    int mbrows = (int)(tune_aband_bytes / ((size_t)j->KCp * 4)) / mr * mr;
    if (mbrows < mr) mbrows = mr;
    j->MB = M < mbrows ? M : mbrows;
    j->mbands = (M + j->MB - 1) / j->MB;
    j->ashared = NULL;
    if (ashared_bytes <= tune_ashared_bytes) j->ashared = scratch(BUF_SHARED, ashared_bytes);
    // An unpacked B used by more than one m-band is packed whole first when it is not too big.
    size_t bshared_bytes = (size_t)j->panels * j->kp * CK_BF16_NR * 4;
    if (!wp && j->mbands > 1 && bshared_bytes <= tune_bshared_bytes) {
        j->bpacked = scratch(BUF_BSHARED, bshared_bytes);
        j->bfirst = 1;
    }
    int nth = call_threads();
    // Work estimate: below ~20 µs on one thread, do not wake the pool.
    double flops = 2.0 * M * N * K, bytes = wp ? (double)ck_weights_bytes(CK_BF16, N, K) : 0;
    if (flops < 4e6 && bytes < 256e3) nth = 1;
    int want_units = nth * 4;
    int nb_target = (want_units + j->mbands - 1) / j->mbands;
    if (nb_target < 1) nb_target = 1;
    j->NBp = (j->panels + nb_target - 1) / nb_target;
    if (!j->ashared && j->NBp < 8) j->NBp = j->panels < 8 ? j->panels : 8;   // amortise A packing
    j->nbands = (j->panels + j->NBp - 1) / j->NBp;
    j->units = j->mbands * j->nbands;
    if (nth > j->units) nth = j->units;
    atomic_store(&j->next, 0);
    ck_run(bf16_job_run, j, nth);
    free(j);
}

void ck_gemm(int M, int N, int K, ck_operand A, ck_operand B, float *C, size_t ldc, int accumulate) {
    const ck_weights *wp = NULL;
    if (B.type == CK_PACKED) {
        wp = B.data;
        if (!wp || wp->format != CK_BF16 || wp->N != N || wp->K != K) {
            fprintf(stderr, "selm: ck_gemm: packed B is not a %d×%d bf16 matrix\n", N, K);
            abort();
        }
    }
    bf16_gemm(M, N, K, A, B, wp, C, ldc, accumulate);
}

void ck_matmul_forward_bf16(float *out, const float *inp, const float *weight, int T, int C, int OC, int accumulate) {
    ck_operand A = {inp, CK_F32, 0, (size_t)C}, B = {weight, CK_F32, 0, (size_t)C};
    bf16_gemm(T, OC, C, A, B, NULL, out, (size_t)OC, accumulate);
}

void ck_matmul_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             int T, int C, int OC) {
    if (dinp) {   // (T, C) += (T, OC) · (OC, C)
        ck_operand A = {dout, CK_F32, 0, (size_t)OC}, B = {weight, CK_F32, 1, (size_t)C};
        bf16_gemm(T, C, OC, A, B, NULL, dinp, (size_t)C, 1);
    }
    if (dweight) {   // (OC, C) += (T, OC)ᵀ · (T, C)
        ck_operand A = {dout, CK_F32, 1, (size_t)OC}, B = {inp, CK_F32, 1, (size_t)C};
        bf16_gemm(OC, C, T, A, B, NULL, dweight, (size_t)C, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// q8 driver: x quantised once per call (in parallel), then (m-band × n-band) units as above, over
// the whole K (a 16-row panel of 1.06 bytes per weight stays in L1/L2 for the band's tiles).

typedef struct {
    const ck_impl *im;
    int M, N, K, kb, mr;
    const float *x;
    size_t ldx;
    const ck_weights *w;
    float *y;
    size_t ldy;
    int acc;
    int MB, NBp, mbands, nbands, units, panels, tiles;
    char *xbuf;           // tile t at xbuf + t·tile_bytes
    size_t tile_bytes;
    _Atomic int next, next_tile, packed;
} q8_job;

static ck_q8x q8_tile(const q8_job *j, int t) {
    char *base = j->xbuf + (size_t)t * j->tile_bytes;
    size_t words = (size_t)j->kb * 8 * j->mr;
    ck_q8x x = {(const int32_t *)base, (const float *)(base + words * 4), (const int32_t *)(base + words * 4 + (size_t)j->kb * j->mr * 4), j->mr};
    return x;
}

static void q8_job_run(void *ctx, int tid) {
    (void)tid;
    q8_job *j = ctx;
    const int mr = j->mr;
    int t;
    while ((t = atomic_fetch_add(&j->next_tile, 1)) < j->tiles) {
        ck_q8x x = q8_tile(j, t);
        int rows = j->M - t * mr < mr ? j->M - t * mr : mr;
        j->im->quant_x(&x, j->x + (size_t)t * mr * j->ldx, j->ldx, rows, j->K);
        atomic_fetch_add_explicit(&j->packed, 1, memory_order_release);
    }
    wait_count(&j->packed, j->tiles);
    const int kb = j->kb;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->units) break;
        int mb = u / j->nbands, nb = u % j->nbands;
        int m0 = mb * j->MB, m1 = m0 + j->MB < j->M ? m0 + j->MB : j->M;
        int j0 = nb * j->NBp, j1 = j0 + j->NBp < j->panels ? j0 + j->NBp : j->panels;
        for (int jp = j0; jp < j1; jp++) {
            int n0 = jp * CK_Q8_NR, nr = j->N - n0 < CK_Q8_NR ? j->N - n0 : CK_Q8_NR;
            const uint32_t *wq = (const uint32_t *)j->w->data + (size_t)jp * kb * 128;
            const uint16_t *wd = j->w->scales + (size_t)jp * kb * CK_Q8_NR;
            for (int m = m0; m < m1; m += mr)
                j->im->q8_ukr(m1 - m < mr ? m1 - m : mr, nr, kb, q8_tile(j, m / mr), wq, wd, j->y + (size_t)m * j->ldy + n0, j->ldy, j->acc);
        }
    }
}

static size_t tune_q8_band_bytes = 512 << 10;

static void q8_linear(float *y, size_t ldy, const float *x, size_t ldx, int M, const ck_weights *w, int acc) {
    q8_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->im = impl_for_q8();
    j->M = M; j->N = w->N; j->K = w->K; j->kb = w->kpad / CK_Q8_BLOCK; j->mr = j->im->q8_mr;
    j->x = x; j->ldx = ldx; j->w = w; j->y = y; j->ldy = ldy; j->acc = acc;
    j->panels = w->panels;
    const int mr = j->mr;
    j->tiles = (M + mr - 1) / mr;
    j->tile_bytes = (size_t)j->kb * mr * (8 * 4 + 4 + 4);
    j->xbuf = scratch(BUF_SHARED, j->tile_bytes * j->tiles);
    int mbrows = (int)(tune_q8_band_bytes / ((size_t)j->kb * 32 + 1)) / mr * mr;
    if (mbrows < mr) mbrows = mr;
    j->MB = M < mbrows ? M : mbrows;
    j->mbands = (M + j->MB - 1) / j->MB;
    int nth = call_threads();
    double flops = 2.0 * M * j->N * j->K, bytes = (double)ck_weights_bytes(CK_Q8, j->N, j->K);
    if (flops < 4e6 && bytes < 128e3) nth = 1;
    int nb_target = (nth * 4 + j->mbands - 1) / j->mbands;
    j->NBp = (j->panels + nb_target - 1) / nb_target;
    if (j->NBp < 1) j->NBp = 1;
    j->nbands = (j->panels + j->NBp - 1) / j->NBp;
    j->units = j->mbands * j->nbands;
    if (nth > j->units && nth > j->tiles) nth = j->units > j->tiles ? j->units : j->tiles;
    atomic_store(&j->next, 0);
    ck_run(q8_job_run, j, nth);
    free(j);
}

void ck_linear(float *y, size_t ldy, const float *x, size_t ldx, int M, const ck_weights *w, int accumulate) {
    if (M <= 0) return;
    if (w->format == CK_Q8) { q8_linear(y, ldy, x, ldx, M, w, accumulate); return; }
    if (w->format == CK_Q4) { ck_q4_linear(y, ldy, x, ldx, M, w, accumulate); return; }
    ck_operand A = {x, CK_F32, 0, ldx}, B = {w, CK_PACKED, 0, 0};
    bf16_gemm(M, w->N, w->K, A, B, w, y, ldy, accumulate);
}

// ---------------------------------------------------------------------------------------------
// Bulk conversions

#if defined(__x86_64__)
void ck_avx512_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
double ck_avx512_bf16_loop(long iters);
long ck_avx512_vnni_loop(long iters);
#endif

void ck_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_isa() >= CK_ISA_AVX512VNNI) { ck_avx512_f32_to_bf16(src, dst, n); return; }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = ck_bf16_rne(src[i]);
}

void ck_bf16_to_f32(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ck_bf16_f32(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Measurements

// Measurement jobs run on exactly `nth` threads at once: participants take slots, wait (up to 1 s)
// for all slots to be taken, then run together. Each records when its own work began and ended,
// so the time to gather the gang (a helper descheduled by another process) is not measured.
typedef struct { int nth; _Atomic int slot, ready; double t0[CK_MAX_THREADS], t1[CK_MAX_THREADS]; } ck_gang;

static int gang_join(ck_gang *g) {
    int me = atomic_fetch_add(&g->slot, 1);
    if (me >= g->nth) return -1;
    atomic_fetch_add(&g->ready, 1);
    double t0 = ck_now();
    while (atomic_load(&g->ready) < g->nth && ck_now() - t0 < 1.0) CK_PAUSE();
    g->t0[me] = ck_now();
    return me;
}

static void gang_done(ck_gang *g, int me) { g->t1[me] = ck_now(); }

/// Seconds from the first participant's start to the last one's end (after ck_run returned).
static double gang_span(const ck_gang *g) {
    int n = atomic_load(&g->ready);
    double a = 1e300, b = 0;
    for (int i = 0; i < n; i++) {
        if (g->t0[i] < a) a = g->t0[i];
        if (g->t1[i] > b) b = g->t1[i];
    }
    return n > 0 && b > a ? b - a : 1e-9;
}

typedef struct { ck_gang g; size_t bytes; const char *buf; volatile uint64_t sink; } stream_job;

static void stream_run(void *ctx, int tid) {
    (void)tid;
    stream_job *s = ctx;
    int me = gang_join(&s->g);
    if (me < 0) return;
    size_t per = s->bytes / s->g.nth / 64 * 64;
    const uint64_t *p = (const uint64_t *)(s->buf + per * me);
    size_t n = per / 8;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
        a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
    }
    s->sink += a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    gang_done(&s->g, me);
}

typedef struct { ck_gang g; int kind; long iters; volatile double sink; } peak_job;

static void peak_run(void *ctx, int tid) {
    (void)tid;
    peak_job *j = ctx;
    int me = gang_join(&j->g);
    if (me < 0) return;
#if defined(__x86_64__)
    j->sink += j->kind == 0 ? ck_avx512_bf16_loop(j->iters) : (double)ck_avx512_vnni_loop(j->iters);
#endif
    gang_done(&j->g, me);
}

/// 16 instructions of 16 lanes per iteration; scaled to about `seconds`.
static double peak(int kind, int threads, double seconds) {
    int nth = threads < 1 ? 1 : threads;
    long iters = 1 << 16;
    for (;;) {
        peak_job *j = calloc(1, sizeof *j);
        if (!j) return 0;
        j->g.nth = nth;
        j->kind = kind;
        j->iters = iters;
        ck_run(peak_run, j, nth);
        double t = gang_span(&j->g);
        int ran = atomic_load(&j->g.ready);
        free(j);
        if (t >= seconds || iters > (1L << 40)) {
            double ops = (double)iters * 16 * 16 * (kind == 0 ? 4 : 8) * ran;   // bf16: 2 pairs/lane; int8: 4
            return ops / t / 1e9;
        }
        iters = t < seconds / 8 ? iters * 8 : (long)(iters * (seconds / t) * 1.1);
    }
}

double ck_peak_bf16_gflops(int threads, double seconds) {
    return ck_isa_detected() >= CK_ISA_AVX512BF16 ? peak(0, threads, seconds) : 0;
}

double ck_peak_vnni_gops(int threads, double seconds) {
    return ck_isa_detected() >= CK_ISA_AVX512VNNI ? peak(1, threads, seconds) : 0;
}

double ck_stream_read_gbs(size_t bytes, int threads, int reps) {
    char *buf = NULL;
    if (posix_memalign((void **)&buf, 64, bytes) != 0) return 0;
    memset(buf, 1, bytes);
    double best = 0;
    int nth = threads < 1 ? 1 : threads;
    stream_job *s = calloc(1, sizeof *s);
    if (!s) { free(buf); return 0; }
    for (int r = 0; r < reps; r++) {
        memset(s, 0, sizeof *s);
        s->g.nth = nth;
        s->bytes = bytes;
        s->buf = buf;
        ck_run(stream_run, s, nth);
        double gbs = (double)(bytes / nth / 64 * 64) * atomic_load(&s->g.ready) / gang_span(&s->g) / 1e9;
        if (gbs > best) best = gbs;
    }
    free(s);
    free(buf);
    return best;
}
